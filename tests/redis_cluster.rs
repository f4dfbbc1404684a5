//! The store on a real Redis Cluster of three masters and three replicas: every operation,
//! a slot migration of a record's slot and a master failover while writes storm, and no
//! acknowledged write lost.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use restatus::store::{
    Keyring, ObjectIdentity, RedisOptions, RestoreJob, Store, StoreMetrics, Topology, WriteOutcome,
};
use serde_json::json;
use support::topology::{RedisCluster, id, write};

const BUDGET: Duration = Duration::from_secs(5);
const KEY: &str = "k:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

fn options(cluster: &RedisCluster) -> RedisOptions {
    let urls = cluster.urls();
    RedisOptions {
        url: urls[0].clone(),
        keepalive: Duration::from_secs(10),
        topology: Topology::Cluster,
        cluster_nodes: urls,
        ..RedisOptions::default()
    }
}

fn store(cluster: &RedisCluster, prefix: &str, keyring: Option<&str>) -> Store {
    let keyring = keyring.map(|k| Arc::new(Keyring::parse(k).unwrap()));
    Store::connect_with(
        &options(cluster),
        prefix,
        "default",
        StoreMetrics::register(&mut restatus::telemetry::registry()),
        keyring,
    )
    .unwrap()
}

fn job(name: &str, job_id: &str) -> RestoreJob {
    let now = jiff::Timestamp::now();
    RestoreJob {
        id: job_id.into(),
        action: Default::default(),
        identity: id(name),
        api_version: "infra.example.com/v1alpha1".into(),
        kind: "KubernetesCluster".into(),
        record_uid: "u1".into(),
        created_at: now,
        deadline: now + jiff::SignedDuration::from_secs(60),
        retry: false,
        inline: false,
        request_uid: String::new(),
        policy: None,
    }
}

/// A client of the test's own, to look at keys behind the store's back.
async fn raw(cluster: &RedisCluster) -> redis::cluster_async::ClusterConnection {
    redis::cluster::ClusterClient::new(cluster.urls())
        .unwrap()
        .get_async_connection()
        .await
        .unwrap()
}

