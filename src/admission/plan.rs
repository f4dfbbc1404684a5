//! What a review asks of restatus: pure, decided from the request alone.

use kube::core::{
    DynamicObject,
    admission::{AdmissionRequest, Operation},
};
use serde_json::Value;

use crate::{
    policy::{TypeInfo, is_restore_pending, status_of},
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
    /// Record this status.
    Record(RecordWrite),
    /// Look for a record of this object and restore it.
    Create(CreateCheck),
    /// A status write to an object still waiting for its restore: fill in the saved fields
    /// the writer did not set. The merged status is not recorded: the record keeps the earlier
    /// incarnation's status for the worker to restore from.
    PendingStatusWrite(RecordWrite),
}

/// Facts the plan needs besides the request.
pub struct Context<'a> {
    pub type_info: TypeInfo,
    /// restatus's own field manager: its status writes are never merged.
    pub field_manager: &'a str,
}

pub fn identity(req: &AdmissionRequest<DynamicObject>) -> ObjectIdentity {
    ObjectIdentity {
        group: req.resource.group.clone(),
        resource: req.resource.resource.clone(),
        namespace: req.namespace.clone().filter(|ns| !ns.is_empty()),
        name: req.name.clone(),
    }
}

pub fn api_version(req: &AdmissionRequest<DynamicObject>) -> String {
    if req.kind.group.is_empty() {
        req.kind.version.clone()
    } else {
        format!("{}/{}", req.kind.group, req.kind.version)
    }
}

fn field_manager(req: &AdmissionRequest<DynamicObject>) -> Option<&str> {
    req.options
        .as_ref()
        .and_then(|o| o.0.get("fieldManager"))
        .and_then(Value::as_str)
}

fn write_of(
    req: &AdmissionRequest<DynamicObject>,
    obj: &DynamicObject,
    status: &Value,
    source: Source,
) -> RecordWrite {
    RecordWrite {
        identity: identity(req),
        status: status.clone(),
        api_version: api_version(req),
        kind: req.kind.kind.clone(),
        uid: obj.metadata.uid.clone().unwrap_or_default(),
        resource_version: obj.metadata.resource_version.clone().unwrap_or_default(),
        generation: obj.metadata.generation,
        source,
        deleting: source == Source::Deleted || obj.metadata.deletion_timestamp.is_some(),
    }
}

