//! Encryption at rest: saved statuses are sealed in Redis, and a record sealed under an old
//! key is restored after the keys rotate; with sealing required nothing planted in clear is
//! believed, digests and dead letters are bound to their place, and `restatus reseal` seals
//! what was written before. Real redis-server, real restatus processes, the real API server
//! for the restore.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::{sync::Arc, time::Duration};

use kube::{ResourceExt, api::PostParams};
use restatus::{
    policy::{ANNOTATION_RESTORE, status_of},
    store::{
        KeySchema, Keyring, ObjectIdentity, RecordWrite, RestoreJob, Source, Store, StoreMetrics,
    },
};
use serde_json::json;
use support::{
    cluster::{Env, EnvOptions, kubernetes_cluster, wait_restored},
    fixture,
    http::{Alpn, TlsClient},
    redis::RedisServer,
    restatus::{Options, Restatus},
};

const KEY_A: &str = "a:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const KEY_B: &str = "b:HxwdGhsYGRYXFBUSExAREA8ODQwLCgkIBwYFBAMCAQA=";

/// A keyring file with `keys`, one per line.
fn keyring(dir: &tempfile::TempDir, name: &str, keys: &[&str]) -> String {
    let path = dir.path().join(name);
    std::fs::write(&path, format!("# test keys\n{}\n", keys.join("\n"))).unwrap();
    path.display().to_string()
}

fn kc() -> ObjectIdentity {
    support::fixture_cluster()
}

