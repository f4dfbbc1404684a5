//! The memory a review takes is bounded by its body and the limits, not by what it holds:
//! restatus's peak resident memory (VmHWM) is measured around large reviews, sent directly
//! and through the real API server.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use kube::api::PostParams;
use serde_json::{Value, json};
use support::{
    cluster::{Env, EnvOptions, TestType, WAIT, patch_status},
    eventually, fixture,
    http::{Alpn, TlsClient},
    redis::RedisServer,
    restatus::{Options, Restatus},
};

const MIB: u64 = 1 << 20;

/// A status write review whose status is a flat list of zeros `bytes` long.
fn flat_array_review(uid: &str, bytes: usize) -> String {
    let mut review = fixture("reviews/kc-update-status.json");
    review["request"]["uid"] = json!(uid);
    review["request"]["object"]["status"] = json!("@@ZEROS@@");
    let zeros = format!("{{\"zeros\":[{}0]}}", "0,".repeat(bytes / 2));
    review.to_string().replace("\"@@ZEROS@@\"", &zeros)
}

/// Sends `bodies` to `r` at once and returns the answers' bodies.
async fn send_all(r: &Restatus, bodies: Vec<String>) -> Vec<Value> {
    let client = TlsClient::new(&r.ca_file(), Alpn::Http2);
    let answers = futures::future::join_all(bodies.into_iter().map(|body| {
        let client = &client;
        async move { client.post(&r.mutate_url(), body).await.expect("POST") }
    }))
    .await;
    answers
        .into_iter()
        .map(|a| {
            assert_eq!(a.status, 200, "{}", a.body);
            serde_json::from_str(&a.body).unwrap()
        })
        .collect()
}

#[tokio::test]
async fn four_large_flat_array_reviews_in_flight_take_little_memory() {
    let redis = RedisServer::start().await;
    // The request cap raised to what the reviews need: the decode itself is bounded, not
    // only the body size.
    let mut opts = Options::new(redis.url());
    opts.args = vec!["--max-request-bytes=8Mi".into()];
    let r = Restatus::start(opts).await;
    let client = TlsClient::new(&r.ca_file(), Alpn::Http2);
    // Warm up: connections, TLS, the Redis scripts, the allocator's arenas.
    for i in 0..4 {
        let mut small = fixture("reviews/kc-update-status.json");
        small["request"]["uid"] = json!(format!("warm-{i}"));
        r.review_allowed(&client, &small).await;
    }
    let before = r.peak_rss();

    let bodies: Vec<String> = (0..4)
        .map(|i| flat_array_review(&format!("big-{i}"), (78 * MIB / 10) as usize))
        .collect();
    assert!(bodies.iter().all(|b| b.len() as u64 > 7 * MIB));
    let answers = send_all(&r, bodies).await;
    for answer in &answers {
        assert_eq!(answer["response"]["allowed"], true);
        let warnings = answer["response"]["warnings"].to_string();
        assert!(warnings.contains("--max-status-values"), "{warnings}");
    }
    let grown = r.peak_rss().saturating_sub(before);
    eprintln!(
        "peak RSS grew by {:.1} MiB with four 7.8 MiB reviews in flight",
        grown as f64 / MIB as f64
    );
    assert!(
        grown < 64 * MIB,
        "peak RSS grew by {grown} bytes with four 7.8 MiB reviews"
    );
}

#[tokio::test]
async fn large_reviews_are_refused_at_the_default_cap_before_they_are_read() {
    let redis = RedisServer::start().await;
    let r = Restatus::start(Options::new(redis.url())).await;
    let client = TlsClient::new(&r.ca_file(), Alpn::Http2);
    r.review_allowed(&client, &fixture("reviews/kc-update-status.json"))
        .await;
    let before = r.peak_rss();
    let bodies: Vec<String> = (0..4)
        .map(|i| flat_array_review(&format!("big-{i}"), (78 * MIB / 10) as usize))
        .collect();
    let answers = futures::future::join_all(bodies.into_iter().map(|body| {
        let client = &client;
        let r = &r;
        async move { client.post(&r.mutate_url(), body).await.expect("POST") }
    }))
    .await;
    for answer in answers {
        assert_eq!(answer.status, 413, "{}", answer.body);
    }
    let grown = r.peak_rss().saturating_sub(before);
    assert!(
        grown < 16 * MIB,
        "peak RSS grew by {grown} bytes for four refused bodies"
    );
}

const BIG: TestType = TestType::namespaced("bigstatuses", "BigStatus");

