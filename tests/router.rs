//! The webhook router driven in-process with AdmissionReview fixtures shaped as the API server
//! sends them, recording into a real `redis-server`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use axum::{
    Router,
    body::Body,
    http::{Request, StatusCode},
};
use restatus::{store::ObjectIdentity, telemetry};
use serde_json::{Value, json};
use support::{
    fixture,
    redis::RedisServer,
    router::{self, harness, review},
};

/// A post through the router: its status and body.
async fn post(router: &Router, body: impl Into<Body>) -> (StatusCode, Vec<u8>) {
    let answer = router::post(router, body).await;
    (answer.status, answer.body)
}

fn patch_of(response: &Value) -> Option<Value> {
    // Base64 of the JSON patch, as the API server reads a []byte.
    let bytes = restatus::text::base64_decode(response.get("patch")?.as_str()?).unwrap();
    assert_eq!(response["patchType"], "JSONPatch");
    Some(serde_json::from_slice(&bytes).unwrap())
}

/// What restatus keeps of a status by default: all but `observedGeneration`, at the top and
/// in conditions (a recreated object starts again at generation 1).
fn kept(status: &Value) -> Value {
    let mut kept = status.clone();
    let defaults = &router::settings().global.defaults;
    restatus::policy::exclude(&mut kept, &defaults.exclude_fields);
    kept
}

/// Sets the resourceVersion of both the object and the old object, as the API server sends
/// a write that lands (a patch, or an update from the current version).
fn at_version(review: &mut Value, version: &str) {
    for side in ["object", "oldObject"] {
        if review["request"][side].is_object() {
            review["request"][side]["metadata"]["resourceVersion"] = json!(version);
        }
    }
}

fn kc(name: &str) -> ObjectIdentity {
    ObjectIdentity {
        group: "infra.example.com".into(),
        resource: "kubernetesclusters".into(),
        namespace: Some("team-a".into()),
        name: name.into(),
    }
}

fn metric(metrics: &prometheus_client::registry::Registry, sample: &str) -> f64 {
    support::restatus::parse_metrics(&telemetry::encode(metrics))
        .get(sample)
        .copied()
        .unwrap_or(0.0)
}

#[tokio::test]
async fn status_subresource_update_records_the_new_status() {
    let redis = RedisServer::start().await;
    let h = harness(&redis, 8 << 20);
    let rv = fixture("reviews/kc-update-status.json");
    let response = review(&h.router, &rv).await;
    assert!(patch_of(&response).is_none());

    let rec = redis.hgetall(&h.keys.record(&kc("prod-eu-1"))).await;
    let status: Value = serde_json::from_str(&rec["status"]).unwrap();
    assert_eq!(status, kept(&rv["request"]["object"]["status"]));
    assert!(status.get("observedGeneration").is_none());
    assert_eq!(rec["uid"], "0f4c7a52-3b1e-4d0a-9a7e-5c1f3e2b8d11");
    assert_eq!(rec["apiVersion"], "infra.example.com/v1alpha1");
    assert_eq!(rec["kind"], "KubernetesCluster");
    assert_eq!(rec["resourceVersion"], "4711");
    assert!(!rec.contains_key("deletedAt"));
    assert_eq!(
        redis.pttl(&h.keys.record(&kc("prod-eu-1"))).await,
        -1,
        "a live object's record does not expire"
    );
    assert_eq!(metric(&h.metrics, "restatus_records_written_total"), 1.0);
    assert_eq!(
        metric(
            &h.metrics,
            "restatus_admission_requests_total{operation=\"UPDATE\",outcome=\"recorded\"}"
        ),
        1.0
    );
}

#[tokio::test]
async fn main_resource_update_records_the_stored_status_not_the_sent_one() {
    let redis = RedisServer::start().await;
    let h = harness(&redis, 8 << 20);
    let rv = fixture("reviews/kc-update-main.json");
    review(&h.router, &rv).await;
    let rec = redis.hgetall(&h.keys.record(&kc("prod-eu-1"))).await;
    let status: Value = serde_json::from_str(&rec["status"]).unwrap();
    assert_eq!(status, kept(&rv["request"]["oldObject"]["status"]));
    assert_ne!(status, kept(&rv["request"]["object"]["status"]));
}