/// Decides what a review asks for.
pub fn plan(req: &AdmissionRequest<DynamicObject>, ctx: &Context<'_>) -> Plan {
    if req.dry_run {
        return Plan::Skip(Skip::DryRun);
    }
    match (&req.operation, req.sub_resource.as_deref()) {
        (Operation::Update, Some("status")) => {
            let Some(obj) = &req.object else {
                return Plan::Skip(Skip::Unsupported);
            };
            let own_write = field_manager(req) == Some(ctx.field_manager);
            if is_restore_pending(obj.metadata.annotations.as_ref()) && !own_write {
                let status = status_of(obj).cloned().unwrap_or(Value::Null);
                return Plan::PendingStatusWrite(write_of(req, obj, &status, Source::Written));
            }
            match status_of(obj) {
                Some(status) => Plan::Record(write_of(req, obj, status, Source::Written)),
                None => Plan::Skip(Skip::NoStatus),
            }
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
            if is_restore_pending(obj.metadata.annotations.as_ref()) {
                return Plan::Skip(Skip::PendingRestore);
            }
            match status_of(obj) {
                Some(status) => Plan::Record(write_of(req, obj, status, source)),
                None => Plan::Skip(Skip::NoStatus),
            }
        }
        (Operation::Delete, None) => {
            let Some(old) = &req.old_object else {
                return Plan::Skip(Skip::Unsupported);
            };
            if is_restore_pending(old.metadata.annotations.as_ref()) {
                // Deleted again before its restore: the record of the earlier incarnation is
                // still the one to keep, and its retention clock is already running.
                return Plan::Skip(Skip::PendingRestore);
            }
            match status_of(old) {
                Some(status) => Plan::Record(write_of(req, old, status, Source::Deleted)),
                None => Plan::Skip(Skip::NoStatus),
            }
        }
        (Operation::Create, None) => {
            if req.name.is_empty() {
                return Plan::Skip(Skip::NoName);
            }
            let status = match ctx.type_info {
                TypeInfo::KeepsStatusOnCreate => req.object.as_ref().and_then(status_of).cloned(),
                TypeInfo::DropsStatusOnCreate => None,
            };
            Plan::Create(CreateCheck {
                identity: identity(req),
                api_version: api_version(req),
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
    use serde_json::json;

    const CTX: Context<'static> = Context {
        type_info: TypeInfo::DropsStatusOnCreate,
        field_manager: "restatus",
    };

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
            &CTX,
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
            &CTX,
        );
        assert_eq!(w.status, json!({"phase": "Ready"}));
        assert_eq!(w.source, Source::Observed);
    }

    #[test]
    fn main_update_of_a_type_that_keeps_status_records_the_new_status() {
        let keeps_status = Context {
            type_info: TypeInfo::KeepsStatusOnCreate,
            field_manager: "restatus",
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
            &CTX,
        );
        assert_eq!(w.status, json!({"phase": "Ready"}));
        assert_eq!(w.source, Source::Deleted);
        assert!(w.deleting);
    }

    #[test]
    fn an_update_of_an_object_being_deleted_keeps_the_retention_clock() {
        let mut old = obj(json!({"phase": "Terminating"}), "13");
        old["metadata"]["deletionTimestamp"] = json!("2026-11-24T04:00:00Z");
        let w = recorded(review("UPDATE", None, old.clone(), old), &CTX);
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
        assert_eq!(plan(&request(rv), &CTX), Plan::Skip(Skip::DryRun));
    }

    #[test]
    fn null_or_absent_status_is_nothing_but_empty_object_is_a_status() {
        let r = request(review(
            "UPDATE",
            Some("status"),
            obj(Value::Null, "1"),
            obj(Value::Null, "1"),
        ));
        assert_eq!(plan(&r, &CTX), Plan::Skip(Skip::NoStatus));
        let w = recorded(
            review(
                "UPDATE",
                Some("status"),
                obj(json!({}), "1"),
                obj(Value::Null, "1"),
            ),
            &CTX,
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
        let Plan::Create(c) = plan(&r, &CTX) else {
            panic!("expected a create check")
        };
        assert_eq!(c.identity.name, "eu-1");
        assert_eq!(c.status, None, "status is dropped on create for this type");
        let mut rv = review("CREATE", None, obj(json!({}), ""), Value::Null);
        rv["request"]["name"] = json!("");
        assert_eq!(plan(&request(rv), &CTX), Plan::Skip(Skip::NoName));
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
        assert!(matches!(plan(&r, &CTX), Plan::PendingStatusWrite(_)));

        let mut own = review("UPDATE", Some("status"), pending.clone(), pending.clone());
        own["request"]["options"] = json!({"kind": "PatchOptions", "fieldManager": "restatus"});
        assert!(matches!(plan(&request(own), &CTX), Plan::Record(_)));

        // A main-resource update of a pending object records nothing.
        let r = request(review("UPDATE", None, pending.clone(), pending));
        assert_eq!(plan(&r, &CTX), Plan::Skip(Skip::PendingRestore));
    }

    #[test]
    fn other_subresources_and_connect_are_skipped() {
        let r = request(review(
            "UPDATE",
            Some("scale"),
            obj(json!({}), "1"),
            obj(json!({}), "1"),
        ));
        assert_eq!(plan(&r, &CTX), Plan::Skip(Skip::OtherSubresource));
        let r = request(review("CONNECT", None, Value::Null, Value::Null));
        assert_eq!(plan(&r, &CTX), Plan::Skip(Skip::Unsupported));
    }

    #[test]
    fn cluster_scoped_and_core_group_identities() {
        let mut rv = review("DELETE", None, Value::Null, obj(json!({"a": 1}), "3"));
        rv["request"]["namespace"] = Value::Null;
        rv["request"]["resource"] =
            json!({"group": "", "version": "v1", "resource": "persistentvolumes"});
        rv["request"]["kind"] = json!({"group": "", "version": "v1", "kind": "PersistentVolume"});
        let w = recorded(rv, &CTX);
        assert_eq!(w.identity.namespace, None);
        assert_eq!(w.identity.group, "");
        assert_eq!(w.api_version, "v1");
    }
}