#[tokio::test]
async fn every_store_operation_works_on_a_cluster() {
    let cluster = RedisCluster::start().await;
    let prefix = support::unique("ops");
    let s = store(&cluster, &prefix, None).keep_history(3);
    s.warm_up(BUDGET).await;
    assert!(s.ping(BUDGET).await);
    let mut conn = raw(&cluster).await;

    // Records, spread over the slots of all three masters.
    let names: Vec<String> = (0..30).map(|i| format!("obj-{i}")).collect();
    for name in &names {
        for rv in 1..=2 {
            assert_eq!(
                s.record(&write(name, "u1", rv), BUDGET).await.unwrap(),
                WriteOutcome::Written
            );
        }
    }
    let mut owners = std::collections::HashSet::new();
    for name in &names {
        owners.insert(
            cluster
                .owner(cluster.slot(&s.keys().record(&id(name))).await)
                .await
                .id,
        );
    }
    assert_eq!(owners.len(), 3, "the records should live on every master");
    let record = s.get(&id("obj-0"), BUDGET).await.unwrap().unwrap();
    assert_eq!(record.resource_version, "2");
    let history: Vec<String> = redis::cmd("LRANGE")
        .arg(s.keys().history(&id("obj-0")))
        .arg(0)
        .arg(-1)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(history.len(), 2, "{history:?}");
    // A read of many records across slots.
    let ids: Vec<ObjectIdentity> = names.iter().map(|n| id(n)).collect();
    let many = s.get_many(&ids, BUDGET).await.unwrap();
    assert_eq!(many.len(), names.len());
    for record in many {
        assert_eq!(record.unwrap().unwrap().resource_version, "2");
    }

    // Delete: the retention clock starts, on the record and its history.
    assert!(
        s.expire(&id("obj-1"), Duration::from_secs(600), BUDGET)
            .await
            .unwrap()
    );
    let ttl: i64 = redis::cmd("PTTL")
        .arg(s.keys().record(&id("obj-1")))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(ttl > 0, "{ttl}");
    // Resync: records it did not see, on every master (SCAN runs on each).
    let seen_by = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(5);
    let started = s
        .expire_unseen_of_type(
            "infra.example.com",
            "kubernetesclusters",
            &|key| !key.contains("obj-2"),
            &|_| Duration::from_secs(600),
            seen_by,
            BUDGET,
        )
        .await
        .unwrap();
    // obj-2 and obj-20..29 were not seen; obj-1's clock already runs.
    assert_eq!(started, 11);

    // Locks.
    assert!(
        s.try_lock("resync", "a", Duration::from_secs(30), BUDGET)
            .await
            .unwrap()
    );
    assert!(
        !s.try_lock("resync", "b", Duration::from_secs(30), BUDGET)
            .await
            .unwrap()
    );
    assert!(
        s.try_lock("resync", "a", Duration::from_secs(30), BUDGET)
            .await
            .unwrap()
    );

    // Catch-up claims and dead marker claims.
    s.ensure_queue_group(BUDGET).await.unwrap();
    s.ensure_queue_group(BUDGET).await.unwrap();
    let catch_up = job("obj-3", "");
    assert!(
        s.enqueue_catch_up(&catch_up, "u1", Duration::from_secs(60), BUDGET)
            .await
            .unwrap()
    );
    assert!(
        !s.enqueue_catch_up(&catch_up, "u1", Duration::from_secs(60), BUDGET)
            .await
            .unwrap()
    );
    assert!(
        s.claim_unmark(&id("obj-3"), "m", Duration::from_secs(60), BUDGET)
            .await
            .unwrap()
    );
    assert!(
        !s.claim_unmark(&id("obj-3"), "m", Duration::from_secs(60), BUDGET)
            .await
            .unwrap()
    );

    // The queue: a pending job (its live entry in the object's slot), read, reclaimed by
    // another consumer, touched, acknowledged; another dead-lettered.
    s.enqueue_pending(&job("obj-4", "job-4"), Duration::from_secs(60), BUDGET)
        .await
        .unwrap();
    assert!(s.job_is_live(&id("obj-4"), "job-4", BUDGET).await.unwrap());
    let (record, live) = s.get_with_job(&id("obj-4"), "job-4", BUDGET).await.unwrap();
    assert!(record.is_some() && live);
    s.enqueue(&job("obj-5", "job-5"), BUDGET).await.unwrap();
    assert_eq!(s.queue_stats(BUDGET).await.unwrap().length, 3);
    let mut reader = s.reader(BUDGET).await.unwrap();
    let read = reader
        .read("c1", 10, Duration::from_millis(500))
        .await
        .unwrap();
    assert_eq!(read.len(), 3, "{read:?}");
    let reclaimed = s
        .reclaim("c2", Duration::ZERO, "0-0", 10, BUDGET)
        .await
        .unwrap();
    assert_eq!(reclaimed.deliveries.len(), 3);
    assert!(reclaimed.deliveries.iter().all(|d| d.deliveries == 2));
    let ids: Vec<String> = reclaimed.deliveries.iter().map(|d| d.id.clone()).collect();
    s.touch("c2", &ids, BUDGET).await.unwrap();
    for delivery in &reclaimed.deliveries {
        let Ok(job) = &delivery.job else {
            panic!("{delivery:?}")
        };
        if job.id == "job-5" {
            s.dead_letter(delivery, "failed", Some(&json!({"phase": "x"})), BUDGET)
                .await
                .unwrap();
        } else {
            s.ack(&delivery.id, BUDGET).await.unwrap();
        }
    }
    assert_eq!(s.queue_stats(BUDGET).await.unwrap().length, 0);
    let dead: u64 = redis::cmd("XLEN")
        .arg(s.keys().dead_letters())
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(dead, 1);
    assert!(s.remove_consumer_if_idle("c1", BUDGET).await.unwrap());

    // After a restore: the record belongs to the new incarnation, the job is over.
    assert!(
        s.mark_restored(&id("obj-4"), "u1", "u2", "job-4", BUDGET)
            .await
            .unwrap()
    );
    assert!(!s.job_is_live(&id("obj-4"), "job-4", BUDGET).await.unwrap());
    assert_eq!(
        s.get(&id("obj-4"), BUDGET).await.unwrap().unwrap().uid,
        "u2"
    );
    s.enqueue_pending(&job("obj-6", "job-6"), Duration::from_secs(60), BUDGET)
        .await
        .unwrap();
    assert!(s.release_job(&id("obj-6"), "job-6", BUDGET).await.unwrap());

    // Reseal: every record of every master, sealed in one pass.
    let sealing = store(&cluster, &prefix, Some(KEY));
    let done = sealing.reseal(false, true, BUDGET, |_| {}).await.unwrap();
    assert_eq!(done.sealed_from_clear, names.len() as u64, "{done:?}");
    assert!(done.failed.is_empty(), "{done:?}");
    let record = sealing.get(&id("obj-7"), BUDGET).await.unwrap().unwrap();
    assert_eq!(record.status["rv"], 2);
}

