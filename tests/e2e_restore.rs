//! End to end: recreated objects get their status back, against the real kube-apiserver,
//! real Redis and real restatus processes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::{collections::BTreeMap, time::Duration};

use k8s_openapi::api::{
    admissionregistration::v1::{ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding},
    core::v1::Service,
    events::v1::Event,
};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, DynamicObject, ListParams, PostParams},
};
use restatus::policy::status_of;
use restatus::store::ObjectIdentity;
use serde_json::{Value, json};
use support::{
    cluster::{self, Env, EnvOptions, kubernetes_cluster, patch_status},
    eventually,
    restatus::Restatus,
};

const WAIT: Duration = Duration::from_secs(30);
const PENDING: &str = "restatus.io/restore";
const RESTORED_AT: &str = "restatus.io/restored-at";

fn kc_id(env: &Env, name: &str) -> ObjectIdentity {
    env.identity("infra.example.com", "kubernetesclusters", name)
}

/// Creates a KubernetesCluster, gives it `status`, waits until restatus has recorded it,
/// deletes it and waits until the deletion is recorded.
async fn create_record_delete(env: &Env, name: &str, status: &Value) {
    let api = env.clusters();
    api.create(&PostParams::default(), &kubernetes_cluster(name))
        .await
        .unwrap();
    patch_status(&api, name, status.clone()).await;
    let id = kc_id(env, name);
    eventually(WAIT, &format!("{name}'s status to be recorded"), || async {
        (env.recorded_status(&id).await.as_ref() == Some(status)).then_some(())
    })
    .await;
    api.delete(name, &DeleteParams::default()).await.unwrap();
    eventually(
        WAIT,
        &format!("{name}'s deletion to be recorded"),
        || async {
            env.record(&id)
                .await
                .contains_key("deletedAt")
                .then_some(())
        },
    )
    .await;
}

/// Waits until the object carries `restored-at` and no `restore` annotation.
async fn wait_restored(api: &Api<DynamicObject>, name: &str) -> DynamicObject {
    eventually(WAIT, &format!("{name} to be restored"), || async {
        let obj = api.get_opt(name).await.ok()??;
        let a = obj.annotations();
        (a.contains_key(RESTORED_AT) && !a.contains_key(PENDING)).then_some(obj)
    })
    .await
}

async fn events(env: &Env, name: &str, reason: &str) -> Vec<Event> {
    let api: Api<Event> = Api::namespaced(env.client.clone(), &env.ns);
    api.list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| {
            e.reason.as_deref() == Some(reason)
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name)
        })
        .collect()
}

async fn queue_len(env: &Env) -> u64 {
    let mut conn = env.redis.conn().await;
    redis::cmd("XLEN")
        .arg(env.keys.queue())
        .query_async(&mut conn)
        .await
        .unwrap()
}

/// Waits until every job is acknowledged and gone (the last step of a job).
async fn wait_queue_empty(env: &Env) {
    eventually(WAIT, "the queue to be empty", || async {
        (queue_len(env).await == 0).then_some(())
    })
    .await;
}

async fn outcome(r: &Restatus, outcome: &str) -> f64 {
    r.metric(&format!("restatus_restores_total{{outcome=\"{outcome}\"}}"))
        .await
}

/// Waits until `r` has counted `count` restores with `outcome` (it counts after the last step
/// of a restore, a moment after the object shows it).
async fn wait_outcome(r: &Restatus, name: &str, count: f64) {
    eventually(
        WAIT,
        &format!("{count} restores counted as {name}"),
        || async {
            let seen = outcome(r, name).await;
            assert!(
                seen <= count,
                "{seen} restores counted as {name}, expected {count}"
            );
            (seen == count).then_some(())
        },
    )
    .await;
}

fn saved_status() -> Value {
    json!({
        "phase": "Running",
        "clusterID": "c-7f3a9",
        "apiServerURL": "https://203.0.113.10:6443",
        "masterVersion": "1.31.4"
    })
}

