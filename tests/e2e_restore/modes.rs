//! Fill and replace: what a restore writes into the new incarnation.

use k8s_openapi::api::core::v1::Service;
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, PostParams},
};
use restatus::policy::{ANNOTATION_RESTORE, ANNOTATION_RESTORED_AT, RESTORE_PENDING, status_of};
use serde_json::json;

use super::{
    recreate_pending, saved_status, wait_event, wait_outcome, wait_queue_empty, wait_restored,
};
use crate::support::{
    cluster::{Env, EnvOptions, WAIT, kubernetes_cluster, load_balancer_service, patch_status},
    eventually,
};

#[tokio::test]
async fn recreated_kubernetes_cluster_gets_its_status_back() {
    let env = Env::start(EnvOptions::default()).await;
    let saved = json!({"apiServerURL": "https://203.0.113.10:6443", "masterVersion": "1.31.4"});
    recreate_pending(&env, "prod-eu-1", &saved).await;
    let api = env.clusters();
    let restored = wait_restored(&api, "prod-eu-1").await;
    assert_eq!(status_of(&restored), Some(&saved));
    assert_ne!(restored.metadata.uid, None);
    let at = &restored.annotations()[ANNOTATION_RESTORED_AT];
    assert!(at.parse::<jiff::Timestamp>().is_ok(), "RFC 3339: {at}");

    let evs = wait_event(&env, "prod-eu-1", "StatusRestored").await;
    assert_eq!(
        evs[0].regarding.as_ref().unwrap().uid,
        restored.metadata.uid,
        "the event is about the new incarnation"
    );
    assert_eq!(evs[0].type_.as_deref(), Some("Normal"));

    // The record now belongs to the new incarnation and no longer expires.
    let id = env.kc_id("prod-eu-1");
    eventually(WAIT, "the record to be adopted", || async {
        let rec = env.record(&id).await;
        (rec.get("uid") == restored.metadata.uid.as_ref() && !rec.contains_key("deletedAt"))
            .then_some(())
    })
    .await;
    assert_eq!(env.redis.pttl(&env.keys.record(&id)).await, -1);
    wait_queue_empty(&env).await;
}

#[tokio::test]
async fn recreated_load_balancer_service_gets_its_ingress_back() {
    let env = Env::start(EnvOptions::default()).await;
    let services: Api<Service> = Api::namespaced(env.client.clone(), &env.ns);
    let manifest = load_balancer_service("ingress");
    services
        .create(&PostParams::default(), &manifest)
        .await
        .unwrap();
    let lb = json!({"ingress": [{"ip": "198.51.100.7", "ipMode": "VIP", "ports": [{"port": 443, "protocol": "TCP"}]}]});
    services
        .patch_status(
            "ingress",
            &Default::default(),
            &kube::api::Patch::Merge(json!({"status": {"loadBalancer": lb}})),
        )
        .await
        .unwrap();
    let id = env.identity("", "services", "ingress");
    eventually(WAIT, "the service status to be recorded", || async {
        let s = env.recorded_status(&id).await?;
        (s["loadBalancer"] == lb).then_some(())
    })
    .await;
    services
        .delete("ingress", &DeleteParams::default())
        .await
        .unwrap();
    env.wait_deletion_recorded(&id).await;

    services
        .create(&PostParams::default(), &manifest)
        .await
        .unwrap();
    let restored = eventually(WAIT, "the load balancer ingress to come back", || async {
        let svc = services.get("ingress").await.ok()?;
        let ingress = svc
            .status
            .as_ref()?
            .load_balancer
            .as_ref()?
            .ingress
            .as_ref()?;
        let a = svc.annotations();
        (!ingress.is_empty()
            && a.contains_key(ANNOTATION_RESTORED_AT)
            && !a.contains_key(ANNOTATION_RESTORE))
        .then_some(svc)
    })
    .await;
    let status = serde_json::to_value(restored.status.unwrap()).unwrap();
    assert_eq!(status["loadBalancer"], lb);
}

#[tokio::test]
async fn replace_mode_writes_the_saved_status_over_the_live_one() {
    // A webhook-only replica in replace mode queues the job (which carries the mode); the
    // controller writes first; only then does a worker run, so the order is certain.
    let mut opts = EnvOptions::webhook_only();
    opts.args
        .extend(["--restore-mode".into(), "replace".into()]);
    let env = Env::start(opts).await;
    recreate_pending(&env, "replaced", &saved_status()).await;
    let api = env.clusters();
    patch_status(
        &api,
        "replaced",
        json!({"phase": "Provisioning", "nodes": 0}),
    )
    .await;
    let live = api.get("replaced").await.unwrap();
    assert_eq!(status_of(&live).unwrap()["phase"], "Provisioning");
    assert_eq!(live.annotations()[ANNOTATION_RESTORE], RESTORE_PENDING);

    // The worker's own flag says fill: the job's policy, resolved at the create, wins.
    let worker = env.start_replica("worker", &[]).await;
    let restored = wait_restored(&api, "replaced").await;
    let status = status_of(&restored).unwrap();
    assert_eq!(
        status["phase"], "Running",
        "the saved value overwrote the live one"
    );
    assert_eq!(status["apiServerURL"], "https://203.0.113.10:6443");
    assert_eq!(
        status["nodes"], 0,
        "a live field the record does not have is kept"
    );
    wait_outcome(&worker, "restored", 1.0).await;
}

#[tokio::test]
async fn observed_generation_is_not_restored_by_default() {
    let env = Env::start(EnvOptions::default()).await;
    let saved = json!({
        "phase": "Running",
        "observedGeneration": 7,
        "conditions": [{"type": "Ready", "status": "True", "reason": "Provisioned", "observedGeneration": 7}]
    });
    env.create_record_delete("generations", &saved).await;
    let api = env.clusters();
    api.create(&PostParams::default(), &kubernetes_cluster("generations"))
        .await
        .unwrap();
    let restored = wait_restored(&api, "generations").await;
    assert_eq!(
        status_of(&restored),
        Some(&json!({
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "True", "reason": "Provisioned"}]
        }))
    );
}
