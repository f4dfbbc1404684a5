//! A restore lands only where it was asked for: a job is bound to its CREATE by the id the
//! CREATE's answer puts on the object, a pending marker is believed only while Redis holds
//! its job, and a job decides from what the live object shows.

use std::collections::BTreeMap;

use k8s_openapi::api::events::v1::Event;
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
};
use restatus::policy::{
    ANNOTATION_RESTORE, ANNOTATION_RESTORE_JOB, ANNOTATION_RESTORED_AT, RESTORE_PENDING, status_of,
};
use serde_json::json;

use super::{outcome, saved_status, wait_outcome, wait_queue_empty};
use crate::support::{
    cluster::{Env, EnvOptions, WAIT, kubernetes_cluster, patch_status, wait_restored},
    eventually,
    identity::{self, cluster_rules},
};

/// The restatus annotations of an object.
fn restatus_annotations(obj: &kube::api::DynamicObject) -> BTreeMap<String, String> {
    obj.annotations()
        .iter()
        .filter(|(k, _)| k.starts_with("restatus.io/"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

#[tokio::test]
async fn a_job_whose_create_failed_never_lands_in_the_object_someone_else_made() {
    let env = Env::start(EnvOptions::default()).await;
    let tenant = identity::user(&env.client, &env.ns, "tenant", cluster_rules(false)).await;
    let operator = identity::user(&env.client, &env.ns, "operator", cluster_rules(true)).await;
    let saved = saved_status();
    env.create_record_delete("x", &saved).await;
    let r = &env.restatus[0];

    // A tenant who may create but not write status takes the name: no restore for them.
    let theirs = tenant
        .clusters(&env.ns)
        .create(&PostParams::default(), &kubernetes_cluster("x"))
        .await
        .unwrap();
    assert!(restatus_annotations(&theirs).is_empty(), "{theirs:?}");

    // An operator's CREATE from a stale cache: admitted (a job is queued for it), then
    // refused by storage with AlreadyExists.
    let err = operator
        .clusters(&env.ns)
        .create(&PostParams::default(), &kubernetes_cluster("x"))
        .await
        .expect_err("AlreadyExists");
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 409),
        "{err}"
    );
    assert_eq!(
        r.metric("restatus_restore_jobs_enqueued_total").await,
        1.0,
        "the operator's CREATE was admitted with a job"
    );

    // The job finds an object that does not carry its id and touches nothing.
    wait_outcome(r, "not_ours", 1.0).await;
    wait_queue_empty(&env).await;
    let after = env.clusters().get("x").await.unwrap();
    assert_eq!(status_of(&after), None, "the tenant did not get the status");
    assert!(restatus_annotations(&after).is_empty(), "{after:?}");
    assert_eq!(
        after.metadata.resource_version, theirs.metadata.resource_version,
        "untouched"
    );
    let events: Api<Event> = Api::namespaced(env.client.clone(), &env.ns);
    let about_x: Vec<Event> = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("x"))
        .collect();
    assert!(about_x.is_empty(), "{about_x:?}");
    assert_eq!(outcome(r, "restored").await, 0.0);
    assert_eq!(outcome(r, "failed").await, 0.0);
    // The record still holds the saved status for the operator.
    assert_eq!(
        env.recorded_status(&env.kc_id("x")).await,
        Some(saved.clone())
    );

    // Once the tenant's object is gone, the operator's own recreate is restored.
    tenant
        .clusters(&env.ns)
        .delete("x", &DeleteParams::default())
        .await
        .unwrap();
    eventually(WAIT, "the tenant's x to be gone", || async {
        env.clusters()
            .get_opt("x")
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    let created = operator
        .clusters(&env.ns)
        .create(&PostParams::default(), &kubernetes_cluster("x"))
        .await
        .unwrap();
    assert_eq!(
        created
            .annotations()
            .get(ANNOTATION_RESTORE)
            .map(String::as_str),
        Some(RESTORE_PENDING)
    );
    let restored = wait_restored(&env.clusters(), "x").await;
    assert_eq!(status_of(&restored), Some(&saved));
}

#[tokio::test]
async fn a_pending_marker_that_reached_the_object_unreviewed_is_not_believed() {
    let env = Env::start(EnvOptions::default()).await;
    let api = env.clusters();
    let saved = saved_status();
    for name in ["forged", "forged-bare", "updated"] {
        env.create_record_delete(name, &saved).await;
    }

    // While restatus is not called (a rollout, an OOM kill, the first minute after install),
    // objects are created with a pending marker restatus never set.
    env.pause_webhook().await;
    let marked = |name: &str, job: Option<&str>| {
        let mut obj = kubernetes_cluster(name);
        let mut annotations =
            BTreeMap::from([(ANNOTATION_RESTORE.to_owned(), RESTORE_PENDING.to_owned())]);
        if let Some(job) = job {
            annotations.insert(ANNOTATION_RESTORE_JOB.to_owned(), job.to_owned());
        }
        obj.metadata.annotations = Some(annotations);
        obj
    };
    for (name, job) in [
        ("forged", Some("0123456789abcdef0123456789abcdef")),
        ("forged-bare", None),
        ("updated", Some("feedfacefeedfacefeedfacefeedface")),
    ] {
        api.create(&PostParams::default(), &marked(name, job))
            .await
            .unwrap();
    }
    env.resume_webhook().await;

    // The owner's status writes are its own: nothing of the earlier incarnation is merged
    // in, and they are recorded as this incarnation's.
    let fresh = json!({"phase": "Fresh"});
    for name in ["forged", "forged-bare"] {
        let written = patch_status(&api, name, fresh.clone()).await;
        assert_eq!(status_of(&written), Some(&fresh), "{name}: nothing merged");
        assert_eq!(
            env.recorded_status(&env.kc_id(name)).await,
            Some(fresh.clone()),
            "{name}: recorded as written"
        );
    }
    // The marker is taken off by the worker (a status write cannot change metadata).
    for name in ["forged", "forged-bare"] {
        eventually(
            WAIT,
            &format!("the marker of {name} to be taken off"),
            || async {
                let live = api.get(name).await.ok()?;
                restatus_annotations(&live).is_empty().then_some(())
            },
        )
        .await;
    }
    let r = &env.restatus[0];
    assert_eq!(
        r.metric("restatus_dead_markers_total{action=\"queued\"}")
            .await,
        2.0
    );
    wait_outcome(r, "unmarked", 2.0).await;
    let live = api.get("forged").await.unwrap();
    assert_eq!(status_of(&live), Some(&fresh), "the status was left alone");

    // An update of the main resource takes it off in its own answer.
    let updated = api
        .patch(
            "updated",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"touched": "yes"}}})),
        )
        .await
        .unwrap();
    assert!(restatus_annotations(&updated).is_empty(), "{updated:?}");
    assert_eq!(
        r.metric("restatus_dead_markers_total{action=\"stripped\"}")
            .await,
        1.0
    );
    assert_eq!(outcome(r, "restored").await, 0.0);
    assert!(!live.annotations().contains_key(ANNOTATION_RESTORED_AT));
}

