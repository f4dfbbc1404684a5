//! Decoding an AdmissionReview body, with an error that says what is wrong.

use kube::core::{
    DynamicObject,
    admission::{AdmissionRequest, AdmissionReview},
};
use serde_json::Value;

use crate::text::clip;

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
            ReviewError::Malformed(_) => "malformed",
        }
    }
}

/// How long a quoted piece of a hostile body may be in an answer or a log line.
const QUOTED: usize = 64;

fn describe(value: Option<&Value>) -> String {
    match value {
        None | Some(Value::Null) => "nothing".to_owned(),
        Some(Value::String(s)) => format!("{:?}", clip(s, QUOTED)),
        Some(other) => clip(&other.to_string(), QUOTED),
    }
}

/// Checks that `body` is an `admission.k8s.io/v1` AdmissionReview with a request and a uid,
/// and returns the request.
pub fn decode(body: &[u8]) -> Result<AdmissionRequest<DynamicObject>, ReviewError> {
    // serde's messages can quote the input (an unknown variant, an invalid type): cut them.
    let quoted = |e: serde_json::Error| clip(&e.to_string(), 4 * QUOTED);
    let value: Value = serde_json::from_slice(body).map_err(|e| ReviewError::NotJson(quoted(e)))?;
    let Value::Object(map) = &value else {
        return Err(ReviewError::NotAnObject);
    };
    match map.get("apiVersion") {
        Some(Value::String(v)) if v == API_VERSION => {}
        other => return Err(ReviewError::WrongApiVersion(describe(other))),
    }
    match map.get("kind") {
        Some(Value::String(k)) if k == KIND => {}
        other => return Err(ReviewError::WrongKind(describe(other))),
    }
    let request = match map.get("request") {
        None | Some(Value::Null) => return Err(ReviewError::NoRequest),
        Some(request) => request,
    };
    match request.get("uid") {
        Some(Value::String(uid)) if !uid.is_empty() => {}
        _ => return Err(ReviewError::NoUid),
    }
    let review: AdmissionReview<DynamicObject> =
        serde_json::from_value(value).map_err(|e| ReviewError::Malformed(quoted(e)))?;
    review.try_into().map_err(|_| ReviewError::NoRequest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(body: &str) -> String {
        decode(body.as_bytes()).unwrap_err().to_string()
    }

    #[test]
    fn each_kind_of_bad_body_is_named() {
        assert!(err("not json").starts_with("body is not JSON"));
        assert_eq!(err("[1]"), "body is not a JSON object");
        assert_eq!(
            err(r#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview"}"#),
            "apiVersion must be admission.k8s.io/v1, got \"admission.k8s.io/v1beta1\""
        );
        assert_eq!(
            err(r#"{"kind":"AdmissionReview"}"#),
            "apiVersion must be admission.k8s.io/v1, got nothing"
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
            err(
                r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":""}}"#
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
}
