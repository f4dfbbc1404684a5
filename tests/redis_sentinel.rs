//! The store through Redis Sentinel, against real processes: a master, a replica and three
//! sentinels. Records and a restore job go through the master the sentinels name; a forced
//! failover while writes flow keeps what was acknowledged before it, and new writes reach
//! the new master within a deadline.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use restatus::store::{RedisOptions, RestoreJob, Store, StoreMetrics, Topology, WriteOutcome};
use support::topology::{SentinelSet, id, write};

const BUDGET: Duration = Duration::from_secs(5);

fn store(set: &SentinelSet, prefix: &str) -> Store {
    let options = RedisOptions {
        url: "redis://mymaster".into(),
        keepalive: Duration::from_secs(10),
        topology: Topology::Sentinel,
        sentinels: set.sentinel_list(),
        sentinel_master: Some(set.name.clone()),
        ..RedisOptions::default()
    };
    Store::connect_with(
        &options,
        prefix,
        "default",
        StoreMetrics::register(&mut restatus::telemetry::registry()),
        None,
    )
    .unwrap()
}

#[tokio::test]
async fn records_and_a_restore_job_flow_through_the_master_sentinel_names() {
    let set = SentinelSet::start().await;
    let s = store(&set, &support::unique("sentinel"));
    s.warm_up(BUDGET).await;
    assert_eq!(
        s.record(&write("a", "u1", 1), BUDGET).await.unwrap(),
        WriteOutcome::Written
    );
    // Written on the master the sentinels name, not elsewhere.
    let master = set.master_port().await.unwrap();
    assert_eq!(master, set.nodes[0].port);
    let stored: Option<String> = redis::cmd("HGET")
        .arg(s.keys().record(&id("a")))
        .arg("uid")
        .query_async(&mut set.nodes[0].conn().await)
        .await
        .unwrap();
    assert_eq!(stored.as_deref(), Some("u1"));

    // A restore job: queued with its live entry, read, finished, acknowledged.
    s.ensure_queue_group(BUDGET).await.unwrap();
    let now = jiff::Timestamp::now();
    let job = RestoreJob {
        id: "job-a".into(),
        action: Default::default(),
        identity: id("a"),
        api_version: "infra.example.com/v1alpha1".into(),
        kind: "KubernetesCluster".into(),
        record_uid: "u1".into(),
        created_at: now,
        deadline: now + jiff::SignedDuration::from_secs(60),
        retry: false,
        inline: false,
        request_uid: String::new(),
        policy: None,
    };
    s.enqueue_pending(&job, Duration::from_secs(60), BUDGET)
        .await
        .unwrap();
    let mut reader = s.reader(BUDGET).await.unwrap();
    let read = reader
        .read("c", 1, Duration::from_millis(500))
        .await
        .unwrap();
    assert_eq!(read.len(), 1);
    assert_eq!(read[0].job.as_ref().unwrap().id, "job-a");
    assert!(
        s.mark_restored(&id("a"), "u1", "u2", "job-a", BUDGET)
            .await
            .unwrap()
    );
    s.ack(&read[0].id, BUDGET).await.unwrap();
    assert_eq!(s.queue_stats(BUDGET).await.unwrap().length, 0);
    assert_eq!(s.get(&id("a"), BUDGET).await.unwrap().unwrap().uid, "u2");
}

