//! What a resync pass costs, against the real control plane (tests/cluster/), a real Redis and
//! a real restatus process (release build), and what keeping a watch cache of the same objects
//! would cost instead.
//!
//!   cargo bench --bench resync                     100,000 objects
//!   RESYNC_BENCH_N=10000 cargo bench --bench resync
//!
//! N KubernetesClusters with a status of about 650 B are created while restatus is not called, so it
//! has no record of any. Then a restatus replica starts with resync on: its first pass lists
//! them page by page and records every one. Measured: the pass's time, the list requests the
//! API server served, restatus's peak resident memory, and Redis's memory. Then, in this
//! process, a watch cache (a kube reflector) of the same objects: its resident memory once
//! synced. Under `cargo test` this runs with 50 objects as a smoke test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::{
    Api,
    api::{DynamicObject, PostParams},
    runtime::{WatchStreamExt, reflector, watcher},
};
use serde_json::{Value, json};
use support::cluster::{
    Env, EnvOptions, kubernetes_cluster, kubernetes_cluster_resource, patch_status,
};

const MIB: f64 = 1024.0 * 1024.0;

fn status(i: usize) -> Value {
    let conditions: Vec<Value> = (0..5)
        .map(|c| json!({"type": format!("Condition{c}"), "status": "True", "reason": "Reconciled", "lastTransitionTime": "2026-12-01T00:00:00Z"}))
        .collect();
    json!({
        "phase": "Running",
        "clusterID": format!("c-{i:06}"),
        "apiServerURL": format!("https://203.0.113.{}:6443", i % 250),
        "masterVersion": "1.31.4",
        "conditions": conditions,
    })
}

/// This process's resident memory, in bytes.
fn own_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib * 1024
}

/// The API server's count of LIST requests of KubernetesClusters so far.
async fn lists_served(client: &kube::Client) -> f64 {
    let text = client
        .request_text(http::Request::get("/metrics").body(Vec::new()).unwrap())
        .await
        .unwrap();
    text.lines()
        .filter(|l| {
            l.starts_with("apiserver_request_total{")
                && l.contains("resource=\"kubernetesclusters\"")
                && l.contains("verb=\"LIST\"")
        })
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

async fn used_memory(env: &Env) -> u64 {
    let mut conn = env.redis.conn().await;
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(&mut conn)
        .await
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[tokio::main]
async fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let n: usize = std::env::var("RESYNC_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if bench { 100_000 } else { 50 });
    let env = Env::start(EnvOptions::webhook_only()).await;
    let api = env.clusters();

    // The objects, created with their status while restatus is not called.
    env.pause_webhook().await;
    let created = Instant::now();
    futures::stream::iter(0..n)
        .map(|i| {
            let api = api.clone();
            async move {
                let name = format!("c-{i:06}");
                api.create(&PostParams::default(), &kubernetes_cluster(&name))
                    .await
                    .unwrap();
                patch_status(&api, &name, status(i)).await;
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<()>>()
        .await;
    eprintln!("created {n} objects in {:.0?}", created.elapsed());
    env.resume_webhook().await;

    let lists_before = lists_served(&env.client).await;
    let redis_before = used_memory(&env).await;
    let started = Instant::now();
    let r = env
        .start_replica(
            "resync",
            &[
                "--resync-resources=kubernetesclusters.infra.example.com",
                "--resync-interval=1h",
                "--restore-worker=false",
            ],
        )
        .await;
    let idle_rss = r.rss();
    support::eventually(
        Duration::from_secs(3600),
        "the first resync pass",
        || async {
            (r.metric("restatus_resync_passes_total{reason=\"start\"}")
                .await
                >= 1.0)
                .then_some(())
        },
    )
    .await;
    let pass = started.elapsed();
    let corrected = r.metric("restatus_resync_records_corrected_total").await;
    assert_eq!(corrected, n as f64, "every object recorded");
    let peak_rss = r.peak_rss();
    let lists = lists_served(&env.client).await - lists_before;
    let redis_bytes = used_memory(&env).await.saturating_sub(redis_before);

    // The alternative: a watch cache of every object, as a reflector keeps it.
    let rss_before = own_rss();
    let watched = Instant::now();
    let ar = kubernetes_cluster_resource();
    let all: Api<DynamicObject> = Api::all_with(env.client.clone(), &ar);
    let writer = reflector::store::Writer::new(ar);
    let reader = writer.as_reader();
    let stream = reflector::reflector(writer, watcher(all, watcher::Config::default()))
        .applied_objects()
        .for_each(|_| async {});
    let watch = tokio::spawn(stream);
    reader.wait_until_ready().await.unwrap();
    let synced = watched.elapsed();
    let cached = reader.state().len();
    let watch_rss = own_rss().saturating_sub(rss_before);
    watch.abort();

    println!(
        "\nresync of {n} KubernetesClusters with a {} B status, {} cores",
        status(0).to_string().len(),
        std::thread::available_parallelism().map_or(0, |p| p.get())
    );
    println!("  paged list (what restatus does, --resync-page-size=100, --resync-rate=500):");
    println!(
        "    first pass, recording every object: {:.1} s ({:.0} objects/s)",
        pass.as_secs_f64(),
        n as f64 / pass.as_secs_f64()
    );
    println!("    LIST requests served:               {lists:.0}");
    println!(
        "    restatus RSS: idle {:.1} MiB, peak {:.1} MiB",
        idle_rss as f64 / MIB,
        peak_rss as f64 / MIB
    );
    println!(
        "    Redis memory added by the records:  {:.1} MiB ({:.0} B per record)",
        redis_bytes as f64 / MIB,
        redis_bytes as f64 / n as f64
    );
    println!("  watch cache (the alternative), in this process:");
    println!(
        "    {cached} objects synced in {:.1} s, resident memory +{:.1} MiB ({:.0} B per object)",
        synced.as_secs_f64(),
        watch_rss as f64 / MIB,
        watch_rss as f64 / n as f64
    );
}
