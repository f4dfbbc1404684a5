//! End to end: resync catches up on what restatus did not see while it or Redis was away,
//! against the real kube-apiserver (with its namespace and garbage-collector controllers),
//! real Redis and real restatus processes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use k8s_openapi::api::events::v1::Event;
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, ListParams, PostParams},
};
use restatus::policy::{
    ANNOTATION_RESTORE, ANNOTATION_RESTORE_FOR, ANNOTATION_RESTORED_AT, status_of,
};
use restatus::store::{JobKind, RecordWrite, RestoreJob, Source};
use serde_json::{Value, json};
use std::time::Duration;
use support::{
    cluster::{Env, EnvOptions, WAIT, kept_by_default, kubernetes_cluster, patch_status},
    eventually,
};

/// The budget of the test's own Redis calls.
const BUDGET: Duration = Duration::from_secs(5);

/// restatus with resync of KubernetesClusters; passes run at start and when Redis is back,
/// not on a timer, within a test.
fn resyncing() -> EnvOptions {
    EnvOptions::with_args(&[
        "--resync-resources=kubernetesclusters.infra.example.com",
        "--resync-interval=1h",
    ])
}

fn saved() -> Value {
    json!({"phase": "Running", "clusterID": "c-catch-up", "endpoint": "https://203.0.113.60:6443"})
}

/// Events about `name` with `reason`.
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

/// Waits until the object `name` carries the restore time with the saved status.
async fn wait_caught_up(env: &Env, name: &str, status: &Value) -> kube::api::DynamicObject {
    let api = env.clusters();
    eventually(WAIT, &format!("{name} to be caught up"), || async {
        let obj = api.get_opt(name).await.ok()??;
        (obj.annotations().contains_key(ANNOTATION_RESTORED_AT) && status_of(&obj) == Some(status))
            .then_some(obj)
    })
    .await
}

