//! What restatus does for an object: the policy (global flags refined by annotations on the
//! CRD, the namespace and the object, [`resolve`]), what a restore writes ([`decide`]), who
//! may get a status back ([`AccessChecker`]), and the watch caches the admission path reads
//! instead of calling the API server (CRDs: does a type keep `.status` on create, and its
//! annotations; namespaces: their annotations). Resolution and decisions are pure.

mod access;
mod crds;
mod decide;
mod fields;
mod metrics;
mod namespaces;
mod resolve;
mod watch;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use access::{Access, AccessChecker};
pub use crds::{CrdCache, CrdWatch, TypeInfo};
pub use decide::{decide, decide_fill};
pub use fields::{FieldPattern, FieldPatterns, PatternError, exclude, select, select_all};
pub use metrics::PolicyMetrics;
pub use namespaces::{NamespaceCache, NamespaceWatch};
pub use resolve::{
    Defaults, Enablement, GlobalPolicy, InvalidAnnotation, Level, LevelAnnotations, Overrides,
    Policy, Resolved, RestoreFor, Skipped, TypePolicy, resolve,
};
pub use watch::InvalidReporter;

// The annotations restatus reads and writes (docs/annotations.md).

/// Set on a recreated object until its status is restored.
pub const ANNOTATION_RESTORE: &str = "restatus.io/restore";
/// The id of the restore job restatus queued for an object's CREATE, set with
/// [`ANNOTATION_RESTORE`] and kept after the restore: the worker restores only into an object
/// that carries its own job's id, and a pending marker counts only while Redis holds that id.
pub const ANNOTATION_RESTORE_JOB: &str = "restatus.io/restore-job";
/// The annotations only restatus may set or change (anyone may remove them).
pub const PROTECTED_ANNOTATIONS: [&str; 2] = [ANNOTATION_RESTORE, ANNOTATION_RESTORE_JOB];
/// Value of [`ANNOTATION_RESTORE`] while a restore job is on its way.
pub const RESTORE_PENDING: &str = "pending";
/// Value of [`ANNOTATION_RESTORE`] after a restore failed for good.
pub const RESTORE_FAILED: &str = "failed";
/// The RFC 3339 time a status was restored.
pub const ANNOTATION_RESTORED_AT: &str = "restatus.io/restored-at";
/// Policy: `enabled` or `disabled`.
pub const ANNOTATION_POLICY: &str = "restatus.io/policy";
/// Policy: the restore mode, `fill` or `replace`.
pub const ANNOTATION_MODE: &str = "restatus.io/mode";
/// Policy: JSON pointers into `.status` to keep.
pub const ANNOTATION_FIELDS: &str = "restatus.io/fields";
/// Policy: JSON pointers into `.status` never kept.
pub const ANNOTATION_EXCLUDE_FIELDS: &str = "restatus.io/exclude-fields";
/// Policy: how long a deleted object's record is kept.
pub const ANNOTATION_RETENTION: &str = "restatus.io/retention";
/// Policy (namespace and CRD only): who gets a saved status back.
pub const ANNOTATION_RESTORE_FOR: &str = "restatus.io/restore-for";

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum RestoreMode {
    /// Restore only the fields absent from the live status; the owner's fresh facts win.
    Fill,
    /// Every saved field overwrites the live value.
    Replace,
}

/// What part of a status is kept and how it is brought back. A restore job carries the
/// policy resolved when its CREATE was admitted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RestorePolicy {
    pub mode: RestoreMode,
    /// Pointers to keep; empty means all of the status.
    #[serde(default, with = "fields::serde_patterns")]
    pub fields: Vec<FieldPattern>,
    /// A further selection the object's own annotation asks for (it can only narrow);
    /// empty means none.
    #[serde(default, with = "fields::serde_patterns")]
    pub narrowed_to: Vec<FieldPattern>,
    /// Pointers never kept.
    #[serde(default, with = "fields::serde_patterns")]
    pub exclude_fields: Vec<FieldPattern>,
}

impl RestorePolicy {
    /// The part of a status that this policy keeps: recorded, and restored.
    pub fn restorable(&self, saved: &Value) -> Value {
        // Both selections name places in the saved status itself.
        let mut view = select_all(saved, &[&self.fields, &self.narrowed_to]);
        exclude(&mut view, &self.exclude_fields);
        view
    }
}