#[tokio::test]
async fn unchanged_status_is_not_written_again() {
    let redis = RedisServer::start().await;
    let h = harness(&redis, 8 << 20);
    let mut rv = fixture("reviews/kc-update-status.json");
    review(&h.router, &rv).await;
    let key = h.keys.record(&kc("prod-eu-1"));
    let first = redis.hgetall(&key).await;
    // The same status again, at a later resourceVersion. (Key order cannot differ here: the
    // review is decoded into sorted maps; src/store/record.rs checks that they stay sorted.)
    rv["request"]["uid"] = json!("b3a1f0e2-0001-4c5d-9e8f-0000000000ff");
    at_version(&mut rv, "4712");
    review(&h.router, &rv).await;
    assert_eq!(redis.hgetall(&key).await["recordedAt"], first["recordedAt"]);
    assert_eq!(metric(&h.metrics, "restatus_records_written_total"), 1.0);
    assert_eq!(
        metric(
            &h.metrics,
            "restatus_records_skipped_total{reason=\"unchanged\"}"
        ),
        1.0
    );
    // A different status is written.
    rv["request"]["object"]["status"]["phase"] = json!("Degraded");
    review(&h.router, &rv).await;
    assert_eq!(metric(&h.metrics, "restatus_records_written_total"), 2.0);
}

#[tokio::test]
async fn an_older_observation_does_not_overwrite_a_newer_status() {
    let redis = RedisServer::start().await;
    let h = harness(&redis, 8 << 20);
    let mut newer = fixture("reviews/kc-update-status.json");
    at_version(&mut newer, "5000");
    review(&h.router, &newer).await;
    // A main-resource update whose oldObject is older arrives late.
    let mut late = fixture("reviews/kc-update-main.json");
    late["request"]["oldObject"]["status"] = json!({"phase": "Provisioning"});
    at_version(&mut late, "4000");
    review(&h.router, &late).await;
    let rec = redis.hgetall(&h.keys.record(&kc("prod-eu-1"))).await;
    let status: Value = serde_json::from_str(&rec["status"]).unwrap();
    assert_eq!(status["phase"], "Running");
    assert_eq!(
        metric(
            &h.metrics,
            "restatus_records_skipped_total{reason=\"stale\"}"
        ),
        1.0
    );
}

#[tokio::test]
async fn delete_records_the_final_status_with_an_expiry() {
    let redis = RedisServer::start().await;
    let h = harness(&redis, 8 << 20);
    review(&h.router, &fixture("reviews/kc-update-status.json")).await;
    let rv = fixture("reviews/kc-delete.json");
    let response = review(&h.router, &rv).await;
    assert!(patch_of(&response).is_none());
    let key = h.keys.record(&kc("prod-eu-1"));
    let rec = redis.hgetall(&key).await;
    let status: Value = serde_json::from_str(&rec["status"]).unwrap();
    assert_eq!(status, kept(&rv["request"]["oldObject"]["status"]));
    assert!(
        rec["deletedAt"].parse::<jiff::Timestamp>().is_ok(),
        "{rec:?}"
    );
    let ttl = redis.pttl(&key).await;
    let thirty_days = 30 * 86_400_000;
    assert!(
        ttl > thirty_days - 60_000 && ttl <= thirty_days,
        "ttl {ttl}"
    );
}

#[tokio::test]
async fn each_delete_restarts_the_retention_clock_and_a_live_write_stops_it() {
    let redis = RedisServer::start().await;
    let h = harness(&redis, 8 << 20);
    let key = h.keys.record(&kc("prod-eu-1"));
    let thirty_days = 30 * 86_400_000;
    review(&h.router, &fixture("reviews/kc-update-status.json")).await;
    review(&h.router, &fixture("reviews/kc-delete.json")).await;

    // A second DELETE, as when the first was refused after restatus saw it: the clock runs
    // from this one, though the status did not change.
    redis::cmd("PEXPIRE")
        .arg(&key)
        .arg(5_000)
        .query_async::<()>(&mut redis.conn().await)
        .await
        .unwrap();
    review(&h.router, &fixture("reviews/kc-delete.json")).await;
    let ttl = redis.pttl(&key).await;
    assert!(ttl > thirty_days - 60_000, "ttl {ttl}");

    // The object lives on: a later write of the same status stops the clock.
    let mut write = fixture("reviews/kc-update-status.json");
    at_version(&mut write, "4791");
    review(&h.router, &write).await;
    assert_eq!(redis.pttl(&key).await, -1);
    assert!(!redis.hgetall(&key).await.contains_key("deletedAt"));
}

