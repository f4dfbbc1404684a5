//! The queue under failure: jobs of consumers that died, several replicas, jobs that fail for
//! good, replicas leaving the group.

use std::collections::BTreeMap;

use kube::{ResourceExt, api::PostParams};
use restatus::policy::{
    ANNOTATION_RESTORE, ANNOTATION_RESTORE_JOB, ANNOTATION_RESTORED_AT, RESTORE_FAILED, status_of,
};
use serde_json::json;

use super::{
    outcome, queue_len, recreate_pending, saved_status, wait_event, wait_outcome, wait_queue_empty,
    wait_restored,
};
use crate::support::{
    cluster::{Env, EnvOptions, TestType, WAIT, kubernetes_cluster, tighten_status_schema},
    eventually,
};

/// redis-cli against the environment's Redis; its standard output.
fn redis_cli(env: &Env, args: &[&str]) -> String {
    let out = std::process::Command::new("redis-cli")
        .args(["-p", &env.redis.port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli (Debian package redis-tools)");
    assert!(out.status.success(), "redis-cli {args:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn a_job_left_by_a_dead_consumer_is_reclaimed_and_applied() {
    // The webhook-only replica queues the job; a consumer that then dies claims it with
    // redis-cli; a worker started afterwards reclaims it once it has been idle long enough.
    let env = Env::start(EnvOptions::webhook_only()).await;
    recreate_pending(&env, "orphan", &saved_status()).await;
    let api = env.clusters();
    assert_eq!(queue_len(&env).await, 1);

    let cli = |args: &[&str]| redis_cli(&env, args);
    let queue = env.keys.queue();
    // The group may not exist yet (no worker has run): create it as restatus would.
    cli(&["XGROUP", "CREATE", &queue, "restatus", "0", "MKSTREAM"]);
    let claimed = cli(&[
        "XREADGROUP",
        "GROUP",
        "restatus",
        "ghost",
        "COUNT",
        "1",
        "STREAMS",
        &queue,
        ">",
    ]);
    assert!(
        claimed.contains("orphan"),
        "ghost consumer got the job: {claimed}"
    );
    let pending = cli(&["XPENDING", &queue, "restatus"]);
    assert!(pending.contains("ghost"), "{pending}");

    let worker = env
        .start_replica("reclaimer", &["--restore-claim-min-idle", "1s"])
        .await;
    let restored = wait_restored(&api, "orphan").await;
    assert_eq!(status_of(&restored), Some(&saved_status()));
    wait_outcome(&worker, "restored", 1.0).await;
    assert!(!cli(&["XPENDING", &queue, "restatus", "-", "+", "10"]).contains("ghost"));
    wait_queue_empty(&env).await;
}

#[tokio::test]
async fn two_replicas_restore_fifty_recreated_objects_exactly_once_each() {
    let env = Env::start(EnvOptions {
        replicas: 2,
        // Fifty creates at once on a loaded machine: the creator's access check must not run
        // out of time, or its object is (rightly) not restored.
        args: vec!["--access-check-timeout=5s".into()],
        ..Default::default()
    })
    .await;
    let api = env.clusters();
    let names: Vec<String> = (0..50).map(|i| format!("fleet-{i:02}")).collect();
    let status_for = |i: usize| json!({"apiServerURL": format!("https://203.0.113.{i}:6443"), "masterVersion": "1.31.4", "clusterID": format!("c-{i}")});
    futures::future::join_all(names.iter().enumerate().map(|(i, name)| {
        let env = &env;
        async move { env.create_record_delete(name, &status_for(i)).await }
    }))
    .await;

    futures::future::join_all(names.iter().map(|name| {
        let api = api.clone();
        async move {
            api.create(&PostParams::default(), &kubernetes_cluster(name))
                .await
                .unwrap()
        }
    }))
    .await;

    for (i, name) in names.iter().enumerate() {
        let restored = wait_restored(&api, name).await;
        assert_eq!(status_of(&restored), Some(&status_for(i)), "{name}");
        let ours: BTreeMap<&String, &String> = restored
            .annotations()
            .iter()
            .filter(|(k, _)| k.starts_with("restatus.io/"))
            .collect();
        // The restore time, and which job restored it.
        let keys: Vec<&str> = ours.keys().map(|k| k.as_str()).collect();
        assert_eq!(
            keys,
            [ANNOTATION_RESTORE_JOB, ANNOTATION_RESTORED_AT],
            "{name}: {ours:?}"
        );
    }
    // Once every job is acknowledged, the replicas together counted 50 restores and no
    // second delivery of any job (which would count as already_restored or record_replaced).
    wait_queue_empty(&env).await;
    let total = |name: &'static str| {
        let env = &env;
        async move {
            let mut sum = 0.0;
            for r in &env.restatus {
                sum += outcome(r, name).await;
            }
            sum
        }
    };
    let restored_total = eventually(WAIT, "50 restores to be counted", || async {
        let restored = total("restored").await;
        (restored >= 50.0).then_some(restored)
    })
    .await;
    assert_eq!(restored_total, 50.0, "each object restored exactly once");
    assert_eq!(total("already_restored").await, 0.0);
    assert_eq!(total("record_replaced").await, 0.0);
}

const STRICT: TestType = TestType::namespaced("strictclusters", "StrictCluster");

#[tokio::test]
async fn a_saved_status_the_type_no_longer_accepts_is_dead_lettered_and_reported() {
    let env = Env::start(EnvOptions::with_types(&[STRICT])).await;
    let saved = json!({"port": "https", "endpoint": "203.0.113.9"});
    env.create_record_delete_of(&STRICT, "strict", &saved).await;

    // The type's schema is tightened meanwhile: status.port must now be an integer.
    tighten_status_schema(
        &env,
        &STRICT,
        json!({
            "type": "object",
            "properties": {"port": {"type": "integer"}},
            "x-kubernetes-preserve-unknown-fields": true
        }),
        json!({"port": "x"}),
    )
    .await;

    let api = env.api(&STRICT);
    api.create(&PostParams::default(), &STRICT.object("strict"))
        .await
        .unwrap();
    let r = &env.restatus[0];
    wait_outcome(r, "failed", 1.0).await;
    let failed = api.get("strict").await.unwrap();
    assert_eq!(
        failed
            .annotations()
            .get(ANNOTATION_RESTORE)
            .map(String::as_str),
        Some(RESTORE_FAILED)
    );
    assert_eq!(status_of(&failed), None, "nothing was restored");
    let evs = wait_event(&env, "strict", "StatusRestoreFailed").await;
    let note = evs[0].note.clone().unwrap_or_default();
    assert!(
        note.contains("status.port"),
        "the note names the field: {note}"
    );
    assert!(!note.contains("https"), "the note quotes no value: {note}");

    // The dead letter keeps the saved status for a restore by hand.
    let dead = redis_cli(&env, &["XRANGE", &env.keys.dead_letters(), "-", "+"]);
    assert!(dead.contains("203.0.113.9"), "{dead}");
    assert_eq!(r.metric("restatus_restore_dead_letters_total").await, 1.0);
    wait_queue_empty(&env).await;
}

#[tokio::test]
async fn a_replica_leaves_the_consumer_group_when_it_stops() {
    let mut env = Env::start(EnvOptions::default()).await;
    // A consumer exists in the group once it has been handed a job.
    recreate_pending(&env, "member", &saved_status()).await;
    wait_restored(&env.clusters(), "member").await;
    wait_queue_empty(&env).await;
    let consumer = format!("{}-0", env.ns);
    let queue = env.keys.queue();
    let consumers = redis_cli(&env, &["XINFO", "CONSUMERS", &queue, "restatus"]);
    assert!(consumers.contains(&consumer), "{consumers}");

    let r = &mut env.restatus[0];
    r.send_sigterm();
    let status = r.wait_exit().expect("exit status");
    assert!(status.success(), "{}", r.log_text());
    assert!(
        r.log_text()
            .contains("left the restore queue's consumer group")
    );
    let consumers = redis_cli(&env, &["XINFO", "CONSUMERS", &queue, "restatus"]);
    assert!(!consumers.contains(&consumer), "{consumers}");
}
