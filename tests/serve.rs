//! `restatus serve` as a process: HTTPS with a CA-verifying client over HTTP/2 and HTTP/1.1,
//! a real `redis-server`, Redis outages, and graceful shutdown.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use restatus::store::{KeySchema, ObjectIdentity};
use serde_json::{Value, json};
use support::{
    fixture,
    http::{Alpn, TlsClient},
    redis::RedisServer,
    restatus::{Options, Restatus},
};

fn kc() -> ObjectIdentity {
    support::fixture_cluster()
}

fn key(r: &Restatus) -> String {
    KeySchema::new(&r.key_prefix, "default").record(&kc())
}

#[tokio::test]
async fn https_with_the_generated_ca_over_http2_and_http1() {
    let redis = RedisServer::start().await;
    let r = Restatus::start(Options::new(redis.url())).await;
    for (alpn, version) in [
        (Alpn::Http2, http::Version::HTTP_2),
        (Alpn::Http1, http::Version::HTTP_11),
    ] {
        let client = TlsClient::new(&r.ca_file(), alpn);
        let resp = r
            .review_allowed(&client, &fixture("reviews/kc-update-status.json"))
            .await;
        assert_eq!(resp.version, version, "{alpn:?}");
    }
    let rec = redis.hgetall(&key(&r)).await;
    assert_eq!(
        serde_json::from_str::<Value>(&rec["status"]).unwrap()["apiServerURL"],
        "https://203.0.113.10:6443"
    );
}

#[tokio::test]
async fn a_client_that_does_not_trust_the_ca_is_refused() {
    let redis = RedisServer::start().await;
    let r = Restatus::start(Options::new(redis.url())).await;
    let other = tempfile::tempdir().unwrap();
    let generated =
        restatus::certs::generate(&["127.0.0.1".into()], Duration::from_secs(3600)).unwrap();
    restatus::certs::write(other.path(), &generated).unwrap();
    let client = TlsClient::new(&other.path().join("ca.crt"), Alpn::Http2);
    let err = client
        .post(
            &r.mutate_url(),
            fixture("reviews/kc-update-status.json").to_string(),
        )
        .await
        .expect_err("an untrusted server certificate must fail the handshake");
    assert!(
        err.contains("certificate") || err.contains("Certificate"),
        "{err}"
    );
}

#[tokio::test]
async fn records_deletes_with_expiry_and_ignores_dry_run_over_https() {
    let redis = RedisServer::start().await;
    let r = Restatus::start(Options::new(redis.url())).await;
    let client = TlsClient::new(&r.ca_file(), Alpn::Http2);

    r.review_allowed(&client, &fixture("reviews/kc-update-status-dryrun.json"))
        .await;
    assert!(redis.keys("*").await.is_empty(), "dry-run wrote something");

    r.review_allowed(&client, &fixture("reviews/kc-update-status.json"))
        .await;
    assert_eq!(redis.pttl(&key(&r)).await, -1);
    r.review_allowed(&client, &fixture("reviews/kc-delete.json"))
        .await;
    let rec = redis.hgetall(&key(&r)).await;
    assert!(rec.contains_key("deletedAt"));
    assert!(
        redis.pttl(&key(&r)).await > 0,
        "a deleted object's record expires"
    );

    let bad = client.post(&r.mutate_url(), "garbage").await.unwrap();
    assert_eq!(bad.status, 400);
    assert!(bad.body.starts_with("body is not JSON"), "{}", bad.body);
}

#[tokio::test]
async fn redis_down_answers_allowed_within_the_budget_and_recording_resumes() {
    let mut redis = RedisServer::start().await;
    let r = Restatus::start(Options::new(redis.url())).await;
    let client = TlsClient::new(&r.ca_file(), Alpn::Http2);
    let mut rv = fixture("reviews/kc-update-status.json");
    r.review_allowed(&client, &rv).await;

    redis.stop();
    for i in 0..5 {
        rv["request"]["uid"] = json!(format!("down-{i}"));
        let start = Instant::now();
        r.review_allowed(&client, &rv).await;
        // The budget is 100 ms; the rest is TLS, HTTP and a loaded CI machine.
        assert!(
            start.elapsed() < Duration::from_millis(1000),
            "took {:?}",
            start.elapsed()
        );
    }
    assert!(
        r.metric("restatus_admission_requests_total{operation=\"UPDATE\",outcome=\"error\"}")
            .await
            >= 5.0
    );
    assert!(
        r.metric("restatus_redis_errors_total{command=\"record\"}")
            .await
            >= 5.0
    );
    assert_eq!(
        r.metric("restatus_redis_breaker_open").await,
        0.0,
        "a refused connection fails at once: it does not open the circuit breaker"
    );

    redis.restart().await;
    rv["request"]["object"]["status"]["phase"] = json!("Recovered");
    rv["request"]["object"]["metadata"]["resourceVersion"] = json!("4800");
    rv["request"]["oldObject"]["metadata"]["resourceVersion"] = json!("4800");
    support::eventually(Duration::from_secs(10), "recording to resume", || {
        let rv = rv.clone();
        let (client, r, redis) = (&client, &r, &redis);
        async move {
            r.review_allowed(client, &rv).await;
            let rec = redis.hgetall(&key(r)).await;
            let status: Value = serde_json::from_str(rec.get("status")?).ok()?;
            (status["phase"] == "Recovered").then_some(())
        }
    })
    .await;
}

