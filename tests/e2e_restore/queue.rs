//! The queue's bounds: a full queue refuses jobs and says so, creates that never land give
//! their worker slot back and give way to a later create of the same name, consumers of
//! killed replicas are removed, and shutdown ends within its grace with a full queue and
//! Redis frozen.

use std::time::{Duration, Instant};

use kube::{ResourceExt, api::PostParams};
use restatus::{
    policy::status_of,
    store::{JobKind, RestoreJob},
};
use serde_json::json;

use super::{outcome, races::reject_labelled_creates, wait_outcome, wait_queue_empty};
use crate::support::{
    cluster::{Env, EnvOptions, WAIT, kubernetes_cluster, wait_restored},
    eventually,
};

#[tokio::test]
async fn a_burst_of_creates_that_never_land_does_not_hold_up_real_restores() {
    // Two worker slots, and twice as many creates that never land as slots, per real
    // recreate: were a job to keep its slot until its deadline, the real restores would wait
    // for the deadline too.
    const DEADLINE: Duration = Duration::from_secs(45);
    let env = Env::start(EnvOptions::with_args(&[
        "--restore-concurrency=2",
        "--restore-deadline=45s",
    ]))
    .await;
    reject_labelled_creates(&env).await;
    let api = env.clusters();
    let status_for = |name: &str| json!({"clusterID": format!("c-{name}"), "phase": "Running"});
    let lost: Vec<String> = (0..12).map(|i| format!("never-{i:02}")).collect();
    let real: Vec<String> = (0..4).map(|i| format!("real-{i}")).collect();
    // Created twice, refused twice: a retry after a refusal.
    let retried = "retried".to_owned();
    for name in lost.iter().chain(&real).chain([&retried]) {
        env.create_record_delete(name, &status_for(name)).await;
    }

    // First the creates that never land (each queues a job), then the real recreates.
    let rejected = |name: &str| {
        let mut obj = kubernetes_cluster(name);
        obj.labels_mut().insert("reject".into(), "yes".into());
        obj
    };
    let started = Instant::now();
    for name in lost.iter().chain([&retried, &retried]) {
        api.create(&PostParams::default(), &rejected(name))
            .await
            .expect_err("the policy rejects it");
    }
    for name in &real {
        api.create(&PostParams::default(), &kubernetes_cluster(name))
            .await
            .unwrap();
    }
    for name in &real {
        let restored = wait_restored(&api, name).await;
        assert_eq!(status_of(&restored), Some(&status_for(name)), "{name}");
    }
    let took = started.elapsed();
    let r = &env.restatus[0];
    // The jobs that never land were still waiting, parked, while the real ones ran.
    assert_eq!(outcome(r, "expired").await, 0.0);
    assert!(r.metric("restatus_restore_jobs_parked").await >= 1.0);
    assert!(
        took < DEADLINE / 3,
        "the real restores took {took:?}, a third of the deadline is {:?}",
        DEADLINE / 3
    );
    // The first job of the retried name gave way to the later one, long before its deadline.
    eventually(
        WAIT,
        "the retried name's first job to be superseded",
        || async { (outcome(r, "superseded").await == 1.0).then_some(()) },
    )
    .await;
    assert_eq!(outcome(r, "expired").await, 0.0);
    // Counted a moment after the object shows it.
    wait_outcome(r, "restored", real.len() as f64).await;

    // The others, and the retried name's latest job, end at their deadline, with nothing
    // touched.
    eventually(
        DEADLINE + WAIT,
        "the jobs that never landed to expire",
        || async { (outcome(r, "expired").await == (lost.len() + 1) as f64).then_some(()) },
    )
    .await;
    wait_queue_empty(&env).await;
    assert_eq!(r.metric("restatus_restore_jobs_parked").await, 0.0);
    for name in lost.iter().chain([&retried]) {
        assert!(api.get_opt(name).await.unwrap().is_none(), "{name}");
    }
}

/// A restore job for the KubernetesCluster `name` of the environment whose object never
/// appears, as the webhook queues it.
fn job_for_nothing(env: &Env, name: &str) -> String {
    let now = jiff::Timestamp::now();
    let job = RestoreJob {
        id: format!("never-{name}"),
        action: JobKind::Restore,
        identity: env.kc_id(name),
        api_version: "infra.example.com/v1alpha1".into(),
        kind: "KubernetesCluster".into(),
        record_uid: "u".into(),
        created_at: now,
        deadline: now + jiff::SignedDuration::from_secs(600),
        retry: false,
        inline: false,
        request_uid: String::new(),
        policy: None,
    };
    serde_json::to_string(&job).unwrap()
}

