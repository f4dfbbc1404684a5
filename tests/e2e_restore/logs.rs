//! Logs never hold status contents: not when recording, restoring, merging a status write
//! into a pending object, nor when the API server refuses a restored status with a message
//! that quotes its values.

use kube::api::PostParams;
use serde_json::json;

use super::{recreate_pending, wait_outcome, wait_restored};
use crate::support::cluster::{Env, EnvOptions, TestType, patch_status, tighten_status_schema};

const GUARDED: TestType = TestType::namespaced("guardedclusters", "GuardedCluster");

#[tokio::test]
async fn statuses_never_reach_the_logs_even_at_debug_level() {
    let marker = format!("s3cr3t-{}", std::process::id());
    let saved = json!({"phase": "Running", "token": marker, "port": format!("{marker}-port")});
    // Everything at debug: restatus, and the libraries it uses (kube, hyper, h2, rustls).
    let env = Env::start(EnvOptions {
        types: vec![GUARDED],
        ..EnvOptions::with_args(&["--restore-worker=false", "--log-level", "debug"])
    })
    .await;

    // Record, delete, recreate; a status write arrives while the object is pending and is
    // merged; then a worker restores it.
    recreate_pending(&env, "logged", &saved).await;
    patch_status(
        &env.clusters(),
        "logged",
        json!({"phase": format!("{marker}-live")}),
    )
    .await;
    let worker = env.start_replica("worker", &["--log-level", "debug"]).await;
    wait_restored(&env.clusters(), "logged").await;

    // A restored status the type no longer accepts: the API server's 422 quotes the value.
    env.create_record_delete_of(&GUARDED, "refused", &saved)
        .await;
    tighten_status_schema(
        &env,
        &GUARDED,
        json!({
            "type": "object",
            // An enum violation: the API server's message quotes the offending value.
            "properties": {"port": {"type": "string", "enum": ["http", "https"]}},
            "x-kubernetes-preserve-unknown-fields": true
        }),
        json!({"port": "x"}),
    )
    .await;
    let api = env.api(&GUARDED);
    api.create(&PostParams::default(), &GUARDED.object("refused"))
        .await
        .unwrap();
    wait_outcome(&worker, "failed", 1.0).await;

    for r in env.restatus.iter().chain([&worker]) {
        let log = r.log_text();
        assert!(
            log.len() > 1000,
            "debug logs were written: {}",
            r.log.display()
        );
        assert!(
            !log.contains(&marker),
            "a status value reached {}:\n{}",
            r.log.display(),
            log.lines()
                .filter(|l| l.contains(&marker))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}
