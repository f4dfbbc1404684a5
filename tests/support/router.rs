//! The webhook router in-process, recording into a real `redis-server`, with the flags'
//! defaults: for tests that drive `POST /mutate` without a listener.

use std::{sync::Arc, time::Duration};

use axum::{
    Router,
    body::{Body, to_bytes},
    http::{HeaderMap, Request, StatusCode},
};
use prometheus_client::registry::Registry;
use restatus::{
    admission::{self, Admission, AdmissionMetrics},
    policy::{
        Defaults, Enablement, GlobalPolicy, InvalidReporter, PolicyMetrics, RestoreFor, RestoreMode,
    },
    store::{KeySchema, Store, StoreMetrics},
    telemetry,
};
use serde_json::Value;
use tower::ServiceExt;

use super::redis::RedisServer;

pub struct Harness {
    pub router: Router,
    pub metrics: Registry,
    pub keys: KeySchema,
    /// Every key of this harness starts with it.
    pub prefix: String,
}

/// The flags' defaults, except that restores are open to every creator: without an API
/// server there is nobody to ask who may write status.
pub fn settings() -> admission::Settings {
    admission::Settings {
        redis_timeout: Duration::from_millis(100),
        restore_deadline: Duration::from_secs(60),
        job_ttl: Duration::from_secs(60 + 5 * 30 + 300),
        limits: admission::StatusLimits::default(),
        max_inflight_values: 1_000_000,
        global: GlobalPolicy {
            defaults: Defaults {
                policy: Enablement::Enabled,
                mode: RestoreMode::Fill,
                fields: vec![],
                exclude_fields: vec![
                    "/observedGeneration".parse().unwrap(),
                    "/conditions/*/observedGeneration".parse().unwrap(),
                ],
                retention: Duration::from_secs(30 * 86_400),
                restore_for: RestoreFor::Creators,
            },
            types: Default::default(),
        },
        own_user: Some("system:serviceaccount:restatus:restatus".into()),
    }
}

/// A router with a fresh key prefix on `redis`, refusing bodies over `max_body` bytes.
pub fn harness(redis: &RedisServer, max_body: usize) -> Harness {
    harness_with(redis, max_body, settings())
}

/// [`harness`] with other settings.
pub fn harness_with(
    redis: &RedisServer,
    max_body: usize,
    settings: admission::Settings,
) -> Harness {
    let mut metrics = telemetry::registry();
    let prefix = super::unique("router");
    let store = Store::connect(
        &redis.url(),
        &prefix,
        "default",
        StoreMetrics::register(&mut metrics),
        None,
    )
    .unwrap();
    let keys = store.keys().clone();
    let policy_metrics = PolicyMetrics::register(&mut metrics);
    let sources = admission::Sources {
        caches: Default::default(),
        synced: Arc::new(std::sync::atomic::AtomicBool::new(true)),
        failed_open: Default::default(),
        access: None,
        reporter: InvalidReporter::new(None, policy_metrics.clone()),
        metrics: policy_metrics,
    };
    let admission = Arc::new(Admission::new(
        store,
        sources,
        AdmissionMetrics::register(&mut metrics),
        settings,
    ));
    Harness {
        router: admission::router(admission, max_body),
        metrics,
        keys,
        prefix,
    }
}

/// An answer of the router.
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends `request` through the router and reads the whole answer.
pub async fn send(router: &Router, request: Request<Body>) -> Answer {
    let resp = router.clone().oneshot(request).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = to_bytes(resp.into_body(), usize::MAX).await.unwrap();
    Answer {
        status,
        headers,
        body: body.to_vec(),
    }
}

/// POSTs `body` as JSON to `/mutate`.
pub async fn post(router: &Router, body: impl Into<Body>) -> Answer {
    let request = Request::post("/mutate")
        .header("content-type", "application/json")
        .body(body.into())
        .unwrap();
    send(router, request).await
}

/// Sends a review and returns its `response`, checking the envelope: 200, the uid copied,
/// allowed.
pub async fn review(router: &Router, review: &Value) -> Value {
    let answer = post(router, review.to_string()).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    allowed(&answer.body, &review["request"]["uid"])
}

/// The `response` of an AdmissionReview answer, checked to allow the request with `uid`.
pub fn allowed(body: &[u8], uid: &Value) -> Value {
    let answer: Value = serde_json::from_slice(body).unwrap();
    assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(answer["kind"], "AdmissionReview");
    let response = answer["response"].clone();
    assert_eq!(&response["uid"], uid, "uid copied");
    assert_eq!(response["allowed"], true);
    response
}
