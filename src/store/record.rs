//! The record of one object's status, and how a write is described to the store.

use std::collections::HashMap;

use jiff::Timestamp;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::keys::ObjectIdentity;

/// Where a status to record came from. The order matters: for the same object incarnation
/// and resourceVersion, a later source supersedes an earlier one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Source {
    /// The status stored right now, seen in `oldObject` of a main-resource update.
    Observed = 0,
    /// A status being written (status subresource, or a type that keeps status in the object).
    Written = 1,
    /// The last status of an object being deleted.
    Deleted = 2,
}

/// A status to record, with the identity and metadata of the object it belongs to.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordWrite {
    pub identity: ObjectIdentity,
    pub status: Value,
    pub api_version: String,
    pub kind: String,
    pub uid: String,
    pub resource_version: String,
    pub generation: Option<i64>,
    pub source: Source,
    /// The object is going away (a DELETE, or an update of an object that has a
    /// deletionTimestamp): the retention clock starts.
    pub deleting: bool,
    /// How long the record is kept once the object is deleted.
    pub retention: std::time::Duration,
    /// The restore job this write is restatus's own status write for: the proof, kept in the
    /// record, that the record was adopted by that restore and not replaced by the new
    /// incarnation's own status.
    pub restored_by: Option<String>,
    /// `Some(creation time)` when the writer is an incarnation restatus never restored (it
    /// carries none of restatus's annotations) and its policy opens restores to any creator:
    /// a record of another incarnation written before that time (see [`Record::predates`]) is
    /// not replaced but answered with [`WriteOutcome::OtherIncarnation`], for a catch-up
    /// restore. A record written after it is no earlier incarnation's, and is replaced.
    pub catch_up: Option<Timestamp>,
    /// Resync's observation: when the list that saw the object was taken. A deletion
    /// recorded (to the second) before then, of the same resourceVersion, did not land (a
    /// later webhook or a precondition refused it): the object lives, and its record's
    /// retention clock stops.
    pub listed_at: Option<Timestamp>,
}

/// What the store did with a [`RecordWrite`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOutcome {
    Written,
    /// Same status as stored (same digest): nothing written.
    Unchanged,
    /// Older than what is stored (lower resourceVersion of the same object), or an observation
    /// of a new incarnation while the deleted one's record waits for its restore.
    Stale,
    /// Nothing written: the record belongs to the incarnation `record_uid`, and the writer
    /// asked for a catch-up rather than replacing it ([`RecordWrite::catch_up`]).
    OtherIncarnation {
        record_uid: String,
    },
}

