//! Encryption at rest: saved statuses are sealed in Redis, and a record sealed under an old
//! key is restored after the keys rotate. Real redis-server, real restatus processes, the real
//! API server for the restore.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use kube::{ResourceExt, api::PostParams};
use restatus::{
    policy::{ANNOTATION_RESTORE, status_of},
    store::{KeySchema, ObjectIdentity},
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
