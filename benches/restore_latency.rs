//! Create → restored latency against the real control plane (tests/cluster/), a real Redis
//! and a real restatus process (release build).
//!
//!   cargo bench --bench restore_latency            100 recreations
//!   RESTORE_BENCH_N=300 cargo bench --bench restore_latency
//!
//! For each of N objects: create, write a status, delete, then recreate from the manifest and
//! time from the create call until a watch sees the restored status. The baseline, measured
//! in the same run, is the best a client can do by hand: create and immediately patch the
//! status itself. Under `cargo test` this runs with 5 objects as a smoke test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::StreamExt;
use kube::{
    Api,
    api::{DeleteParams, DynamicObject, PostParams},
    runtime::{WatchStreamExt, watcher},
};
use restatus::policy::status_of;
use serde_json::json;
use support::cluster::{Env, EnvOptions, kubernetes_cluster, patch_status};
use tokio::sync::Notify;

const WAIT: Duration = Duration::from_secs(30);

/// When a watch first saw each object (by uid: names come back, uids do not) with a status.
#[derive(Clone, Default)]
struct Seen {
    at: Arc<Mutex<HashMap<String, Instant>>>,
    changed: Arc<Notify>,
}

impl Seen {
    fn start(api: Api<DynamicObject>) -> Self {
        let seen = Seen::default();
        let s = seen.clone();
        tokio::spawn(async move {
            let stream = watcher(api, watcher::Config::default()).touched_objects();
            futures::pin_mut!(stream);
            while let Some(Ok(obj)) = stream.next().await {
                let restored = status_of(&obj).is_some_and(|st| st.get("apiServerURL").is_some());
                if restored {
                    let uid = obj.metadata.uid.clone().unwrap_or_default();
                    s.at.lock().unwrap().entry(uid).or_insert_with(Instant::now);
                    s.changed.notify_waiters();
                }
            }
        });
        seen
    }

    async fn wait(&self, created: &DynamicObject) -> Instant {
        let uid = created.metadata.uid.clone().unwrap_or_default();
        let name = created.metadata.name.clone().unwrap_or_default();
        let deadline = Instant::now() + WAIT;
        loop {
            let notified = self.changed.notified();
            if let Some(at) = self.at.lock().unwrap().get(&uid) {
                return *at;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "{name}: status not seen within {WAIT:?}");
            let _ = tokio::time::timeout(left, notified).await;
        }
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len());
    sorted[i - 1]
}

fn summary(name: &str, mut ms: Vec<f64>, baseline_p50: Option<f64>) -> f64 {
    ms.sort_by(f64::total_cmp);
    let p50 = percentile(&ms, 0.50);
    let ratio = baseline_p50.map_or("1.00x".to_owned(), |b| format!("{:.2}x", p50 / b));
    println!(
        "  {name:<9} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>7} {ratio:>9}",
        p50,
        percentile(&ms, 0.99),
        ms.iter().sum::<f64>() / ms.len() as f64,
        ms[ms.len() - 1],
        ms.len()
    );
    p50
}

fn status(i: usize) -> serde_json::Value {
    json!({"phase": "Running", "clusterID": format!("c-{i}"),
           "apiServerURL": format!("https://203.0.113.{}:6443", i % 250), "masterVersion": "1.31.4"})
}

#[tokio::main]
async fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let n: usize = std::env::var("RESTORE_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if bench { 100 } else { 5 });
    let env = Env::start(EnvOptions::default()).await;
    let api = env.clusters();
    let seen = Seen::start(api.clone());

    // Warm up the watch and the connections.
    let warm = api
        .create(&PostParams::default(), &kubernetes_cluster("warmup"))
        .await
        .unwrap();
    patch_status(&api, "warmup", status(0)).await;
    seen.wait(&warm).await;

    // Baseline: the client creates and patches the status itself.
    let mut baseline = Vec::with_capacity(n);
    for i in 0..n {
        let name = format!("baseline-{i:03}");
        let t0 = Instant::now();
        let created = api
            .create(&PostParams::default(), &kubernetes_cluster(&name))
            .await
            .unwrap();
        patch_status(&api, &name, status(i)).await;
        baseline.push(seen.wait(&created).await.duration_since(t0).as_secs_f64() * 1000.0);
    }

    // Records to restore from.
    for i in 0..n {
        let name = format!("restored-{i:03}");
        api.create(&PostParams::default(), &kubernetes_cluster(&name))
            .await
            .unwrap();
        patch_status(&api, &name, status(i)).await;
        let id = env.identity("infra.example.com", "kubernetesclusters", &name);
        support::eventually(WAIT, "the record", || async {
            (env.recorded_status(&id).await == Some(status(i))).then_some(())
        })
        .await;
        api.delete(&name, &DeleteParams::default()).await.unwrap();
        support::eventually(WAIT, "the deletion record", || async {
            env.record(&id)
                .await
                .contains_key("deletedAt")
                .then_some(())
        })
        .await;
    }

    // Recreate one at a time and time each restore.
    let mut restored = Vec::with_capacity(n);
    for i in 0..n {
        let name = format!("restored-{i:03}");
        let t0 = Instant::now();
        let created = api
            .create(&PostParams::default(), &kubernetes_cluster(&name))
            .await
            .unwrap();
        let at = seen.wait(&created).await;
        restored.push(at.duration_since(t0).as_secs_f64() * 1000.0);
        let obj = api.get(&name).await.unwrap();
        assert_eq!(status_of(&obj), Some(&status(i)), "{name} restored wrongly");
    }

    // The worker counts a restore after it has also swapped the annotation.
    let r = &env.restatus[0];
    let metrics = support::eventually(WAIT, "restatus to count every restore", || async {
        let m = r.metrics().await;
        (m.get("restatus_restore_latency_seconds_count").copied() == Some(n as f64)).then_some(m)
    })
    .await;
    let count = metrics
        .get("restatus_restore_latency_seconds_count")
        .copied()
        .unwrap_or(0.0);
    let sum = metrics
        .get("restatus_restore_latency_seconds_sum")
        .copied()
        .unwrap_or(0.0);
    println!(
        "\ncreate -> status visible to a watch, {n} objects one at a time, {} cores",
        std::thread::available_parallelism().map_or(0, |p| p.get())
    );
    println!(
        "  {:<9} {:>8} {:>8} {:>8} {:>8} {:>7} {:>9}",
        "", "p50_ms", "p99_ms", "mean_ms", "max_ms", "count", "p50/base"
    );
    let b50 = summary("baseline", baseline, None);
    summary("restatus", restored, Some(b50));
    println!(
        "  baseline: the client creates, then patches the status itself; restatus: the client only creates"
    );
    println!(
        "  restatus's own histogram (create admitted -> restored): {count} restores, mean {:.1} ms",
        if count > 0.0 {
            sum / count * 1000.0
        } else {
            0.0
        }
    );
}