#[tokio::test]
async fn large_array_status_writes_through_the_api_server_take_little_memory() {
    let env = Env::start(EnvOptions::with_types(&[BIG])).await;
    let api = env.api(&BIG);
    api.create(&PostParams::default(), &BIG.object("big"))
        .await
        .unwrap();
    patch_status(&api, "big", json!({"phase": "Warm"})).await;
    let r = &env.restatus[0];
    let before = r.peak_rss();

    // 1.4 MiB of zeros: 734,003 values, what any writer of a free-form status may send.
    let zeros: Vec<u8> = vec![0; (14 * MIB / 10 / 2) as usize];
    for round in 0..2 {
        let status = json!({"round": round, "zeros": zeros});
        let written = patch_status(&api, "big", status).await;
        assert_eq!(written.data["status"]["round"], round);
    }
    let unparsed =
        "restatus_admission_requests_total{operation=\"UPDATE\",outcome=\"status_too_large\"}";
    eventually(WAIT, "both writes to be answered", || async {
        (r.metric(unparsed).await >= 2.0).then_some(())
    })
    .await;
    let grown = r.peak_rss().saturating_sub(before);
    eprintln!(
        "peak RSS grew by {:.1} MiB with two 1.4 MiB status writes",
        grown as f64 / MIB as f64
    );
    assert!(
        grown < 32 * MIB,
        "peak RSS grew by {grown} bytes with two 1.4 MiB status writes"
    );

    // The largest review the API server sends for such an object: an update of the main
    // resource carries it twice (object and oldObject). It fits the default request cap.
    api.patch(
        "big",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(json!({"metadata": {"labels": {"touched": "yes"}}})),
    )
    .await
    .unwrap();
    let metrics = r.metrics().await;
    let count = metrics["restatus_admission_review_bytes_count"];
    let within = |le: &str| {
        metrics
            .get(&format!(
                "restatus_admission_review_bytes_bucket{{le=\"{le}\"}}"
            ))
            .copied()
            .unwrap_or(0.0)
    };
    assert!(
        within("1048576.0") < count,
        "a review larger than 1 MiB was seen"
    );
    assert_eq!(within("4194304.0"), count, "every review fits 4 MiB");
}

/// Sends `n` status writes of 98,000 zeros (196 KB each, within --max-status-values) at once
/// to `r`; returns how many went on unrecorded for want of room to parse them.
async fn statuses_at_once(r: &Restatus, n: usize) -> usize {
    let bodies: Vec<String> = (0..n)
        .map(|i| flat_array_review(&format!("many-{i}"), 196_000))
        .collect();
    let answers = send_all(r, bodies).await;
    let mut busy = 0;
    for answer in &answers {
        assert_eq!(answer["response"]["allowed"], true);
        let warnings = answer["response"]["warnings"].to_string();
        assert!(!warnings.contains("--max-status-values"), "{warnings}");
        busy += usize::from(warnings.contains("at once"));
    }
    busy
}

#[tokio::test]
async fn statuses_are_parsed_only_within_the_inflight_budget() {
    let redis = RedisServer::start().await;
    // Room for one status of 98,001 values at a time; a Redis that holds each review for up to
    // a second keeps the room taken while the others wait.
    let mut opts = Options::new(redis.url());
    opts.args = vec![
        "--max-inflight-status-values=100000".into(),
        "--redis-timeout=1s".into(),
    ];
    let r = Restatus::start(opts).await;
    let client = TlsClient::new(&r.ca_file(), Alpn::Http2);
    r.review_allowed(&client, &fixture("reviews/kc-update-status.json"))
        .await;
    redis.pause();
    let busy = statuses_at_once(&r, 8).await;
    redis.resume();
    // One took the room and waited for Redis; the others found none within 200 ms.
    assert_eq!(busy, 7, "reviews that went on unrecorded");
    assert_eq!(
        r.metric("restatus_admission_requests_total{operation=\"UPDATE\",outcome=\"busy\"}")
            .await,
        7.0
    );
    // With Redis answering, the room is given back as each review is answered.
    let busy = statuses_at_once(&r, 8).await;
    assert!(
        busy < 8,
        "{busy} of 8 went on unrecorded with Redis answering"
    );
}

#[tokio::test]
async fn many_statuses_at_once_take_bounded_memory() {
    let redis = RedisServer::start().await;
    let r = Restatus::start(Options::new(redis.url())).await;
    let client = TlsClient::new(&r.ca_file(), Alpn::Http2);
    r.review_allowed(&client, &fixture("reviews/kc-update-status.json"))
        .await;
    let before = r.peak_rss();
    let busy = statuses_at_once(&r, 64).await;
    let grown = r.peak_rss().saturating_sub(before);
    eprintln!(
        "peak RSS grew by {:.1} MiB with 64 statuses of 98,001 values at once ({busy} went on unrecorded)",
        grown as f64 / MIB as f64
    );
    assert!(grown < 96 * MIB, "peak RSS grew by {grown} bytes");
}

#[tokio::test]
async fn a_status_just_within_the_value_limit_is_recorded_in_a_few_mib() {
    let redis = RedisServer::start().await;
    let r = Restatus::start(Options::new(redis.url())).await;
    let client = TlsClient::new(&r.ca_file(), Alpn::Http2);
    r.review_allowed(&client, &fixture("reviews/kc-update-status.json"))
        .await;
    let mut grown = Vec::new();
    for (what, body) in [
        ("98,001 zeros", flat_array_review("one-flat", 196_000)),
        ("49,000 keys", {
            let mut review = fixture("reviews/kc-update-status.json");
            review["request"]["uid"] = json!("one-wide");
            let keys: serde_json::Map<String, Value> =
                (0..49_000).map(|k| (format!("key{k}"), json!(k))).collect();
            review["request"]["object"]["status"] = Value::Object(keys);
            review.to_string()
        }),
    ] {
        let before = r.peak_rss();
        let answers = send_all(&r, vec![body]).await;
        assert_eq!(answers[0]["response"]["allowed"], true);
        assert!(
            answers[0]["response"].get("warnings").is_none(),
            "{what}: {}",
            answers[0]
        );
        let by = r.peak_rss().saturating_sub(before);
        eprintln!(
            "one review of {what}: peak RSS grew by {:.1} MiB",
            by as f64 / MIB as f64
        );
        grown.push(by);
    }
    assert!(grown.iter().all(|g| *g < 16 * MIB), "{grown:?}");
    assert_eq!(
        r.metric("restatus_admission_requests_total{operation=\"UPDATE\",outcome=\"recorded\"}")
            .await,
        3.0,
        "the warm-up and both statuses at the limit are recorded"
    );
}
