//! Decoding an AdmissionReview body, once and bounded, with an error that says what is wrong.
//!
//! The request is decoded into typed structs that borrow from the body: of each object only
//! the metadata restatus reads is decoded, and `.status` stays raw JSON (a slice of the body,
//! no copy) until a decision needs it. Everything else (`spec`, `managedFields`, ...) is
//! skipped without being built. A status is then parsed by [`parse_status`], which refuses
//! one with more values or deeper nesting than the limits allow before building anything, so
//! the memory a review takes is bounded by its body and the limits, not by what it holds.

use std::collections::BTreeMap;

use k8s_openapi::api::authentication::v1::UserInfo;
use kube::core::{GroupVersionKind, GroupVersionResource, admission::Operation};
use serde::{Deserialize, Serialize, de::IgnoredAny};
use serde_json::value::RawValue;

pub use crate::limits::{StatusError, StatusLimits, parse_status, values};
use crate::text::{base64_encode, clip};

pub const API_VERSION: &str = "admission.k8s.io/v1";
pub const KIND: &str = "AdmissionReview";

#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error("body is not JSON: {0}")]
    NotJson(String),
    #[error("body is not a JSON object")]
    NotAnObject,
    #[error("apiVersion must be {API_VERSION}, got {0}")]
    WrongApiVersion(String),
    #[error("kind must be {KIND}, got {0}")]
    WrongKind(String),
    #[error("AdmissionReview has no request")]
    NoRequest,
    #[error("request.uid is missing or empty")]
    NoUid,
    #[error("body is not a valid AdmissionReview: {0}")]
    NotAReview(String),
    #[error("request is not a valid AdmissionRequest: {0}")]
    Malformed(String),
}

impl ReviewError {
    /// A short label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            ReviewError::NotJson(_) | ReviewError::NotAnObject => "not_json",
            ReviewError::WrongApiVersion(_) | ReviewError::WrongKind(_) => "wrong_type",
            ReviewError::NoRequest | ReviewError::NoUid => "no_request",
            ReviewError::NotAReview(_) | ReviewError::Malformed(_) => "malformed",
        }
    }
}

/// One admission request, as much of it as restatus reads.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Request<'a> {
    pub uid: String,
    pub kind: GroupVersionKind,
    pub resource: GroupVersionResource,
    #[serde(default)]
    pub sub_resource: Option<String>,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(deserialize_with = "operation")]
    pub operation: Operation,
    pub user_info: UserInfo,
    #[serde(default, borrow)]
    pub object: Option<Object<'a>>,
    #[serde(default, borrow)]
    pub old_object: Option<Object<'a>>,
    #[serde(default)]
    pub dry_run: bool,
}

/// An object of a review: its metadata, and its status as raw JSON.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Object<'a> {
    #[serde(default)]
    pub metadata: Meta,
    /// `None` when absent or `null`.
    #[serde(default, borrow)]
    pub status: Option<&'a RawValue>,
}

/// The metadata restatus reads; the rest (`managedFields`, labels, ...) is skipped.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Meta {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub uid: Option<String>,
    #[serde(default)]
    pub resource_version: Option<String>,
    #[serde(default)]
    pub generation: Option<i64>,
    /// When the incarnation was created (RFC 3339), kept as text: a value that is not a time
    /// only means no catch-up.
    #[serde(default)]
    pub creation_timestamp: Option<String>,
    /// Only whether it is set matters: the object is being deleted.
    #[serde(default)]
    pub deletion_timestamp: Option<IgnoredAny>,
    #[serde(default)]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// An operation by its name, with serde's usual messages for anything else.
fn operation<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Operation, D::Error> {
    const NAMES: &[&str] = &["CREATE", "UPDATE", "DELETE", "CONNECT"];
    let name = std::borrow::Cow::<'de, str>::deserialize(d)?;
    match name.as_ref() {
        "CREATE" => Ok(Operation::Create),
        "UPDATE" => Ok(Operation::Update),
        "DELETE" => Ok(Operation::Delete),
        "CONNECT" => Ok(Operation::Connect),
        other => Err(serde::de::Error::unknown_variant(other, NAMES)),
    }
}

impl Request<'_> {
    /// The apiVersion of the request's kind (`v1`, `infra.example.com/v1alpha1`).
    pub fn api_version(&self) -> String {
        self.kind.api_version()
    }
}

/// The outer shape, with the parts checked before the request is decoded kept raw.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Envelope<'a> {
    #[serde(default, borrow)]
    api_version: Option<&'a RawValue>,
    #[serde(default, borrow)]
    kind: Option<&'a RawValue>,
    #[serde(default, borrow)]
    request: Option<&'a RawValue>,
}

/// The request's uid alone, checked before the rest of the request.
#[derive(Deserialize)]
struct UidOnly<'a> {
    #[serde(default, borrow)]
    uid: Option<&'a RawValue>,
}

/// How long a quoted piece of a hostile body may be in an answer or a log line.
const QUOTED: usize = 64;