#[tokio::test]
async fn dry_run_writes_nothing() {
    let redis = RedisServer::start().await;
    let h = harness(&redis, 8 << 20);
    let response = review(&h.router, &fixture("reviews/kc-update-status-dryrun.json")).await;
    assert!(patch_of(&response).is_none());
    let mut delete = fixture("reviews/kc-delete.json");
    delete["request"]["dryRun"] = json!(true);
    review(&h.router, &delete).await;
    assert!(redis.keys("*").await.is_empty());
    assert_eq!(
        metric(
            &h.metrics,
            "restatus_admission_requests_total{operation=\"UPDATE\",outcome=\"dry_run\"}"
        ),
        1.0
    );
}

#[tokio::test]
async fn cluster_scoped_objects_are_recorded_without_a_namespace() {
    let redis = RedisServer::start().await;
    let h = harness(&redis, 8 << 20);
    let rv = fixture("reviews/region-update-status-cluster-scoped.json");
    review(&h.router, &rv).await;
    let id = ObjectIdentity {
        group: "infra.example.com".into(),
        resource: "regions".into(),
        namespace: None,
        name: "eu-west".into(),
    };
    let key = h.keys.record(&id);
    assert!(
        key.ends_with("|infra.example.com|regions||eu-west}"),
        "{key}"
    );
    let rec = redis.hgetall(&key).await;
    assert_eq!(
        serde_json::from_str::<Value>(&rec["status"]).unwrap(),
        json!({"zones": 3, "quotaID": "q-1234"})
    );
}

#[tokio::test]
async fn core_group_service_status_is_recorded() {
    let redis = RedisServer::start().await;
    let h = harness(&redis, 8 << 20);
    let rv = fixture("reviews/svc-update-status.json");
    review(&h.router, &rv).await;
    let id = ObjectIdentity {
        group: String::new(),
        resource: "services".into(),
        namespace: Some("web".into()),
        name: "ingress".into(),
    };
    let rec = redis.hgetall(&h.keys.record(&id)).await;
    let status: Value = serde_json::from_str(&rec["status"]).unwrap();
    assert_eq!(status["loadBalancer"]["ingress"][0]["ip"], "198.51.100.7");
    assert_eq!(rec["apiVersion"], "v1");
}

#[tokio::test]
async fn create_of_an_unknown_object_is_allowed_unchanged() {
    let redis = RedisServer::start().await;
    let h = harness(&redis, 8 << 20);
    let response = review(&h.router, &fixture("reviews/kc-create.json")).await;
    assert!(patch_of(&response).is_none());
    assert!(
        redis.keys("*").await.is_empty(),
        "nothing recorded on create"
    );
    assert_eq!(
        metric(
            &h.metrics,
            "restatus_admission_requests_total{operation=\"CREATE\",outcome=\"no_record\"}"
        ),
        1.0
    );
}