#[tokio::test]
async fn recreated_kubernetes_cluster_gets_its_status_back() {
    let env = Env::start(EnvOptions::default()).await;
    let saved = json!({"apiServerURL": "https://203.0.113.10:6443", "masterVersion": "1.31.4"});
    create_record_delete(&env, "prod-eu-1", &saved).await;

    let api = env.clusters();
    let created = api
        .create(&PostParams::default(), &kubernetes_cluster("prod-eu-1"))
        .await
        .unwrap();
    assert_eq!(
        created.annotations().get(PENDING).map(String::as_str),
        Some("pending"),
        "the create is marked pending by the webhook"
    );
    let restored = wait_restored(&api, "prod-eu-1").await;
    assert_eq!(status_of(&restored), Some(&saved));
    assert_ne!(restored.metadata.uid, None);
    let at = &restored.annotations()[RESTORED_AT];
    assert!(at.parse::<jiff::Timestamp>().is_ok(), "RFC 3339: {at}");

    let evs = eventually(WAIT, "a StatusRestored event", || async {
        let evs = events(&env, "prod-eu-1", "StatusRestored").await;
        (!evs.is_empty()).then_some(evs)
    })
    .await;
    assert_eq!(
        evs[0].regarding.as_ref().unwrap().uid,
        restored.metadata.uid,
        "the event is about the new incarnation"
    );
    assert_eq!(evs[0].type_.as_deref(), Some("Normal"));

    // The record now belongs to the new incarnation and no longer expires.
    let id = kc_id(&env, "prod-eu-1");
    eventually(WAIT, "the record to be adopted", || async {
        let rec = env.record(&id).await;
        (rec.get("uid") == restored.metadata.uid.as_ref() && !rec.contains_key("deletedAt"))
            .then_some(())
    })
    .await;
    assert_eq!(env.redis.pttl(&env.keys.record(&id)).await, -1);
    wait_queue_empty(&env).await;
    env.cleanup().await;
}

#[tokio::test]
async fn recreated_load_balancer_service_gets_its_ingress_back() {
    let env = Env::start(EnvOptions::default()).await;
    let services: Api<Service> = Api::namespaced(env.client.clone(), &env.ns);
    let manifest: Service = serde_json::from_value(json!({
        "metadata": {"name": "ingress"},
        "spec": {"type": "LoadBalancer", "selector": {"app": "ingress"},
                 "ports": [{"name": "https", "port": 443, "targetPort": 8443, "protocol": "TCP"}]}
    }))
    .unwrap();
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
    eventually(WAIT, "the deletion to be recorded", || async {
        env.record(&id)
            .await
            .contains_key("deletedAt")
            .then_some(())
    })
    .await;

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
        (!ingress.is_empty() && a.contains_key(RESTORED_AT) && !a.contains_key(PENDING))
            .then_some(svc)
    })
    .await;
    let status = serde_json::to_value(restored.status.unwrap()).unwrap();
    assert_eq!(status["loadBalancer"], lb);
    env.cleanup().await;
}

#[tokio::test]
async fn a_controller_writing_right_after_the_create_keeps_its_facts_and_gets_the_saved_ones() {
    let env = Env::start(EnvOptions::default()).await;
    create_record_delete(&env, "raced", &saved_status()).await;
    let api = env.clusters();
    api.create(&PostParams::default(), &kubernetes_cluster("raced"))
        .await
        .unwrap();
    // The owning controller reacts to the new object at once.
    patch_status(&api, "raced", json!({"phase": "Provisioning"})).await;
    let restored = wait_restored(&api, "raced").await;
    let status = status_of(&restored).unwrap();
    assert_eq!(
        status["phase"], "Provisioning",
        "the controller's fresh fact wins"
    );
    assert_eq!(status["apiServerURL"], "https://203.0.113.10:6443");
    assert_eq!(status["masterVersion"], "1.31.4");
    assert_eq!(status["clusterID"], "c-7f3a9");
    env.cleanup().await;
}

#[tokio::test]
async fn replace_mode_writes_the_saved_status_over_the_live_one() {
    // A webhook-only replica queues the job; the controller writes first; only then does a
    // worker in replace mode run, so the order is certain.
    let env = Env::start(EnvOptions {
        args: vec!["--restore-worker=false".into()],
        ..Default::default()
    })
    .await;
    create_record_delete(&env, "replaced", &saved_status()).await;
    let api = env.clusters();
    api.create(&PostParams::default(), &kubernetes_cluster("replaced"))
        .await
        .unwrap();
    patch_status(
        &api,
        "replaced",
        json!({"phase": "Provisioning", "nodes": 0}),
    )
    .await;
    let live = api.get("replaced").await.unwrap();
    assert_eq!(status_of(&live).unwrap()["phase"], "Provisioning");
    assert_eq!(live.annotations()[PENDING], "pending");

    let worker = env
        .start_replica("replace-worker", &["--restore-mode", "replace"])
        .await;
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
    env.cleanup().await;
}