#[tokio::test]
async fn with_a_keyring_no_status_is_stored_in_clear_and_a_rotation_keeps_old_records_readable() {
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start().await;
    let mut opts = Options::new(redis.url());
    opts.args = vec!["--encryption-key-file".into(), keyring(&dir, "a", &[KEY_A])];
    let prefix = opts.key_prefix.clone();
    let mut r = Restatus::start(opts).await;
    let client = TlsClient::new(&r.ca_file(), Alpn::Http2);
    let review = fixture("reviews/kc-update-status.json");
    let resp = client
        .post(&r.mutate_url(), review.to_string())
        .await
        .unwrap();
    assert_eq!(resp.status, 200, "{}", resp.body);

    let key = KeySchema::new(&prefix, "default").record(&kc());
    let rec = redis.hgetall(&key).await;
    let stored = &rec["status"];
    assert!(stored.starts_with("enc:v1:a:"), "{stored}");
    // No value of the status appears anywhere in Redis.
    let status = &review["request"]["object"]["status"];
    let mut conn = redis.conn().await;
    let dump: Vec<Vec<u8>> = redis::cmd("HVALS")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    let everything = dump.concat();
    for needle in ["203.0.113.10", "c-7f3a9", "Provisioned", "1.31.4"] {
        assert!(
            !everything
                .windows(needle.len())
                .any(|w| w == needle.as_bytes()),
            "{needle} stored in clear"
        );
    }
    assert_eq!(status["apiServerURL"], "https://203.0.113.10:6443");
    // The digest is keyed, not a plain hash anyone could recompute.
    assert!(rec["digest"].starts_with("a:"), "{}", rec["digest"]);

    // Rotate: B seals, A still opens; a new status is sealed with B.
    drop(client);
    r.send_sigterm();
    r.wait_exit();
    let mut opts = Options::new(redis.url());
    opts.key_prefix = prefix.clone();
    opts.args = vec![
        "--encryption-key-file".into(),
        keyring(&dir, "ba", &[KEY_B, KEY_A]),
    ];
    let r = Restatus::start(opts).await;
    let client = TlsClient::new(&r.ca_file(), Alpn::Http2);
    let mut changed = review.clone();
    changed["request"]["uid"] = json!("rotated-1");
    changed["request"]["object"]["status"]["phase"] = json!("Upgrading");
    let resp = client
        .post(&r.mutate_url(), changed.to_string())
        .await
        .unwrap();
    assert_eq!(resp.status, 200, "{}", resp.body);
    let rec = redis.hgetall(&key).await;
    assert!(rec["status"].starts_with("enc:v1:b:"), "{}", rec["status"]);
    assert_eq!(
        r.metric("restatus_admission_requests_total{operation=\"UPDATE\",outcome=\"recorded\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn a_record_sealed_under_the_old_key_is_restored_after_a_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let rotated = keyring(&dir, "ba", &[KEY_B, KEY_A]);
    // The webhook (no worker) seals with A and queues the restore; a worker that already has
    // the rotated keyring restores it.
    let env = Env::start(EnvOptions::webhook_only().with_keyring(KEY_A)).await;
    let saved =
        json!({"phase": "Running", "endpoint": "https://203.0.113.50:6443", "token": "t0p-s3cret"});
    env.create_record_delete("sealed", &saved).await;
    let stored = env.record(&env.kc_id("sealed")).await;
    assert!(stored["status"].starts_with("enc:v1:a:"));
    let api = env.clusters();
    let created = api
        .create(&PostParams::default(), &kubernetes_cluster("sealed"))
        .await
        .unwrap();
    assert!(created.annotations().contains_key(ANNOTATION_RESTORE));
    let _worker = env
        .start_replica("rotated", &["--encryption-key-file", &rotated])
        .await;
    let restored = wait_restored(&api, "sealed").await;
    assert_eq!(status_of(&restored), Some(&saved));
}

/// A store on `redis` under `prefix`, sealing with `keyring` (key lines) when given.
fn store(redis: &RedisServer, prefix: &str, keyring: Option<&[&str]>) -> Store {
    let keyring = keyring.map(|keys| Arc::new(Keyring::parse(&keys.join("\n")).unwrap()));
    Store::connect(
        &redis.url(),
        prefix,
        "default",
        StoreMetrics::register(&mut restatus::telemetry::registry()),
        keyring,
    )
    .unwrap()
}

fn write(id: &ObjectIdentity, uid: &str, status: serde_json::Value) -> RecordWrite {
    RecordWrite {
        identity: id.clone(),
        status,
        api_version: "infra.example.com/v1alpha1".into(),
        kind: "KubernetesCluster".into(),
        uid: uid.into(),
        resource_version: "1".into(),
        generation: None,
        source: Source::Written,
        deleting: false,
        retention: Duration::from_secs(3600),
        restored_by: None,
        catch_up: None,
        listed_at: None,
    }
}

fn named(name: &str) -> ObjectIdentity {
    ObjectIdentity {
        name: name.into(),
        ..kc()
    }
}

const BUDGET: Duration = Duration::from_secs(2);

#[tokio::test]
async fn with_sealing_required_a_status_planted_in_clear_is_not_restored() {
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start().await;
    let prefix = support::unique("sealed");
    // Someone who can write Redis plants a record in clear for the fixture's object.
    let key = KeySchema::new(&prefix, "default").record(&kc());
    let mut conn = redis.conn().await;
    let _: () = redis::cmd("HSET")
        .arg(&key)
        .arg(&["status", r#"{"phase":"Approved","quota":"unlimited"}"#])
        .arg(&["uid", "planted", "apiVersion", "infra.example.com/v1alpha1"])
        .arg(&[
            "kind",
            "KubernetesCluster",
            "resourceVersion",
            "1",
            "digest",
            "x",
        ])
        .query_async(&mut conn)
        .await
        .unwrap();
    let create = fixture("reviews/kc-create.json");

    for (required, restored) in [(false, true), (true, false)] {
        let mut opts = Options::new(redis.url());
        opts.key_prefix = prefix.clone();
        opts.args = vec![
            "--encryption-key-file".into(),
            keyring(&dir, "a", &[KEY_A]),
            format!("--require-sealed={required}"),
            // No API server here to ask who may get a status back.
            "--restore-for=creators".into(),
        ];
        let r = Restatus::start(opts).await;
        let client = TlsClient::new(&r.ca_file(), Alpn::Http2);
        let answer = r.review_allowed(&client, &create).await;
        let answer: serde_json::Value = serde_json::from_str(&answer.body).unwrap();
        assert_eq!(
            answer["response"].get("patch").is_some(),
            restored,
            "required={required}: {answer}"
        );
        assert_eq!(
            r.metric("restatus_unsealed_records_refused_total").await,
            if required { 1.0 } else { 0.0 }
        );
    }
}

#[tokio::test]
async fn equal_statuses_of_two_records_have_different_digests() {
    let redis = RedisServer::start().await;
    let prefix = support::unique("digest");
    let s = store(&redis, &prefix, Some(&[KEY_A]));
    let same = json!({"phase": "Ready"});
    for name in ["one", "two"] {
        s.record(&write(&named(name), name, same.clone()), BUDGET)
            .await
            .unwrap();
    }
    let keys = KeySchema::new(&prefix, "default");
    let one = redis.hgetall(&keys.record(&named("one"))).await;
    let two = redis.hgetall(&keys.record(&named("two"))).await;
    assert!(one["digest"].starts_with("a:"));
    assert_ne!(one["digest"], two["digest"]);
}

#[tokio::test]
async fn a_dead_letters_copy_of_a_status_cannot_be_replayed_into_the_record() {
    let redis = RedisServer::start().await;
    let prefix = support::unique("dead");
    let s = store(&redis, &prefix, Some(&[KEY_A]));
    let id = named("dead");
    let saved = json!({"phase": "Running", "token": "t0p-s3cret"});
    s.record(&write(&id, "old", saved.clone()), BUDGET)
        .await
        .unwrap();
    s.ensure_queue_group(BUDGET).await.unwrap();
    let now = jiff::Timestamp::now();
    let job = RestoreJob {
        id: "j".into(),
        action: Default::default(),
        identity: id.clone(),
        api_version: "infra.example.com/v1alpha1".into(),
        kind: "KubernetesCluster".into(),
        record_uid: "old".into(),
        created_at: now,
        deadline: now,
        retry: false,
        inline: false,
        request_uid: String::new(),
        policy: None,
    };
    s.enqueue(&job, BUDGET).await.unwrap();
    let mut reader = s.reader(BUDGET).await.unwrap();
    let delivery = reader
        .read("c", 1, Duration::from_millis(100))
        .await
        .unwrap()
        .pop()
        .unwrap();
    s.dead_letter(&delivery, "failed", Some(&saved), BUDGET)
        .await
        .unwrap();

    // Someone with Redis access copies the dead letter's sealed status into the record.
    let keys = KeySchema::new(&prefix, "default");
    let mut conn = redis.conn().await;
    let dead: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(keys.dead_letters())
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .unwrap();
    let copy: String = dead.ids[0].get("status").unwrap();
    assert!(copy.starts_with("enc:v1:a:"), "{copy}");
    let _: () = redis::cmd("HSET")
        .arg(keys.record(&id))
        .arg("status")
        .arg(&copy)
        .query_async(&mut conn)
        .await
        .unwrap();
    let err = s.get(&id, BUDGET).await.unwrap_err();
    assert!(
        restatus::error::error_chain(&err).contains("tampered, or moved from another record"),
        "{}",
        restatus::error::error_chain(&err)
    );
}

#[tokio::test]
async fn reseal_seals_every_record_with_the_current_key_and_says_how_far_it_got() {
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start().await;
    let prefix = support::unique("reseal");
    // Records in clear (written before encryption), and one sealed with the old key A.
    let plain = store(&redis, &prefix, None);
    for i in 0..1500 {
        plain
            .record(
                &write(&named(&format!("plain-{i}")), "u", json!({"i": i})),
                BUDGET,
            )
            .await
            .unwrap();
    }
    store(&redis, &prefix, Some(&[KEY_A]))
        .record(&write(&named("old-key"), "u", json!({"old": true})), BUDGET)
        .await
        .unwrap();
    // Another cluster's record under the same prefix is not touched.
    let other = Store::connect(
        &redis.url(),
        &prefix,
        "other",
        StoreMetrics::register(&mut restatus::telemetry::registry()),
        None,
    )
    .unwrap();
    other
        .record(&write(&named("elsewhere"), "u", json!({"x": 1})), BUDGET)
        .await
        .unwrap();

    let run = |extra: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_restatus"))
            .args([
                "reseal",
                "--redis-url",
                &redis.url(),
                "--key-prefix",
                &prefix,
            ])
            .args([
                "--encryption-key-file",
                &keyring(&dir, "ba", &[KEY_B, KEY_A]),
            ])
            .args(extra)
            .env_clear()
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // Without --seal-plaintext, records in clear are left alone and counted.
    let (ok, old_only) = run(&[]);
    assert!(ok, "{old_only}");
    assert!(
        old_only.contains("done: 1501 records scanned: resealed 1 sealed with an older key, left 1500 in clear (--seal-plaintext seals them), 0 already sealed"),
        "{old_only}"
    );
    let (ok, dry) = run(&["--dry-run", "--seal-plaintext"]);
    assert!(ok, "{dry}");
    assert!(
        dry.contains("done: 1501 records scanned: would reseal 0 sealed with an older key, would seal 1500 in clear, 1 already sealed"),
        "{dry}"
    );
    let keys = KeySchema::new(&prefix, "default");
    let untouched = redis.hgetall(&keys.record(&named("plain-7"))).await;
    assert_eq!(
        untouched["status"], r#"{"i":7}"#,
        "a dry run writes nothing"
    );

    let (ok, done) = run(&["--seal-plaintext"]);
    assert!(ok, "{done}");
    assert!(done.lines().count() >= 2, "progress as it goes: {done}");
    assert!(
        done.contains("done: 1501 records scanned: resealed 0 sealed with an older key, sealed 1500 in clear, 1 already sealed"),
        "{done}"
    );
    for name in ["plain-7", "old-key"] {
        let rec = redis.hgetall(&keys.record(&named(name))).await;
        assert!(
            rec["status"].starts_with("enc:v1:b:"),
            "{name}: {}",
            rec["status"]
        );
        assert!(rec["digest"].starts_with("b:"), "{name}: {}", rec["digest"]);
    }
    let elsewhere = redis
        .hgetall(&KeySchema::new(&prefix, "other").record(&named("elsewhere")))
        .await;
    assert_eq!(elsewhere["status"], r#"{"x":1}"#);
    // Every record now opens where sealing is required, with the new key alone.
    let strict = store(&redis, &prefix, Some(&[KEY_B])).require_sealed(true);
    let rec = strict
        .get(&named("plain-7"), BUDGET)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rec.status, json!({"i": 7}));
    let rec = strict
        .get(&named("old-key"), BUDGET)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rec.status, json!({"old": true}));
    // A second run finds nothing left to do.
    let (ok, again) = run(&["--seal-plaintext"]);
    assert!(ok, "{again}");
    assert!(
        again.contains(
            "resealed 0 sealed with an older key, sealed 0 in clear, 1501 already sealed"
        ),
        "{again}"
    );
}