/// An object's `.status`, `None` when absent or null.
pub fn status_of(obj: &kube::core::DynamicObject) -> Option<&Value> {
    obj.data.get("status").filter(|s| !s.is_null())
}

/// True when the object's annotations mark it as waiting for a restore.
pub fn is_restore_pending(
    annotations: Option<&std::collections::BTreeMap<String, String>>,
) -> bool {
    annotations
        .and_then(|a| a.get(ANNOTATION_RESTORE))
        .is_some_and(|v| v == RESTORE_PENDING)
}

/// The job id of an object's pending marker: `Some` when it is marked pending, with `""` when
/// the marker names no job (which no live job can match).
pub fn pending_job(
    annotations: Option<&std::collections::BTreeMap<String, String>>,
) -> Option<&str> {
    if !is_restore_pending(annotations) {
        return None;
    }
    Some(
        annotations
            .and_then(|a| a.get(ANNOTATION_RESTORE_JOB))
            .map_or("", String::as_str),
    )
}

/// The restore job id an object carries, if any (pending, or restored by that job).
pub fn restore_job(
    annotations: Option<&std::collections::BTreeMap<String, String>>,
) -> Option<&str> {
    annotations
        .and_then(|a| a.get(ANNOTATION_RESTORE_JOB))
        .map(String::as_str)
        .filter(|id| !id.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn restorable_applies_fields_then_excludes() {
        let policy = RestorePolicy {
            mode: RestoreMode::Fill,
            narrowed_to: vec![],
            fields: vec!["/conditions".parse().unwrap(), "/phase".parse().unwrap()],
            exclude_fields: vec!["/conditions/*/observedGeneration".parse().unwrap()],
        };
        let saved = json!({
            "phase": "Ready",
            "observedGeneration": 4,
            "endpoint": "x",
            "conditions": [{"type": "Ready", "observedGeneration": 4}]
        });
        assert_eq!(
            policy.restorable(&saved),
            json!({"phase": "Ready", "conditions": [{"type": "Ready"}]})
        );
    }

    #[test]
    fn a_policy_travels_in_a_job_as_json() {
        let policy = RestorePolicy {
            mode: RestoreMode::Replace,
            fields: vec!["/a".parse().unwrap()],
            narrowed_to: vec!["/a/b~1c".parse().unwrap()],
            exclude_fields: vec!["/a/*/x".parse().unwrap()],
        };
        let json = serde_json::to_value(&policy).unwrap();
        assert_eq!(
            json,
            json!({"mode": "replace", "fields": ["/a"], "narrowedTo": ["/a/b~1c"], "excludeFields": ["/a/*/x"]})
        );
        assert_eq!(
            serde_json::from_value::<RestorePolicy>(json).unwrap(),
            policy
        );
        assert!(
            serde_json::from_value::<RestorePolicy>(json!({"mode": "fill", "fields": ["x"]}))
                .is_err()
        );
    }

    #[test]
    fn pending_annotation_is_recognised_only_with_its_value() {
        let mut a = std::collections::BTreeMap::new();
        assert!(!is_restore_pending(Some(&a)));
        a.insert(ANNOTATION_RESTORE.to_owned(), RESTORE_FAILED.to_owned());
        assert!(!is_restore_pending(Some(&a)));
        assert_eq!(pending_job(Some(&a)), None);
        a.insert(ANNOTATION_RESTORE.to_owned(), RESTORE_PENDING.to_owned());
        assert!(is_restore_pending(Some(&a)));
        assert!(!is_restore_pending(None));
        assert_eq!(
            pending_job(Some(&a)),
            Some(""),
            "a marker that names no job"
        );
        assert_eq!(restore_job(Some(&a)), None);
        a.insert(ANNOTATION_RESTORE_JOB.to_owned(), "j-1".to_owned());
        assert_eq!(pending_job(Some(&a)), Some("j-1"));
        assert_eq!(restore_job(Some(&a)), Some("j-1"));
        a.remove(ANNOTATION_RESTORE);
        assert_eq!(pending_job(Some(&a)), None);
        assert_eq!(restore_job(Some(&a)), Some("j-1"), "kept after the restore");
        assert_eq!(pending_job(None), None);
    }
}
