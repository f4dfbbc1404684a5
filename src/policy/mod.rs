//! What restatus does for an object, decided without I/O: the restore mode and the fields it
//! brings back, what a restore writes ([`decide`]), and facts about types (does a type keep
//! `.status` on create?) kept in watch caches.
//!
//! Today the policy comes from the global flags; annotations on objects, namespaces and CRDs
//! refine it in the same shape.

mod crds;
mod decide;
mod fields;

use serde_json::Value;

pub use crds::{CrdCache, CrdWatch, TypeInfo};
pub use decide::decide;
pub use fields::{FieldPattern, FieldPatterns, PatternError, exclude, select};

/// Annotation set on a recreated object until its status is restored.
pub const ANNOTATION_RESTORE: &str = "restatus.io/restore";
/// Value of [`ANNOTATION_RESTORE`] while a restore job is on its way.
pub const RESTORE_PENDING: &str = "pending";
/// Value of [`ANNOTATION_RESTORE`] after a restore failed for good.
pub const RESTORE_FAILED: &str = "failed";
/// Annotation with the RFC 3339 time a status was restored.
pub const ANNOTATION_RESTORED_AT: &str = "restatus.io/restored-at";

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

/// How a saved status is brought back.
#[derive(Debug, Clone)]
pub struct RestorePolicy {
    pub mode: RestoreMode,
    /// Pointers to restore; empty means all of the status.
    pub fields: Vec<FieldPattern>,
    /// Pointers never restored.
    pub exclude_fields: Vec<FieldPattern>,
}

impl RestorePolicy {
    /// The part of a saved status that this policy restores.
    pub fn restorable(&self, saved: &Value) -> Value {
        let mut view = select(saved, &self.fields);
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn restorable_applies_fields_then_excludes() {
        let policy = RestorePolicy {
            mode: RestoreMode::Fill,
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
    fn pending_annotation_is_recognised_only_with_its_value() {
        let mut a = std::collections::BTreeMap::new();
        assert!(!is_restore_pending(Some(&a)));
        a.insert(ANNOTATION_RESTORE.to_owned(), RESTORE_FAILED.to_owned());
        assert!(!is_restore_pending(Some(&a)));
        a.insert(ANNOTATION_RESTORE.to_owned(), RESTORE_PENDING.to_owned());
        assert!(is_restore_pending(Some(&a)));
        assert!(!is_restore_pending(None));
    }
}