#[tokio::test]
async fn a_failover_while_writes_flow_keeps_what_was_acknowledged_before_it() {
    let set = SentinelSet::start().await;
    let s = store(&set, &support::unique("failover"));
    let names: Vec<String> = (0..10).map(|i| format!("f-{i}")).collect();
    let old_master = set.master_port().await.unwrap();

    // Writes flow from four writers the whole time; each remembers what was acknowledged,
    // and when.
    let acked: Arc<Mutex<Vec<(Instant, String, u64)>>> = Arc::default();
    let written = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let next_rv = Arc::new(AtomicU64::new(1));
    let mut writers = Vec::new();
    for w in 0..4 {
        let (s, names, acked, written, stop, next_rv) = (
            s.clone(),
            names.clone(),
            acked.clone(),
            written.clone(),
            stop.clone(),
            next_rv.clone(),
        );
        writers.push(tokio::spawn(async move {
            let mut i = w;
            while !stop.load(Ordering::SeqCst) {
                i += 1;
                let name = &names[i % names.len()];
                let rv = next_rv.fetch_add(1, Ordering::SeqCst);
                // Reviews use a small budget; a failed one is allowed unrecorded.
                if let Ok(WriteOutcome::Written | WriteOutcome::Stale) = s
                    .record(&write(name, "u1", rv), Duration::from_millis(500))
                    .await
                {
                    acked
                        .lock()
                        .unwrap()
                        .push((Instant::now(), name.clone(), rv));
                    written.fetch_add(1, Ordering::SeqCst);
                }
            }
        }));
    }
    let until_written = |more: u64, what: &'static str| {
        let written = written.clone();
        async move {
            let target = written.load(Ordering::SeqCst) + more;
            support::eventually(Duration::from_secs(60), what, || {
                let written = written.clone();
                async move { (written.load(Ordering::SeqCst) >= target).then_some(()) }
            })
            .await;
        }
    };
    until_written(300, "writes before the failover").await;

    let failover_at = Instant::now();
    set.failover().await;
    let new_master = support::eventually(
        Duration::from_secs(60),
        "the sentinels to name a new master",
        || async { set.master_port().await.filter(|port| *port != old_master) },
    )
    .await;
    // New writes reach the new master within a deadline after the failover (the store asks
    // the sentinels every second, and drops a connection to a master they no longer name).
    let mut probe = 0;
    support::eventually(
        Duration::from_secs(60),
        "a write to reach the new master",
        || {
            probe += 1;
            let (s, key) = (s.clone(), s.keys().record(&id(&format!("probe-{probe}"))));
            let name = format!("probe-{probe}");
            async move {
                s.record(&write(&name, "u1", 1), Duration::from_millis(500))
                    .await
                    .ok()?;
                let mut conn = support::topology::Node::conn_to(new_master).await;
                let uid: Option<String> = redis::cmd("HGET")
                    .arg(&key)
                    .arg("uid")
                    .query_async(&mut conn)
                    .await
                    .ok()?;
                uid.map(|_| ())
            }
        },
    )
    .await;
    let recovered = failover_at.elapsed();
    until_written(300, "writes after the failover").await;
    stop.store(true, Ordering::SeqCst);
    for writer in writers {
        writer.await.unwrap();
    }
    eprintln!(
        "failover to port {new_master}: writes reach it {recovered:?} after SENTINEL FAILOVER"
    );

    // Every write acknowledged before the failover began is there, read through the
    // sentinels from the new master.
    let mut last_before: HashMap<String, u64> = HashMap::new();
    for (at, name, rv) in acked.lock().unwrap().iter() {
        if *at < failover_at {
            let seen = last_before.entry(name.clone()).or_default();
            *seen = (*seen).max(*rv);
        }
    }
    assert!(!last_before.is_empty());
    for (name, rv) in &last_before {
        let record = s.get(&id(name), BUDGET).await.unwrap().unwrap();
        let stored: u64 = record.resource_version.parse().unwrap();
        assert!(
            stored >= *rv,
            "{name}: acknowledged resourceVersion {rv} before the failover, the record holds {stored}"
        );
    }
    // And the store writes to the new master now.
    let fresh = next_rv.fetch_add(1, Ordering::SeqCst);
    s.record(&write("after", "u1", fresh), BUDGET)
        .await
        .unwrap();
    let mut conn = support::topology::Node::conn_to(new_master).await;
    let uid: Option<String> = redis::cmd("HGET")
        .arg(s.keys().record(&id("after")))
        .arg("uid")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(uid.as_deref(), Some("u1"));
}
