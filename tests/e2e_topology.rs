//! End to end on a Redis Cluster: restatus (least-privilege identity, real kube-apiserver)
//! records a status on a cluster of three masters and three replicas, and restores it into
//! the recreated object.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashMap;

use kube::api::{DeleteParams, PostParams};
use restatus::policy::status_of;
use serde_json::json;
use support::{
    cluster::{Env, EnvOptions, WAIT, kubernetes_cluster, patch_status, wait_restored},
    eventually,
    topology::RedisCluster,
};

/// The fields of a record, read from the cluster.
async fn record(
    conn: &mut redis::cluster_async::ClusterConnection,
    key: &str,
) -> HashMap<String, String> {
    redis::cmd("HGETALL")
        .arg(key)
        .query_async(conn)
        .await
        .unwrap_or_default()
}

#[tokio::test]
async fn a_recreated_object_gets_its_status_back_with_restatus_on_a_redis_cluster() {
    let cluster = RedisCluster::start().await;
    let nodes = cluster.urls().join(",");
    let env = Env::start(EnvOptions::with_args(&[
        "--redis-topology=cluster",
        &format!("--redis-cluster-nodes={nodes}"),
    ]))
    .await;
    let conn = redis::cluster::ClusterClient::new(cluster.urls())
        .unwrap()
        .get_async_connection()
        .await
        .unwrap();
    let api = env.clusters();
    let saved = json!({"apiServerURL": "https://203.0.113.10:6443", "masterVersion": "1.31.4"});
    let key = env.keys.record(&env.kc_id("on-cluster"));

    api.create(&PostParams::default(), &kubernetes_cluster("on-cluster"))
        .await
        .unwrap();
    patch_status(&api, "on-cluster", saved.clone()).await;
    eventually(WAIT, "the status to be recorded on the cluster", || async {
        record(&mut conn.clone(), &key)
            .await
            .get("status")
            .filter(|s| s.contains("203.0.113.10"))
            .map(|_| ())
    })
    .await;
    api.delete("on-cluster", &DeleteParams::default())
        .await
        .unwrap();
    eventually(
        WAIT,
        "the deletion to be recorded on the cluster",
        || async {
            record(&mut conn.clone(), &key)
                .await
                .contains_key("deletedAt")
                .then_some(())
        },
    )
    .await;
    // Nothing went to the environment's standalone Redis.
    assert!(env.redis.keys(&format!("{}*", env.prefix)).await.is_empty());

    api.create(&PostParams::default(), &kubernetes_cluster("on-cluster"))
        .await
        .unwrap();
    let restored = wait_restored(&api, "on-cluster").await;
    assert_eq!(status_of(&restored), Some(&saved));
    eventually(WAIT, "the record to be adopted", || async {
        let rec = record(&mut conn.clone(), &key).await;
        (rec.get("uid") == restored.metadata.uid.as_ref() && !rec.contains_key("deletedAt"))
            .then_some(())
    })
    .await;
}
