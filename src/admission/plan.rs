//! What a review asks of restatus: pure, decided from the request and the object's resolved
//! policy.

use std::{collections::BTreeMap, time::Duration};

use json_patch::PatchOperation;
use kube::core::{
    DynamicObject,
    admission::{AdmissionRequest, Operation},
};
use serde_json::Value;

use crate::{
    patch,
    policy::{ANNOTATION_RESTORE, Policy, TypeInfo, is_restore_pending, status_of},
    store::{ObjectIdentity, RecordWrite, Source},
};

/// Why a review needs nothing from restatus.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// Dry-run requests never touch the store.
    DryRun,
    /// No `.status` (or a null one): nothing to record.
    NoStatus,
    /// A CREATE without a name (`generateName`): no identity to restore into.
    NoName,
    /// A subresource other than `status` (scale, eviction, ...).
    OtherSubresource,
    /// CONNECT, or an operation without the object it needs.
    Unsupported,
    /// The object waits for its restore; its current (empty) status is not a fact to keep.
    PendingRestore,
    /// The object's policy is `disabled`.
    Disabled,
    /// An update based on a resourceVersion the object no longer has: the API server
    /// answers it 409 Conflict after admission, so it never lands.
    Conflict,
}

impl Skip {
    pub fn label(self) -> &'static str {
        match self {
            Skip::DryRun => "dry_run",
            Skip::NoStatus => "no_status",
            Skip::NoName => "no_name",
            Skip::OtherSubresource => "other_subresource",
            Skip::Unsupported => "unsupported",
            Skip::PendingRestore => "pending_restore",
            Skip::Disabled => "disabled",
            Skip::Conflict => "conflict",
        }
    }
}

/// A CREATE that may be a recreation.
#[derive(Debug, Clone, PartialEq)]
pub struct CreateCheck {
    pub identity: ObjectIdentity,
    pub api_version: String,
    pub kind: String,
    pub type_info: TypeInfo,
    /// The status in the request body, kept by the API server only for types that keep
    /// status on create.
    pub status: Option<Value>,
}

/// What to do for one review.
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    Skip(Skip),
    /// Record this status (already narrowed to what the policy keeps).
    Record(RecordWrite),
    /// Look for a record of this object and restore it.
    Create(CreateCheck),
    /// A status write to an object still waiting for its restore: fill in the saved fields
    /// the writer did not set. The merged status is not recorded: the record keeps the earlier
    /// incarnation's status for the worker to restore from.
    PendingStatusWrite(RecordWrite),
    /// A deleted object restatus does not record (its policy is disabled): start the retention
    /// clock of a record it may have from before, so that it does not stay forever.
    Expire {
        identity: ObjectIdentity,
        retention: Duration,
    },
}

/// Facts the plan needs besides the request.
pub struct Context<'a> {
    pub type_info: TypeInfo,
    /// The user restatus's own requests come as (its ServiceAccount), when known: its status
    /// writes are never merged. The client-chosen field manager proves nothing.
    pub own_user: Option<&'a str>,
    /// The object's policy.
    pub policy: &'a Policy,
}

/// The object a review is about: the new one, or for a DELETE the old one.
pub(super) fn subject(req: &AdmissionRequest<DynamicObject>) -> Option<&DynamicObject> {
    match req.operation {
        Operation::Delete => req.old_object.as_ref(),
        _ => req.object.as_ref().or(req.old_object.as_ref()),
    }
}

/// Which object a review is about. Namespace deletion and DeleteCollection send per-item
/// DELETE reviews without `name` (and without `namespace` for some callers): those come
/// from the object itself.
pub fn identity(req: &AdmissionRequest<DynamicObject>) -> ObjectIdentity {
    let meta = subject(req).map(|o| &o.metadata);
    let name = Some(req.name.as_str())
        .filter(|n| !n.is_empty())
        .or_else(|| meta.and_then(|m| m.name.as_deref()))
        .unwrap_or_default();
    ObjectIdentity {
        group: req.resource.group.clone(),
        resource: req.resource.resource.clone(),
        namespace: namespace(req).map(str::to_owned),
        name: name.to_owned(),
    }
}

/// The namespace of the object a review is about (see [`identity`]); `None` when it is
/// cluster-scoped.
pub(super) fn namespace(req: &AdmissionRequest<DynamicObject>) -> Option<&str> {
    req.namespace
        .as_deref()
        .filter(|ns| !ns.is_empty())
        .or_else(|| subject(req).and_then(|o| o.metadata.namespace.as_deref()))
        .filter(|ns| !ns.is_empty())
}