/// How many StatusRestored Events were reported about each object of the namespace (an Event
/// series counts each).
async fn restored_events_by_object(env: &Env) -> BTreeMap<String, i32> {
    let events: Api<Event> = Api::namespaced(env.client.clone(), &env.ns);
    let mut counts = BTreeMap::new();
    for e in events.list(&ListParams::default()).await.unwrap().items {
        let Some(name) = e.regarding.as_ref().and_then(|r| r.name.clone()) else {
            continue;
        };
        if e.reason.as_deref() == Some("StatusRestored") {
            *counts.entry(name).or_insert(0) += e.series.as_ref().map_or(1, |s| s.count);
        }
    }
    counts
}

#[tokio::test]
async fn with_one_of_two_replicas_killed_during_a_storm_every_object_is_restored_once() {
    use futures::StreamExt;
    const OBJECTS: usize = 1000;
    let started = std::time::Instant::now();
    let mut env = Env::start(EnvOptions {
        replicas: 2,
        args: vec![
            // Jobs of the killed replica are reclaimed soon.
            "--restore-claim-min-idle=2s".into(),
            // A storm on a loaded machine: the creator's access check must not run out of
            // time, or its object is (rightly) not restored.
            "--access-check-timeout=5s".into(),
        ],
        ..Default::default()
    })
    .await;
    let names: Vec<String> = (0..OBJECTS).map(|i| format!("storm-{i:03}")).collect();
    let status_for = |i: usize| json!({"clusterID": format!("c-{i}"), "apiServerURL": format!("https://203.0.113.{}:6443", i % 250)});
    futures::stream::iter(names.iter().enumerate())
        .map(|(i, name)| {
            let env = &env;
            async move { env.create_record_delete(name, &status_for(i)).await }
        })
        // Recording is not what is tested: at 16 at a time the test's own Redis polls keep
        // within their client's timeouts on a loaded machine.
        .buffer_unordered(16)
        .collect::<Vec<()>>()
        .await;
    let recorded = started.elapsed();

    // The storm: every object is created again at once, while the second replica (a worker
    // the webhook does not call) is killed once it has restored some, with jobs of its own
    // in flight: some mid-patch, their status write admitted (and recorded) but maybe never
    // stored.
    let api = env.clusters();
    let storm = futures::stream::iter(names.clone())
        .map(|name| {
            let api = api.clone();
            async move {
                api.create(&PostParams::default(), &kubernetes_cluster(&name))
                    .await
                    .unwrap();
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<()>>();
    let victim = &mut env.restatus[1];
    let kill = async {
        eventually(
            WAIT,
            "the second replica to restore some objects",
            || async { (outcome(victim, "restored").await >= 10.0).then_some(()) },
        )
        .await;
        victim.kill();
    };
    let storm_started = std::time::Instant::now();
    tokio::join!(storm, kill);
    // The jobs the killed replica held.
    let orphaned: Vec<redis::Value> = redis::cmd("XPENDING")
        .arg(env.keys.queue())
        .arg("restatus")
        .arg("-")
        .arg("+")
        .arg(OBJECTS)
        .arg(format!("{}-1", env.ns))
        .query_async(&mut env.redis.conn().await)
        .await
        .unwrap();
    assert!(
        env.restatus[1].pid().is_none(),
        "the second replica was killed"
    );

    // One deadline for the whole storm: on a loaded 2-core machine the survivor works through
    // a thousand jobs, the killed replica's among them, for a minute or more.
    let restored = eventually(
        std::time::Duration::from_secs(600),
        "every object to be restored",
        || async {
            let all = api.list(&ListParams::default()).await.ok()?.items;
            let done: BTreeMap<String, kube::api::DynamicObject> = all
                .into_iter()
                .filter(|o| {
                    let a = o.annotations();
                    a.contains_key(ANNOTATION_RESTORED_AT) && !a.contains_key(ANNOTATION_RESTORE)
                })
                .map(|o| (o.name_any(), o))
                .collect();
            names.iter().all(|n| done.contains_key(n)).then_some(done)
        },
    )
    .await;
    for (i, name) in names.iter().enumerate() {
        assert_eq!(status_of(&restored[name]), Some(&status_for(i)), "{name}");
    }
    wait_queue_empty(&env).await;
    let restored_in = storm_started.elapsed();
    // No object was reported restored twice. A replica killed between its annotation swap and
    // its Event reports nothing for that object (Events are best effort); every other one
    // has its single Event.
    let counts = restored_events_by_object(&env).await;
    let mut reported = 0;
    for name in &names {
        let count = counts.get(name).copied().unwrap_or(0);
        assert!(count <= 1, "{name} reported restored {count} times");
        reported += count;
    }
    let survivor = &env.restatus[0];
    let reclaimed = survivor
        .metric("restatus_restore_jobs_reclaimed_total")
        .await;
    eprintln!(
        "{OBJECTS} objects: recorded in {recorded:?}; recreated, every one restored and the queue empty {restored_in:?} after the storm began; {reported} restores reported; the killed replica held {} jobs; the survivor counted {} restored, {} already restored, {reclaimed} reclaimed",
        orphaned.len(),
        outcome(survivor, "restored").await,
        outcome(survivor, "already_restored").await
    );
    assert!(
        reclaimed >= orphaned.len().min(1) as f64,
        "the {} jobs the killed replica held were taken over",
        orphaned.len()
    );
    assert!(
        reported as usize >= OBJECTS - 32,
        "only {reported} of {OBJECTS} restores reported"
    );
}

#[tokio::test]
async fn a_status_write_that_was_recorded_but_never_stored_is_written_again() {
    // The webhook queues the job; no worker takes it until the scene is set.
    let env = Env::start(EnvOptions::webhook_only()).await;
    let api = env.clusters();
    let saved = saved_status();
    let created = super::recreate_pending(&env, "lost-write", &saved).await;
    // A replica killed in the middle of its status patch: the patch passed admission, so
    // the record was adopted by the new incarnation, but the API server never stored it.
    let id = env.kc_id("lost-write");
    let key = env.keys.record(&id);
    let mut conn = env.redis.conn().await;
    let job = created.annotations()[ANNOTATION_RESTORE_JOB].clone();
    let _: () = redis::cmd("HSET")
        .arg(&key)
        .arg("uid")
        .arg(created.uid().unwrap())
        .arg("restoredBy")
        .arg(&job)
        .query_async(&mut conn)
        .await
        .unwrap();
    let live = api.get("lost-write").await.unwrap();
    assert_eq!(status_of(&live), None, "the write never landed");

    // The job, delivered now, decides from the live object: it writes the status again.
    let worker = env.start_replica("worker", &[]).await;
    let restored = wait_restored(&api, "lost-write").await;
    assert_eq!(status_of(&restored), Some(&saved));
    wait_outcome(&worker, "restored", 1.0).await;
}
