//! Store writes per second on a Redis Cluster of three masters (and three replicas) against
//! one standalone Redis, in the same run, so the two can be compared as a ratio on a noisy
//! machine. Every node runs with AOF `appendfsync everysec`.
//!
//!   cargo bench --bench topology                  10 s per topology, 64 writers
//!   TOPOLOGY_BENCH_SECS=30 cargo bench --bench topology
//!
//! Each writer records a changing status (the record script writes the record and its
//! history) of one of 10,000 objects, through one store (one connection per node), as
//! restatus's admission does. Under `cargo test` this runs for one second as a smoke test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use restatus::store::{
    ObjectIdentity, RecordWrite, RedisOptions, Source, Store, StoreMetrics, Topology, WriteOutcome,
};
use serde_json::json;
use support::topology::{Node, RedisCluster};

const OBJECTS: u64 = 10_000;
const WRITERS: u64 = 64;
/// The next resourceVersion, across runs, so that every write is newer than the last.
static NEXT: AtomicU64 = AtomicU64::new(1);

fn write(i: u64, rv: u64) -> RecordWrite {
    RecordWrite {
        identity: ObjectIdentity {
            group: "infra.example.com".into(),
            resource: "kubernetesclusters".into(),
            namespace: Some("team-a".into()),
            name: format!("obj-{i}"),
        },
        status: json!({"phase": "Running", "rv": rv, "apiServerURL": "https://10.0.0.1:6443"}),
        api_version: "infra.example.com/v1alpha1".into(),
        kind: "KubernetesCluster".into(),
        uid: "u1".into(),
        resource_version: rv.to_string(),
        generation: None,
        source: Source::Written,
        deleting: false,
        retention: Duration::from_secs(3600),
        restored_by: None,
        catch_up: None,
        listed_at: None,
    }
}

/// Acknowledged writes per second through `store` for `run`.
async fn writes_per_second(store: &Store, run: Duration) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let tasks: Vec<_> = (0..WRITERS)
        .map(|_| {
            let (store, stop, written) = (store.clone(), stop.clone(), written.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let rv = NEXT.fetch_add(1, Ordering::Relaxed);
                    let outcome = store
                        .record(&write(rv % OBJECTS, rv), Duration::from_secs(5))
                        .await
                        .expect("a write");
                    assert_eq!(outcome, WriteOutcome::Written);
                    written.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    tokio::time::sleep(run).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.unwrap();
    }
    written.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

fn store(options: &RedisOptions) -> Store {
    Store::connect_with(
        options,
        "bench",
        "default",
        StoreMetrics::register(&mut restatus::telemetry::registry()),
        None,
    )
    .unwrap()
    .keep_history(5)
}

#[tokio::main]
async fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let secs: u64 = std::env::var("TOPOLOGY_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if bench { 10 } else { 1 });
    let run = Duration::from_secs(secs);

    let standalone = Node::start(&[]).await;
    let cluster = RedisCluster::start().await;
    let one = store(&RedisOptions {
        url: standalone.url(),
        keepalive: Duration::from_secs(10),
        ..RedisOptions::default()
    });
    let urls = cluster.urls();
    let many = store(&RedisOptions {
        url: urls[0].clone(),
        keepalive: Duration::from_secs(10),
        topology: Topology::Cluster,
        cluster_nodes: urls,
        ..RedisOptions::default()
    });
    one.warm_up(Duration::from_secs(5)).await;
    many.warm_up(Duration::from_secs(5)).await;
    // A short warm-up of each, then the measured runs.
    writes_per_second(&one, Duration::from_millis(500)).await;
    writes_per_second(&many, Duration::from_millis(500)).await;
    let standalone_rate = writes_per_second(&one, run).await;
    let cluster_rate = writes_per_second(&many, run).await;
    let cores = std::thread::available_parallelism().map_or(0, |p| p.get());
    println!("store writes/s, {WRITERS} writers, {OBJECTS} objects, {secs} s each, {cores} cores:");
    println!("  standalone Redis               {standalone_rate:>9.0}");
    println!("  Redis Cluster (3 masters + 3)  {cluster_rate:>9.0}");
    println!(
        "  cluster / standalone           {:>9.2}",
        cluster_rate / standalone_rate
    );
}
