//! The store against a real `redis-server`: the history kept beside each record, and what
//! resync reads and expires.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::{sync::Arc, time::Duration};

use restatus::store::{
    Keyring, ObjectIdentity, RecordWrite, Source, Store, StoreMetrics, WriteOutcome,
};
use serde_json::{Value, json};
use support::redis::RedisServer;

const BUDGET: Duration = Duration::from_secs(2);
const KEY: &str = "k:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

fn store(redis: &RedisServer, prefix: &str, keyring: bool, history: usize) -> Store {
    let keyring = keyring.then(|| Arc::new(Keyring::parse(KEY).unwrap()));
    Store::connect(
        &redis.url(),
        prefix,
        "default",
        StoreMetrics::register(&mut restatus::telemetry::registry()),
        keyring,
    )
    .unwrap()
    .keep_history(history)
}

fn id(name: &str) -> ObjectIdentity {
    ObjectIdentity {
        group: "infra.example.com".into(),
        resource: "kubernetesclusters".into(),
        namespace: Some("team-a".into()),
        name: name.into(),
    }
}

fn write(name: &str, uid: &str, rv: u32, status: Value, deleting: bool) -> RecordWrite {
    RecordWrite {
        identity: id(name),
        status,
        api_version: "infra.example.com/v1alpha1".into(),
        kind: "KubernetesCluster".into(),
        uid: uid.into(),
        resource_version: rv.to_string(),
        generation: None,
        source: if deleting {
            Source::Deleted
        } else {
            Source::Written
        },
        deleting,
        retention: Duration::from_secs(3600),
        restored_by: None,
        catch_up: None,
        listed_at: None,
    }
}

async fn history(redis: &RedisServer, s: &Store, name: &str) -> Vec<String> {
    let mut conn = redis.conn().await;
    redis::cmd("LRANGE")
        .arg(s.keys().history(&id(name)))
        .arg(0)
        .arg(-1)
        .query_async(&mut conn)
        .await
        .unwrap()
}

#[tokio::test]
async fn the_last_statuses_are_kept_newest_first_and_follow_the_records_clock() {
    let redis = RedisServer::start().await;
    let s = store(&redis, &support::unique("hist"), false, 3);
    for (rv, phase) in [(1, "a"), (2, "b"), (3, "b"), (4, "c"), (5, "d")] {
        s.record(
            &write("x", "u1", rv, json!({"phase": phase}), false),
            BUDGET,
        )
        .await
        .unwrap();
    }
    let entries: Vec<Value> = history(&redis, &s, "x")
        .await
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    // An unchanged status adds no entry; three are kept.
    let phases: Vec<&str> = entries
        .iter()
        .map(|e| e["status"]["phase"].as_str().unwrap())
        .collect();
    assert_eq!(phases, ["d", "c", "b"]);
    assert_eq!(entries[0]["uid"], "u1");
    assert_eq!(entries[0]["resourceVersion"], "5");
    assert!(entries[0]["recordedAt"].as_str().unwrap().ends_with('Z'));

    // A DELETE starts the record's clock; the history follows it.
    s.record(&write("x", "u1", 6, json!({"phase": "d"}), true), BUDGET)
        .await
        .unwrap();
    let hist_ttl = redis.pttl(&s.keys().history(&id("x"))).await;
    assert!(hist_ttl > 0, "{hist_ttl}");
    assert!(redis.pttl(&s.keys().record(&id("x"))).await > 0);
    // A restore makes both last.
    s.mark_restored(&id("x"), "u1", "u2", "", BUDGET)
        .await
        .unwrap();
    assert_eq!(redis.pttl(&s.keys().history(&id("x"))).await, -1);

    // Without history, nothing is kept.
    let none = store(&redis, &support::unique("nohist"), false, 0);
    none.record(&write("y", "u1", 1, json!({"phase": "a"}), false), BUDGET)
        .await
        .unwrap();
    assert!(history(&redis, &none, "y").await.is_empty());
}

