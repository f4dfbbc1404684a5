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
pub use fields::{
    FieldPattern, FieldPatterns, PatternError, exclude, keep, keep_kept, select, select_all,
};
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
    /// The part of a live status that this policy keeps: what is recorded. Both selections
    /// and the exclusions name places in `status` itself, so a narrowing can never bring back
    /// what an exclusion names, wherever either was set.
    pub fn restorable(&self, status: &Value) -> Value {
        keep(
            status,
            &[&self.fields, &self.narrowed_to],
            &self.exclude_fields,
        )
    }

    /// The part of a saved status (what [`Self::restorable`] kept when it was recorded) that
    /// this policy restores. Key patterns apply again, so a policy narrower than the one the
    /// record was made with still narrows; index tokens were applied when the status was
    /// recorded and name nothing in the closed-up record, so they are not applied again.
    pub fn restorable_of_saved(&self, saved: &Value) -> Value {
        keep_kept(
            saved,
            &[&self.fields, &self.narrowed_to],
            &self.exclude_fields,
        )
    }
}

/// The policy caches, as the admission path and resync read them.
#[derive(Clone, Default)]
pub struct Caches {
    pub crds: CrdCache,
    pub namespaces: NamespaceCache,
}

impl Caches {
    /// The policy of an object of `group`/`resource` in `namespace` (`None`: cluster-scoped)
    /// with `annotations`: the global one for its type, refined by its CRD's, its namespace's
    /// and its own annotations.
    pub fn resolve(
        &self,
        global: &GlobalPolicy,
        group: &str,
        resource: &str,
        namespace: Option<&str>,
        annotations: Option<&std::collections::BTreeMap<String, String>>,
    ) -> Resolved {
        let defaults = global.for_type(group, resource);
        let crd = self.crds.overrides(group, resource);
        let namespace = namespace.and_then(|ns| self.namespaces.overrides(ns));
        let object = annotations.map(|a| Overrides::parse(Some(a)));
        resolve(&defaults, crd.as_ref(), namespace.as_ref(), object.as_ref())
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

    /// Selections and exclusions all name places in the saved status itself, so an exclusion
    /// holds whatever a selection leaves out around it.
    #[test]
    fn restorable_works_out_selection_and_exclusion_on_the_saved_status() {
        let endpoints = json!({"endpoints": [
            {"host": "a"},
            {"host": "b", "token": "t1"},
            {"host": "c", "token": "t2"},
            {"host": "d", "token": "t3"},
        ]});
        let list = json!({"a": [{"b": 0, "c": 0}, {"b": 1, "c": 1}, {"b": 2, "c": 2}]});
        // (fields, narrowed to, exclude-fields, saved, restorable)
        let cases = [
            // An index exclusion with a selection that leaves earlier elements out.
            (
                "/endpoints/*/token",
                "",
                "/endpoints/1/token",
                &endpoints,
                json!({"endpoints": [{"token": "t2"}, {"token": "t3"}]}),
            ),
            (
                "",
                "/endpoints/*/token",
                "/endpoints/1/token",
                &endpoints,
                json!({"endpoints": [{"token": "t2"}, {"token": "t3"}]}),
            ),
            (
                "/endpoints",
                "/endpoints/*/token",
                "/endpoints/2",
                &endpoints,
                json!({"endpoints": [{"token": "t1"}, {"token": "t3"}]}),
            ),
            // A selected index, an excluded index before it.
            ("/a/1", "", "/a/0", &list, json!({"a": [{"b": 1, "c": 1}]})),
            // Two excluded indices within a selection.
            (
                "/a",
                "",
                "/a/0,/a/1",
                &list,
                json!({"a": [{"b": 2, "c": 2}]}),
            ),
            // Wildcards at each level, in the selection and the exclusion.
            (
                "/*",
                "",
                "/a/1",
                &list,
                json!({"a": [{"b": 0, "c": 0}, {"b": 2, "c": 2}]}),
            ),
            (
                "/a/*",
                "/a/2",
                "/a/0",
                &list,
                json!({"a": [{"b": 2, "c": 2}]}),
            ),
            (
                "/a/*/b",
                "",
                "/a/0/b",
                &list,
                json!({"a": [{"b": 1}, {"b": 2}]}),
            ),
            (
                "/a/*/*",
                "/a/*/c",
                "/a/1/c,/a/*/b",
                &list,
                json!({"a": [{"c": 0}, {"c": 2}]}),
            ),
            ("/a/1/*", "", "/*", &list, json!({})),
            ("", "", "/a/*/*", &list, json!({"a": [{}, {}, {}]})),
        ];
        for (fields, narrowed_to, exclude_fields, saved, want) in cases {
            let parse = |list: &str| list.parse::<FieldPatterns>().unwrap().0;
            let policy = RestorePolicy {
                mode: RestoreMode::Fill,
                fields: parse(fields),
                narrowed_to: parse(narrowed_to),
                exclude_fields: parse(exclude_fields),
            };
            assert_eq!(
                policy.restorable(saved),
                want,
                "fields {fields:?}, narrowed to {narrowed_to:?}, excluding {exclude_fields:?}"
            );
            // The record it makes is restored whole by the same policy: its indices were
            // applied when it was recorded.
            assert_eq!(
                policy.restorable_of_saved(&want),
                want,
                "restoring the record of fields {fields:?}, narrowed to {narrowed_to:?}, \
                 excluding {exclude_fields:?}"
            );
        }
    }

    #[test]
    fn a_saved_status_is_narrowed_again_by_keys_but_not_by_indices() {
        let parse = |list: &str| list.parse::<FieldPatterns>().unwrap().0;
        let policy = |fields: &str, exclude_fields: &str| RestorePolicy {
            mode: RestoreMode::Fill,
            fields: parse(fields),
            narrowed_to: vec![],
            exclude_fields: parse(exclude_fields),
        };
        // Recorded with `exclude-fields: /endpoints/1/token`: the record's second element is
        // the status's third.
        let saved =
            json!({"endpoints": [{"host": "a", "token": "t0"}, {"host": "c", "token": "t2"}]});
        assert_eq!(
            policy("", "/endpoints/1/token").restorable_of_saved(&saved),
            saved
        );
        // A key pattern applies to every element, as it did to the status.
        assert_eq!(
            policy("/endpoints/*/host", "/endpoints/1/token").restorable_of_saved(&saved),
            json!({"endpoints": [{"host": "a"}, {"host": "c"}]})
        );
        assert_eq!(
            policy("", "/endpoints/*/token").restorable_of_saved(&saved),
            json!({"endpoints": [{"host": "a"}, {"host": "c"}]})
        );
        // An index selected when recording: the record holds only that element.
        assert_eq!(
            policy("/endpoints/1/host", "")
                .restorable_of_saved(&json!({"endpoints": [{"host": "c"}]})),
            json!({"endpoints": [{"host": "c"}]})
        );
        // An index is still a key in an object.
        assert_eq!(
            policy("", "/byZone/1").restorable_of_saved(&json!({"byZone": {"1": "a", "2": "b"}})),
            json!({"byZone": {"2": "b"}})
        );
        assert_eq!(
            policy("/byZone/1", "").restorable_of_saved(&json!({"byZone": {"1": "a", "2": "b"}})),
            json!({"byZone": {"1": "a"}})
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