/// Writes that storm `names` (half of them to the first) until `stop`, remembering for each
/// object the highest resourceVersion Redis acknowledged.
struct Storm {
    acked: Arc<Mutex<HashMap<String, u64>>>,
    attempts: Arc<AtomicU64>,
    failures: Arc<AtomicU64>,
    /// Acknowledged writes, and when the last one failed (in attempts).
    written: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Storm {
    fn start(s: &Store, names: &[String], writers: usize) -> Self {
        let storm = Self {
            acked: Arc::default(),
            attempts: Arc::default(),
            failures: Arc::default(),
            written: Arc::default(),
            stop: Arc::default(),
            tasks: Vec::new(),
        };
        let next_rv = Arc::new(AtomicU64::new(1));
        let mut tasks = Vec::new();
        for w in 0..writers {
            let (s, names) = (s.clone(), names.to_vec());
            let (acked, attempts, failures, written, stop, next_rv) = (
                storm.acked.clone(),
                storm.attempts.clone(),
                storm.failures.clone(),
                storm.written.clone(),
                storm.stop.clone(),
                next_rv.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let mut i = w;
                while !stop.load(Ordering::SeqCst) {
                    i += 1;
                    let name = if i % 2 == 0 {
                        &names[0]
                    } else {
                        &names[i % names.len()]
                    };
                    let rv = next_rv.fetch_add(1, Ordering::SeqCst);
                    attempts.fetch_add(1, Ordering::SeqCst);
                    match s
                        .record(&write(name, "u1", rv), Duration::from_secs(2))
                        .await
                    {
                        Ok(WriteOutcome::Written | WriteOutcome::Stale) => {
                            written.fetch_add(1, Ordering::SeqCst);
                            let mut acked = acked.lock().unwrap();
                            let seen = acked.entry(name.clone()).or_default();
                            *seen = (*seen).max(rv);
                        }
                        Ok(other) => panic!("unexpected outcome {other:?}"),
                        Err(error) => {
                            if failures.fetch_add(1, Ordering::SeqCst) == 0 {
                                eprintln!(
                                    "first failed write: {}",
                                    restatus::error::error_chain(&error)
                                );
                            }
                        }
                    }
                }
            }));
        }
        Self { tasks, ..storm }
    }

    /// Waits until `more` further writes were acknowledged.
    async fn until_written(&self, more: u64, what: &str) {
        let target = self.written.load(Ordering::SeqCst) + more;
        let written = self.written.clone();
        support::eventually(Duration::from_secs(60), what, || {
            let written = written.clone();
            async move { (written.load(Ordering::SeqCst) >= target).then_some(()) }
        })
        .await;
    }

    async fn stop(self) -> (HashMap<String, u64>, u64, u64) {
        self.stop.store(true, Ordering::SeqCst);
        for task in self.tasks {
            task.await.unwrap();
        }
        let acked = self.acked.lock().unwrap().clone();
        (
            acked,
            self.attempts.load(Ordering::SeqCst),
            self.failures.load(Ordering::SeqCst),
        )
    }
}

/// Every object's record holds at least the last acknowledged write.
async fn assert_none_lost(s: &Store, acked: &HashMap<String, u64>) {
    assert!(!acked.is_empty());
    for (name, rv) in acked {
        let record = s.get(&id(name), BUDGET).await.unwrap().unwrap();
        let stored: u64 = record.resource_version.parse().unwrap();
        assert!(
            stored >= *rv,
            "{name}: acknowledged resourceVersion {rv}, but the record holds {stored}"
        );
    }
}

#[tokio::test]
async fn a_slot_migration_during_a_storm_loses_no_acknowledged_write() {
    let cluster = RedisCluster::start().await;
    let s = store(&cluster, &support::unique("migrate"), None).keep_history(3);
    let names: Vec<String> = (0..20).map(|i| format!("m-{i}")).collect();
    let slot = cluster.slot(&s.keys().record(&id(&names[0]))).await;
    let storm = Storm::start(&s, &names, 4);
    storm
        .until_written(200, "writes before the migration")
        .await;
    let (from, to) = cluster
        .migrate_slot(slot, || {
            storm.until_written(20, "writes during the migration")
        })
        .await;
    assert_eq!(cluster.owner(slot).await.id, to.id);
    assert_ne!(from.id, to.id);
    // New writes land on the new owner.
    storm.until_written(200, "writes after the migration").await;
    let (acked, attempts, failures) = storm.stop().await;
    eprintln!("migration: {attempts} writes, {failures} failed");
    assert_none_lost(&s, &acked).await;
    // The record and its history moved together, and live on the new owner.
    let mut conn = support::topology::Node::conn_to(to.port).await;
    let exists: u64 = redis::cmd("EXISTS")
        .arg(s.keys().record(&id(&names[0])))
        .arg(s.keys().history(&id(&names[0])))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(exists, 2);
}

#[tokio::test]
async fn a_master_failover_during_a_storm_loses_no_acknowledged_write() {
    let cluster = RedisCluster::start().await;
    let s = store(&cluster, &support::unique("failover"), None).keep_history(3);
    let names: Vec<String> = (0..20).map(|i| format!("f-{i}")).collect();
    let slot = cluster.slot(&s.keys().record(&id(&names[0]))).await;
    let storm = Storm::start(&s, &names, 4);
    storm.until_written(200, "writes before the failover").await;
    let (old, new) = cluster.failover(slot).await;
    assert_ne!(old.id, new.id);
    // Writes go on, to the promoted replica, within a deadline.
    storm.until_written(200, "writes after the failover").await;
    let (acked, attempts, failures) = storm.stop().await;
    eprintln!("failover: {attempts} writes, {failures} failed");
    assert_none_lost(&s, &acked).await;
}