#[tokio::test]
async fn observed_generation_is_not_restored_by_default() {
    let env = Env::start(EnvOptions::default()).await;
    let saved = json!({
        "phase": "Running",
        "observedGeneration": 7,
        "conditions": [{"type": "Ready", "status": "True", "reason": "Provisioned", "observedGeneration": 7}]
    });
    create_record_delete(&env, "generations", &saved).await;
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
    env.cleanup().await;
}

#[tokio::test]
async fn a_crd_without_the_status_subresource_gets_its_status_in_the_create_itself() {
    let client = cluster::client().await;
    cluster::apply_crd(
        &client,
        cluster::test_crd("legacyclusters", "LegacyCluster", "v1", "Namespaced", false),
    )
    .await;
    let env = Env::start(EnvOptions {
        extra_rules: vec![cluster::test_rule("legacyclusters", "Namespaced")],
        ..Default::default()
    })
    .await;
    let ar = kube::api::ApiResource::from_gvk_with_plural(
        &kube::api::GroupVersionKind::gvk("infra.example.com", "v1", "LegacyCluster"),
        "legacyclusters",
    );
    let api: Api<DynamicObject> = Api::namespaced_with(env.client.clone(), &env.ns, &ar);
    let manifest: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "infra.example.com/v1", "kind": "LegacyCluster",
        "metadata": {"name": "legacy"}, "spec": {"region": "eu"}
    }))
    .unwrap();
    api.create(&PostParams::default(), &manifest).await.unwrap();
    // Without the subresource, status is written with the object itself.
    let saved = json!({"endpoint": "https://198.51.100.20", "allocatedID": "a-42"});
    let mut live = api.get("legacy").await.unwrap();
    live.data["status"] = saved.clone();
    api.replace("legacy", &PostParams::default(), &live)
        .await
        .unwrap();
    let id = env.identity("infra.example.com", "legacyclusters", "legacy");
    eventually(WAIT, "the status to be recorded", || async {
        (env.recorded_status(&id).await.as_ref() == Some(&saved)).then_some(())
    })
    .await;
    api.delete("legacy", &DeleteParams::default())
        .await
        .unwrap();
    eventually(WAIT, "the deletion to be recorded", || async {
        env.record(&id)
            .await
            .contains_key("deletedAt")
            .then_some(())
    })
    .await;

    let created = api.create(&PostParams::default(), &manifest).await.unwrap();
    assert_eq!(
        status_of(&created),
        Some(&saved),
        "the create response carries the status"
    );
    assert!(created.annotations().contains_key(RESTORED_AT));
    assert!(!created.annotations().contains_key(PENDING));
    eventually(WAIT, "a StatusRestored event", || async {
        (!events(&env, "legacy", "StatusRestored").await.is_empty()).then_some(())
    })
    .await;
    env.cleanup().await;
}

#[tokio::test]
async fn create_of_an_object_that_still_exists_leaves_it_alone() {
    let env = Env::start(EnvOptions::default()).await;
    let api = env.clusters();
    api.create(&PostParams::default(), &kubernetes_cluster("exists"))
        .await
        .unwrap();
    let status = saved_status();
    patch_status(&api, "exists", status.clone()).await;
    let id = kc_id(&env, "exists");
    eventually(WAIT, "the status to be recorded", || async {
        (env.recorded_status(&id).await.as_ref() == Some(&status)).then_some(())
    })
    .await;
    let before = api.get("exists").await.unwrap();

    let err = api
        .create(&PostParams::default(), &kubernetes_cluster("exists"))
        .await
        .expect_err("AlreadyExists");
    match err {
        kube::Error::Api(s) => assert_eq!(s.code, 409, "{s:?}"),
        other => panic!("unexpected error {other}"),
    }
    let r = &env.restatus[0];
    eventually(WAIT, "the job to be dropped as already-exists", || async {
        (outcome(r, "already_exists").await == 1.0).then_some(())
    })
    .await;
    let after = api.get("exists").await.unwrap();
    assert_eq!(
        after.metadata.resource_version, before.metadata.resource_version,
        "untouched"
    );
    assert!(!after.annotations().contains_key(RESTORED_AT));
    assert!(!after.annotations().contains_key(PENDING));
    wait_queue_empty(&env).await;
    assert_eq!(outcome(r, "restored").await, 0.0);
    env.cleanup().await;
}