#[tokio::test]
async fn shutdown_ends_within_its_grace_with_a_full_queue_and_redis_frozen() {
    const GRACE: Duration = Duration::from_secs(4);
    const JOBS: usize = 200;
    let mut env = Env::start(EnvOptions::with_args(&[
        "--shutdown-grace=4s",
        "--restore-concurrency=8",
        "--restore-queue-max-length=200",
        "--redis-worker-timeout=2s",
    ]))
    .await;
    // A full queue of jobs whose objects never appear: the worker holds them all, waiting.
    let mut conn = env.redis.conn().await;
    let queue = env.keys.queue();
    for i in 0..JOBS {
        let _: String = redis::cmd("XADD")
            .arg(&queue)
            .arg("*")
            .arg("job")
            .arg(job_for_nothing(&env, &format!("gone-{i:03}")))
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    let r = &env.restatus[0];
    eventually(2 * WAIT, "the worker to hold every job", || async {
        (r.metric("restatus_restore_jobs_parked").await >= JOBS as f64).then_some(())
    })
    .await;
    // The queue's length and age, as the worker publishes them (every few seconds).
    eventually(WAIT, "the queue's length to be published", || async {
        (r.metric("restatus_restore_queue_depth").await == JOBS as f64).then_some(())
    })
    .await;
    assert!(
        r.metric("restatus_restore_queue_oldest_job_age_seconds")
            .await
            >= 1.0
    );

    // Redis freezes (no reset, no answer), and restatus is asked to stop.
    env.redis.pause();
    let stopping = Instant::now();
    let r = &mut env.restatus[0];
    r.send_sigterm();
    let status = r.wait_exit().expect("exit status");
    let took = stopping.elapsed();
    env.redis.resume();
    let log = env.restatus[0].log_text();
    assert!(status.success(), "{status}: {log}");
    // Signal delivery and process teardown take a moment beyond the grace.
    assert!(
        took < GRACE + Duration::from_secs(1),
        "stopped after {took:?}, the grace is {GRACE:?}:\n{log}"
    );
    assert!(log.contains("restore worker stopped"), "{log}");
    eprintln!("stopped {took:?} after SIGTERM with {JOBS} jobs held and Redis frozen");

    // Every job is still in the queue, claimed by the stopped consumer, for another replica.
    let len: u64 = redis::cmd("XLEN")
        .arg(&queue)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(len, JOBS as u64);
}

/// The names of the queue group's consumers.
async fn consumers(env: &Env) -> Vec<String> {
    let mut conn = env.redis.conn().await;
    let info: Vec<std::collections::HashMap<String, redis::Value>> = redis::cmd("XINFO")
        .arg("CONSUMERS")
        .arg(env.keys.queue())
        .arg("restatus")
        .query_async(&mut conn)
        .await
        .unwrap_or_default();
    info.iter()
        .filter_map(|c| redis::from_redis_value(c.get("name")?.clone()).ok())
        .collect()
}

#[tokio::test]
async fn consumers_of_killed_replicas_are_removed_once_idle() {
    let mut env = Env::start(EnvOptions {
        replicas: 2,
        args: vec![
            "--restore-consumer-idle-timeout=2s".into(),
            "--restore-claim-min-idle=2s".into(),
        ],
        ..Default::default()
    })
    .await;
    // Both replicas take part in restores; then the second is killed, without leaving.
    let api = env.clusters();
    let names: Vec<String> = (0..6).map(|i| format!("member-{i}")).collect();
    for name in &names {
        env.create_record_delete(name, &super::saved_status()).await;
    }
    for name in &names {
        api.create(&PostParams::default(), &kubernetes_cluster(name))
            .await
            .unwrap();
    }
    for name in &names {
        wait_restored(&api, name).await;
    }
    wait_queue_empty(&env).await;
    let killed = format!("{}-1", env.ns);
    let survivor = format!("{}-0", env.ns);
    // The group knows a consumer once it was handed a job, or made one (as XGROUP does for
    // a replica that never got one).
    let mut conn = env.redis.conn().await;
    let _: i64 = redis::cmd("XGROUP")
        .arg("CREATECONSUMER")
        .arg(env.keys.queue())
        .arg("restatus")
        .arg(&killed)
        .query_async(&mut conn)
        .await
        .unwrap();
    env.restatus[1].kill();
    assert!(consumers(&env).await.contains(&killed));

    let r = &env.restatus[0];
    eventually(
        WAIT,
        "the killed replica's consumer to be removed",
        || async {
            let now = consumers(&env).await;
            (!now.contains(&killed)).then_some(())
        },
    )
    .await;
    assert!(r.metric("restatus_restore_consumers_removed_total").await >= 1.0);
    // The survivor keeps working: its own consumer serves the next restore.
    let name = "after";
    env.create_record_delete(name, &super::saved_status()).await;
    api.create(&PostParams::default(), &kubernetes_cluster(name))
        .await
        .unwrap();
    wait_restored(&api, name).await;
    assert!(consumers(&env).await.iter().all(|c| c == &survivor));
}

#[tokio::test]
async fn a_create_whose_job_the_full_queue_refuses_is_allowed_unmarked_and_counted() {
    // A webhook-only replica: nothing takes jobs, so the queue stays at its cap of one.
    let env = Env::start(EnvOptions::with_args(&[
        "--restore-worker=false",
        "--restore-queue-max-length=1",
    ]))
    .await;
    super::recreate_pending(&env, "first", &super::saved_status()).await;
    assert_eq!(super::queue_len(&env).await, 1);

    env.create_record_delete("second", &super::saved_status())
        .await;
    let created = env
        .clusters()
        .create(&PostParams::default(), &kubernetes_cluster("second"))
        .await
        .expect("the create is allowed");
    assert!(
        !created
            .annotations()
            .keys()
            .any(|k| k.starts_with("restatus.io/")),
        "no marker for a job that was not queued: {:?}",
        created.annotations()
    );
    let r = &env.restatus[0];
    assert_eq!(r.metric("restatus_restore_jobs_refused_total").await, 1.0);
    assert_eq!(
        r.metric("restatus_admission_requests_total{operation=\"CREATE\",outcome=\"error\"}")
            .await,
        1.0
    );
    assert_eq!(super::queue_len(&env).await, 1);
    // The saved status stays for resync (or a later create) to restore.
    assert_eq!(
        env.recorded_status(&env.kc_id("second")).await,
        Some(super::saved_status())
    );
}
