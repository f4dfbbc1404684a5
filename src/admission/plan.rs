//! What a review asks of restatus: pure, decided from the request and the object's resolved
//! policy.

use std::{collections::BTreeMap, time::Duration};

use jiff::Timestamp;
use json_patch::PatchOperation;
use kube::core::admission::Operation;
use serde_json::Value;

use super::review::{Object, Request, StatusError, StatusLimits, parse_status};
use crate::{
    patch,
    policy::{
        ANNOTATION_RESTORED_AT, PROTECTED_ANNOTATIONS, Policy, RestoreFor, TypeInfo, pending_job,
    },
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

/// Which write reached an object marked pending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PendingKind {
    /// A status write: while the marker's job is live it is merged with the saved status.
    StatusWrite,
    /// An update of the main resource: while the marker's job is live nothing is recorded.
    Update,
    /// A DELETE: while the marker's job is live the record of the earlier incarnation stays.
    Delete,
}

/// A write to an object that carries restatus's pending marker. What it means depends on
/// whether Redis still holds the marker's job id for the object: only then did restatus set
/// the marker for a restore still under way. A marker without a live job (one that reached the
/// object while restatus did not review it, or whose job is over) is stripped and the write is
/// an ordinary one.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingWrite {
    pub kind: PendingKind,
    /// The job id the marker names (`""` when it names none).
    pub job: String,
    /// For a status write, the status as written (a merge needs all of it); otherwise the
    /// status to record if the marker is dead, narrowed to what the policy keeps.
    pub write: RecordWrite,
}

/// What to do for one review.
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    Skip(Skip),
    /// The status is beyond the limits restatus parses: not recorded.
    Unparsed(StatusError),
    /// Record this status (already narrowed to what the policy keeps).
    Record(RecordWrite),
    /// Look for a record of this object and restore it.
    Create(CreateCheck),
    /// A write to an object marked pending; see [`PendingWrite`].
    Pending(PendingWrite),
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
    /// How large a status restatus parses.
    pub limits: StatusLimits,
}

/// The object a review is about: the new one, or for a DELETE the old one.
pub(super) fn subject<'r, 'a>(req: &'r Request<'a>) -> Option<&'r Object<'a>> {
    match req.operation {
        Operation::Delete => req.old_object.as_ref(),
        _ => req.object.as_ref().or(req.old_object.as_ref()),
    }
}