#[tokio::test]
async fn a_dry_run_create_of_a_known_object_queues_nothing() {
    let env = Env::start(EnvOptions::default()).await;
    create_record_delete(&env, "dry", &saved_status()).await;
    let api = env.clusters();
    let r = &env.restatus[0];
    let dry_before = r
        .metric("restatus_admission_requests_total{operation=\"CREATE\",outcome=\"dry_run\"}")
        .await;
    let answer = api
        .create(
            &PostParams {
                dry_run: true,
                ..Default::default()
            },
            &kubernetes_cluster("dry"),
        )
        .await
        .unwrap();
    assert!(!answer.annotations().contains_key(PENDING));
    assert!(
        r.metric("restatus_admission_requests_total{operation=\"CREATE\",outcome=\"dry_run\"}")
            .await
            > dry_before,
        "the webhook saw the dry-run create"
    );
    assert!(api.get_opt("dry").await.unwrap().is_none());
    assert_eq!(queue_len(&env).await, 0, "no job");
    assert_eq!(r.metric("restatus_restore_jobs_enqueued_total").await, 0.0);
    env.cleanup().await;
}

#[tokio::test]
async fn a_create_rejected_after_restatus_expires_its_job_quietly() {
    let env = Env::start(EnvOptions {
        args: vec!["--restore-deadline".into(), "2s".into()],
        ..Default::default()
    })
    .await;
    // A policy that rejects creates labelled reject=yes in this namespace, evaluated after
    // mutating admission.
    let policy_name = format!("{}-reject", env.ns);
    let policy: ValidatingAdmissionPolicy = serde_json::from_value(json!({
        "metadata": {"name": policy_name},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {"resourceRules": [{
                "apiGroups": ["infra.example.com"], "apiVersions": ["*"],
                "operations": ["CREATE"], "resources": ["kubernetesclusters"]
            }]},
            "validations": [{
                "expression": "!has(object.metadata.labels) || !('reject' in object.metadata.labels)",
                "message": "rejected by the test policy"
            }]
        }
    }))
    .unwrap();
    Api::<ValidatingAdmissionPolicy>::all(env.client.clone())
        .create(&PostParams::default(), &policy)
        .await
        .unwrap();
    let binding: ValidatingAdmissionPolicyBinding = serde_json::from_value(json!({
        "metadata": {"name": policy_name},
        "spec": {
            "policyName": policy_name,
            "validationActions": ["Deny"],
            "matchResources": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": env.ns}}}
        }
    }))
    .unwrap();
    Api::<ValidatingAdmissionPolicyBinding>::all(env.client.clone())
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();

    let api = env.clusters();
    let mut rejected = kubernetes_cluster("rejected");
    rejected.labels_mut().insert("reject".into(), "yes".into());
    // Wait until the policy is in force (a dry-run is evaluated the same way).
    let probe = rejected.clone();
    eventually(WAIT, "the admission policy to reject creates", || async {
        let dry = PostParams {
            dry_run: true,
            ..Default::default()
        };
        api.create(&dry, &probe).await.is_err().then_some(())
    })
    .await;

    create_record_delete(&env, "rejected", &saved_status()).await;
    let err = api
        .create(&PostParams::default(), &rejected)
        .await
        .expect_err("the policy rejects the create");
    assert!(
        err.to_string().contains("rejected by the test policy"),
        "{err}"
    );
    let r = &env.restatus[0];
    assert_eq!(r.metric("restatus_restore_jobs_enqueued_total").await, 1.0);
    eventually(WAIT, "the job to expire", || async {
        (outcome(r, "expired").await == 1.0).then_some(())
    })
    .await;
    wait_queue_empty(&env).await;
    let noisy: Vec<Event> = [
        events(&env, "rejected", "StatusRestored").await,
        events(&env, "rejected", "StatusRestoreFailed").await,
    ]
    .concat();
    assert!(
        noisy.is_empty(),
        "no events for a create that never landed: {noisy:?}"
    );
    // The record is still there for a create that does land.
    assert!(
        env.record(&kc_id(&env, "rejected"))
            .await
            .contains_key("deletedAt")
    );
    let _ = Api::<ValidatingAdmissionPolicyBinding>::all(env.client.clone())
        .delete(&policy_name, &DeleteParams::default())
        .await;
    let _ = Api::<ValidatingAdmissionPolicy>::all(env.client.clone())
        .delete(&policy_name, &DeleteParams::default())
        .await;
    env.cleanup().await;
}