/// Deletes the KubernetesCluster `name` and waits until it is gone.
async fn delete(env: &Env, name: &str) {
    let api = env.clusters();
    api.delete(name, &DeleteParams::default()).await.unwrap();
    eventually(WAIT, &format!("{name} to be gone"), || async {
        api.get_opt(name).await.unwrap().is_none().then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_status_written_while_restatus_was_stopped_is_recorded_by_the_first_resync() {
    let mut env = Env::start(resyncing()).await;
    let api = env.clusters();
    api.create(&PostParams::default(), &kubernetes_cluster("unseen"))
        .await
        .unwrap();
    let before = json!({"phase": "Provisioning"});
    patch_status(&api, "unseen", before.clone()).await;
    env.wait_recorded(&env.kc_id("unseen"), &before).await;

    env.kill_restatus();
    let after = json!({"phase": "Running", "observedGeneration": 1, "endpoint": "https://203.0.113.61:6443"});
    patch_status(&api, "unseen", after.clone()).await;
    // And an object restatus never saw at all.
    api.create(&PostParams::default(), &kubernetes_cluster("never-seen"))
        .await
        .unwrap();
    patch_status(&api, "never-seen", after.clone()).await;
    assert_eq!(
        env.recorded_status(&env.kc_id("unseen")).await,
        Some(before),
        "nothing was recorded while restatus was stopped"
    );

    env.restart_restatus().await;
    env.wait_recorded(&env.kc_id("unseen"), &kept_by_default(&after))
        .await;
    env.wait_recorded(&env.kc_id("never-seen"), &kept_by_default(&after))
        .await;
    let r = &env.restatus[0];
    assert!(r.metric("restatus_resync_records_corrected_total").await >= 2.0);
    assert!(r.metric("restatus_resync_objects_scanned_total").await >= 2.0);
}

/// An object recreated while restatus is stopped, in a namespace that opens restores to
/// every creator, gets its status back from the first resync, whether restatus saw the
/// DELETE (`seen_delete`) or not.
async fn recreated_while_stopped(seen_delete: bool) {
    let mut env =
        Env::start(resyncing().namespace_annotation(ANNOTATION_RESTORE_FOR, "creators")).await;
    let api = env.clusters();
    let name = if seen_delete {
        "seen-delete"
    } else {
        "unseen-delete"
    };
    api.create(&PostParams::default(), &kubernetes_cluster(name))
        .await
        .unwrap();
    patch_status(&api, name, saved()).await;
    env.wait_recorded(&env.kc_id(name), &saved()).await;
    if seen_delete {
        delete(&env, name).await;
        env.wait_deletion_recorded(&env.kc_id(name)).await;
        env.kill_restatus();
    } else {
        env.kill_restatus();
        delete(&env, name).await;
    }
    let created = api
        .create(&PostParams::default(), &kubernetes_cluster(name))
        .await
        .unwrap();
    assert!(
        !created.annotations().contains_key(ANNOTATION_RESTORE),
        "no marker: restatus did not see the create"
    );

    env.restart_restatus().await;
    let restored = wait_caught_up(&env, name, &saved()).await;
    assert_eq!(restored.uid(), created.uid());
    let notes: Vec<String> = eventually(WAIT, "the StatusRestored event", || async {
        let evs = events(&env, name, "StatusRestored").await;
        (!evs.is_empty()).then(|| evs.into_iter().filter_map(|e| e.note).collect())
    })
    .await;
    assert!(notes.iter().any(|n| n.contains("catch-up")), "{notes:?}");
    let r = &env.restatus[0];
    assert_eq!(
        r.metric("restatus_catchup_restores_total{reason=\"queued\"}")
            .await,
        1.0
    );
    eventually(WAIT, "the worker to count the catch-up", || async {
        (r.metric("restatus_restores_total{outcome=\"caught_up\"}")
            .await
            == 1.0)
            .then_some(())
    })
    .await;
    // The record now belongs to the new incarnation, and does not expire.
    let record = env.record(&env.kc_id(name)).await;
    assert_eq!(record["uid"], created.uid().unwrap());
    assert!(!record.contains_key("deletedAt"), "{record:?}");
}

#[tokio::test]
async fn an_object_recreated_while_restatus_was_stopped_is_caught_up_after_a_delete_it_saw() {
    recreated_while_stopped(true).await;
}

#[tokio::test]
async fn an_object_deleted_and_recreated_while_restatus_was_stopped_is_caught_up() {
    recreated_while_stopped(false).await;
}

#[tokio::test]
async fn where_restores_are_for_status_writers_a_recreated_object_is_left_alone_and_told_why() {
    let mut env = Env::start(resyncing()).await;
    let api = env.clusters();
    env.create_record_delete("held", &saved()).await;
    env.kill_restatus();
    let created = api
        .create(&PostParams::default(), &kubernetes_cluster("held"))
        .await
        .unwrap();
    env.restart_restatus().await;

    let notes: Vec<String> = eventually(WAIT, "the SavedStatusWaiting event", || async {
        let evs = events(&env, "held", "SavedStatusWaiting").await;
        (!evs.is_empty()).then(|| evs.into_iter().filter_map(|e| e.note).collect())
    })
    .await;
    assert!(
        notes.iter().any(|n| n.contains("restore-for: creators")),
        "{notes:?}"
    );
    let r = &env.restatus[0];
    assert_eq!(
        r.metric("restatus_catchup_restores_total{reason=\"held\"}")
            .await,
        1.0
    );
    let live = api.get("held").await.unwrap();
    assert_eq!(status_of(&live), None, "left alone");
    assert!(
        live.annotations().is_empty() || !live.annotations().contains_key(ANNOTATION_RESTORED_AT)
    );
    assert_eq!(live.resource_version(), created.resource_version());
    // The saved status stays, for a restore by hand or a namespace that opens restores.
    assert_eq!(env.recorded_status(&env.kc_id("held")).await, Some(saved()));
}

#[tokio::test]
async fn an_object_recreated_while_redis_was_away_is_caught_up_soon_after_it_is_back() {
    let mut env = Env::start(
        resyncing()
            .namespace_annotation(ANNOTATION_RESTORE_FOR, "creators")
            .persistent_redis(),
    )
    .await;
    let api = env.clusters();
    env.create_record_delete("redis-away", &saved()).await;

    // Redis goes away; the CREATE is allowed without a marker, since no job can be queued.
    env.redis.stop();
    let created = api
        .create(&PostParams::default(), &kubernetes_cluster("redis-away"))
        .await
        .unwrap();
    assert!(!created.annotations().contains_key(ANNOTATION_RESTORE));
    let r = &env.restatus[0];
    assert!(
        r.metric("restatus_admission_requests_total{operation=\"CREATE\",outcome=\"error\"}")
            .await
            >= 1.0
    );

    // Within 30 s of Redis answering again (the deadline of the wait), not at the next
    // interval (an hour).
    env.redis.start_again().await;
    wait_caught_up(&env, "redis-away", &saved()).await;
    let r = &env.restatus[0];
    assert!(
        r.metric("restatus_resync_passes_total{reason=\"redis_back\"}")
            .await
            >= 1.0
    );
}

#[tokio::test]
async fn a_delete_restatus_did_not_see_starts_the_records_retention_clock() {
    let mut env = Env::start(resyncing()).await;
    let api = env.clusters();
    for name in ["gone-unseen", "still-here"] {
        api.create(&PostParams::default(), &kubernetes_cluster(name))
            .await
            .unwrap();
        patch_status(&api, name, saved()).await;
        env.wait_recorded(&env.kc_id(name), &saved()).await;
    }
    // Records written in the second resync lists the type are not expired (it compares
    // times to the second): let that second pass.
    let written = jiff::Timestamp::now().as_second();
    eventually(WAIT, "the next second", || async {
        (jiff::Timestamp::now().as_second() > written).then_some(())
    })
    .await;
    env.kill_restatus();
    delete(&env, "gone-unseen").await;
    env.restart_restatus().await;

    let key = env.keys.record(&env.kc_id("gone-unseen"));
    eventually(
        WAIT,
        "the record of the deleted object to start its clock",
        || async { (env.redis.pttl(&key).await > 0).then_some(()) },
    )
    .await;
    assert!(
        env.record(&env.kc_id("gone-unseen"))
            .await
            .contains_key("deletedAt")
    );
    let kept = env.keys.record(&env.kc_id("still-here"));
    assert_eq!(
        env.redis.pttl(&kept).await,
        -1,
        "the live object's record does not expire"
    );
    let r = &env.restatus[0];
    assert_eq!(
        r.metric("restatus_resync_retention_started_total").await,
        1.0
    );
}

#[tokio::test]
async fn the_first_status_write_of_an_object_recreated_unseen_queues_its_catch_up() {
    // Resync off: the webhook alone sees the first write of the new incarnation, before any
    // pass could, and keeps it from replacing the saved status.
    let mut env =
        Env::start(EnvOptions::default().namespace_annotation(ANNOTATION_RESTORE_FOR, "creators"))
            .await;
    let api = env.clusters();
    env.create_record_delete("first-write", &saved()).await;
    env.kill_restatus();
    api.create(&PostParams::default(), &kubernetes_cluster("first-write"))
        .await
        .unwrap();
    env.restart_restatus().await;

    // The owning controller writes a fresh fact first.
    let fresh = json!({"phase": "Provisioning"});
    patch_status(&api, "first-write", fresh).await;
    let mut expected = saved();
    expected["phase"] = json!("Provisioning");
    wait_caught_up(&env, "first-write", &expected).await;
    let r = &env.restatus[0];
    assert_eq!(
        r.metric(
            "restatus_admission_requests_total{operation=\"UPDATE\",outcome=\"catch_up_queued\"}"
        )
        .await,
        1.0
    );
}

#[tokio::test]
async fn resync_leaves_alone_the_namespaces_the_webhook_is_not_called_for() {
    let skipped = support::unique("skipped");
    let ignored = support::unique("ignored");
    let plain = support::unique("plain");
    let skip = format!("--resync-skip-namespaces={skipped}");
    let env = Env::start(EnvOptions::with_args(&[
        "--resync-resources=kubernetesclusters.infra.example.com",
        "--resync-interval=1h",
        &skip,
    ]))
    .await;
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(env.client.clone());
    for (ns, labels) in [
        (&skipped, json!({})),
        (&ignored, json!({"restatus.io/ignore": "true"})),
        (&plain, json!({})),
    ] {
        namespaces
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": ns, "labels": labels}}))
                    .unwrap(),
            )
            .await
            .unwrap();
        let api = Api::<kube::api::DynamicObject>::namespaced_with(
            env.client.clone(),
            ns,
            &support::cluster::kubernetes_cluster_resource(),
        );
        api.create(&PostParams::default(), &kubernetes_cluster("x"))
            .await
            .unwrap();
        patch_status(&api, "x", saved()).await;
    }
    // A replica with resync on, started after the objects exist.
    let r = env
        .start_replica(
            "resync",
            &[
                "--resync-resources=kubernetesclusters.infra.example.com",
                "--resync-interval=1h",
                &skip,
                "--restore-worker=false",
            ],
        )
        .await;
    eventually(WAIT, "a resync pass", || async {
        (r.metric("restatus_resync_passes_total{reason=\"start\"}")
            .await
            >= 1.0)
            .then_some(())
    })
    .await;
    let id = |ns: &str| restatus::store::ObjectIdentity {
        namespace: Some(ns.to_owned()),
        ..env.kc_id("x")
    };
    assert_eq!(env.recorded_status(&id(&plain)).await, Some(saved()));
    assert_eq!(env.recorded_status(&id(&skipped)).await, None);
    assert_eq!(env.recorded_status(&id(&ignored)).await, None);
    for ns in [skipped, ignored, plain] {
        namespaces
            .delete(&ns, &DeleteParams::default())
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn a_status_planted_for_a_live_object_never_reaches_it() {
    // Restores open to every creator, and resync on: every path a catch-up can take.
    let mut env =
        Env::start(resyncing().namespace_annotation(ANNOTATION_RESTORE_FOR, "creators")).await;
    let api = env.clusters();
    let created = api
        .create(&PostParams::default(), &kubernetes_cluster("target"))
        .await
        .unwrap();
    let live_uid = created.metadata.uid.clone().unwrap();
    let created_at = created.metadata.creation_timestamp.clone().unwrap().0;
    let id = env.kc_id("target");
    let own = json!({"phase": "Provisioning"});
    patch_status(&api, "target", own.clone()).await;
    env.wait_recorded(&id, &own).await;
    // What a forged review, or anyone who can write Redis, leaves: a record of another uid,
    // written while the object lives (a second after its creation, as creation times go).
    eventually(WAIT, "a second past the creation", || async {
        (jiff::Timestamp::now().as_second() > created_at.as_second()).then_some(())
    })
    .await;
    let store = env.store();
    let planted = json!({"phase": "Running", "endpoint": "https://198.51.100.66:6443"});
    let plant = || RecordWrite {
        identity: id.clone(),
        status: planted.clone(),
        api_version: "infra.example.com/v1alpha1".into(),
        kind: "KubernetesCluster".into(),
        uid: "forged-uid".into(),
        resource_version: "1".into(),
        generation: None,
        source: Source::Written,
        deleting: false,
        retention: Duration::from_secs(3600),
        restored_by: None,
        catch_up: None,
        listed_at: None,
    };
    async fn record_uid(env: &Env, id: &restatus::store::ObjectIdentity) -> Option<String> {
        env.record(id).await.get("uid").cloned()
    }

    // The webhook: the owner's next status write replaces the planted record instead of
    // queueing a catch-up of it.
    store.record(&plant(), BUDGET).await.unwrap();
    let running = json!({"phase": "Running"});
    patch_status(&api, "target", running.clone()).await;
    env.wait_recorded(&id, &running).await;
    assert_eq!(
        record_uid(&env, &id).await.as_deref(),
        Some(live_uid.as_str())
    );

    // The worker: a catch-up job queued straight into the stream (as a forged review could
    // have had queued) finds the record younger than the object, and writes nothing.
    store.record(&plant(), BUDGET).await.unwrap();
    let now = jiff::Timestamp::now();
    let job = RestoreJob {
        id: String::new(),
        action: JobKind::CatchUp {
            uid: live_uid.clone(),
        },
        identity: id.clone(),
        api_version: "infra.example.com/v1alpha1".into(),
        kind: "KubernetesCluster".into(),
        record_uid: "forged-uid".into(),
        created_at: now,
        deadline: now,
        retry: false,
        inline: false,
        request_uid: String::new(),
        policy: None,
    };
    store.enqueue(&job, BUDGET).await.unwrap();
    let r = &env.restatus[0];
    eventually(WAIT, "the forged catch-up to finish", || async {
        (r.metric("restatus_restores_total{outcome=\"record_not_earlier\"}")
            .await
            == 1.0)
            .then_some(())
    })
    .await;
    assert_eq!(
        r.metric(
            "restatus_admission_requests_total{operation=\"UPDATE\",outcome=\"catch_up_queued\"}"
        )
        .await,
        0.0
    );

    // Resync: the pass at start records the object's own status over the planted one.
    env.kill_restatus();
    env.restart_restatus().await;
    eventually(WAIT, "resync to replace the planted record", || async {
        (record_uid(&env, &id).await.as_deref() == Some(live_uid.as_str())).then_some(())
    })
    .await;
    let r = &env.restatus[0];
    assert_eq!(
        r.metric("restatus_catchup_restores_total{reason=\"queued\"}")
            .await,
        0.0
    );
    let live = api.get("target").await.unwrap();
    assert_eq!(
        status_of(&live),
        Some(&running),
        "nothing planted reached it"
    );
    assert!(!live.annotations().contains_key(ANNOTATION_RESTORED_AT));
    assert!(events(&env, "target", "StatusRestored").await.is_empty());
}

/// A type whose objects carry a large spec, as a tenant's free-form CRD may.
const BLOBS: support::cluster::TestType = support::cluster::TestType::namespaced("blobs", "Blob");

/// A resync page holds its body, bounded in bytes, and not a parsed tree of every object on
/// it: 24 objects with a spec of 400,000 numbers each (about 19 MB of JSON, which parsed
/// whole takes over 300 MB) are resynced while restatus's peak memory stays under 96 MiB,
/// and every status is recorded.
#[tokio::test]
async fn a_resync_page_of_large_objects_is_held_within_its_byte_budget() {
    let mut options = EnvOptions::with_types(&[BLOBS]);
    options.args = vec![
        format!(
            "--resync-resources={}.{}",
            BLOBS.plural,
            support::cluster::TestType::GROUP
        ),
        "--resync-interval=1h".to_owned(),
    ];
    let mut env = Env::start(options).await;
    env.kill_restatus();
    let api = env.api(&BLOBS);
    let zeros = vec![0u8; 400_000];
    let n = 24;
    for i in 0..n {
        let mut obj = BLOBS.object(&format!("blob-{i}"));
        obj.data["spec"] = json!({ "blob": zeros });
        api.create(&PostParams::default(), &obj).await.unwrap();
        patch_status(
            &api,
            &format!("blob-{i}"),
            json!({"phase": "Ready", "n": i}),
        )
        .await;
    }
    env.restart_restatus().await;
    for i in 0..n {
        let id = env.identity(
            support::cluster::TestType::GROUP,
            BLOBS.plural,
            &format!("blob-{i}"),
        );
        env.wait_recorded(&id, &json!({"phase": "Ready", "n": i}))
            .await;
    }
    let peak = env.restatus[0].peak_rss();
    assert!(
        peak < 96 << 20,
        "peak RSS {} MiB while resyncing large objects",
        peak >> 20
    );
}