#[tokio::test]
async fn with_a_keyring_history_entries_are_sealed_for_the_history_only() {
    let redis = RedisServer::start().await;
    let s = store(&redis, &support::unique("sealedhist"), true, 5);
    s.record(
        &write("x", "u1", 1, json!({"token": "t0p-s3cret"}), false),
        BUDGET,
    )
    .await
    .unwrap();
    let entries = history(&redis, &s, "x").await;
    assert_eq!(entries.len(), 1);
    assert!(entries[0].starts_with("enc:v1:k:"), "{}", entries[0]);
    assert!(!entries[0].contains("t0p-s3cret"));
    let keyring = Keyring::parse(KEY).unwrap();
    let record_key = s.keys().record(&id("x"));
    let opened = keyring
        .open(&format!("{record_key}#history"), &entries[0])
        .unwrap();
    let entry: Value = serde_json::from_slice(&opened).unwrap();
    assert_eq!(entry["status"], json!({"token": "t0p-s3cret"}));
    // It does not open as the record: a history entry cannot be replayed into it.
    assert!(keyring.open(&record_key, &entries[0]).is_err());
}

#[tokio::test]
async fn history_adds_a_bounded_number_of_bytes_per_record() {
    let redis = RedisServer::start().await;
    let status = |i: usize| {
        let conditions: Vec<Value> = (0..12)
            .map(|c| json!({"type": format!("Condition{c}"), "status": "True", "reason": "Ready", "message": format!("all good {i}"), "lastTransitionTime": "2026-12-01T00:00:00Z"}))
            .collect();
        json!({"phase": "Running", "endpoint": format!("https://203.0.113.{}:6443", i % 250), "conditions": conditions})
    };
    let bytes = status(0).to_string().len();
    let mut used = Vec::new();
    for keep in [0, 5] {
        let s = store(&redis, &support::unique("mem"), false, keep);
        let mut conn = redis.conn().await;
        let _: () = redis::cmd("FLUSHALL").query_async(&mut conn).await.unwrap();
        for name in 0..200 {
            // Five statuses per object, each different.
            for rv in 0..5 {
                s.record(
                    &write(
                        &format!("o{name}"),
                        "u",
                        rv,
                        status(name * 10 + rv as usize),
                        false,
                    ),
                    BUDGET,
                )
                .await
                .unwrap();
            }
        }
        let info: String = redis::cmd("INFO")
            .arg("memory")
            .query_async(&mut conn)
            .await
            .unwrap();
        let used_memory: u64 = info
            .lines()
            .find_map(|l| l.strip_prefix("used_memory:"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        used.push(used_memory);
    }
    let per_record = (used[1] - used[0]) / 200;
    eprintln!(
        "history of 5 adds {per_record} B per record (status of {bytes} B; {:.2}x the status bytes times 5)",
        per_record as f64 / (5 * bytes) as f64
    );
    // Five entries of the status with a little metadata each (and the allocator's rounding),
    // no more.
    assert!(per_record < 5 * bytes as u64 * 3 / 2, "{per_record}");
    assert!(
        per_record > 5 * bytes as u64 / 2,
        "{per_record}: is history kept at all?"
    );
}

#[tokio::test]
async fn one_holder_takes_a_lock_until_it_ends_on_its_own() {
    let redis = RedisServer::start().await;
    let s = store(&redis, &support::unique("lock"), false, 0);
    let hold = Duration::from_millis(300);
    assert!(
        s.try_lock("resync", "replica-a", hold, BUDGET)
            .await
            .unwrap()
    );
    assert!(
        !s.try_lock("resync", "replica-b", hold, BUDGET)
            .await
            .unwrap()
    );
    assert!(
        s.try_lock("other", "replica-b", hold, BUDGET)
            .await
            .unwrap()
    );
    // Its holder keeps it for the hold from now, as a pass that runs long does.
    let kept = Duration::from_secs(60);
    assert!(
        s.try_lock("resync", "replica-a", kept, BUDGET)
            .await
            .unwrap()
    );
    let key = s.keys().lock("resync");
    assert!(redis.pttl(&key).await > 30_000);
    assert!(
        !s.try_lock("resync", "replica-b", hold, BUDGET)
            .await
            .unwrap()
    );
    assert!(
        s.try_lock("resync", "replica-a", hold, BUDGET)
            .await
            .unwrap()
    );
    support::eventually(Duration::from_secs(5), "the lock to end", || async {
        s.try_lock("resync", "replica-b", hold, BUDGET)
            .await
            .unwrap()
            .then_some(())
    })
    .await;
    // Only its holder releases it.
    s.unlock("resync", "replica-a", BUDGET).await.unwrap();
    assert!(redis.pttl(&key).await > 0, "replica-b holds it");
    s.unlock("resync", "replica-b", BUDGET).await.unwrap();
    assert_eq!(redis.pttl(&key).await, -2, "released");
    // A lock without an expiry was not set by restatus: it stops no pass for good.
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg("planted")
        .query_async(&mut redis.conn().await)
        .await
        .unwrap();
    assert!(
        s.try_lock("resync", "replica-a", hold, BUDGET)
            .await
            .unwrap()
    );
    assert!(redis.pttl(&key).await > 0);
}

/// A catch-up is held for one incarnation: the same incarnation is not queued twice while it
/// is held, and nothing renews its hold, but a newer incarnation is queued at once.
#[tokio::test]
async fn a_catch_up_is_held_per_incarnation() {
    let redis = RedisServer::start().await;
    let s = store(&redis, &support::unique("hold"), false, 0);
    s.ensure_queue_group(BUDGET).await.unwrap();
    let job = |uid: &str| restatus::store::RestoreJob {
        id: String::new(),
        action: restatus::store::JobKind::CatchUp { uid: uid.into() },
        identity: id("x"),
        api_version: "infra.example.com/v1alpha1".into(),
        kind: "KubernetesCluster".into(),
        record_uid: "old".into(),
        created_at: jiff::Timestamp::now(),
        deadline: jiff::Timestamp::now(),
        retry: false,
        inline: false,
        request_uid: String::new(),
        policy: None,
    };
    let hold = Duration::from_secs(60);
    let key = s.keys().catch_up(&id("x"));
    assert!(
        s.enqueue_catch_up(&job("b"), "b", hold, BUDGET)
            .await
            .unwrap()
    );
    let _: () = redis::cmd("PEXPIRE")
        .arg(&key)
        .arg(20_000)
        .query_async(&mut redis.conn().await)
        .await
        .unwrap();
    assert!(
        !s.enqueue_catch_up(&job("b"), "b", hold, BUDGET)
            .await
            .unwrap()
    );
    assert!(
        redis.pttl(&key).await <= 20_000,
        "a second try does not renew the hold"
    );
    assert!(
        s.enqueue_catch_up(&job("c"), "c", hold, BUDGET)
            .await
            .unwrap(),
        "a newer incarnation is not held up by an earlier one's hold"
    );
    assert_eq!(s.queue_depth(BUDGET).await.unwrap(), 2);
}

#[tokio::test]
async fn resync_stops_the_clock_of_a_delete_the_object_outlived() {
    let redis = RedisServer::start().await;
    let s = store(&redis, &support::unique("refused"), false, 0);
    let key = s.keys().record(&id("x"));
    let status = json!({"phase": "a"});
    s.record(&write("x", "u1", 5, status.clone(), false), BUDGET)
        .await
        .unwrap();
    // The DELETE, of the same resourceVersion, is recorded and starts the clock.
    s.record(&write("x", "u1", 5, status.clone(), true), BUDGET)
        .await
        .unwrap();
    assert!(redis.pttl(&key).await > 0);
    let fields = redis.hgetall(&key).await;
    assert!(fields.contains_key("deletedAt"));
    let deleted_at: jiff::Timestamp = fields["recordedAt"].parse().unwrap();
    let observed = |listed_at| RecordWrite {
        source: Source::Observed,
        listed_at,
        ..write("x", "u1", 5, status.clone(), false)
    };
    // Seen by a list that may have been taken before the DELETE landed: it proves nothing.
    for listed_at in [None, Some(deleted_at)] {
        assert_eq!(
            s.record(&observed(listed_at), BUDGET).await.unwrap(),
            WriteOutcome::Stale,
            "{listed_at:?}"
        );
        assert!(redis.pttl(&key).await > 0, "{listed_at:?}");
    }
    // Nor does a list taken within the time a write may take to land.
    let soon = deleted_at + jiff::SignedDuration::from_secs(60);
    assert_eq!(
        s.record(&observed(Some(soon)), BUDGET).await.unwrap(),
        WriteOutcome::Stale
    );
    // Listed well after, still there without a deletionTimestamp: the DELETE was refused.
    let later = deleted_at + jiff::SignedDuration::from_secs(121);
    assert_eq!(
        s.record(&observed(Some(later)), BUDGET).await.unwrap(),
        WriteOutcome::Written
    );
    assert_eq!(redis.pttl(&key).await, -1);
    assert!(!redis.hgetall(&key).await.contains_key("deletedAt"));
}

/// A status write recorded at the object's resourceVersion that never landed (refused after
/// the mutating webhook by the schema or a validating policy), and a record of a made-up
/// later resourceVersion: resync's observation of the live object overrules both once the
/// list is taken well after they were written, and never sooner.
#[tokio::test]
async fn resync_overrules_a_record_of_a_write_that_never_landed() {
    let redis = RedisServer::start().await;
    let s = store(&redis, &support::unique("overrule"), false, 0);
    let live = json!({"phase": "live"});
    for (name, rv) in [("same", 5), ("ahead", 9_999_999)] {
        let key = s.keys().record(&id(name));
        s.record(&write(name, "u1", 3, live.clone(), false), BUDGET)
            .await
            .unwrap();
        // A status write (rank 1) of the live resourceVersion, or of one far ahead.
        let refused = write(name, "u1", rv, json!({"phase": "refused"}), false);
        assert_eq!(
            s.record(&refused, BUDGET).await.unwrap(),
            WriteOutcome::Written
        );
        let at: jiff::Timestamp = redis.hgetall(&key).await["recordedAt"].parse().unwrap();
        let observed = |listed_at| RecordWrite {
            source: Source::Observed,
            listed_at: Some(listed_at),
            ..write(name, "u1", 5, live.clone(), false)
        };
        assert_eq!(
            s.record(&observed(at + jiff::SignedDuration::from_secs(60)), BUDGET)
                .await
                .unwrap(),
            WriteOutcome::Stale,
            "{name}: a list this soon may predate the write"
        );
        assert_eq!(
            s.record(&observed(at + jiff::SignedDuration::from_secs(121)), BUDGET)
                .await
                .unwrap(),
            WriteOutcome::Written,
            "{name}"
        );
        let fields = redis.hgetall(&key).await;
        assert_eq!(fields["resourceVersion"], "5");
        assert_eq!(
            s.get(&id(name), BUDGET).await.unwrap().unwrap().status,
            live
        );
        // The webhook's own observations still never go back.
        let webhook_old = RecordWrite {
            source: Source::Observed,
            ..write(name, "u1", 4, json!({"phase": "old"}), false)
        };
        assert_eq!(
            s.record(&webhook_old, BUDGET).await.unwrap(),
            WriteOutcome::Stale
        );
    }
}

/// An object of another uid that restatus restored (or failed to restore), or whose record
/// came from a forged DELETE: resync records its status as its own even though the record
/// says its object was deleted, and the webhook's oldObject of a new incarnation still does not.
#[tokio::test]
async fn resync_records_an_objects_own_status_over_a_deleted_record() {
    let redis = RedisServer::start().await;
    let s = store(&redis, &support::unique("own"), false, 0);
    let saved = json!({"phase": "saved"});
    s.record(&write("x", "old", 5, saved.clone(), true), BUDGET)
        .await
        .unwrap();
    let own = json!({"phase": "own"});
    let webhook = RecordWrite {
        source: Source::Observed,
        ..write("x", "new", 7, own.clone(), false)
    };
    assert_eq!(
        s.record(&webhook, BUDGET).await.unwrap(),
        WriteOutcome::Stale
    );
    let resync = RecordWrite {
        listed_at: Some(jiff::Timestamp::now()),
        ..webhook
    };
    assert_eq!(
        s.record(&resync, BUDGET).await.unwrap(),
        WriteOutcome::Written
    );
    let record = s.get(&id("x"), BUDGET).await.unwrap().unwrap();
    assert_eq!((record.uid.as_str(), record.status), ("new", own));
    assert_eq!(redis.pttl(&s.keys().record(&id("x"))).await, -1);
}