#[tokio::test]
async fn a_job_left_by_a_dead_consumer_is_reclaimed_and_applied() {
    // The webhook-only replica queues the job; a consumer that then dies claims it with
    // redis-cli; a worker started afterwards reclaims it once it has been idle long enough.
    let env = Env::start(EnvOptions {
        args: vec!["--restore-worker=false".into()],
        ..Default::default()
    })
    .await;
    create_record_delete(&env, "orphan", &saved_status()).await;
    let api = env.clusters();
    api.create(&PostParams::default(), &kubernetes_cluster("orphan"))
        .await
        .unwrap();
    assert_eq!(queue_len(&env).await, 1);

    let cli = |args: &[&str]| {
        let out = std::process::Command::new("redis-cli")
            .args(["-p", &env.redis.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli (Debian package redis-tools)");
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let queue = env.keys.queue();
    // The group may not exist yet (no worker has run): create it as restatus would.
    cli(&["XGROUP", "CREATE", &queue, "restatus", "0", "MKSTREAM"]);
    let claimed = cli(&[
        "XREADGROUP",
        "GROUP",
        "restatus",
        "ghost",
        "COUNT",
        "1",
        "STREAMS",
        &queue,
        ">",
    ]);
    assert!(
        claimed.contains("orphan"),
        "ghost consumer got the job: {claimed}"
    );
    let pending = cli(&["XPENDING", &queue, "restatus"]);
    assert!(pending.contains("ghost"), "{pending}");

    let worker = env
        .start_replica("reclaimer", &["--restore-claim-min-idle", "1s"])
        .await;
    let restored = wait_restored(&api, "orphan").await;
    assert_eq!(status_of(&restored), Some(&saved_status()));
    wait_outcome(&worker, "restored", 1.0).await;
    assert!(!cli(&["XPENDING", &queue, "restatus", "-", "+", "10"]).contains("ghost"));
    wait_queue_empty(&env).await;
    env.cleanup().await;
}

#[tokio::test]
async fn two_replicas_restore_fifty_recreated_objects_exactly_once_each() {
    let env = Env::start(EnvOptions {
        replicas: 2,
        ..Default::default()
    })
    .await;
    let api = env.clusters();
    let names: Vec<String> = (0..50).map(|i| format!("fleet-{i:02}")).collect();
    let status_for = |i: usize| json!({"apiServerURL": format!("https://203.0.113.{i}:6443"), "masterVersion": "1.31.4", "clusterID": format!("c-{i}")});
    futures::future::join_all(names.iter().enumerate().map(|(i, name)| {
        let env = &env;
        async move { create_record_delete(env, name, &status_for(i)).await }
    }))
    .await;

    futures::future::join_all(names.iter().map(|name| {
        let api = api.clone();
        async move {
            api.create(&PostParams::default(), &kubernetes_cluster(name))
                .await
                .unwrap()
        }
    }))
    .await;

    for (i, name) in names.iter().enumerate() {
        let restored = wait_restored(&api, name).await;
        assert_eq!(status_of(&restored), Some(&status_for(i)), "{name}");
        let ours: BTreeMap<&String, &String> = restored
            .annotations()
            .iter()
            .filter(|(k, _)| k.starts_with("restatus.io/"))
            .collect();
        assert_eq!(ours.len(), 1, "{name}: {ours:?}");
    }
    // The worker counts a restore once it has also swapped the annotation and reported it.
    let restored_total = eventually(WAIT, "50 restores to be counted", || async {
        let mut total = 0.0;
        for r in &env.restatus {
            total += outcome(r, "restored").await;
        }
        (total >= 50.0).then_some(total)
    })
    .await;
    assert_eq!(restored_total, 50.0, "each object restored exactly once");
    wait_queue_empty(&env).await;
    env.cleanup().await;
}