fn write_of(
    req: &AdmissionRequest<DynamicObject>,
    obj: &DynamicObject,
    status: Value,
    source: Source,
    policy: &Policy,
) -> RecordWrite {
    RecordWrite {
        identity: identity(req),
        status,
        api_version: req.kind.api_version(),
        kind: req.kind.kind.clone(),
        uid: obj.metadata.uid.clone().unwrap_or_default(),
        resource_version: obj.metadata.resource_version.clone().unwrap_or_default(),
        generation: obj.metadata.generation,
        source,
        deleting: source == Source::Deleted || obj.metadata.deletion_timestamp.is_some(),
        retention: policy.retention,
    }
}

/// The record of `obj`'s status, narrowed to what the policy keeps, or why there is none.
fn record(
    req: &AdmissionRequest<DynamicObject>,
    obj: &DynamicObject,
    source: Source,
    policy: &Policy,
) -> Plan {
    match status_of(obj) {
        Some(status) => Plan::Record(write_of(
            req,
            obj,
            policy.restore.restorable(status),
            source,
            policy,
        )),
        None => Plan::Skip(Skip::NoStatus),
    }
}

/// Whether restatus itself made the request.
fn own_request(req: &AdmissionRequest<DynamicObject>, own_user: Option<&str>) -> bool {
    own_user.is_some_and(|own| req.user_info.username.as_deref() == Some(own))
}

/// The patch that undoes a change to `restatus.io/restore` only restatus may make.
///
/// The marker decides whose status writes are merged with a saved status, so a creator who
/// set `pending` themselves would get a status back without the access check of a CREATE. A
/// client's value is removed from a CREATE (restatus sets its own when it queues a job); on
/// an UPDATE, of the object or its status, anyone but restatus may remove the marker but not
/// set or change it.
pub fn undo_foreign_marker(
    req: &AdmissionRequest<DynamicObject>,
    own_user: Option<&str>,
) -> Vec<PatchOperation> {
    if own_request(req, own_user) || !matches!(req.sub_resource.as_deref(), None | Some("status")) {
        return Vec::new();
    }
    let new = annotations(req.object.as_ref());
    let Some(set) = new.and_then(|a| a.get(ANNOTATION_RESTORE)) else {
        return Vec::new();
    };
    let kept = match req.operation {
        Operation::Create => None,
        Operation::Update => {
            annotations(req.old_object.as_ref()).and_then(|a| a.get(ANNOTATION_RESTORE))
        }
        Operation::Delete | Operation::Connect => return Vec::new(),
    };
    match kept {
        Some(old) if old == set => Vec::new(),
        Some(old) => patch::set_annotations(new, &[(ANNOTATION_RESTORE, old)]),
        None => patch::remove_annotation(new, ANNOTATION_RESTORE)
            .into_iter()
            .collect(),
    }
}

fn annotations(obj: Option<&DynamicObject>) -> Option<&BTreeMap<String, String>> {
    obj.and_then(|o| o.metadata.annotations.as_ref())
}

/// An update whose object carries a resourceVersion other than the stored one is refused
/// by the API server (409) after admission.
fn conflicting(req: &AdmissionRequest<DynamicObject>) -> bool {
    let version = |o: &Option<DynamicObject>| {
        o.as_ref()
            .and_then(|o| o.metadata.resource_version.clone())
            .filter(|v| !v.is_empty())
    };
    matches!((version(&req.object), version(&req.old_object)), (Some(new), Some(old)) if new != old)
}