/// A stored record.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub status: Value,
    pub digest: String,
    pub api_version: String,
    pub kind: String,
    pub uid: String,
    pub resource_version: String,
    pub generation: Option<i64>,
    pub recorded_at: Option<Timestamp>,
    pub deleted_at: Option<Timestamp>,
    pub restored_at: Option<Timestamp>,
    /// The restore job whose own status write the record holds, if it does.
    pub restored_by: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeRecordError {
    #[error("record has no field {0:?}")]
    Missing(&'static str),
    #[error("record field \"status\" is not JSON")]
    Status(#[source] serde_json::Error),
}

impl Record {
    /// Whether the record was written before an incarnation created at `created` existed, so
    /// that it may be an earlier incarnation's status: only such a record is caught up. A
    /// record of another uid written while the object already lived came from a forged
    /// review or was planted in Redis. Compared to the second (creation times have no
    /// fraction), which allows a record written within the second the object was created.
    pub fn predates(&self, created: Timestamp) -> bool {
        self.recorded_at
            .is_some_and(|at| at.as_second() <= created.as_second())
    }

    /// Decodes the fields of a record hash (as returned by HGETALL).
    pub fn from_fields(mut fields: HashMap<String, String>) -> Result<Self, DecodeRecordError> {
        let status_text = fields
            .remove("status")
            .ok_or(DecodeRecordError::Missing("status"))?;
        let status = serde_json::from_str(&status_text).map_err(DecodeRecordError::Status)?;
        let mut take = |k: &str| fields.remove(k).unwrap_or_default();
        let time = |s: String| s.parse::<Timestamp>().ok();
        Ok(Self {
            status,
            digest: take("digest"),
            api_version: take("apiVersion"),
            kind: take("kind"),
            uid: take("uid"),
            resource_version: take("resourceVersion"),
            generation: take("generation").parse().ok(),
            recorded_at: time(take("recordedAt")),
            deleted_at: time(take("deletedAt")),
            restored_at: time(take("restoredAt")),
            restored_by: Some(take("restoredBy")).filter(|j| !j.is_empty()),
        })
    }
}

/// The canonical text of a status: its JSON with object keys sorted, so the same status
/// always has the same digest whatever order the API server wrote its keys in.
pub fn canonical(status: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    feed(&mut out, status);
    out
}

/// Digest of a status: SHA-256 of its canonical text, in hex.
pub fn digest(status: &Value) -> String {
    digest_text(&canonical(status))
}

/// SHA-256 of a status's canonical text (serde_json writes it, keys sorted), in hex.
pub fn digest_text(canonical: &[u8]) -> String {
    let out = Sha256::digest(canonical);
    let mut hex = String::with_capacity(out.len() * 2);
    for b in out.iter() {
        hex.push_str(&format!("{b:02x}"));
    }
    hex
}

fn feed(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Object(map) => {
            out.push(b'{');
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                feed(out, &Value::String(k.clone()));
                out.push(b':');
                feed(out, &map[k]);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                feed(out, item);
            }
            out.push(b']');
        }
        scalar => out.extend_from_slice(scalar.to_string().as_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// serde_json keeps maps sorted unless a crate in the build turns on its
    /// `preserve_order` feature; then `canonical` must do the sorting that keeps digests
    /// stable. This fails when that happens, so the change does not go unnoticed.
    #[test]
    fn maps_are_sorted_so_canonical_text_is_json_text() {
        let reversed: Value =
            serde_json::from_str(r#"{"z":1,"m":{"b":2,"a":[3,{"y":0,"x":0}]}}"#).unwrap();
        let sorted = br#"{"m":{"a":[3,{"x":0,"y":0}],"b":2},"z":1}"#;
        assert_eq!(serde_json::to_vec(&reversed).unwrap(), sorted);
        assert_eq!(canonical(&reversed), sorted);
    }

    #[test]
    fn digest_ignores_key_order_but_not_content() {
        let a: Value = serde_json::from_str(r#"{"b":1,"a":{"y":[1,2],"x":"s"}}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"a":{"x":"s","y":[1,2]},"b":1}"#).unwrap();
        assert_eq!(digest(&a), digest(&b));
        assert_ne!(digest(&a), digest(&json!({"b":1,"a":{"y":[2,1],"x":"s"}})));
        assert_ne!(digest(&json!({})), digest(&json!(null)));
        assert_ne!(digest(&json!({"a":"1"})), digest(&json!({"a":1})));
        assert_eq!(digest(&json!({})).len(), 64);
        // The text serde_json writes has the same digest: it is the canonical text.
        let status = json!({"b": 1, "a": {"d": [null, 1.5], "c": "é"}});
        assert_eq!(digest_text(status.to_string().as_bytes()), digest(&status));
        // SHA-256 of the canonical text, as records written by earlier versions have it.
        assert_eq!(
            digest(&json!({"a": [1, "x"]})),
            "5e49f471d8b615a8ae0ecf0a53dbe2f5f617abb2dfe6246974aa6e4bdeb89725"
        );
        assert_eq!(
            canonical(&json!({"b": 1, "a": {"d": null, "c": true}})),
            br#"{"a":{"c":true,"d":null},"b":1}"#
        );
    }

    #[test]
    fn sources_order_observed_written_deleted() {
        assert!(Source::Observed < Source::Written);
        assert!(Source::Written < Source::Deleted);
    }

    #[test]
    fn decodes_fields() {
        let fields: HashMap<String, String> = [
            ("status", r#"{"phase":"Ready"}"#),
            ("digest", "d"),
            ("apiVersion", "v1"),
            ("kind", "Service"),
            ("uid", "u1"),
            ("resourceVersion", "42"),
            ("generation", "3"),
            ("recordedAt", "2026-11-24T04:00:00Z"),
            ("deletedAt", ""),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let r = Record::from_fields(fields).unwrap();
        assert_eq!(r.status, json!({"phase":"Ready"}));
        assert_eq!(r.generation, Some(3));
        assert!(r.recorded_at.is_some());
        assert_eq!(r.deleted_at, None);
        assert!(Record::from_fields(HashMap::new()).is_err());
    }
}
