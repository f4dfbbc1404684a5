//! Hostile and malformed input. Every body gets a clean answer: a 4xx whose one-line message
//! says what is wrong, or `allowed: true`; nothing panics, nothing is written under another
//! object's key, and the webhook serves the next valid review as before.
//!
//! The bodies go through the router in-process against a real `redis-server`; the transport
//! garbage (broken HTTP/2 and TLS) goes to the `restatus serve` binary over TLS.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{
    body::Body,
    http::{Request, StatusCode},
};
use restatus::{
    policy::{FieldPattern, RestoreMode, RestorePolicy},
    store::{KeySchema, ObjectIdentity},
};
use serde_json::{Value, json};
use support::{
    fixture,
    http::{Alpn, TlsClient},
    redis::RedisServer,
    restatus::{Options, Restatus},
    router::{self, Answer, Harness},
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// `--max-request-bytes`' default.
const MAX_BODY: usize = 8 << 20;

fn kc_in(namespace: Option<&str>, name: &str) -> ObjectIdentity {
    ObjectIdentity {
        group: "infra.example.com".into(),
        resource: "kubernetesclusters".into(),
        namespace: namespace.map(Into::into),
        name: name.into(),
    }
}

fn kc(name: &str) -> ObjectIdentity {
    kc_in(Some("team-a"), name)
}

/// The valid status write the bench records first and repeats after every case.
fn legit() -> Value {
    fixture("reviews/kc-update-status.json")
}

/// A valid status write of its own object `name` in `team-a`, with its own request uid.
fn write_of(name: &str) -> Value {
    let mut rv = legit();
    rv["request"]["uid"] = json!(format!("hostile-{name}"));
    rv["request"]["name"] = json!(name);
    for side in ["object", "oldObject"] {
        rv["request"][side]["metadata"]["name"] = json!(name);
    }
    rv
}

/// `review` as JSON text with the string `"@@RAW@@"` replaced by `raw`: for what a
/// `serde_json::Value` cannot hold (a number out of range, a duplicate key, a bad escape).
fn with_raw(review: &Value, raw: &str) -> Vec<u8> {
    let text = review.to_string();
    assert!(text.contains("\"@@RAW@@\""), "no @@RAW@@ in the review");
    text.replace("\"@@RAW@@\"", raw).into_bytes()
}

/// `depth` nested objects `{"a":{"a":...}}` around `1`.
fn nested_objects(depth: usize) -> String {
    format!("{}1{}", "{\"a\":".repeat(depth), "}".repeat(depth))
}

/// CRC-32 (IEEE), for the gzip trailer.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// `data` as a gzip stream of stored (uncompressed) deflate blocks.
fn gzip(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
    let mut chunks = data.chunks(0xffff).peekable();
    if chunks.peek().is_none() {
        out.extend([1, 0, 0, 0xff, 0xff]);
    }
    while let Some(chunk) = chunks.next() {
        let last = u8::from(chunks.peek().is_none());
        let len = u16::try_from(chunk.len()).unwrap();
        out.push(last);
        out.extend(len.to_le_bytes());
        out.extend((!len).to_le_bytes());
        out.extend(chunk);
    }
    out.extend(crc32(data).to_le_bytes());
    out.extend(u32::try_from(data.len()).unwrap().to_le_bytes());
    out
}

/// What a case must get.
enum Expect {
    /// This 4xx, with a one-line message that contains the text.
    Refused(StatusCode, &'static str),
    /// 200 and `allowed: true` for the request with this uid; each text is in a warning.
    Allowed {
        uid: Value,
        warnings: &'static [&'static str],
    },
}

fn allowed(review: &Value) -> Expect {
    Expect::Allowed {
        uid: review["request"]["uid"].clone(),
        warnings: &[],
    }
}

fn refused(message: &'static str) -> Expect {
    Expect::Refused(StatusCode::BAD_REQUEST, message)
}

struct Case {
    name: &'static str,
    body: Vec<u8>,
    /// Headers besides `content-type: application/json` (a `content-type` here replaces it).
    headers: Vec<(&'static str, &'static str)>,
    expect: Expect,
    /// The objects whose records the case may write: its own, never another's.
    writes: Vec<ObjectIdentity>,
}

impl Case {
    fn new(name: &'static str, body: impl Into<Vec<u8>>, expect: Expect) -> Self {
        Self {
            name,
            body: body.into(),
            headers: Vec::new(),
            expect,
            writes: Vec::new(),
        }
    }

    fn writes(mut self, id: ObjectIdentity) -> Self {
        self.writes.push(id);
        self
    }

    fn header(mut self, name: &'static str, value: &'static str) -> Self {
        self.headers.push((name, value));
        self
    }
}

/// A router on a real Redis that has recorded the legit object, and checks each case.
struct Bench {
    redis: RedisServer,
    h: Harness,
    legit_key: String,
    legit_record: Vec<u8>,
    /// Records the cases were allowed to write.
    expected_keys: BTreeSet<String>,
}

impl Bench {
    async fn new(max_body: usize) -> Self {
        Self::with_settings(max_body, router::settings()).await
    }

    async fn with_settings(max_body: usize, settings: restatus::admission::Settings) -> Self {
        let redis = RedisServer::start().await;
        let h = router::harness_with(&redis, max_body, settings);
        router::review(&h.router, &legit()).await;
        let legit_key = h.keys.record(&kc("prod-eu-1"));
        let mut bench = Self {
            legit_record: Vec::new(),
            expected_keys: BTreeSet::from([legit_key.clone()]),
            legit_key,
            redis,
            h,
        };
        bench.legit_record = bench
            .snapshot()
            .await
            .remove(&bench.legit_key)
            .expect("the legit object is recorded");
        bench
    }

    /// Every key of this bench and its content: the fields of a hash (in order) and whether it
    /// expires, or `DUMP` for other types.
    async fn snapshot(&self) -> BTreeMap<String, Vec<u8>> {
        let mut conn = self.redis.conn().await;
        let mut out = BTreeMap::new();
        for key in self.redis.keys(&format!("{}*", self.h.prefix)).await {
            let kind: String = redis::cmd("TYPE")
                .arg(&key)
                .query_async(&mut conn)
                .await
                .unwrap();
            let content = if kind == "hash" {
                let fields: BTreeMap<String, String> = redis::cmd("HGETALL")
                    .arg(&key)
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                let expires = self.redis.pttl(&key).await > 0;
                format!("{fields:?} expires={expires}").into_bytes()
            } else {
                let dump: Option<Vec<u8>> = redis::cmd("DUMP")
                    .arg(&key)
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                dump.unwrap_or_default()
            };
            out.insert(key, content);
        }
        out
    }

    /// Sends the case, checks its answer and what it wrote, and that the webhook still
    /// serves the legit review without touching its record. Returns the answer.
    async fn run(&mut self, case: Case) -> Answer {
        let name = case.name;
        let before = self.snapshot().await;
        let mut request = Request::post("/mutate");
        if !case
            .headers
            .iter()
            .any(|(h, _)| h.eq_ignore_ascii_case("content-type"))
        {
            request = request.header("content-type", "application/json");
        }
        for (header, value) in &case.headers {
            request = request.header(*header, *value);
        }
        let started = Instant::now();
        let answer =
            router::send(&self.h.router, request.body(Body::from(case.body)).unwrap()).await;
        let took = started.elapsed();
        assert!(
            took < Duration::from_secs(10),
            "{name}: answered in {took:?}"
        );
        match &case.expect {
            Expect::Refused(status, message) => {
                let text = answer.text();
                assert_eq!(answer.status, *status, "{name}: {text}");
                assert!(text.contains(message), "{name}: {text:?} lacks {message:?}");
                assert_eq!(text.trim_end().lines().count(), 1, "{name}: {text:?}");
            }
            Expect::Allowed { uid, warnings } => {
                assert_eq!(answer.status, StatusCode::OK, "{name}: {}", answer.text());
                let response = router::allowed(&answer.body, uid);
                let given: Vec<String> = response["warnings"]
                    .as_array()
                    .map(|w| {
                        w.iter()
                            .filter_map(|w| w.as_str().map(Into::into))
                            .collect()
                    })
                    .unwrap_or_default();
                for warning in *warnings {
                    assert!(
                        given.iter().any(|g| g.contains(warning)),
                        "{name}: no warning about {warning:?} in {given:?}"
                    );
                }
                if warnings.is_empty() {
                    assert!(given.is_empty(), "{name}: unexpected warnings {given:?}");
                }
            }
        }

        let own: BTreeSet<String> = case
            .writes
            .iter()
            .map(|id| self.h.keys.record(id))
            .collect();
        let after = self.snapshot().await;
        for (key, value) in &after {
            if before.get(key) != Some(value) {
                assert!(
                    own.contains(key),
                    "{name} wrote {key:?}, not one of {own:?}"
                );
            }
        }
        for key in before.keys() {
            assert!(after.contains_key(key), "{name} removed {key:?}");
        }
        self.expected_keys.extend(own);

        // Still serving, and the legit record is as it was.
        router::review(&self.h.router, &legit()).await;
        let legit_now = self.snapshot().await.remove(&self.legit_key);
        assert_eq!(
            legit_now.as_ref(),
            Some(&self.legit_record),
            "{name} changed the legit record"
        );
        answer
    }

    /// Redis holds no record but the legit one and those the cases were allowed to write.
    async fn assert_only_expected_records(&self) {
        let keys: BTreeSet<String> = self.snapshot().await.into_keys().collect();
        let unexpected: Vec<&String> = keys.difference(&self.expected_keys).collect();
        assert!(unexpected.is_empty(), "unexpected keys: {unexpected:?}");
    }

    async fn record(&self, id: &ObjectIdentity) -> std::collections::HashMap<String, String> {
        self.redis.hgetall(&self.h.keys.record(id)).await
    }

    async fn status_of(&self, id: &ObjectIdentity) -> Value {
        let record = self.record(id).await;
        serde_json::from_str(record.get("status").expect("a record")).unwrap()
    }
}

#[tokio::test]
async fn bodies_that_are_not_json_are_refused_with_the_reason() {
    let mut bench = Bench::new(MAX_BODY).await;
    let text = legit().to_string();
    let mut deep_spec = write_of("deep-spec");
    deep_spec["request"]["object"]["spec"] = json!("@@RAW@@");
    let mut phase = legit();
    phase["request"]["object"]["status"]["phase"] = json!("@@RAW@@");
    let mut non_utf8_in_string = with_raw(&phase, "\"Run\u{1}ing\"");
    let at = non_utf8_in_string.iter().position(|b| *b == 1).unwrap();
    non_utf8_in_string.splice(at..=at, [0xff, 0xfe]);
    let mut raw_nul = with_raw(&phase, "\"Run\u{1}ing\"");
    let at = raw_nul.iter().position(|b| *b == 1).unwrap();
    raw_nul[at] = 0;
    let gzipped = gzip(text.as_bytes());

    let cases = [
        Case::new(
            "empty body",
            "",
            refused("body is not JSON: EOF while parsing"),
        ),
        Case::new(
            "only whitespace",
            " \n\t\r\n ",
            refused("body is not JSON: EOF while parsing"),
        ),
        Case::new(
            "truncated document",
            &text.as_bytes()[..text.len() / 2],
            refused("body is not JSON: EOF while parsing"),
        ),
        Case::new(
            "trailing garbage after the document",
            format!("{text} x"),
            refused("body is not JSON: trailing characters"),
        ),
        Case::new(
            "two reviews in one body",
            format!("{text}{text}"),
            refused("body is not JSON: trailing characters"),
        ),
        Case::new(
            "non-UTF-8 bytes in a string",
            non_utf8_in_string,
            refused("body is not JSON: invalid UTF-8 at byte"),
        ),
        Case::new(
            "non-UTF-8 bytes before the document",
            [&[0xff, 0xfe][..], text.as_bytes()].concat(),
            refused("body is not JSON: expected value"),
        ),
        Case::new(
            "a lone leading surrogate \\ud800: the status is not recorded",
            with_raw(&phase, r#""\ud800""#),
            Expect::Allowed {
                uid: phase["request"]["uid"].clone(),
                warnings: &["the status is not JSON: unexpected end of hex escape"],
            },
        ),
        Case::new(
            "a lone trailing surrogate \\udc00: the status is not recorded",
            with_raw(&phase, r#""\udc00""#),
            Expect::Allowed {
                uid: phase["request"]["uid"].clone(),
                warnings: &["the status is not JSON: lone leading surrogate in hex escape"],
            },
        ),
        Case::new(
            "a leading surrogate followed by a non-surrogate escape: the status is not recorded",
            with_raw(&phase, r#""\ud800\u0041""#),
            Expect::Allowed {
                uid: phase["request"]["uid"].clone(),
                warnings: &["the status is not JSON: lone leading surrogate in hex escape"],
            },
        ),
        Case::new(
            "a raw NUL byte in a string",
            raw_nul,
            refused("body is not JSON: control character"),
        ),
        Case::new(
            "a raw NUL byte as the body",
            "\0",
            refused("body is not JSON: expected value"),
        ),
        // restatus reads bodies as they come: the API server never compresses a review, and
        // no decompression layer is installed, so a gzip body is not JSON (400).
        Case::new(
            "gzip with Content-Encoding: gzip",
            gzipped.clone(),
            refused("body is not JSON: expected value at line 1 column 1"),
        )
        .header("content-encoding", "gzip"),
        Case::new(
            "truncated gzip with Content-Encoding: gzip",
            gzipped[..gzipped.len() / 2].to_vec(),
            refused("body is not JSON: expected value at line 1 column 1"),
        )
        .header("content-encoding", "gzip"),
        Case::new(
            "a garbage body as text/plain",
            "restatus, please",
            refused("body is not JSON: expected value"),
        )
        .header("content-type", "text/plain"),
        // Deep nesting is refused in the status (restatus parses it), and skipped elsewhere
        // without recursion.
        Case::new(
            "10k nested objects in the status: the status is not recorded",
            with_raw(&phase, &nested_objects(10_000)),
            Expect::Allowed {
                uid: phase["request"]["uid"].clone(),
                warnings: &["the status nests deeper than 100 levels; it is not recorded"],
            },
        ),
        Case::new(
            "10k nested arrays in the spec",
            with_raw(
                &deep_spec,
                &format!("{}{}", "[".repeat(10_000), "]".repeat(10_000)),
            ),
            allowed(&deep_spec),
        )
        .writes(kc("deep-spec")),
        Case::new(
            "10k nested objects as the whole body",
            nested_objects(10_000),
            refused("apiVersion must be admission.k8s.io/v1, got nothing"),
        ),
        Case::new(
            "1e400 in the status: the status is not recorded",
            with_raw(&phase, "1e400"),
            Expect::Allowed {
                uid: phase["request"]["uid"].clone(),
                warnings: &["the status is not JSON: number out of range"],
            },
        ),
        Case::new(
            "1e400 as the generation",
            {
                let mut rv = legit();
                rv["request"]["object"]["metadata"]["generation"] = json!("@@RAW@@");
                with_raw(&rv, "1e400")
            },
            refused("request is not a valid AdmissionRequest: number out of range"),
        ),
    ];
    for case in cases {
        bench.run(case).await;
    }
    bench.assert_only_expected_records().await;
}

#[tokio::test]
async fn reviews_of_the_wrong_shape_are_refused_with_what_is_wrong() {
    let mut bench = Bench::new(MAX_BODY).await;
    // Sets the member a pointer names; its parent must exist.
    let with = |pointer: &str, value: Value| {
        let mut rv = legit();
        let (parent, key) = pointer.rsplit_once('/').unwrap();
        rv.pointer_mut(parent).unwrap()[key] = value;
        rv.to_string()
    };
    let generation = |raw: &str| {
        let mut rv = legit();
        rv["request"]["object"]["metadata"]["generation"] = json!("@@RAW@@");
        with_raw(&rv, raw)
    };
    let cases = [
        Case::new("a JSON array", "[1]", refused("body is not a JSON object")),
        Case::new(
            "a JSON string",
            "\"review\"",
            refused("body is not a JSON object"),
        ),
        Case::new(
            "apiVersion as a number",
            with("/apiVersion", json!(1)),
            refused("apiVersion must be admission.k8s.io/v1, got 1"),
        ),
        Case::new(
            "kind as an object",
            with("/kind", json!({"kind": "AdmissionReview"})),
            refused(r#"kind must be AdmissionReview, got {"kind":"AdmissionReview"}"#),
        ),
        Case::new(
            "request as null",
            with("/request", Value::Null),
            refused("AdmissionReview has no request"),
        ),
        // An array or a string has no uid: the first thing restatus needs from a request.
        Case::new(
            "request as an array",
            with("/request", json!([legit()["request"].clone()])),
            refused("request.uid is missing or empty"),
        ),
        Case::new(
            "request as a string",
            with("/request", json!("{}")),
            refused("request.uid is missing or empty"),
        ),
        Case::new(
            "uid as a number",
            with("/request/uid", json!(42)),
            refused("request.uid is missing or empty"),
        ),
        Case::new(
            "request.kind as an object of the wrong shape",
            with("/request/kind", json!({"group": 5})),
            refused("request is not a valid AdmissionRequest: invalid type: integer `5`"),
        ),
        Case::new(
            "request.kind as a string",
            with("/request/kind", json!("KubernetesCluster")),
            refused("request is not a valid AdmissionRequest: invalid type: string"),
        ),
        Case::new(
            "userInfo.groups as a string",
            with("/request/userInfo/groups", json!("system:masters")),
            refused(
                "request is not a valid AdmissionRequest: invalid type: string \"system:masters\", expected a sequence",
            ),
        ),
        Case::new(
            "object.metadata as a string",
            with("/request/object/metadata", json!("prod-eu-1")),
            refused("request is not a valid AdmissionRequest: invalid type: string \"prod-eu-1\""),
        ),
        Case::new(
            "annotations with non-string values",
            with(
                "/request/object/metadata/annotations",
                json!({"restatus.io/policy": false, "n": 1}),
            ),
            refused(
                "request is not a valid AdmissionRequest: invalid type: integer `1`, expected a string",
            ),
        ),
        Case::new(
            "dryRun as \"true\"",
            with("/request/dryRun", json!("true")),
            refused(
                "request is not a valid AdmissionRequest: invalid type: string \"true\", expected a boolean",
            ),
        ),
        Case::new(
            "an unknown operation",
            with("/request/operation", json!("JUMP")),
            refused("request is not a valid AdmissionRequest: unknown variant `JUMP`"),
        ),
        Case::new(
            "a lowercase operation",
            with("/request/operation", json!("update")),
            refused("request is not a valid AdmissionRequest: unknown variant `update`"),
        ),
        Case::new(
            "operation as a number",
            with("/request/operation", json!(1)),
            refused("request is not a valid AdmissionRequest: invalid type: integer `1`"),
        ),
        Case::new(
            "generation i64::MAX + 1",
            generation("9223372036854775808"),
            refused(
                "request is not a valid AdmissionRequest: invalid value: integer `9223372036854775808`, expected i64",
            ),
        ),
        Case::new(
            "generation as a fraction",
            generation("1.5"),
            refused(
                "request is not a valid AdmissionRequest: invalid type: floating point `1.5`, expected i64",
            ),
        ),
        Case::new(
            "resourceVersion as a number",
            with("/request/object/metadata/resourceVersion", json!(4711)),
            refused(
                "request is not a valid AdmissionRequest: invalid type: integer `4711`, expected a string",
            ),
        ),
    ];
    for case in cases {
        bench.run(case).await;
    }
    bench.assert_only_expected_records().await;
}

#[tokio::test]
async fn odd_but_well_formed_reviews_are_allowed_and_stay_in_their_own_record() {
    let mut bench = Bench::new(MAX_BODY).await;

    // Numbers at their edges, where a string or an integer may hold them.
    let mut numbers = write_of("numbers");
    numbers["request"]["object"]["status"] = json!("@@RAW@@");
    numbers["request"]["object"]["metadata"]["resourceVersion"] = json!("9223372036854775808");
    numbers["request"]["oldObject"]["metadata"]["resourceVersion"] = json!("9223372036854775808");
    numbers["request"]["object"]["metadata"]["generation"] = json!(i64::MAX);
    let numbers_body = with_raw(
        &numbers,
        r#"{"zero": -0, "negzero": -0.0, "big": 18446744073709551615, "tiny": 1e-400, "max": 1.7976931348623157e308}"#,
    );

    // Duplicate keys: which one a reader takes differs between parsers, so neither is taken.
    let mut second = write_of("dup-second");
    second["request"]["uid"] = json!("second-request");
    let dup_request = format!(
        r#"{{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{},"request":{}}}"#,
        write_of("dup-first")["request"],
        second["request"]
    );
    let mut dup_uid = write_of("dup-uid");
    dup_uid["request"]["uid"] = json!("@@RAW@@");
    let dup_uid_body = with_raw(&dup_uid, r#""first-uid", "uid": "last-uid""#);

    // The status as something else than an object: recorded as it is, as the API server
    // stores it for a type without a schema.
    let status_as = |name: &str, status: Value| {
        let mut rv = write_of(name);
        rv["request"]["object"]["status"] = status;
        rv
    };
    let status_string = status_as("status-string", json!("Ready"));
    let status_array = status_as("status-array", json!([1, "two", {"three": 3}]));
    let status_number = status_as("status-number", json!(-1.5));
    let status_deep = status_as(
        "status-deep",
        serde_json::from_str(&nested_objects(100)).unwrap(),
    );

    // Policy annotations with escaped pointers: `~1` is `/`, `~0` is `~`.
    let mut escaped = write_of("escaped");
    let annotations = json!({
        "restatus.io/fields": "/a~1b,/c~0d,/x~1y",
        "restatus.io/exclude-fields": "/x~1y",
        "restatus.io~1fields": "/e",
        "example.com/a~1b": "/~0",
    });
    escaped["request"]["object"]["metadata"]["annotations"] = annotations;
    escaped["request"]["object"]["status"] =
        json!({"a/b": 1, "c~d": 2, "x/y": 3, "e": 4, "a": {"b": 5}});

    // Invalid restatus annotations: the object's level is skipped and reported as a warning.
    let mut invalid = write_of("invalid-annotations");
    invalid["request"]["object"]["metadata"]["annotations"] = json!({
        "restatus.io/policy": "maybe",
        "restatus.io/fields": "phase",
    });
    let mut invalid_escape = write_of("invalid-escape");
    invalid_escape["request"]["object"]["metadata"]["annotations"] =
        json!({"restatus.io/exclude-fields": "/a~2b"});
    let mut invalid_retention = write_of("invalid-retention");
    invalid_retention["request"]["object"]["metadata"]["annotations"] =
        json!({"restatus.io/retention": "forever", "restatus.io/mode": "sideways"});

    // Kind and resource that do not match: the resource names the record, as always.
    let mut mismatch = write_of("mismatch");
    mismatch["request"]["kind"] = json!({"group": "", "version": "v1", "kind": "Pod"});

    let mut connect = write_of("connect");
    connect["request"]["operation"] = json!("CONNECT");
    connect["request"]["subResource"] = Value::Null;

    // Names that could break the key `{cluster|group|resource|namespace|name}`.
    let mut cases_of_names = Vec::new();
    let odd_names = [
        ("a|b", Some("team-a")),
        ("prod-eu-1}", Some("team-a")),
        ("{prod-eu-1}", Some("team-a")),
        ("", Some("team-a|prod-eu-1")),
        ("prod-eu-1", Some("team-a|")),
        ("nul\u{0}name", Some("team-a")),
    ];
    for (name, namespace) in odd_names {
        let mut rv = write_of(name);
        rv["request"]["uid"] = json!(format!("odd-name-{}", cases_of_names.len()));
        rv["request"]["namespace"] = json!(namespace);
        for side in ["object", "oldObject"] {
            rv["request"][side]["metadata"]["namespace"] = json!(namespace);
        }
        cases_of_names.push((rv, kc_in(namespace, name)));
    }
    let mut group_bar = write_of("prod-eu-1");
    group_bar["request"]["uid"] = json!("odd-group");
    group_bar["request"]["resource"]["group"] = json!("infra.example.com|kubernetesclusters");
    group_bar["request"]["resource"]["resource"] = json!("team-a");
    group_bar["request"]["namespace"] = Value::Null;
    for side in ["object", "oldObject"] {
        group_bar["request"][side]["metadata"]
            .as_object_mut()
            .unwrap()
            .remove("namespace");
    }
    let group_bar_id = ObjectIdentity {
        group: "infra.example.com|kubernetesclusters".into(),
        resource: "team-a".into(),
        namespace: None,
        name: "prod-eu-1".into(),
    };

    let mut cases = vec![
        Case::new("numbers at their edges", numbers_body, allowed(&numbers)).writes(kc("numbers")),
        Case::new(
            "two request keys",
            dup_request,
            refused("body is not a valid AdmissionReview: duplicate field `request`"),
        ),
        Case::new(
            "two uid keys",
            dup_uid_body,
            refused("request is not a valid AdmissionRequest: duplicate field `uid`"),
        ),
        Case::new(
            "status as a string",
            status_string.to_string(),
            allowed(&status_string),
        )
        .writes(kc("status-string")),
        Case::new(
            "status as an array",
            status_array.to_string(),
            allowed(&status_array),
        )
        .writes(kc("status-array")),
        Case::new(
            "status as a number",
            status_number.to_string(),
            allowed(&status_number),
        )
        .writes(kc("status-number")),
        Case::new(
            "status 100 objects deep",
            status_deep.to_string(),
            allowed(&status_deep),
        )
        .writes(kc("status-deep")),
        Case::new(
            "restatus annotations with escaped pointers",
            escaped.to_string(),
            allowed(&escaped),
        )
        .writes(kc("escaped")),
        Case::new(
            "invalid restatus.io/policy and fields",
            invalid.to_string(),
            Expect::Allowed {
                uid: invalid["request"]["uid"].clone(),
                warnings: &["restatus.io/policy", "object"],
            },
        )
        .writes(kc("invalid-annotations")),
        Case::new(
            "an invalid escape in restatus.io/exclude-fields",
            invalid_escape.to_string(),
            Expect::Allowed {
                uid: invalid_escape["request"]["uid"].clone(),
                warnings: &["restatus.io/exclude-fields", "invalid escape"],
            },
        )
        .writes(kc("invalid-escape")),
        Case::new(
            "invalid restatus.io/retention and mode",
            invalid_retention.to_string(),
            Expect::Allowed {
                uid: invalid_retention["request"]["uid"].clone(),
                warnings: &["restatus.io/mode"],
            },
        )
        .writes(kc("invalid-retention")),
        Case::new(
            "kind Pod, resource kubernetesclusters",
            mismatch.to_string(),
            allowed(&mismatch),
        )
        .writes(kc("mismatch")),
        Case::new("operation CONNECT", connect.to_string(), allowed(&connect)),
        Case::new(
            "a group with | that spells the legit key's parts",
            group_bar.to_string(),
            allowed(&group_bar),
        )
        .writes(group_bar_id.clone()),
        // restatus reads the body whatever the Content-Type says; the API server always
        // sends application/json.
        Case::new(
            "a valid review as text/plain",
            write_of("text-plain").to_string(),
            allowed(&write_of("text-plain")),
        )
        .header("content-type", "text/plain")
        .writes(kc("text-plain")),
    ];
    let mut odd_ids = vec![group_bar_id];
    for (rv, id) in &cases_of_names {
        cases.push(
            Case::new(
                "a name or namespace with | { } or NUL",
                rv.to_string(),
                allowed(rv),
            )
            .writes(id.clone()),
        );
        odd_ids.push(id.clone());
    }
    for case in cases {
        bench.run(case).await;
    }

    // What was kept.
    let numbers = bench.record(&kc("numbers")).await;
    assert_eq!(numbers["resourceVersion"], "9223372036854775808");
    assert_eq!(numbers["generation"], i64::MAX.to_string());
    let kept: Value = serde_json::from_str(&numbers["status"]).unwrap();
    assert_eq!(kept["zero"].as_f64(), Some(0.0), "-0 is a float zero");
    assert_eq!(kept["big"], json!(u64::MAX));
    assert_eq!(kept["tiny"], json!(0.0));
    assert!(
        bench
            .redis
            .keys(&format!("{}*dup-first*", bench.h.prefix))
            .await
            .is_empty()
    );
    assert_eq!(bench.status_of(&kc("status-string")).await, json!("Ready"));
    assert_eq!(
        bench.status_of(&kc("status-array")).await,
        json!([1, "two", {"three": 3}])
    );
    assert_eq!(
        bench.status_of(&kc("escaped")).await,
        json!({"a/b": 1, "c~d": 2}),
        "the object's own fields narrow, escaped, and its exclusions apply"
    );
    assert_eq!(bench.record(&kc("mismatch")).await["kind"], "Pod");
    assert!(bench.record(&kc("connect")).await.is_empty());
    // None of the odd keys can be taken for a valid object's: the separators and braces of
    // the key format are percent-encoded inside the parts (which no valid name contains), so
    // each has exactly the four separators of `cluster|group|resource|namespace|name`, no
    // brace inside its hash tag, and a `%` escape or a NUL a valid name never has.
    for id in &odd_ids {
        let key = bench.h.keys.record(id);
        let tag = &key[key.find('{').unwrap() + 1..key.len() - 1];
        assert_eq!(tag.matches('|').count(), 4, "{key:?}");
        assert!(!tag.contains(['{', '}']), "{key:?}");
        assert!(
            tag.contains(['%', '\0']),
            "{key:?} looks like a valid object's key"
        );
        assert_ne!(key, bench.legit_key);
    }
    bench.assert_only_expected_records().await;
}

#[tokio::test]
async fn large_bodies_are_answered_up_to_the_limit_and_refused_beyond() {
    let mut bench = Bench::new(MAX_BODY).await;
    let mut three_mib = write_of("three-mib");
    three_mib["request"]["object"]["status"]["blob"] = json!("x".repeat(3 << 20));
    let mut nine_mib = write_of("nine-mib");
    nine_mib["request"]["object"]["status"]["blob"] = json!("x".repeat(9 << 20));
    // Keys count as values: 40k keys are 80,001 values, within --max-status-values.
    let wide_status = |n: usize| -> Value {
        let keys: serde_json::Map<String, Value> =
            (0..n).map(|i| (format!("k{i}"), json!(i))).collect();
        Value::Object(keys)
    };
    let mut wide = write_of("wide");
    wide["request"]["object"]["status"] = wide_status(40_000);
    let mut too_wide = write_of("too-wide");
    too_wide["request"]["object"]["status"] = wide_status(100_000);
    let mut huge_annotation = write_of("huge-annotation");
    huge_annotation["request"]["object"]["metadata"]["annotations"] =
        json!({"example.com/blob": "y".repeat(1 << 20)});
    let mut huge_invalid = write_of("huge-invalid");
    huge_invalid["request"]["object"]["metadata"]["annotations"] =
        json!({"restatus.io/policy": "z".repeat(1 << 20)});
    let mut huge_uid = write_of("huge-uid");
    huge_uid["request"]["uid"] = json!("u".repeat(1 << 20));

    let cases = [
        Case::new("a 3 MiB body", three_mib.to_string(), allowed(&three_mib))
            .writes(kc("three-mib")),
        Case::new(
            "a 9 MiB body",
            nine_mib.to_string(),
            Expect::Refused(StatusCode::PAYLOAD_TOO_LARGE, "length limit exceeded"),
        ),
        Case::new("a status with 40k keys", wide.to_string(), allowed(&wide)).writes(kc("wide")),
        Case::new(
            "a status with 100k keys: allowed, not recorded",
            too_wide.to_string(),
            Expect::Allowed {
                uid: too_wide["request"]["uid"].clone(),
                warnings: &["more than 100000 values (--max-status-values); it is not recorded"],
            },
        ),
        Case::new(
            "a 1 MiB annotation",
            huge_annotation.to_string(),
            allowed(&huge_annotation),
        )
        .writes(kc("huge-annotation")),
        Case::new("a 1 MiB uid", huge_uid.to_string(), allowed(&huge_uid)).writes(kc("huge-uid")),
    ];
    for case in cases {
        bench.run(case).await;
    }
    // The invalid value is quoted in the warning, cut to 128 characters.
    let answer = bench
        .run(
            Case::new(
                "a 1 MiB invalid restatus.io/policy",
                huge_invalid.to_string(),
                Expect::Allowed {
                    uid: huge_invalid["request"]["uid"].clone(),
                    warnings: &["restatus.io/policy"],
                },
            )
            .writes(kc("huge-invalid")),
        )
        .await;
    let response = router::allowed(&answer.body, &huge_invalid["request"]["uid"]);
    let warning = response["warnings"][0].as_str().unwrap();
    assert!(warning.len() < 1024, "a {} byte warning", warning.len());
    let wide = bench.status_of(&kc("wide")).await;
    assert_eq!(wide.as_object().map(serde_json::Map::len), Some(40_000));
    bench.assert_only_expected_records().await;
}

/// Regressions of what the fuzz targets found (fuzz/README.md): messages derived from a
/// hostile input say what is wrong without quoting the input back at any length, in the
/// 400 answer (and the log line), and in admission warnings.
#[tokio::test]
async fn messages_do_not_quote_hostile_input_at_length() {
    let mut bench = Bench::new(MAX_BODY).await;
    let long = "v".repeat(64 << 10);
    let mut api_version = legit();
    api_version["apiVersion"] = json!(long);
    let mut operation = legit();
    operation["request"]["operation"] = json!(long);
    let mut pattern = write_of("long-pattern");
    pattern["request"]["object"]["metadata"]["annotations"] =
        json!({"restatus.io/fields": format!("{long},/phase")});

    let cases = [
        Case::new(
            "a 64 KiB apiVersion",
            api_version.to_string(),
            refused("apiVersion must be admission.k8s.io/v1, got \"vvv"),
        ),
        Case::new(
            "a 64 KiB operation",
            operation.to_string(),
            refused("request is not a valid AdmissionRequest: unknown variant `vvv"),
        ),
    ];
    for case in cases {
        let answer = bench.run(case).await;
        assert!(
            answer.body.len() < 1024,
            "a {} byte answer quotes the input back",
            answer.body.len()
        );
    }
    let answer = bench
        .run(
            Case::new(
                "a 64 KiB restatus.io/fields entry",
                pattern.to_string(),
                Expect::Allowed {
                    uid: pattern["request"]["uid"].clone(),
                    warnings: &["restatus.io/fields", "must start with '/'"],
                },
            )
            .writes(kc("long-pattern")),
        )
        .await;
    let response = router::allowed(&answer.body, &pattern["request"]["uid"]);
    let warning = response["warnings"][0].as_str().unwrap();
    assert!(
        warning.len() < 1024,
        "a {} byte warning quotes the annotation back",
        warning.len()
    );
    bench.assert_only_expected_records().await;
}

/// Regression: identities the API server never sends (a `|` in a group or a namespace) must
/// still not share a record key, or a review of one overwrites the record of the other:
/// `{cluster|group|resource|namespace|name}` is unambiguous only while no part contains `|`.
#[tokio::test]
async fn distinct_identities_never_share_a_record_key() {
    let mut bench = Bench::new(MAX_BODY).await;
    let group_bar = ObjectIdentity {
        group: "infra.example.com|kubernetesclusters".into(),
        resource: "team-a".into(),
        namespace: None,
        name: "prod-eu-1".into(),
    };
    let namespace_bar = kc_in(Some("team-a|"), "prod-eu-1");
    let write = |id: &ObjectIdentity, phase: &str| {
        let mut rv = write_of(&id.name);
        rv["request"]["uid"] = json!(format!("{}-{phase}", id.group));
        rv["request"]["resource"]["group"] = json!(id.group);
        rv["request"]["resource"]["resource"] = json!(id.resource);
        rv["request"]["namespace"] = json!(id.namespace);
        for side in ["object", "oldObject"] {
            rv["request"][side]["metadata"]["namespace"] = json!(id.namespace);
        }
        rv["request"]["object"]["status"] = json!({"phase": phase});
        rv
    };
    let first = write(&group_bar, "first");
    let second = write(&namespace_bar, "second");
    bench
        .run(
            Case::new("a | in the group", first.to_string(), allowed(&first))
                .writes(group_bar.clone()),
        )
        .await;
    bench
        .run(
            Case::new("a | in the namespace", second.to_string(), allowed(&second))
                .writes(namespace_bar.clone()),
        )
        .await;
    assert_ne!(
        bench.h.keys.record(&group_bar),
        bench.h.keys.record(&namespace_bar),
        "two identities, one key"
    );
    assert_eq!(bench.status_of(&group_bar).await, json!({"phase": "first"}));
}

/// Regression (fuzz target `decide`, `fuzz/corpus/decide/regression-narrow-same-index`): an
/// object's `restatus.io/fields` names places in its status, so narrowing to fields the
/// policy selects keeps them. Array indices must not count in the selection already made.
#[tokio::test]
async fn an_object_narrows_by_pointers_into_its_status() {
    let fields =
        |list: &[&str]| -> Vec<FieldPattern> { list.iter().map(|p| p.parse().unwrap()).collect() };
    // Through the webhook: the global policy keeps addresses' IPs; the object narrows to
    // its second address.
    let mut settings = router::settings();
    settings.global.defaults.fields = fields(&["/addresses/*/ip"]);
    let mut bench = Bench::with_settings(MAX_BODY, settings).await;
    let mut rv = write_of("narrowed");
    rv["request"]["object"]["metadata"]["annotations"] =
        json!({"restatus.io/fields": "/addresses/1"});
    rv["request"]["object"]["status"] =
        json!({"addresses": [{"host": "a.example.com"}, {"ip": "192.0.2.2"}]});
    bench
        .run(
            Case::new("narrowed to /addresses/1", rv.to_string(), allowed(&rv))
                .writes(kc("narrowed")),
        )
        .await;
    assert_eq!(
        bench.status_of(&kc("narrowed")).await,
        json!({"addresses": [{"ip": "192.0.2.2"}]})
    );

    // The minimised input: fields and narrowing both `/list/1`.
    let same = RestorePolicy {
        mode: RestoreMode::Fill,
        fields: fields(&["/list/1"]),
        narrowed_to: fields(&["/list/1"]),
        exclude_fields: vec![],
    };
    assert_eq!(
        same.restorable(&json!({"list": [{}, 3]})),
        json!({"list": [3]}),
        "narrowing to the selected field restores nothing"
    );
}

/// Writes `bytes` on a connection, closes its writing side and waits, within a deadline, for
/// the server to end it. Returns what the server sent.
async fn send_and_close<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, bytes: &[u8]) -> Vec<u8> {
    // The server may end the connection before it has read everything: write errors are
    // part of the game.
    let _ = stream.write_all(bytes).await;
    let _ = stream.flush().await;
    let _ = stream.shutdown().await;
    let mut received = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the server kept the broken connection open");
    received
}

/// HTTP/2 frames: `(type, flags, stream, payload)` as one byte string.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
    let mut out = vec![len[1], len[2], len[3], kind, flags];
    out.extend(stream.to_be_bytes());
    out.extend(payload);
    out
}

/// The types of the complete frames in what an HTTP/2 server sent.
fn frame_types(mut bytes: &[u8]) -> Vec<u8> {
    let mut types = Vec::new();
    while bytes.len() >= 9 {
        let len = usize::from(bytes[0]) << 16 | usize::from(bytes[1]) << 8 | usize::from(bytes[2]);
        if bytes.len() < 9 + len {
            break;
        }
        types.push(bytes[3]);
        bytes = &bytes[9 + len..];
    }
    types
}

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const SETTINGS: u8 = 0x4;
const HEADERS: u8 = 0x1;
const GOAWAY: u8 = 0x7;

#[tokio::test]
async fn broken_http2_and_tls_leave_the_server_serving() {
    let redis = RedisServer::start().await;
    let r = Restatus::start(Options::new(redis.url())).await;
    let connect = |alpn: &'static [u8]| {
        let mut config = support::http::client_config(&r.ca_file(), None);
        config.alpn_protocols = vec![alpn.to_vec()];
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let port = r.port;
        async move {
            let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .unwrap();
            let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
            let stream = connector.connect(name, tcp).await.unwrap();
            assert_eq!(stream.get_ref().1.alpn_protocol(), Some(alpn));
            stream
        }
    };

    // A SETTINGS frame that announces 18 bytes and brings 6, then the end of the stream.
    let mut truncated = PREFACE.to_vec();
    truncated.extend(&frame(SETTINGS, 0, 0, &[0; 18])[..9 + 6]);
    send_and_close(connect(b"h2").await, &truncated).await;

    // Garbage where the first frame should be: a connection error, answered with GOAWAY.
    let mut garbage = PREFACE.to_vec();
    garbage.extend(b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff GARBAGE \x00\x01\x02");
    let answered = send_and_close(connect(b"h2").await, &garbage).await;
    assert!(
        frame_types(&answered).contains(&GOAWAY),
        "no GOAWAY after garbage: {answered:?}"
    );

    // Headers that do not decode (HPACK index 127+): a compression error, GOAWAY.
    let mut bad_hpack = PREFACE.to_vec();
    bad_hpack.extend(frame(SETTINGS, 0, 0, &[]));
    bad_hpack.extend(frame(
        HEADERS,
        0x4 | 0x1,
        1,
        &[0xff, 0xff, 0xff, 0xff, 0x0f],
    ));
    let answered = send_and_close(connect(b"h2").await, &bad_hpack).await;
    assert!(
        frame_types(&answered).contains(&GOAWAY),
        "no GOAWAY after undecodable headers: {answered:?}"
    );

    // HTTP/1.1 with a request line that is not one: 400, then closed.
    let answered = send_and_close(connect(b"http/1.1").await, b"\x01\x02 NOT HTTP\r\n\r\n").await;
    assert!(
        answered.starts_with(b"HTTP/1.1 400"),
        "{}",
        String::from_utf8_lossy(&answered)
    );

    // No TLS at all: plain HTTP to the TLS port ends in a failed handshake.
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", r.port))
        .await
        .unwrap();
    send_and_close(
        tcp,
        b"POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}",
    )
    .await;

    // A valid review is answered, promptly, over HTTP/2 and HTTP/1.1.
    let rv = legit();
    for alpn in [Alpn::Http2, Alpn::Http1] {
        let client = TlsClient::new(&r.ca_file(), alpn);
        let started = Instant::now();
        let resp = client
            .post(&r.mutate_url(), rv.to_string())
            .await
            .expect("POST /mutate");
        assert_eq!(resp.status, 200, "{}", resp.body);
        router::allowed(resp.body.as_bytes(), &rv["request"]["uid"]);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "answered in {:?}",
            started.elapsed()
        );
    }

    // Redis holds only the valid review's record, and its history.
    let keys = redis.keys(&format!("{}*", r.key_prefix)).await;
    let schema = KeySchema::new(&r.key_prefix, "default");
    let mut expected = vec![
        schema.record(&kc("prod-eu-1")),
        schema.history(&kc("prod-eu-1")),
    ];
    expected.sort();
    let mut keys = keys;
    keys.sort();
    assert_eq!(keys, expected);
}

#[tokio::test]
async fn huge_names_are_answered_and_logged_cut_short() {
    let redis = RedisServer::start().await;
    // Seven 1 MiB strings: above the default request cap, which is not what this is about.
    let mut opts = Options::new(redis.url());
    opts.args = vec!["--max-request-bytes=8Mi".into()];
    let r = Restatus::start(opts).await;
    let long = |c: &str| c.repeat(1 << 20);
    let mut rv = write_of("placeholder");
    rv["request"]["uid"] = json!(long("u"));
    rv["request"]["name"] = json!(long("n"));
    rv["request"]["namespace"] = json!(long("s"));
    rv["request"]["object"]["metadata"]["name"] = json!(long("n"));
    rv["request"]["object"]["metadata"]["namespace"] = json!(long("s"));
    rv["request"]["oldObject"] = rv["request"]["object"].clone();

    let resp = TlsClient::new(&r.ca_file(), Alpn::Http2)
        .post(&r.mutate_url(), rv.to_string())
        .await
        .expect("POST /mutate");
    assert_eq!(resp.status, 200, "{}", clip(&resp.body));
    router::allowed(resp.body.as_bytes(), &rv["request"]["uid"]);

    // The answer's debug line, with the review's fields, is written before the answer.
    let log = r.log_text();
    assert!(log.contains("review answered"), "{}", clip(&log));
    for c in ["u", "n", "s"] {
        let run = c.repeat(1024);
        assert!(
            !log.contains(&run),
            "the log holds a 1 KiB run of {c:?}: {}",
            clip(&log)
        );
    }
}

fn clip(text: &str) -> String {
    restatus::text::clip(text, 2000)
}