/// Which object a review is about. Namespace deletion and DeleteCollection send per-item
/// DELETE reviews without `name` (and without `namespace` for some callers): those come
/// from the object itself.
pub fn identity(req: &Request<'_>) -> ObjectIdentity {
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
pub(super) fn namespace<'r>(req: &'r Request<'_>) -> Option<&'r str> {
    req.namespace
        .as_deref()
        .filter(|ns| !ns.is_empty())
        .or_else(|| subject(req).and_then(|o| o.metadata.namespace.as_deref()))
        .filter(|ns| !ns.is_empty())
}

/// The status of `obj` parsed within `limits`: `Ok(None)` when it has none.
fn status(obj: &Object<'_>, limits: StatusLimits) -> Result<Option<Value>, StatusError> {
    obj.status.map(|raw| parse_status(raw, limits)).transpose()
}

/// A record of `status` as `obj` has it. The uid is the stored object's (`oldObject`) when
/// there is one: what the API server keeps, whatever a client's body names.
fn write_of(
    req: &Request<'_>,
    obj: &Object<'_>,
    status: Value,
    source: Source,
    policy: &Policy,
) -> RecordWrite {
    let stored = req.old_object.as_ref().unwrap_or(obj);
    RecordWrite {
        identity: identity(req),
        status,
        api_version: req.api_version(),
        kind: req.kind.kind.clone(),
        uid: stored.metadata.uid.clone().unwrap_or_default(),
        resource_version: obj.metadata.resource_version.clone().unwrap_or_default(),
        generation: obj.metadata.generation,
        source,
        deleting: source == Source::Deleted || obj.metadata.deletion_timestamp.is_some(),
        retention: policy.retention,
        restored_by: None,
        catch_up: None,
        listed_at: None,
    }
}

/// Why an object's status is not recorded.
enum Unrecorded {
    NoStatus,
    Unparsed(StatusError),
}

impl From<Unrecorded> for Plan {
    fn from(why: Unrecorded) -> Self {
        match why {
            Unrecorded::NoStatus => Plan::Skip(Skip::NoStatus),
            Unrecorded::Unparsed(error) => Plan::Unparsed(error),
        }
    }
}

/// The record of `obj`'s status, narrowed to what the policy keeps, or why there is none.
fn record(
    req: &Request<'_>,
    obj: &Object<'_>,
    source: Source,
    ctx: &Context<'_>,
) -> Result<RecordWrite, Unrecorded> {
    match status(obj, ctx.limits) {
        Ok(Some(status)) => Ok(write_of(
            req,
            obj,
            ctx.policy.restore.restorable(&status),
            source,
            ctx.policy,
        )),
        Ok(None) => Err(Unrecorded::NoStatus),
        Err(error) => Err(Unrecorded::Unparsed(error)),
    }
}

/// A write to an object the stored `marked` object says is pending (job `job`).
fn pending(
    req: &Request<'_>,
    obj: &Object<'_>,
    kind: PendingKind,
    job: &str,
    source: Source,
    ctx: &Context<'_>,
) -> Plan {
    let write = match kind {
        PendingKind::StatusWrite => match status(obj, ctx.limits) {
            Ok(status) => write_of(req, obj, status.unwrap_or(Value::Null), source, ctx.policy),
            Err(error) => return Plan::Unparsed(error),
        },
        PendingKind::Update | PendingKind::Delete => match record(req, obj, source, ctx) {
            Ok(write) => write,
            // Nothing to record either way; a dead marker is still stripped on an update.
            Err(Unrecorded::NoStatus) => write_of(req, obj, Value::Null, source, ctx.policy),
            Err(why) => return why.into(),
        },
    };
    Plan::Pending(PendingWrite {
        kind,
        job: job.to_owned(),
        write,
    })
}

/// Whether a write of `stored` may ask for a catch-up instead of replacing a record of another
/// incarnation, and from records written no later than when: restatus never restored or
/// marked it (it carries none of restatus's annotations), the writer is not restatus, policy
/// opens restores to any creator, and the object says when it was created (a record written
/// after that is no earlier incarnation's).
fn may_catch_up(req: &Request<'_>, stored: &Object<'_>, ctx: &Context<'_>) -> Option<Timestamp> {
    let marked = stored.metadata.annotations.as_ref().is_some_and(|a| {
        PROTECTED_ANNOTATIONS.iter().any(|k| a.contains_key(*k))
            || a.contains_key(ANNOTATION_RESTORED_AT)
    });
    if marked || own_request(req, ctx.own_user) || ctx.policy.restore_for != RestoreFor::Creators {
        return None;
    }
    stored
        .metadata
        .creation_timestamp
        .as_deref()
        .and_then(|at| at.parse().ok())
}

/// Whether restatus itself made the request.
fn own_request(req: &Request<'_>, own_user: Option<&str>) -> bool {
    own_user.is_some_and(|own| req.user_info.username.as_deref() == Some(own))
}

/// The patch that undoes a change to the annotations only restatus may set
/// (`restatus.io/restore` and `restatus.io/restore-job`).
///
/// The marker decides whose status writes are merged with a saved status, so a creator who
/// set `pending` themselves would get a status back without the access check of a CREATE. A
/// client's value is removed from a CREATE (restatus sets its own when it queues a job); on
/// an UPDATE, of the object or its status, anyone but restatus may remove them but not set or
/// change them.
pub fn undo_foreign_marker(req: &Request<'_>, own_user: Option<&str>) -> Vec<PatchOperation> {
    if own_request(req, own_user) || !matches!(req.sub_resource.as_deref(), None | Some("status")) {
        return Vec::new();
    }
    let new = annotations(req.object.as_ref());
    let old = match req.operation {
        Operation::Create => None,
        Operation::Update => annotations(req.old_object.as_ref()),
        Operation::Delete | Operation::Connect => return Vec::new(),
    };
    let mut restore: Vec<(&str, &str)> = Vec::new();
    let mut ops = Vec::new();
    for key in PROTECTED_ANNOTATIONS {
        let Some(set) = new.and_then(|a| a.get(key)) else {
            continue;
        };
        match old.and_then(|a| a.get(key)) {
            Some(kept) if kept == set => {}
            Some(kept) => restore.push((key, kept)),
            None => ops.extend(patch::remove_annotation(new, key)),
        }
    }
    if !restore.is_empty() {
        ops.extend(patch::set_annotations(new, &restore));
    }
    ops
}

/// Operations that take restatus's marker (both protected annotations) off the object a
/// review writes, where it carries them.
pub fn strip_marker(req: &Request<'_>) -> Vec<PatchOperation> {
    let new = annotations(req.object.as_ref());
    PROTECTED_ANNOTATIONS
        .iter()
        .filter_map(|key| patch::remove_annotation(new, key))
        .collect()
}

fn annotations<'r>(obj: Option<&'r Object<'_>>) -> Option<&'r BTreeMap<String, String>> {
    obj.and_then(|o| o.metadata.annotations.as_ref())
}

/// An update whose object carries a resourceVersion other than the stored one is refused
/// by the API server (409) after admission.
pub(super) fn conflicting(req: &Request<'_>) -> bool {
    fn version<'r>(o: &'r Option<Object<'_>>) -> Option<&'r str> {
        o.as_ref()
            .and_then(|o| o.metadata.resource_version.as_deref())
            .filter(|v| !v.is_empty())
    }
    matches!((version(&req.object), version(&req.old_object)), (Some(new), Some(old)) if new != old)
}

/// The status [`plan`] parses for `req`, if any: the new one of a status write or a CREATE of
/// a type that keeps status, the stored one (or, for a type that keeps status, the new one)
/// of a main-resource update, the old one of a DELETE.
pub fn parsed_status<'r>(
    req: &'r Request<'_>,
    type_info: TypeInfo,
) -> Option<&'r serde_json::value::RawValue> {
    if req.dry_run {
        return None;
    }
    let obj = match (&req.operation, req.sub_resource.as_deref(), type_info) {
        (Operation::Update, Some("status"), _)
        | (Operation::Update | Operation::Create, None, TypeInfo::KeepsStatusOnCreate) => {
            req.object.as_ref()
        }
        (Operation::Update, None, TypeInfo::DropsStatusOnCreate) | (Operation::Delete, None, _) => {
            req.old_object.as_ref()
        }
        _ => None,
    };
    obj.and_then(|o| o.status)
}

