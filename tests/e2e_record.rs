//! End to end against the real kube-apiserver (tests/cluster/), a real Redis and a real
//! restatus process: status is recorded as the API server really sends it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use kube::{
    Api,
    api::{DeleteParams, DynamicObject, Patch, PatchParams, PostParams},
};
use restatus::policy::status_of;
use restatus::store::ObjectIdentity;
use serde_json::{Value, json};
use support::{
    cluster::{self, Env, EnvOptions, kubernetes_cluster, patch_status},
    eventually,
};

const WAIT: Duration = Duration::from_secs(20);

async fn wait_for_record(env: &Env, id: &ObjectIdentity, expected: &Value) {
    eventually(
        WAIT,
        &format!("record of {id} to be {expected}"),
        || async { (env.recorded_status(id).await.as_ref() == Some(expected)).then_some(()) },
    )
    .await;
}

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
    env.cleanup().await;
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
    wait_for_record(&env, &id, &first).await;

    let second = json!({"phase": "Running", "clusterID": "c-7f3a9", "apiServerURL": "https://203.0.113.10:6443", "masterVersion": "1.31.4"});
    patch_status(&api, "prod-eu-1", second.clone()).await;
    wait_for_record(&env, &id, &second).await;

    let third = json!({"phase": "Upgrading", "clusterID": "c-7f3a9", "apiServerURL": "https://203.0.113.10:6443", "masterVersion": "1.32.0"});
    let live = patch_status(&api, "prod-eu-1", third.clone()).await;
    wait_for_record(&env, &id, &third).await;
    let rec = env.record(&id).await;
    assert_eq!(rec["uid"], live.metadata.uid.clone().unwrap());
    assert_eq!(rec["apiVersion"], "infra.example.com/v1alpha1");
    assert_eq!(rec["kind"], "KubernetesCluster");
    assert_eq!(env.redis.pttl(&env.keys.record(&id)).await, -1);

    api.delete("prod-eu-1", &DeleteParams::default())
        .await
        .unwrap();
    eventually(WAIT, "the record to carry the deletion", || async {
        env.record(&id)
            .await
            .contains_key("deletedAt")
            .then_some(())
    })
    .await;
    assert_eq!(env.recorded_status(&id).await, Some(third));
    let ttl = env.redis.pttl(&env.keys.record(&id)).await;
    assert!(
        ttl > 29 * 86_400_000,
        "record expires after the 30 day retention, ttl {ttl}"
    );
    env.cleanup().await;
}

#[tokio::test]
async fn load_balancer_service_status_is_recorded() {
    let env = Env::start(EnvOptions::default()).await;
    let services: Api<Service> = Api::namespaced(env.client.clone(), &env.ns);
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": "ingress"},
        "spec": {"type": "LoadBalancer", "selector": {"app": "ingress"},
                 "ports": [{"name": "https", "port": 443, "targetPort": 8443, "protocol": "TCP"}]}
    }))
    .unwrap();
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
    wait_for_record(&env, &id, &ingress).await;
    assert_eq!(env.record(&id).await["apiVersion"], "v1");
    env.cleanup().await;
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
    env.cleanup().await;
}

#[tokio::test]
async fn cluster_scoped_custom_resource_is_recorded_without_a_namespace() {
    let client = cluster::client().await;
    cluster::apply_crd(
        &client,
        cluster::test_crd("regions", "Region", "v1alpha1", "Cluster", true),
    )
    .await;
    let env = Env::start(EnvOptions {
        extra_rules: vec![cluster::test_rule("regions", "Cluster")],
        ..Default::default()
    })
    .await;
    let ar = kube::api::ApiResource::from_gvk_with_plural(
        &kube::api::GroupVersionKind::gvk("infra.example.com", "v1alpha1", "Region"),
        "regions",
    );
    let regions: Api<DynamicObject> = Api::all_with(env.client.clone(), &ar);
    let name = format!("{}-eu-west", env.ns);
    let region: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "infra.example.com/v1alpha1", "kind": "Region",
        "metadata": {"name": name}, "spec": {"provider": "aws"}
    }))
    .unwrap();
    regions
        .create(&PostParams::default(), &region)
        .await
        .unwrap();
    let status = json!({"zones": 3, "quotaID": "q-1234"});
    patch_status(&regions, &name, status.clone()).await;

    let id = ObjectIdentity {
        group: "infra.example.com".into(),
        resource: "regions".into(),
        namespace: None,
        name: name.clone(),
    };
    assert!(env.keys.record(&id).contains("|regions||"));
    wait_for_record(&env, &id, &status).await;
    regions
        .delete(&name, &DeleteParams::default())
        .await
        .unwrap();
    env.cleanup().await;
}