#[tokio::test]
async fn create_of_a_known_object_is_marked_pending_and_queued() {
    let redis = RedisServer::start().await;
    let h = harness(&redis, 8 << 20);
    review(&h.router, &fixture("reviews/kc-update-status.json")).await;
    review(&h.router, &fixture("reviews/kc-delete.json")).await;
    let response = review(&h.router, &fixture("reviews/kc-create.json")).await;
    let patch = patch_of(&response).expect("a patch");
    let id = patch[0]["value"]["restatus.io/restore-job"]
        .as_str()
        .expect("a job id")
        .to_owned();
    assert!(
        id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{id}"
    );
    assert_eq!(
        patch,
        json!([{"op": "add", "path": "/metadata/annotations", "value": {"restatus.io/restore": "pending", "restatus.io/restore-job": id}}])
    );
    // Redis holds the id as the object's live job, for a bounded time.
    let mut conn = redis.conn().await;
    let job_key = h.keys.job(&kc("prod-eu-1"));
    let live: std::collections::HashMap<String, i64> = redis::cmd("HGETALL")
        .arg(&job_key)
        .query_async(&mut conn)
        .await
        .unwrap();
    let until = live[&id];
    assert!(
        until > jiff::Timestamp::now().as_millisecond(),
        "live until {until}"
    );
    let ttl: i64 = redis::cmd("PTTL")
        .arg(&job_key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(ttl > 0, "{ttl}");
    let mut conn = redis.conn().await;
    let len: u64 = redis::cmd("XLEN")
        .arg(h.keys.queue())
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(len, 1);
    let entries: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(h.keys.queue())
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .unwrap();
    let job: Value = serde_json::from_str(&entries.ids[0].get::<String>("job").unwrap()).unwrap();
    assert_eq!(job["id"], id.as_str());
    assert_eq!(job["identity"]["name"], "prod-eu-1");
    assert_eq!(job["recordUid"], "0f4c7a52-3b1e-4d0a-9a7e-5c1f3e2b8d11");
    assert_eq!(job["apiVersion"], "infra.example.com/v1alpha1");
    assert_eq!(job["inline"], false);

    // With annotations already present, the key is added with an escaped pointer.
    let mut with_annotations = fixture("reviews/kc-create.json");
    with_annotations["request"]["object"]["metadata"]["annotations"] = json!({"team": "a"});
    let patch = patch_of(&review(&h.router, &with_annotations).await).unwrap();
    let second = patch[1]["value"].as_str().unwrap();
    assert_ne!(second, id, "each CREATE gets its own job");
    assert_eq!(
        patch,
        json!([
            {"op": "add", "path": "/metadata/annotations/restatus.io~1restore", "value": "pending"},
            {"op": "add", "path": "/metadata/annotations/restatus.io~1restore-job", "value": second}
        ])
    );
}

#[tokio::test]
async fn status_write_to_a_pending_object_is_merged_with_the_saved_status() {
    let redis = RedisServer::start().await;
    let h = harness(&redis, 8 << 20);
    review(&h.router, &fixture("reviews/kc-update-status.json")).await;
    review(&h.router, &fixture("reviews/kc-delete.json")).await;
    let created = patch_of(&review(&h.router, &fixture("reviews/kc-create.json")).await).unwrap();
    let marker = created[0]["value"].clone();
    // A second CREATE of the same name is admitted too (a retry, a stale cache), then refused
    // by the API server with AlreadyExists: its job does not take the first one's place.
    let mut again = fixture("reviews/kc-create.json");
    again["request"]["uid"] = json!("second-create");
    let second = patch_of(&review(&h.router, &again).await).unwrap();
    assert_ne!(second[0]["value"], marker);
    // The owner writes a fresh phase to the new incarnation before the restore.
    let write_with = |annotations: &Value| {
        let mut write = fixture("reviews/kc-update-status.json");
        for o in ["object", "oldObject"] {
            write["request"][o]["metadata"]["uid"] = json!("new-incarnation");
            write["request"][o]["metadata"]["annotations"] = annotations.clone();
        }
        write["request"]["object"]["status"] = json!({"phase": "Provisioning"});
        write
    };
    let write = write_with(&marker);
    let patch = patch_of(&review(&h.router, &write).await).expect("merge patch");
    let mut merged = write["request"]["object"].clone();
    json_patch::patch(
        &mut merged,
        &serde_json::from_value::<json_patch::Patch>(patch).unwrap(),
    )
    .unwrap();
    assert_eq!(
        merged["status"]["phase"], "Provisioning",
        "the writer's fact wins"
    );
    assert_eq!(
        merged["status"]["apiServerURL"],
        "https://203.0.113.10:6443"
    );
    assert_eq!(merged["status"]["masterVersion"], "1.31.4");
    assert!(merged["status"].get("observedGeneration").is_none());
    assert!(
        merged["status"]["conditions"][0]
            .get("observedGeneration")
            .is_none()
    );
    // The record keeps the earlier incarnation's status for the restore.
    let rec = redis.hgetall(&h.keys.record(&kc("prod-eu-1"))).await;
    assert_eq!(
        serde_json::from_str::<Value>(&rec["status"]).unwrap(),
        kept(&fixture("reviews/kc-delete.json")["request"]["oldObject"]["status"])
    );
    assert_eq!(rec["uid"], "0f4c7a52-3b1e-4d0a-9a7e-5c1f3e2b8d11");
    assert!(rec.contains_key("deletedAt"));

    // A marker whose job is not the object's live one proves nothing: the write is recorded
    // as it is, and the marker's removal is queued, once.
    for _ in 0..3 {
        let forged = write_with(
            &json!({"restatus.io/restore": "pending", "restatus.io/restore-job": "f0f0f0"}),
        );
        assert!(patch_of(&review(&h.router, &forged).await).is_none());
    }
    let rec = redis.hgetall(&h.keys.record(&kc("prod-eu-1"))).await;
    assert_eq!(
        serde_json::from_str::<Value>(&rec["status"]).unwrap(),
        json!({"phase": "Provisioning"})
    );
    assert_eq!(rec["uid"], "new-incarnation");
    assert_eq!(
        metric(&h.metrics, "restatus_dead_markers_total{action=\"queued\"}"),
        1.0
    );
    let mut conn = redis.conn().await;
    let entries: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(h.keys.queue())
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .unwrap();
    let unmark: Vec<Value> = entries
        .ids
        .iter()
        .map(|e| serde_json::from_str(&e.get::<String>("job").unwrap()).unwrap())
        .filter(|j: &Value| j["action"]["type"] == "unmark")
        .collect();
    assert_eq!(unmark.len(), 1, "{unmark:?}");
    assert_eq!(
        unmark[0]["action"],
        json!({"type": "unmark", "uid": "new-incarnation", "marker": "f0f0f0"})
    );
}

#[tokio::test]
async fn a_restore_marker_only_restatus_may_set_is_undone() {
    let redis = RedisServer::start().await;
    let h = harness(&redis, 8 << 20);
    let pending = json!({"team": "a", "restatus.io/restore": "pending"});

    // A CREATE that restores nothing keeps no marker its client set.
    let mut create = fixture("reviews/kc-create.json");
    create["request"]["object"]["metadata"]["annotations"] = pending.clone();
    assert_eq!(
        patch_of(&review(&h.router, &create).await),
        Some(json!([{"op": "remove", "path": "/metadata/annotations/restatus.io~1restore"}]))
    );

    // An UPDATE may not set the marker, nor change it.
    let mut update = fixture("reviews/kc-update-main.json");
    update["request"]["object"]["metadata"]["annotations"] = pending.clone();
    assert_eq!(
        patch_of(&review(&h.router, &update).await),
        Some(json!([{"op": "remove", "path": "/metadata/annotations/restatus.io~1restore"}]))
    );
    update["request"]["oldObject"]["metadata"]["annotations"] =
        json!({"restatus.io/restore": "failed"});
    assert_eq!(
        patch_of(&review(&h.router, &update).await),
        Some(
            json!([{"op": "add", "path": "/metadata/annotations/restatus.io~1restore", "value": "failed"}])
        )
    );
    // It may remove it.
    update["request"]["object"]["metadata"]["annotations"] = json!({"team": "a"});
    assert_eq!(patch_of(&review(&h.router, &update).await), None);

    // A status write that sets the marker on an object with a saved status from an earlier
    // incarnation is recorded as it is, not merged with the saved status.
    review(&h.router, &fixture("reviews/kc-update-status.json")).await;
    review(&h.router, &fixture("reviews/kc-delete.json")).await;
    let mut write = fixture("reviews/kc-update-status.json");
    for o in ["object", "oldObject"] {
        write["request"][o]["metadata"]["uid"] = json!("new-incarnation");
    }
    write["request"]["object"]["metadata"]["annotations"] = pending;
    write["request"]["object"]["status"] = json!({"phase": "Provisioning"});
    assert_eq!(
        patch_of(&review(&h.router, &write).await),
        Some(json!([{"op": "remove", "path": "/metadata/annotations/restatus.io~1restore"}]))
    );
    assert_eq!(
        metric(
            &h.metrics,
            "restatus_admission_requests_total{operation=\"UPDATE\",outcome=\"merged\"}"
        ),
        0.0
    );
}

#[tokio::test]
async fn malformed_requests_get_400_with_a_reason() {
    let redis = RedisServer::start().await;
    let h = harness(&redis, 8 << 20);
    let mut no_uid = fixture("reviews/kc-update-status.json");
    no_uid["request"]["uid"] = json!("");
    let mut wrong_version = fixture("reviews/kc-update-status.json");
    wrong_version["apiVersion"] = json!("admission.k8s.io/v1beta1");
    let mut no_request = fixture("reviews/kc-update-status.json");
    no_request.as_object_mut().unwrap().remove("request");
    let mut bad_operation = fixture("reviews/kc-update-status.json");
    bad_operation["request"]["operation"] = json!("EXPLODE");
    let cases = [
        ("{not json".to_owned(), "body is not JSON"),
        ("".to_owned(), "body is not JSON"),
        ("42".to_owned(), "body is not a JSON object"),
        (
            wrong_version.to_string(),
            "apiVersion must be admission.k8s.io/v1",
        ),
        (no_request.to_string(), "AdmissionReview has no request"),
        (no_uid.to_string(), "request.uid is missing or empty"),
        (
            bad_operation.to_string(),
            "request is not a valid AdmissionRequest",
        ),
    ];
    for (body, expected) in cases {
        let (status, answer) = post(&h.router, body.clone()).await;
        let text = String::from_utf8(answer).unwrap();
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert!(text.starts_with(expected), "{body:?} -> {text:?}");
        assert_eq!(text.trim_end().lines().count(), 1, "one line: {text:?}");
    }
    assert!(redis.keys("*").await.is_empty());
    // Still serving.
    review(&h.router, &fixture("reviews/kc-update-status.json")).await;
}

#[tokio::test]
async fn bodies_over_the_limit_get_413() {
    let redis = RedisServer::start().await;
    let h = harness(&redis, 64 * 1024);
    let mut big = fixture("reviews/kc-update-status.json");
    big["request"]["object"]["status"]["blob"] = json!("x".repeat(100 * 1024));
    let (status, body) = post(&h.router, big.to_string()).await;
    assert_eq!(
        status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "{}",
        String::from_utf8_lossy(&body)
    );
    assert_eq!(
        metric(
            &h.metrics,
            "restatus_admission_invalid_requests_total{reason=\"too_large\"}"
        ),
        1.0
    );
    // Under the limit is fine.
    review(&h.router, &fixture("reviews/kc-update-status.json")).await;
}

#[tokio::test]
async fn only_post_is_served() {
    let redis = RedisServer::start().await;
    let h = harness(&redis, 8 << 20);
    let answer = router::send(
        &h.router,
        Request::get("/mutate").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(answer.status, StatusCode::METHOD_NOT_ALLOWED);
}

/// Redis looks at a bounded number of pending jobs per XAUTOCLAIM (ten per job asked for): a
/// dead consumer's jobs queued behind many that live consumers still work on are reached by
/// going on from the cursor each call returns.
#[tokio::test]
async fn reclaiming_goes_on_past_jobs_other_consumers_still_work_on() {
    use restatus::store::{RestoreJob, Store, StoreMetrics};
    use std::time::Duration;

    let redis = RedisServer::start().await;
    let mut metrics = telemetry::registry();
    let store = Store::connect(
        &redis.url(),
        &support::unique("reclaim"),
        "default",
        StoreMetrics::register(&mut metrics),
        None,
    )
    .unwrap();
    let budget = Duration::from_secs(2);
    store.ensure_queue_group(budget).await.unwrap();
    let now = jiff::Timestamp::now();
    for i in 0..30 {
        let job = RestoreJob {
            id: format!("j-{i}"),
            action: Default::default(),
            identity: kc(&format!("c-{i}")),
            api_version: "infra.example.com/v1alpha1".into(),
            kind: "KubernetesCluster".into(),
            record_uid: String::new(),
            created_at: now,
            deadline: now,
            retry: false,
            inline: false,
            request_uid: String::new(),
            policy: None,
        };
        store.enqueue(&job, budget).await.unwrap();
    }
    let mut reader = store.reader(budget).await.unwrap();
    let block = Duration::from_millis(100);
    let alive = reader.read("alive", 25, block).await.unwrap();
    let dead: Vec<String> = reader
        .read("dead", 5, block)
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.id)
        .collect();
    assert_eq!((alive.len(), dead.len()), (25, 5));

    // The idle time is what is tested: the dead consumer's jobs pass it, the live
    // consumer's are touched again.
    let min_idle = Duration::from_millis(300);
    tokio::time::sleep(min_idle + Duration::from_millis(100)).await;
    let working: Vec<String> = alive.into_iter().map(|d| d.id).collect();
    store.touch("alive", &working, budget).await.unwrap();

    let mut cursor = String::from("0-0");
    let mut reclaimed = Vec::new();
    for _ in 0..4 {
        let next = store
            .reclaim("me", min_idle, &cursor, 1, budget)
            .await
            .unwrap();
        reclaimed.extend(next.deliveries.into_iter().map(|d| d.id));
        cursor = next.cursor;
        if !reclaimed.is_empty() {
            break;
        }
    }
    assert_eq!(reclaimed.len(), 1, "nothing reclaimed in 4 calls");
    assert!(
        dead.contains(&reclaimed[0]),
        "{reclaimed:?} not of {dead:?}"
    );
}