/// Decides what a review asks for.
pub fn plan(req: &AdmissionRequest<DynamicObject>, ctx: &Context<'_>) -> Plan {
    if req.dry_run {
        return Plan::Skip(Skip::DryRun);
    }
    let policy = ctx.policy;
    let enabled = policy.enabled;
    match (&req.operation, req.sub_resource.as_deref()) {
        (Operation::Update, Some("status")) => {
            let Some(obj) = &req.object else {
                return Plan::Skip(Skip::Unsupported);
            };
            if !enabled {
                return Plan::Skip(Skip::Disabled);
            }
            if conflicting(req) {
                return Plan::Skip(Skip::Conflict);
            }
            // The stored object says whether a restore is pending: a status write cannot
            // change metadata, and a marker it sets is undone (`undo_foreign_marker`).
            let stored = req.old_object.as_ref().unwrap_or(obj);
            if is_restore_pending(stored.metadata.annotations.as_ref())
                && !own_request(req, ctx.own_user)
            {
                let status = status_of(obj).cloned().unwrap_or(Value::Null);
                return Plan::PendingStatusWrite(write_of(
                    req,
                    obj,
                    status,
                    Source::Written,
                    policy,
                ));
            }
            record(req, obj, Source::Written, policy)
        }
        (_, Some(_)) => Plan::Skip(Skip::OtherSubresource),
        (Operation::Update, None) => {
            // For types with a status subresource the API server throws away a status sent
            // with a main-resource update: record what is stored now (oldObject). A type that
            // keeps status in the object stores what is sent (object).
            let (obj, source) = match ctx.type_info {
                TypeInfo::KeepsStatusOnCreate => (&req.object, Source::Written),
                TypeInfo::DropsStatusOnCreate => (&req.old_object, Source::Observed),
            };
            let Some(obj) = obj else {
                return Plan::Skip(Skip::Unsupported);
            };
            if !enabled {
                return Plan::Skip(Skip::Disabled);
            }
            if conflicting(req) {
                return Plan::Skip(Skip::Conflict);
            }
            if is_restore_pending(obj.metadata.annotations.as_ref()) {
                return Plan::Skip(Skip::PendingRestore);
            }
            record(req, obj, source, policy)
        }
        (Operation::Delete, None) => {
            let Some(old) = &req.old_object else {
                return Plan::Skip(Skip::Unsupported);
            };
            if !enabled {
                return Plan::Expire {
                    identity: identity(req),
                    retention: policy.retention,
                };
            }
            if is_restore_pending(old.metadata.annotations.as_ref()) {
                // Deleted again before its restore: the record of the earlier incarnation is
                // still the one to keep, and its retention clock is already running.
                return Plan::Skip(Skip::PendingRestore);
            }
            record(req, old, Source::Deleted, policy)
        }
        (Operation::Create, None) => {
            if req.name.is_empty() {
                return Plan::Skip(Skip::NoName);
            }
            if !enabled {
                return Plan::Skip(Skip::Disabled);
            }
            let status = match ctx.type_info {
                TypeInfo::KeepsStatusOnCreate => req.object.as_ref().and_then(status_of).cloned(),
                TypeInfo::DropsStatusOnCreate => None,
            };
            Plan::Create(CreateCheck {
                identity: identity(req),
                api_version: req.kind.api_version(),
                kind: req.kind.kind.clone(),
                type_info: ctx.type_info,
                status,
            })
        }
        (Operation::Connect, None) => Plan::Skip(Skip::Unsupported),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{RestoreFor, RestoreMode, RestorePolicy};
    use serde_json::json;

    const OWN_USER: &str = "system:serviceaccount:restatus:restatus";

    static ENABLED: Policy = Policy {
        enabled: true,
        restore: RestorePolicy {
            mode: RestoreMode::Fill,
            fields: Vec::new(),
            narrowed_to: Vec::new(),
            exclude_fields: Vec::new(),
        },
        retention: Duration::from_secs(30 * 86_400),
        restore_for: RestoreFor::StatusWriters,
    };

    static DISABLED: Policy = Policy {
        enabled: false,
        restore: RestorePolicy {
            mode: RestoreMode::Fill,
            fields: Vec::new(),
            narrowed_to: Vec::new(),
            exclude_fields: Vec::new(),
        },
        retention: Duration::from_secs(86_400),
        restore_for: RestoreFor::StatusWriters,
    };

    #[allow(non_snake_case)]
    fn CTX() -> Context<'static> {
        Context {
            type_info: TypeInfo::DropsStatusOnCreate,
            own_user: Some(OWN_USER),
            policy: &ENABLED,
        }
    }

    /// The record a review asks for; panics when it asks for something else.
    fn recorded(review: Value, ctx: &Context<'_>) -> RecordWrite {
        match plan(&request(review), ctx) {
            Plan::Record(write) => write,
            other => panic!("expected a record, got {other:?}"),
        }
    }

    fn request(review: Value) -> AdmissionRequest<DynamicObject> {
        crate::admission::review::decode(review.to_string().as_bytes()).unwrap()
    }

    fn review(operation: &str, sub: Option<&str>, object: Value, old: Value) -> Value {
        json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "3b8f2d4c-1111-2222-3333-444455556666",
                "kind": {"group": "infra.example.com", "version": "v1alpha1", "kind": "KubernetesCluster"},
                "resource": {"group": "infra.example.com", "version": "v1alpha1", "resource": "kubernetesclusters"},
                "subResource": sub,
                "name": "eu-1",
                "namespace": "team-a",
                "operation": operation,
                "userInfo": {"username": "system:serviceaccount:infra:operator"},
                "object": object,
                "oldObject": old,
                "dryRun": false,
                "options": {"kind": "UpdateOptions", "apiVersion": "meta.k8s.io/v1"}
            }
        })
    }

    fn obj(status: Value, rv: &str) -> Value {
        json!({
            "apiVersion": "infra.example.com/v1alpha1",
            "kind": "KubernetesCluster",
            "metadata": {"name": "eu-1", "namespace": "team-a", "uid": "uid-1", "resourceVersion": rv, "generation": 2},
            "spec": {"region": "eu"},
            "status": status
        })
    }

    #[test]
    fn status_update_records_the_new_status() {
        let w = recorded(
            review(
                "UPDATE",
                Some("status"),
                obj(json!({"phase": "Ready"}), "11"),
                obj(json!({"phase": "Provisioning"}), "11"),
            ),
            &CTX(),
        );
        assert_eq!(w.status, json!({"phase": "Ready"}));
        assert_eq!(w.source, Source::Written);
        assert_eq!(w.uid, "uid-1");
        assert_eq!(w.resource_version, "11");
        assert_eq!(w.generation, Some(2));
        assert_eq!(w.api_version, "infra.example.com/v1alpha1");
        assert!(!w.deleting);
        assert_eq!(w.identity.namespace.as_deref(), Some("team-a"));
    }

    #[test]
    fn main_update_records_the_old_objects_status() {
        let w = recorded(
            review(
                "UPDATE",
                None,
                obj(json!({"phase": "Forged by client"}), "11"),
                obj(json!({"phase": "Ready"}), "11"),
            ),
            &CTX(),
        );
        assert_eq!(w.status, json!({"phase": "Ready"}));
        assert_eq!(w.source, Source::Observed);
    }

    #[test]
    fn main_update_of_a_type_that_keeps_status_records_the_new_status() {
        let keeps_status = Context {
            type_info: TypeInfo::KeepsStatusOnCreate,
            ..CTX()
        };
        let update = review(
            "UPDATE",
            None,
            obj(json!({"phase": "New"}), "11"),
            obj(json!({"phase": "Old"}), "11"),
        );
        let w = recorded(update, &keeps_status);
        assert_eq!(w.status, json!({"phase": "New"}));
        assert_eq!(w.source, Source::Written);
    }

    #[test]
    fn delete_records_the_final_status_and_starts_retention() {
        let w = recorded(
            review(
                "DELETE",
                None,
                Value::Null,
                obj(json!({"phase": "Ready"}), "12"),
            ),
            &CTX(),
        );
        assert_eq!(w.status, json!({"phase": "Ready"}));
        assert_eq!(w.source, Source::Deleted);
        assert!(w.deleting);
    }

    #[test]
    fn an_update_of_an_object_being_deleted_keeps_the_retention_clock() {
        let mut old = obj(json!({"phase": "Terminating"}), "13");
        old["metadata"]["deletionTimestamp"] = json!("2026-11-24T04:00:00Z");
        let w = recorded(review("UPDATE", None, old.clone(), old), &CTX());
        assert!(w.deleting);
    }

    #[test]
    fn dry_run_is_never_recorded() {
        let mut rv = review(
            "UPDATE",
            Some("status"),
            obj(json!({"phase": "Ready"}), "11"),
            obj(json!({}), "11"),
        );
        rv["request"]["dryRun"] = json!(true);
        assert_eq!(plan(&request(rv), &CTX()), Plan::Skip(Skip::DryRun));
    }

    #[test]
    fn null_or_absent_status_is_nothing_but_empty_object_is_a_status() {
        let r = request(review(
            "UPDATE",
            Some("status"),
            obj(Value::Null, "1"),
            obj(Value::Null, "1"),
        ));
        assert_eq!(plan(&r, &CTX()), Plan::Skip(Skip::NoStatus));
        let w = recorded(
            review(
                "UPDATE",
                Some("status"),
                obj(json!({}), "1"),
                obj(Value::Null, "1"),
            ),
            &CTX(),
        );
        assert_eq!(w.status, json!({}));
    }

    #[test]
    fn create_asks_for_a_restore_check_unless_it_has_no_name() {
        let r = request(review(
            "CREATE",
            None,
            obj(json!({"phase": "x"}), ""),
            Value::Null,
        ));
        let Plan::Create(c) = plan(&r, &CTX()) else {
            panic!("expected a create check")
        };
        assert_eq!(c.identity.name, "eu-1");
        assert_eq!(c.status, None, "status is dropped on create for this type");
        let mut rv = review("CREATE", None, obj(json!({}), ""), Value::Null);
        rv["request"]["name"] = json!("");
        assert_eq!(plan(&request(rv), &CTX()), Plan::Skip(Skip::NoName));
    }

    #[test]
    fn status_writes_to_pending_objects_are_merged_unless_restatus_wrote_them() {
        let mut pending = obj(json!({"phase": "Provisioning"}), "20");
        pending["metadata"]["annotations"] = json!({"restatus.io/restore": "pending"});
        let r = request(review(
            "UPDATE",
            Some("status"),
            pending.clone(),
            pending.clone(),
        ));
        assert!(matches!(plan(&r, &CTX()), Plan::PendingStatusWrite(_)));

        // Told by the user restatus runs as, not by the field manager a client picks.
        let mut own = review("UPDATE", Some("status"), pending.clone(), pending.clone());
        own["request"]["userInfo"] = json!({"username": OWN_USER});
        assert!(matches!(plan(&request(own), &CTX()), Plan::Record(_)));
        let mut posing = review("UPDATE", Some("status"), pending.clone(), pending.clone());
        posing["request"]["options"] = json!({"kind": "PatchOptions", "fieldManager": "restatus"});
        assert!(matches!(
            plan(&request(posing), &CTX()),
            Plan::PendingStatusWrite(_)
        ));
        let unknown = Context {
            own_user: None,
            ..CTX()
        };
        let mut own = review("UPDATE", Some("status"), pending.clone(), pending.clone());
        own["request"]["userInfo"] = json!({"username": OWN_USER});
        assert!(matches!(
            plan(&request(own), &unknown),
            Plan::PendingStatusWrite(_)
        ));

        // A main-resource update of a pending object records nothing.
        let r = request(review("UPDATE", None, pending.clone(), pending));
        assert_eq!(plan(&r, &CTX()), Plan::Skip(Skip::PendingRestore));
    }

    #[test]
    fn only_restatus_sets_the_restore_marker() {
        let marked = |value: &str| {
            let mut o = obj(json!({"phase": "Running"}), "7");
            o["metadata"]["annotations"] = json!({"restatus.io/restore": value});
            o
        };
        let plain = obj(json!({"phase": "Running"}), "7");
        let remove =
            "[{\"op\":\"remove\",\"path\":\"/metadata/annotations/restatus.io~1restore\"}]";
        let back_to_failed = "[{\"op\":\"add\",\"path\":\"/metadata/annotations/restatus.io~1restore\",\"value\":\"failed\"}]";
        let cases = [
            ("CREATE", None, marked("pending"), Value::Null, remove),
            ("CREATE", None, plain.clone(), Value::Null, "[]"),
            ("UPDATE", None, marked("pending"), plain.clone(), remove),
            (
                "UPDATE",
                Some("status"),
                marked("pending"),
                plain.clone(),
                remove,
            ),
            (
                "UPDATE",
                None,
                marked("pending"),
                marked("failed"),
                back_to_failed,
            ),
            ("UPDATE", None, marked("pending"), marked("pending"), "[]"),
            ("UPDATE", None, plain.clone(), marked("pending"), "[]"),
            (
                "UPDATE",
                Some("scale"),
                marked("pending"),
                plain.clone(),
                "[]",
            ),
            ("DELETE", None, Value::Null, marked("pending"), "[]"),
        ];
        for (operation, sub, object, old, want) in cases {
            let r = request(review(operation, sub, object.clone(), old.clone()));
            let ops = serde_json::to_string(&undo_foreign_marker(&r, Some(OWN_USER))).unwrap();
            assert_eq!(ops, want, "{operation} {sub:?} {object} over {old}");
        }
        // restatus itself may set and change it.
        let mut own = review("UPDATE", None, marked("failed"), marked("pending"));
        own["request"]["userInfo"] = json!({"username": OWN_USER});
        assert!(undo_foreign_marker(&request(own), Some(OWN_USER)).is_empty());
    }

    #[test]
    fn other_subresources_and_connect_are_skipped() {
        let r = request(review(
            "UPDATE",
            Some("scale"),
            obj(json!({}), "1"),
            obj(json!({}), "1"),
        ));
        assert_eq!(plan(&r, &CTX()), Plan::Skip(Skip::OtherSubresource));
        let r = request(review("CONNECT", None, Value::Null, Value::Null));
        assert_eq!(plan(&r, &CTX()), Plan::Skip(Skip::Unsupported));
    }

    #[test]
    fn cluster_scoped_and_core_group_identities() {
        let mut cluster_scoped = obj(json!({"a": 1}), "3");
        cluster_scoped["metadata"]
            .as_object_mut()
            .unwrap()
            .remove("namespace");
        let mut rv = review("DELETE", None, Value::Null, cluster_scoped);
        rv["request"]["namespace"] = Value::Null;
        rv["request"]["resource"] =
            json!({"group": "", "version": "v1", "resource": "persistentvolumes"});
        rv["request"]["kind"] = json!({"group": "", "version": "v1", "kind": "PersistentVolume"});
        let w = recorded(rv, &CTX());
        assert_eq!(w.identity.namespace, None);
        assert_eq!(w.identity.group, "");
        assert_eq!(w.api_version, "v1");
    }

    #[test]
    fn deletes_without_a_name_take_the_identity_from_the_old_object() {
        // Namespace deletion and DeleteCollection: per-item reviews without request.name.
        let mut rv = review(
            "DELETE",
            None,
            Value::Null,
            obj(json!({"phase": "Ready"}), "12"),
        );
        rv["request"]["name"] = json!("");
        rv["request"]["namespace"] = json!("");
        let w = recorded(rv, &CTX());
        assert_eq!(w.identity.name, "eu-1");
        assert_eq!(w.identity.namespace.as_deref(), Some("team-a"));
        assert!(w.deleting);
    }

    #[test]
    fn an_update_from_a_stale_resource_version_is_not_recorded() {
        for sub in [None, Some("status")] {
            let r = request(review(
                "UPDATE",
                sub,
                obj(json!({"phase": "Rejected later"}), "10"),
                obj(json!({"phase": "Stored"}), "11"),
            ));
            assert_eq!(plan(&r, &CTX()), Plan::Skip(Skip::Conflict), "{sub:?}");
        }
        // No resourceVersion sent: an unconditional update, which lands.
        let mut unconditional = review(
            "UPDATE",
            Some("status"),
            obj(json!({"phase": "New"}), "11"),
            obj(json!({"phase": "Stored"}), "11"),
        );
        unconditional["request"]["object"]["metadata"]
            .as_object_mut()
            .unwrap()
            .remove("resourceVersion");
        assert!(matches!(
            plan(&request(unconditional), &CTX()),
            Plan::Record(_)
        ));
    }

    #[test]
    fn a_disabled_object_is_neither_recorded_nor_restored_and_its_record_expires() {
        let ctx = Context {
            policy: &DISABLED,
            ..CTX()
        };
        let status = obj(json!({"phase": "Ready"}), "11");
        for (op, sub) in [("UPDATE", Some("status")), ("UPDATE", None)] {
            let r = request(review(op, sub, status.clone(), status.clone()));
            assert_eq!(plan(&r, &ctx), Plan::Skip(Skip::Disabled));
        }
        let r = request(review("CREATE", None, status.clone(), Value::Null));
        assert_eq!(plan(&r, &ctx), Plan::Skip(Skip::Disabled));
        let r = request(review("DELETE", None, Value::Null, status));
        let Plan::Expire {
            identity,
            retention,
        } = plan(&r, &ctx)
        else {
            panic!("expected the record's retention clock to start")
        };
        assert_eq!(identity.name, "eu-1");
        assert_eq!(retention, Duration::from_secs(86_400));
    }

    #[test]
    fn only_what_the_policy_keeps_is_recorded_with_its_retention() {
        let narrow = Policy {
            restore: RestorePolicy {
                mode: RestoreMode::Fill,
                fields: vec!["/endpoint".parse().unwrap(), "/secret".parse().unwrap()],
                narrowed_to: vec![],
                exclude_fields: vec!["/secret".parse().unwrap()],
            },
            retention: Duration::from_secs(7 * 86_400),
            ..ENABLED.clone()
        };
        let ctx = Context {
            policy: &narrow,
            ..CTX()
        };
        let status = json!({"endpoint": "e", "secret": "s", "phase": "Ready"});
        let w = recorded(
            review(
                "UPDATE",
                Some("status"),
                obj(status.clone(), "11"),
                obj(json!({}), "11"),
            ),
            &ctx,
        );
        assert_eq!(w.status, json!({"endpoint": "e"}));
        assert_eq!(w.retention, Duration::from_secs(7 * 86_400));
    }
}