/// Decides what a review asks for.
pub fn plan(req: &Request<'_>, ctx: &Context<'_>) -> Plan {
    if req.dry_run {
        return Plan::Skip(Skip::DryRun);
    }
    let enabled = ctx.policy.enabled;
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
            // change metadata, and a marker a client sets is undone (`undo_foreign_marker`).
            let stored = req.old_object.as_ref().unwrap_or(obj);
            let marker = pending_job(stored.metadata.annotations.as_ref());
            if let Some(job) = marker
                && !own_request(req, ctx.own_user)
            {
                return pending(
                    req,
                    obj,
                    PendingKind::StatusWrite,
                    job,
                    Source::Written,
                    ctx,
                );
            }
            // restatus's own write to a pending object is the restore of the marker's job: the
            // record it leaves says so, which is how the job tells it from the new
            // incarnation's own status.
            match record(req, obj, Source::Written, ctx) {
                Ok(mut write) => {
                    write.restored_by = marker.filter(|job| !job.is_empty()).map(str::to_owned);
                    write.catch_up = may_catch_up(req, stored, ctx);
                    Plan::Record(write)
                }
                Err(why) => why.into(),
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
            if !enabled {
                return Plan::Skip(Skip::Disabled);
            }
            if conflicting(req) {
                return Plan::Skip(Skip::Conflict);
            }
            let stored = req.old_object.as_ref().unwrap_or(obj);
            if let Some(job) = pending_job(stored.metadata.annotations.as_ref()) {
                return pending(req, obj, PendingKind::Update, job, source, ctx);
            }
            match record(req, obj, source, ctx) {
                Ok(mut write) => {
                    write.catch_up = may_catch_up(req, stored, ctx);
                    Plan::Record(write)
                }
                Err(why) => why.into(),
            }
        }
        (Operation::Delete, None) => {
            let Some(old) = &req.old_object else {
                return Plan::Skip(Skip::Unsupported);
            };
            if !enabled {
                return Plan::Expire {
                    identity: identity(req),
                    retention: ctx.policy.retention,
                };
            }
            if let Some(job) = pending_job(old.metadata.annotations.as_ref()) {
                return pending(req, old, PendingKind::Delete, job, Source::Deleted, ctx);
            }
            match record(req, old, Source::Deleted, ctx) {
                Ok(write) => Plan::Record(write),
                // Nothing to record from the object, but a record from before must still
                // start its clock rather than stay forever.
                Err(_) => Plan::Expire {
                    identity: identity(req),
                    retention: ctx.policy.retention,
                },
            }
        }
        (Operation::Create, None) => {
            if req.name.is_empty() {
                return Plan::Skip(Skip::NoName);
            }
            if !enabled {
                return Plan::Skip(Skip::Disabled);
            }
            let status = match ctx.type_info {
                TypeInfo::KeepsStatusOnCreate => {
                    match req.object.as_ref().map(|o| status(o, ctx.limits)) {
                        Some(Ok(status)) => status,
                        Some(Err(error)) => return Plan::Unparsed(error),
                        None => None,
                    }
                }
                TypeInfo::DropsStatusOnCreate => None,
            };
            Plan::Create(CreateCheck {
                identity: identity(req),
                api_version: req.api_version(),
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
            limits: StatusLimits::default(),
        }
    }

    /// The record a review asks for; panics when it asks for something else.
    fn recorded(review: Value, ctx: &Context<'_>) -> RecordWrite {
        match plan(&request(review), ctx) {
            Plan::Record(write) => write,
            other => panic!("expected a record, got {other:?}"),
        }
    }

    fn request(review: Value) -> Request<'static> {
        let body: &'static str = Box::leak(review.to_string().into_boxed_str());
        crate::admission::review::decode(body.as_bytes()).unwrap()
    }

    /// The pending write a review asks for; panics when it asks for something else.
    fn pending_write(review: Value, ctx: &Context<'_>) -> PendingWrite {
        match plan(&request(review), ctx) {
            Plan::Pending(write) => write,
            other => panic!("expected a pending write, got {other:?}"),
        }
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
    fn writes_to_pending_objects_depend_on_the_markers_job_unless_restatus_wrote_them() {
        let mut pending = obj(json!({"phase": "Provisioning"}), "20");
        pending["metadata"]["annotations"] =
            json!({"restatus.io/restore": "pending", "restatus.io/restore-job": "j-7"});
        let w = pending_write(
            review("UPDATE", Some("status"), pending.clone(), pending.clone()),
            &CTX(),
        );
        assert_eq!(w.kind, PendingKind::StatusWrite);
        assert_eq!(w.job, "j-7");
        assert_eq!(w.write.status, json!({"phase": "Provisioning"}));

        // Told by the user restatus runs as, not by the field manager a client picks. Its
        // record names the job it restores for.
        let mut own = review("UPDATE", Some("status"), pending.clone(), pending.clone());
        own["request"]["userInfo"] = json!({"username": OWN_USER});
        match plan(&request(own), &CTX()) {
            Plan::Record(w) => assert_eq!(w.restored_by.as_deref(), Some("j-7")),
            other => panic!("expected a record, got {other:?}"),
        }
        let mut posing = review("UPDATE", Some("status"), pending.clone(), pending.clone());
        posing["request"]["options"] = json!({"kind": "PatchOptions", "fieldManager": "restatus"});
        assert_eq!(pending_write(posing, &CTX()).kind, PendingKind::StatusWrite);
        let unknown = Context {
            own_user: None,
            ..CTX()
        };
        let mut own = review("UPDATE", Some("status"), pending.clone(), pending.clone());
        own["request"]["userInfo"] = json!({"username": OWN_USER});
        assert_eq!(pending_write(own, &unknown).kind, PendingKind::StatusWrite);

        // A main-resource update and a DELETE carry the record to keep if the marker is dead.
        let w = pending_write(
            review("UPDATE", None, pending.clone(), pending.clone()),
            &CTX(),
        );
        assert_eq!((w.kind, w.job.as_str()), (PendingKind::Update, "j-7"));
        assert_eq!(w.write.status, json!({"phase": "Provisioning"}));
        let w = pending_write(review("DELETE", None, Value::Null, pending.clone()), &CTX());
        assert_eq!(w.kind, PendingKind::Delete);
        assert!(w.write.deleting);

        // The marker is read from the stored object: a client's body proves nothing.
        let plain = obj(json!({"phase": "Provisioning"}), "20");
        assert!(matches!(
            plan(
                &request(review("UPDATE", None, pending.clone(), plain.clone())),
                &CTX()
            ),
            Plan::Record(_)
        ));
        // A marker that names no job is pending with an empty job id, which no job matches.
        let mut bare = plain;
        bare["metadata"]["annotations"] = json!({"restatus.io/restore": "pending"});
        let w = pending_write(review("UPDATE", Some("status"), bare.clone(), bare), &CTX());
        assert_eq!(w.job, "");
    }

    #[test]
    fn a_write_may_ask_for_a_catch_up_only_unmarked_by_others_where_creators_get_restores() {
        let creators = Policy {
            restore_for: RestoreFor::Creators,
            ..ENABLED.clone()
        };
        let open = Context {
            policy: &creators,
            ..CTX()
        };
        let created: Timestamp = "2026-11-30T10:00:00Z".parse().unwrap();
        let mut plain = obj(json!({"phase": "Fresh"}), "3");
        plain["metadata"]["creationTimestamp"] = json!("2026-11-30T10:00:00Z");
        let mut restored = plain.clone();
        restored["metadata"]["annotations"] =
            json!({"restatus.io/restored-at": "2026-12-01T00:00:00Z"});
        let mut undated = plain.clone();
        undated["metadata"]
            .as_object_mut()
            .unwrap()
            .remove("creationTimestamp");
        let mut misdated = plain.clone();
        misdated["metadata"]["creationTimestamp"] = json!("yesterday");
        let cases = [
            ("status write", Some("status"), &plain, &open, None, true),
            ("main update", None, &plain, &open, None, true),
            (
                "restores for status writers",
                Some("status"),
                &plain,
                &CTX(),
                None,
                false,
            ),
            (
                "an object restatus restored",
                Some("status"),
                &restored,
                &open,
                None,
                false,
            ),
            (
                "restatus's own write",
                Some("status"),
                &plain,
                &open,
                Some(OWN_USER),
                false,
            ),
            (
                "no creation time",
                Some("status"),
                &undated,
                &open,
                None,
                false,
            ),
            ("not a time", Some("status"), &misdated, &open, None, false),
        ];
        for (what, sub, stored, ctx, user, want) in cases {
            let mut rv = review("UPDATE", sub, stored.clone(), stored.clone());
            if let Some(user) = user {
                rv["request"]["userInfo"] = json!({"username": user});
            }
            let want = want.then_some(created);
            assert_eq!(recorded(rv, ctx).catch_up, want, "{what}");
        }
        // A status write's object carries what the client sent; the creation time is the
        // stored object's.
        let mut forged = plain.clone();
        forged["metadata"]["creationTimestamp"] = json!("2099-01-01T00:00:00Z");
        let rv = review("UPDATE", Some("status"), forged, plain.clone());
        assert_eq!(recorded(rv, &open).catch_up, Some(created));
        let delete = recorded(review("DELETE", None, Value::Null, plain.clone()), &open);
        assert_eq!(
            delete.catch_up, None,
            "a DELETE records the last status as it is"
        );
    }

    #[test]
    fn a_status_writes_record_names_the_stored_objects_uid() {
        let mut forged = obj(json!({"phase": "Ready"}), "11");
        forged["metadata"]["uid"] = json!("forged-uid");
        let stored = obj(json!({"phase": "Old"}), "11");
        // The API server keeps the stored object's metadata on a status write.
        let w = recorded(
            review("UPDATE", Some("status"), forged, stored.clone()),
            &CTX(),
        );
        assert_eq!(w.uid, "uid-1");
        assert_eq!(w.status, json!({"phase": "Ready"}));
        // A body without a uid is recorded under the stored one too.
        let mut bare = obj(json!({"phase": "Ready"}), "11");
        bare["metadata"].as_object_mut().unwrap().remove("uid");
        let w = recorded(review("UPDATE", Some("status"), bare, stored), &CTX());
        assert_eq!(w.uid, "uid-1");
    }

    #[test]
    fn a_delete_with_nothing_to_record_still_starts_the_records_clock() {
        let tight = Context {
            limits: StatusLimits {
                max_values: 2,
                max_depth: 8,
            },
            ..CTX()
        };
        for (what, status, ctx) in [
            ("no status", Value::Null, &CTX()),
            (
                "a status beyond the limits",
                json!({"list": [0, 0, 0]}),
                &tight,
            ),
        ] {
            let r = request(review("DELETE", None, Value::Null, obj(status, "12")));
            match plan(&r, ctx) {
                Plan::Expire {
                    identity,
                    retention,
                } => {
                    assert_eq!(identity.name, "eu-1", "{what}");
                    assert_eq!(retention, ENABLED.retention, "{what}");
                }
                other => panic!("{what}: expected the clock to start, got {other:?}"),
            }
        }
    }

    #[test]
    fn the_status_parsed_is_the_one_the_plan_reads() {
        let o = obj(json!({"from": "object"}), "1");
        let old = obj(json!({"from": "old"}), "1");
        let cases = [
            (
                "UPDATE",
                Some("status"),
                TypeInfo::DropsStatusOnCreate,
                Some("object"),
            ),
            ("UPDATE", None, TypeInfo::DropsStatusOnCreate, Some("old")),
            (
                "UPDATE",
                None,
                TypeInfo::KeepsStatusOnCreate,
                Some("object"),
            ),
            ("DELETE", None, TypeInfo::DropsStatusOnCreate, Some("old")),
            ("CREATE", None, TypeInfo::DropsStatusOnCreate, None),
            (
                "CREATE",
                None,
                TypeInfo::KeepsStatusOnCreate,
                Some("object"),
            ),
            ("UPDATE", Some("scale"), TypeInfo::DropsStatusOnCreate, None),
        ];
        for (op, sub, type_info, want) in cases {
            let r = request(review(op, sub, o.clone(), old.clone()));
            let got = parsed_status(&r, type_info).map(|raw| {
                serde_json::from_str::<Value>(raw.get()).unwrap()["from"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            });
            assert_eq!(got.as_deref(), want, "{op} {sub:?} {type_info:?}");
        }
        let mut dry = review("UPDATE", Some("status"), o, old);
        dry["request"]["dryRun"] = json!(true);
        assert!(parsed_status(&request(dry), TypeInfo::DropsStatusOnCreate).is_none());
    }

    #[test]
    fn a_status_beyond_the_limits_is_not_parsed() {
        let tight = Context {
            limits: StatusLimits {
                max_values: 4,
                max_depth: 8,
            },
            ..CTX()
        };
        let big = obj(json!({"list": [0, 0, 0]}), "11");
        assert_eq!(
            plan(
                &request(review("UPDATE", Some("status"), big.clone(), big.clone())),
                &tight
            ),
            Plan::Unparsed(StatusError::TooManyValues { max: 4 })
        );
        let small = obj(json!({"list": [0]}), "11");
        assert!(matches!(
            plan(
                &request(review("UPDATE", Some("status"), small.clone(), small)),
                &tight
            ),
            Plan::Record(_)
        ));
    }

    #[test]
    fn only_restatus_sets_the_restore_marker() {
        let marked = |pairs: &[(&str, &str)]| {
            let mut o = obj(json!({"phase": "Running"}), "7");
            let map: serde_json::Map<String, Value> = pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), json!(v)))
                .collect();
            o["metadata"]["annotations"] = Value::Object(map);
            o
        };
        const R: &str = "restatus.io/restore";
        const J: &str = "restatus.io/restore-job";
        let plain = obj(json!({"phase": "Running"}), "7");
        let remove = |key: &str| json!({"op": "remove", "path": format!("/metadata/annotations/{}", key.replace('/', "~1"))});
        let set = |key: &str, value: &str| json!({"op": "add", "path": format!("/metadata/annotations/{}", key.replace('/', "~1")), "value": value});
        let cases = [
            (
                "CREATE",
                None,
                marked(&[(R, "pending")]),
                Value::Null,
                json!([remove(R)]),
            ),
            (
                "CREATE",
                None,
                marked(&[(R, "pending"), (J, "forged")]),
                Value::Null,
                json!([remove(R), remove(J)]),
            ),
            ("CREATE", None, plain.clone(), Value::Null, json!([])),
            (
                "UPDATE",
                None,
                marked(&[(R, "pending")]),
                plain.clone(),
                json!([remove(R)]),
            ),
            (
                "UPDATE",
                Some("status"),
                marked(&[(R, "pending")]),
                plain.clone(),
                json!([remove(R)]),
            ),
            (
                "UPDATE",
                None,
                marked(&[(R, "pending")]),
                marked(&[(R, "failed")]),
                json!([set(R, "failed")]),
            ),
            (
                "UPDATE",
                None,
                marked(&[(R, "pending"), (J, "mine")]),
                marked(&[(R, "pending"), (J, "theirs")]),
                json!([set(J, "theirs")]),
            ),
            (
                "UPDATE",
                None,
                marked(&[(J, "kept")]),
                marked(&[(J, "kept")]),
                json!([]),
            ),
            (
                "UPDATE",
                None,
                marked(&[(R, "pending")]),
                marked(&[(R, "pending")]),
                json!([]),
            ),
            (
                "UPDATE",
                None,
                plain.clone(),
                marked(&[(R, "pending"), (J, "j")]),
                json!([]),
            ),
            (
                "UPDATE",
                Some("scale"),
                marked(&[(R, "pending")]),
                plain.clone(),
                json!([]),
            ),
            (
                "DELETE",
                None,
                Value::Null,
                marked(&[(R, "pending")]),
                json!([]),
            ),
        ];
        for (operation, sub, object, old, want) in cases {
            let r = request(review(operation, sub, object.clone(), old.clone()));
            let ops = serde_json::to_value(undo_foreign_marker(&r, Some(OWN_USER))).unwrap();
            assert_eq!(ops, want, "{operation} {sub:?} {object} over {old}");
        }
        // restatus itself may set and change it.
        let mut own = review(
            "UPDATE",
            None,
            marked(&[(R, "failed")]),
            marked(&[(R, "pending")]),
        );
        own["request"]["userInfo"] = json!({"username": OWN_USER});
        assert!(undo_foreign_marker(&request(own), Some(OWN_USER)).is_empty());
    }

    #[test]
    fn stripping_removes_only_the_marker_annotations_the_object_has() {
        let mut o = obj(json!({}), "7");
        o["metadata"]["annotations"] =
            json!({"restatus.io/restore": "pending", "restatus.io/restore-job": "j", "keep": "me"});
        let r = request(review("UPDATE", None, o.clone(), o));
        assert_eq!(
            serde_json::to_value(strip_marker(&r)).unwrap(),
            json!([
                {"op": "remove", "path": "/metadata/annotations/restatus.io~1restore"},
                {"op": "remove", "path": "/metadata/annotations/restatus.io~1restore-job"}
            ])
        );
        let r = request(review(
            "UPDATE",
            None,
            obj(json!({}), "7"),
            obj(json!({}), "7"),
        ));
        assert!(strip_marker(&r).is_empty());
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
