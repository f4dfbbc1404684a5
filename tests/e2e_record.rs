//! End to end against the real kube-apiserver (tests/cluster/), a real Redis and a real
//! restatus process: status is recorded as the API server really sends it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use k8s_openapi::api::core::v1::Service;
use kube::{
    Api,
    api::{DeleteParams, Patch, PatchParams, PostParams},
};
use restatus::policy::status_of;
use restatus::store::ObjectIdentity;
use serde_json::json;
use support::cluster::{
    Env, EnvOptions, TestType, kubernetes_cluster, load_balancer_service, patch_status,
};

const REGIONS: TestType = TestType::namespaced("regions", "Region").cluster_scoped();

#[tokio::test]
async fn the_api_server_drops_status_on_create() {
    // The premise of the whole project: a create never keeps .status for a type with the
    // status subresource.
    let env = Env::start(EnvOptions::default()).await;
    let mut manifest = kubernetes_cluster("premise");
    manifest.data["status"] =
        json!({"apiServerURL": "https://198.51.100.1:6443", "phase": "Running"});
    let created = env
        .clusters()
        .create(&PostParams::default(), &manifest)
        .await
        .unwrap();
    assert_eq!(status_of(&created), None, "create response has no status");
    let live = env.clusters().get("premise").await.unwrap();
    assert_eq!(status_of(&live), None, "stored object has no status");
}

#[tokio::test]
async fn kubernetes_cluster_status_is_recorded_through_updates_and_delete() {
    let env = Env::start(EnvOptions::default()).await;
    let api = env.clusters();
    api.create(&PostParams::default(), &kubernetes_cluster("prod-eu-1"))
        .await
        .unwrap();
    let id = env.identity("infra.example.com", "kubernetesclusters", "prod-eu-1");

    let first = json!({"phase": "Provisioning", "clusterID": "c-7f3a9"});
    patch_status(&api, "prod-eu-1", first.clone()).await;
    env.wait_recorded(&id, &first).await;

    let second = json!({"phase": "Running", "clusterID": "c-7f3a9", "apiServerURL": "https://203.0.113.10:6443", "masterVersion": "1.31.4"});
    patch_status(&api, "prod-eu-1", second.clone()).await;
    env.wait_recorded(&id, &second).await;

    let third = json!({"phase": "Upgrading", "clusterID": "c-7f3a9", "apiServerURL": "https://203.0.113.10:6443", "masterVersion": "1.32.0"});
    let live = patch_status(&api, "prod-eu-1", third.clone()).await;
    env.wait_recorded(&id, &third).await;
    let rec = env.record(&id).await;
    assert_eq!(rec["uid"], live.metadata.uid.clone().unwrap());
    assert_eq!(rec["apiVersion"], "infra.example.com/v1alpha1");
    assert_eq!(rec["kind"], "KubernetesCluster");
    assert_eq!(env.redis.pttl(&env.keys.record(&id)).await, -1);

    api.delete("prod-eu-1", &DeleteParams::default())
        .await
        .unwrap();
    env.wait_deletion_recorded(&id).await;
    assert_eq!(env.recorded_status(&id).await, Some(third));
    let ttl = env.redis.pttl(&env.keys.record(&id)).await;
    assert!(
        ttl > 29 * 86_400_000,
        "record expires after the 30 day retention, ttl {ttl}"
    );
}

#[tokio::test]
async fn load_balancer_service_status_is_recorded() {
    let env = Env::start(EnvOptions::default()).await;
    let services: Api<Service> = Api::namespaced(env.client.clone(), &env.ns);
    let svc = load_balancer_service("ingress");
    services.create(&PostParams::default(), &svc).await.unwrap();
    let ingress = json!({"loadBalancer": {"ingress": [
        {"ip": "198.51.100.7", "ipMode": "VIP", "ports": [{"port": 443, "protocol": "TCP"}]}
    ]}});
    services
        .patch_status(
            "ingress",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": ingress})),
        )
        .await
        .unwrap();
    let id = env.identity("", "services", "ingress");
    env.wait_recorded(&id, &ingress).await;
    assert_eq!(env.record(&id).await["apiVersion"], "v1");
}

#[tokio::test]
async fn dry_run_status_patch_and_dry_run_create_leave_no_trace() {
    let env = Env::start(EnvOptions::default()).await;
    let api = env.clusters();
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let seen = |outcome: &'static str, op: &'static str| {
        let r = &env.restatus[0];
        async move {
            r.metric(&format!(
                "restatus_admission_requests_total{{operation=\"{op}\",outcome=\"{outcome}\"}}"
            ))
            .await
        }
    };
    let creates_before = seen("dry_run", "CREATE").await;
    api.create(&dry, &kubernetes_cluster("dry-only"))
        .await
        .unwrap();
    assert!(api.get_opt("dry-only").await.unwrap().is_none());

    api.create(&PostParams::default(), &kubernetes_cluster("real"))
        .await
        .unwrap();
    api.patch_status(
        "real",
        &PatchParams {
            dry_run: true,
            ..Default::default()
        },
        &Patch::Merge(json!({"status": {"phase": "DryRunOnly"}})),
    )
    .await
    .unwrap();

    // The webhook saw both dry-run requests and wrote nothing.
    assert!(seen("dry_run", "CREATE").await > creates_before);
    assert!(seen("dry_run", "UPDATE").await >= 1.0);
    for name in ["dry-only", "real"] {
        let id = env.identity("infra.example.com", "kubernetesclusters", name);
        assert!(env.record(&id).await.is_empty(), "{name} was recorded");
    }
    assert!(
        env.redis
            .keys(&format!("{}:rec:*", env.restatus[0].key_prefix))
            .await
            .is_empty()
    );
}

#[tokio::test]
async fn cluster_scoped_custom_resource_is_recorded_without_a_namespace() {
    let env = Env::start(EnvOptions::with_types(&[REGIONS])).await;
    let regions = env.api(&REGIONS);
    let name = format!("{}-eu-west", env.ns);
    env.delete_on_drop(REGIONS.resource(), &name);
    regions
        .create(&PostParams::default(), &REGIONS.object(&name))
        .await
        .unwrap();
    let status = json!({"zones": 3, "quotaID": "q-1234"});
    patch_status(&regions, &name, status.clone()).await;

    let id = ObjectIdentity {
        group: TestType::GROUP.into(),
        resource: "regions".into(),
        namespace: None,
        name: name.clone(),
    };
    assert!(env.keys.record(&id).contains("|regions||"));
    env.wait_recorded(&id, &status).await;
}