fn describe(value: Option<&RawValue>) -> String {
    let Some(raw) = value else {
        return "nothing".to_owned();
    };
    match serde_json::from_str::<&str>(raw.get()) {
        Ok(s) => format!("{:?}", clip(s, QUOTED)),
        Err(_) if raw.get() == "null" => "nothing".to_owned(),
        Err(_) => clip(raw.get(), QUOTED),
    }
}

/// The text of a raw JSON string, or `None` when it is not a string.
fn string_of(raw: Option<&RawValue>) -> Option<String> {
    serde_json::from_str::<String>(raw?.get()).ok()
}

/// Checks that `body` is an `admission.k8s.io/v1` AdmissionReview with a request and a uid,
/// and decodes the request, borrowing from `body`.
pub fn decode(body: &[u8]) -> Result<Request<'_>, ReviewError> {
    // serde's messages can quote the input (an unknown variant, an invalid type): cut them.
    let quoted = |e: serde_json::Error| clip(&e.to_string(), 4 * QUOTED);
    let text = std::str::from_utf8(body).map_err(|e| {
        // Where the body is not even JSON, serde says where; skipping a value allocates nothing.
        let reason = serde_json::from_slice::<IgnoredAny>(body).map_or_else(quoted, |_| {
            format!("invalid UTF-8 at byte {} of the body", e.valid_up_to())
        });
        ReviewError::NotJson(reason)
    })?;
    if !text.trim_start().starts_with('{') {
        // serde would take a list for a struct: tell JSON that is not an object from no JSON.
        return match serde_json::from_str::<IgnoredAny>(text) {
            Ok(_) => Err(ReviewError::NotAnObject),
            Err(e) => Err(ReviewError::NotJson(quoted(e))),
        };
    }
    let envelope: Envelope<'_> = serde_json::from_str(text).map_err(|e| {
        if e.is_data() {
            // A key given twice: which one a reader takes is not for restatus to guess.
            ReviewError::NotAReview(quoted(e))
        } else {
            ReviewError::NotJson(quoted(e))
        }
    })?;
    if string_of(envelope.api_version).as_deref() != Some(API_VERSION) {
        return Err(ReviewError::WrongApiVersion(describe(envelope.api_version)));
    }
    if string_of(envelope.kind).as_deref() != Some(KIND) {
        return Err(ReviewError::WrongKind(describe(envelope.kind)));
    }
    let request = match envelope.request {
        None => return Err(ReviewError::NoRequest),
        Some(raw) if raw.get() == "null" => return Err(ReviewError::NoRequest),
        Some(raw) => raw.get(),
    };
    let uid = match serde_json::from_str::<UidOnly<'_>>(request) {
        Ok(only) => string_of(only.uid),
        // An object with a key twice; anything but an object has no uid.
        Err(e) if e.is_data() && request.starts_with('{') => {
            return Err(ReviewError::Malformed(quoted(e)));
        }
        Err(_) => None,
    };
    if uid.is_none_or(|uid| uid.is_empty()) {
        return Err(ReviewError::NoUid);
    }
    serde_json::from_str(request).map_err(|e| ReviewError::Malformed(quoted(e)))
}

/// The answer to a review: allowed, with a JSON patch or none, and warnings for the client.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Response {
    pub uid: String,
    pub allowed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patch_type: Option<&'static str>,
    /// Base64 of the JSON patch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patch: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

impl Response {
    /// Allows the request with `uid`, changing nothing.
    pub fn allow(uid: &str) -> Self {
        Self {
            uid: uid.to_owned(),
            allowed: true,
            patch_type: None,
            patch: None,
            warnings: Vec::new(),
        }
    }

    /// Allows the request with the JSON patch `ops`.
    pub fn with_patch(mut self, ops: &json_patch::Patch) -> Result<Self, serde_json::Error> {
        let json = serde_json::to_vec(ops)?;
        self.patch_type = Some("JSONPatch");
        self.patch = Some(base64_encode(&json));
        Ok(self)
    }

    /// The AdmissionReview that carries this answer.
    pub fn into_review(self) -> ReviewAnswer {
        ReviewAnswer {
            api_version: API_VERSION,
            kind: KIND,
            response: self,
        }
    }
}

