//! End to end: recreated objects get their status back, against the real kube-apiserver,
//! real Redis and real restatus processes. One test binary (one control plane), one file
//! per concern:
//!
//! - `modes`: fill and replace, what is restored and what is not;
//! - `inline`: CRDs without the status subresource, restored in the create itself;
//! - `races`: the owning controller, creates that fail or never land, dry runs;
//! - `reclaim`: jobs of dead consumers, several replicas, dead letters, leaving the group;
//! - `queue`: creates that never land, consumers of killed replicas, shutdown within its grace;
//! - `binding`: a job restores only the object its CREATE made, a marker is believed only
//!   while its job is live, a replica killed mid-storm loses no restore;
//! - `logs`: no status value ever reaches the logs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../support/mod.rs"]
mod support;

mod binding;
mod inline;
mod logs;
mod modes;
mod queue;
mod races;
mod reclaim;

use k8s_openapi::api::events::v1::Event;
use kube::{
    Api, ResourceExt,
    api::{DynamicObject, ListParams, PostParams},
};
use restatus::policy::{ANNOTATION_RESTORE, RESTORE_PENDING};
use serde_json::{Value, json};
use support::{
    cluster::{Env, WAIT, kubernetes_cluster, wait_restored},
    eventually,
    restatus::Restatus,
};

/// Events about the object `name` with `reason`.
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

/// Waits for at least one Event about `name` with `reason`.
async fn wait_event(env: &Env, name: &str, reason: &str) -> Vec<Event> {
    eventually(WAIT, &format!("a {reason} event about {name}"), || async {
        let evs = events(env, name, reason).await;
        (!evs.is_empty()).then_some(evs)
    })
    .await
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

/// Records `status` for the KubernetesCluster `name`, deletes it and creates it again; the
/// create comes back marked pending. For environments without a worker
/// ([`support::cluster::EnvOptions::webhook_only`]) the object then waits for one.
async fn recreate_pending(env: &Env, name: &str, status: &Value) -> DynamicObject {
    env.create_record_delete(name, status).await;
    let created = env
        .clusters()
        .create(&PostParams::default(), &kubernetes_cluster(name))
        .await
        .unwrap();
    assert_eq!(
        created
            .annotations()
            .get(ANNOTATION_RESTORE)
            .map(String::as_str),
        Some(RESTORE_PENDING),
        "the create is marked pending by the webhook"
    );
    created
}