#[tokio::test]
async fn a_frozen_redis_costs_at_most_the_time_budget() {
    let redis = RedisServer::start().await;
    let mut opts = Options::new(redis.url());
    opts.args = vec!["--redis-timeout".into(), "100ms".into()];
    let r = Restatus::start(opts).await;
    let client = TlsClient::new(&r.ca_file(), Alpn::Http2);
    let rv = fixture("reviews/kc-update-status.json");
    r.review_allowed(&client, &rv).await;

    redis.pause();
    let start = Instant::now();
    r.review_allowed(&client, &rv).await;
    let took = start.elapsed();
    redis.resume();
    assert!(
        took >= Duration::from_millis(100),
        "did not wait for Redis at all: {took:?}"
    );
    assert!(took < Duration::from_millis(1000), "took {took:?}");
}

/// Bytes waiting unread on the server side of connections to `port` (Recv-Q in `ss`).
fn unread_bytes_at(port: u16) -> u64 {
    let out = std::process::Command::new("ss")
        .args([
            "-Htn",
            "state",
            "established",
            "(",
            "sport",
            "=",
            &format!(":{port}"),
            ")",
        ])
        .output()
        .expect("ss (Debian package iproute2)");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test]
async fn sigterm_lets_in_flight_reviews_finish() {
    let redis = RedisServer::start().await;
    let mut opts = Options::new(redis.url());
    opts.args = vec!["--redis-timeout".into(), "3s".into()];
    let mut r = Restatus::start(opts).await;
    let client = TlsClient::new(&r.ca_file(), Alpn::Http2);
    let rv = fixture("reviews/kc-update-status.json");
    r.review_allowed(&client, &rv).await;

    // Freeze Redis so the next review waits inside restatus.
    redis.pause();
    let url = r.mutate_url();
    let body = rv.to_string();
    let in_flight = tokio::spawn(async move { client.post(&url, body).await });
    // The review is in flight once restatus's command sits unread in Redis's socket.
    support::eventually(
        Duration::from_secs(10),
        "the review to reach Redis",
        || async { (unread_bytes_at(redis.port) > 0).then_some(()) },
    )
    .await;
    r.send_sigterm();
    support::eventually(
        Duration::from_secs(10),
        "restatus to take the SIGTERM",
        || async { r.log_text().contains("SIGTERM received").then_some(()) },
    )
    .await;
    // Only now let Redis answer: the review finishes during the shutdown.
    redis.resume();
    let resp = in_flight.await.unwrap().expect("in-flight review answered");
    assert_eq!(resp.status, 200);
    let answer: Value = serde_json::from_str(&resp.body).unwrap();
    assert_eq!(answer["response"]["allowed"], true);
    let status = r.wait_exit();
    assert!(status.expect("exit status").success(), "{}", r.log_text());
}

#[tokio::test]
async fn sigterm_does_not_wait_for_idle_keep_alive_connections() {
    let redis = RedisServer::start().await;
    let mut r = Restatus::start(Options::new(redis.url())).await;
    // A client that keeps its HTTP/2 connection open, as the API server does.
    let client = TlsClient::new(&r.ca_file(), Alpn::Http2);
    r.review_allowed(&client, &fixture("reviews/kc-update-status.json"))
        .await;
    let start = Instant::now();
    r.send_sigterm();
    let status = r.wait_exit().expect("exit status");
    let took = start.elapsed();
    assert!(status.success(), "{}", r.log_text());
    // The shutdown grace is 25 s: an idle connection must not hold it.
    assert!(took < Duration::from_secs(10), "took {took:?} to stop");
    assert!(!r.log_text().contains("connections still open"));
    drop(client);
}

#[tokio::test]
async fn the_status_line_and_the_last_review_metric_show_whether_reviews_arrive() {
    let redis = RedisServer::start().await;
    let mut opts = Options::new(redis.url());
    opts.args.push("--status-log-interval=1s".into());
    let r = Restatus::start(opts).await;
    let last = "restatus_admission_last_review_timestamp_seconds";
    assert_eq!(r.metric(last).await, 0.0, "no review yet");
    // A replica nobody calls says so, whether or not it is ready.
    support::eventually(
        Duration::from_secs(60),
        "a line saying no review came",
        || {
            let log = r.log_text();
            async move {
                log.contains("status: no admission review received since start")
                    .then_some(())
            }
        },
    )
    .await;

    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as f64;
    let client = TlsClient::new(&r.ca_file(), Alpn::Http2);
    r.review_allowed(&client, &fixture("reviews/kc-update-status.json"))
        .await;
    let at = r.metric(last).await;
    assert!(at >= before && at <= before + 60.0, "{at} vs {before}");
    // The next line counts the review and the record it wrote; the one after, nothing.
    support::eventually(
        Duration::from_secs(60),
        "a line with the review and its record",
        || {
            let log = r.log_text();
            async move {
                log.contains("status: 1 reviews received, 1 records written, 0 restores done")
                    .then_some(())
            }
        },
    )
    .await;
    support::eventually(Duration::from_secs(60), "a quiet line after it", || {
        let log = r.log_text();
        async move {
            let after = log.split("status: 1 reviews received").nth(1)?;
            after
                .contains("status: 0 reviews received, 0 records written, 0 restores done")
                .then_some(())
        }
    })
    .await;
}