/// An AdmissionReview with a response, as sent back to the API server.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReviewAnswer {
    pub api_version: &'static str,
    pub kind: &'static str,
    pub response: Response,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn err(body: &str) -> String {
        decode(body.as_bytes()).unwrap_err().to_string()
    }

    #[test]
    fn each_kind_of_bad_body_is_named() {
        assert!(err("not json").starts_with("body is not JSON"));
        assert!(err("{\"a\":").starts_with("body is not JSON"));
        assert_eq!(
            decode(b"{\"apiVersion\":\"\xff\"}")
                .unwrap_err()
                .to_string(),
            "body is not JSON: invalid UTF-8 at byte 15 of the body"
        );
        assert!(
            err(r#"{"kind":"AdmissionReview","kind":"AdmissionReview"}"#)
                .starts_with("body is not a valid AdmissionReview: duplicate field `kind`")
        );
        assert_eq!(err("[1]"), "body is not a JSON object");
        assert_eq!(err("5"), "body is not a JSON object");
        assert_eq!(
            err(r#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview"}"#),
            "apiVersion must be admission.k8s.io/v1, got \"admission.k8s.io/v1beta1\""
        );
        assert_eq!(
            err(r#"{"kind":"AdmissionReview"}"#),
            "apiVersion must be admission.k8s.io/v1, got nothing"
        );
        assert_eq!(
            err(r#"{"apiVersion":null,"kind":"AdmissionReview"}"#),
            "apiVersion must be admission.k8s.io/v1, got nothing"
        );
        assert_eq!(
            err(r#"{"apiVersion":5,"kind":"AdmissionReview"}"#),
            "apiVersion must be admission.k8s.io/v1, got 5"
        );
        assert_eq!(
            err(r#"{"apiVersion":"admission.k8s.io/v1","kind":"Pod"}"#),
            "kind must be AdmissionReview, got \"Pod\""
        );
        assert_eq!(
            err(r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#),
            "AdmissionReview has no request"
        );
        assert_eq!(
            err(r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":null}"#),
            "AdmissionReview has no request"
        );
        assert_eq!(
            err(
                r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":""}}"#
            ),
            "request.uid is missing or empty"
        );
        assert_eq!(
            err(
                r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":7}}"#
            ),
            "request.uid is missing or empty"
        );
        let malformed = err(
            r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","operation":"JUMP"}}"#,
        );
        assert!(
            malformed.starts_with("request is not a valid AdmissionRequest"),
            "{malformed}"
        );
        assert!(!malformed.contains('\n'));
    }

    fn review(object: Value) -> String {
        json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "u-1",
                "kind": {"group": "", "version": "v1", "kind": "Service"},
                "resource": {"group": "", "version": "v1", "resource": "services"},
                "subResource": "status",
                "name": "lb",
                "namespace": "web",
                "operation": "UPDATE",
                "userInfo": {"username": "u", "groups": ["g"]},
                "object": object,
                "oldObject": null,
                "dryRun": false,
                "options": {"kind": "UpdateOptions"}
            }
        })
        .to_string()
    }

    #[test]
    fn the_status_stays_raw_and_the_rest_is_skipped() {
        let body = review(json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {
                "name": "lb", "uid": "x", "resourceVersion": "7", "generation": 2,
                "annotations": {"a": "b"},
                "deletionTimestamp": "2026-12-01T00:00:00Z",
                "managedFields": [{"manager": "m", "fieldsV1": {"f:spec": {}}}]
            },
            "spec": {"ports": [{"port": 80}]},
            "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.1"}]}}
        }));
        let req = decode(body.as_bytes()).unwrap();
        assert_eq!(req.uid, "u-1");
        assert_eq!(req.api_version(), "v1");
        assert_eq!(req.sub_resource.as_deref(), Some("status"));
        assert_eq!(req.user_info.username.as_deref(), Some("u"));
        let obj = req.object.as_ref().unwrap();
        assert_eq!(obj.metadata.uid.as_deref(), Some("x"));
        assert_eq!(obj.metadata.generation, Some(2));
        assert!(obj.metadata.deletion_timestamp.is_some());
        let raw = obj.status.unwrap();
        assert_eq!(
            raw.get(),
            r#"{"loadBalancer":{"ingress":[{"ip":"192.0.2.1"}]}}"#
        );
        // The raw status is a slice of the body, not a copy.
        let range = body.as_ptr() as usize..body.as_ptr() as usize + body.len();
        assert!(range.contains(&(raw.get().as_ptr() as usize)));
        assert!(req.old_object.is_none());
    }

    #[test]
    fn a_null_status_is_no_status() {
        let body = review(json!({"metadata": {"name": "lb"}, "status": null}));
        let req = decode(body.as_bytes()).unwrap();
        assert!(req.object.unwrap().status.is_none());
    }

    #[test]
    fn a_response_carries_its_patch_in_base64() {
        let ops: json_patch::Patch = serde_json::from_value(
            json!([{"op": "add", "path": "/metadata/annotations", "value": {"a": "b"}}]),
        )
        .unwrap();
        let answer = Response::allow("u-1")
            .with_patch(&ops)
            .unwrap()
            .into_review();
        let text = serde_json::to_value(&answer).unwrap();
        assert_eq!(text["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(text["kind"], "AdmissionReview");
        assert_eq!(text["response"]["uid"], "u-1");
        assert_eq!(text["response"]["allowed"], true);
        assert_eq!(text["response"]["patchType"], "JSONPatch");
        let patch =
            crate::text::base64_decode(text["response"]["patch"].as_str().unwrap()).unwrap();
        assert_eq!(
            serde_json::from_slice::<Value>(&patch).unwrap(),
            serde_json::to_value(&ops).unwrap()
        );
        let plain = serde_json::to_value(Response::allow("u-2").into_review()).unwrap();
        assert_eq!(
            plain,
            json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": {"uid": "u-2", "allowed": true}})
        );
    }
}
