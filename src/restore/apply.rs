//! One restore, against the API server: wait for the new incarnation, patch its status,
//! swap the annotation, report.

use std::time::Duration;

use jiff::{Timestamp, Unit};
use json_patch::Patch as JsonPatch;
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams},
    runtime::events::{Event, EventType, Recorder},
};
use serde_json::{Value, json};

use crate::{
    error::{api_status_code, error_chain},
    patch,
    policy::{
        ANNOTATION_RESTORE, ANNOTATION_RESTORED_AT, RESTORE_FAILED, RestorePolicy, decide,
        is_restore_pending, status_of,
    },
    store::{Record, RestoreJob},
};

/// Tolerated clock difference between restatus and the API server when telling a new
/// incarnation (created after the job) from an old one.
const CLOCK_SKEW: Duration = Duration::from_secs(5);
/// A CREATE usually lands a few milliseconds after its admission: poll every 5 ms for the
/// first 100 ms, then back off to 500 ms.
const FAST_POLL: Duration = Duration::from_millis(5);
const FAST_POLL_FOR: Duration = Duration::from_millis(100);
const MAX_POLL: Duration = Duration::from_millis(500);

/// What the worker found when it looked for the object a job is about.
#[derive(Debug)]
enum Incarnation {
    /// A new incarnation, created after the job's CREATE was admitted.
    Appeared(Box<DynamicObject>),
    /// The object the record came from (or one older than the job) still exists: the CREATE
    /// failed with AlreadyExists.
    AlreadyExisted,
    /// Nothing appeared before the job's deadline: the CREATE never landed.
    NeverAppeared,
}

/// How a restore ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finished {
    Restored,
    /// The live object is the one the record came from (or older than the job): the CREATE
    /// failed with AlreadyExists.
    AlreadyExists,
    /// The object never appeared before the deadline: the CREATE never landed.
    Expired,
    /// The object was deleted again before its status could be written.
    Gone,
    /// A duplicate delivery of a job that was already done.
    AlreadyRestored,
    /// The record was forgotten meanwhile; the object is only unmarked.
    NoRecord,
    /// The record now belongs to another incarnation (its status was written since): it is
    /// not the deleted object's status, so nothing is restored and the object is unmarked.
    RecordReplaced,
}

impl Finished {
    pub fn label(self) -> &'static str {
        match self {
            Finished::Restored => "restored",
            Finished::AlreadyExists => "already_exists",
            Finished::Expired => "expired",
            Finished::Gone => "gone",
            Finished::AlreadyRestored => "already_restored",
            Finished::NoRecord => "no_record",
            Finished::RecordReplaced => "record_replaced",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// Worth another try later (network, API server overloaded, repeated conflicts).
    #[error("{action} {identity} failed")]
    Transient {
        action: &'static str,
        identity: String,
        #[source]
        source: kube::Error,
    },
    #[error("status of {identity} kept conflicting after {attempts} attempts")]
    Conflicts { identity: String, attempts: u32 },
    /// Will not get better by retrying (the saved status is invalid for the type, access is
    /// denied): reported and dead-lettered at once.
    #[error("{action} {identity} was refused: {message}")]
    Permanent {
        action: &'static str,
        identity: String,
        message: String,
    },
}

impl ApplyError {
    pub fn is_permanent(&self) -> bool {
        matches!(self, ApplyError::Permanent { .. })
    }

    fn from_kube(action: &'static str, identity: &str, source: kube::Error) -> Self {
        if let kube::Error::Api(status) = &source
            && matches!(status.code, 400 | 403 | 405 | 415 | 422)
        {
            return ApplyError::Permanent {
                action,
                identity: identity.to_owned(),
                message: describe_refusal(status),
            };
        }
        ApplyError::Transient {
            action,
            identity: identity.to_owned(),
            source,
        }
    }
}

/// Why the API server refused a write, without the values it may quote: a validation error
/// (400, 422) and a denial by an admission webhook or policy name the offending fields only,
/// since their messages can echo status contents, which would end up in logs, Events and the
/// dead-letter stream. An authorization refusal (403 from RBAC) names the user, verb and
/// resource, no object data, and keeps the API server's message.
fn describe_refusal(status: &kube::core::Status) -> String {
    let denied_by_admission = status.message.contains("admission webhook")
        || status.message.contains("denied request")
        || status.message.contains("denied the request")
        || status.message.contains("ValidatingAdmissionPolicy");
    let rbac = status.code == 403 && !denied_by_admission;
    if rbac || !matches!(status.code, 400 | 403 | 422) {
        return status.message.clone();
    }
    let fields: Vec<&str> = status
        .details
        .iter()
        .flat_map(|d| d.causes.iter())
        .map(|c| c.field.as_str())
        .filter(|f| !f.is_empty())
        .collect();
    let reason = if status.reason.is_empty() {
        "Invalid"
    } else {
        status.reason.as_str()
    };
    let by = if denied_by_admission {
        " (denied by admission)"
    } else {
        ""
    };
    if fields.is_empty() {
        format!("HTTP {} {reason}{by}", status.code)
    } else {
        format!("HTTP {} {reason}{by}: {}", status.code, fields.join(", "))
    }
}

/// Everything one restore needs, borrowed from the worker.
pub struct Applier<'a> {
    pub client: &'a Client,
    pub recorder: &'a Recorder,
    pub policy: &'a RestorePolicy,
    pub field_manager: &'a str,
    pub conflict_retries: u32,
}

/// The API resource of a job's object.
fn api_resource(job: &RestoreJob) -> ApiResource {
    let (group, version) = match job.api_version.rsplit_once('/') {
        Some((g, v)) => (g, v),
        None => ("", job.api_version.as_str()),
    };
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(group, version, &job.kind),
        &job.identity.resource,
    )
}

/// Milliseconds since the job's CREATE was admitted, for debug logs.
fn since(job: &RestoreJob) -> i64 {
    Timestamp::now().duration_since(job.created_at).as_millis() as i64
}

impl Applier<'_> {
    fn params(&self) -> PatchParams {
        PatchParams {
            field_manager: Some(self.field_manager.to_owned()),
            ..PatchParams::default()
        }
    }

    fn api(&self, job: &RestoreJob, ar: &ApiResource) -> Api<DynamicObject> {
        match &job.identity.namespace {
            Some(ns) => Api::namespaced_with(self.client.clone(), ns, ar),
            None => Api::all_with(self.client.clone(), ar),
        }
    }

    /// Performs one restore job with the record it refers to (`None` when the record was
    /// forgotten meanwhile).
    pub async fn restore(
        &self,
        job: &RestoreJob,
        record: Option<&Record>,
    ) -> Result<(Finished, Option<DynamicObject>), ApplyError> {
        let ar = api_resource(job);
        let api = self.api(job, &ar);
        let identity = job.identity.to_string();
        let live = match self
            .wait_for_new_incarnation(&api, job, record, &identity)
            .await?
        {
            Incarnation::Appeared(live) => *live,
            Incarnation::AlreadyExisted => return Ok((Finished::AlreadyExists, None)),
            Incarnation::NeverAppeared => return Ok((Finished::Expired, None)),
        };
        tracing::debug!(since_create_ms = since(job), "new incarnation found");
        let Some(record) = record else {
            // Nothing to restore: only take the pending mark off, so status writes are no
            // longer merged.
            return self.unmark(&api, live, Finished::NoRecord, &identity).await;
        };
        if !job.record_uid.is_empty() && record.uid != job.record_uid {
            let adopted = live.metadata.uid.as_ref() == Some(&record.uid);
            if adopted && is_restore_pending(live.metadata.annotations.as_ref()) {
                // While the object is pending only restatus's own status writes are
                // recorded: this job patched the status, and stopped before the annotations.
                tracing::info!("status restored by an earlier delivery of this job; finishing");
                return self
                    .annotate_restored(&api, &ar, live, record, &identity)
                    .await;
            }
            if adopted && record.restored_at.is_some() {
                // This job already restored it and the record was adopted: a duplicate.
                return Ok((Finished::AlreadyRestored, Some(live)));
            }
            tracing::info!(record_uid = %record.uid, job_record_uid = %job.record_uid, "the record now belongs to another incarnation; nothing restored");
            return self
                .unmark(&api, live, Finished::RecordReplaced, &identity)
                .await;
        }
        if job.inline {
            // The CREATE carried the saved status; report it.
            self.event_restored(&live, &ar, record, "in the create ")
                .await;
            return Ok((Finished::Restored, Some(live)));
        }
        let annotations = live.metadata.annotations.as_ref();
        if !is_restore_pending(annotations)
            && annotations.is_some_and(|a| a.contains_key(ANNOTATION_RESTORED_AT))
        {
            return Ok((Finished::AlreadyRestored, Some(live)));
        }

        let Some(live) = self
            .patch_status(&api, job, record, live, &identity)
            .await?
        else {
            return Ok((Finished::Gone, None));
        };
        tracing::debug!(since_create_ms = since(job), "status patched");
        self.annotate_restored(&api, &ar, live, record, &identity)
            .await
    }

    /// Swaps the pending mark of `live`, whose status is restored, for the time of the
    /// restore, and reports it.
    async fn annotate_restored(
        &self,
        api: &Api<DynamicObject>,
        ar: &ApiResource,
        live: DynamicObject,
        record: &Record,
        identity: &str,
    ) -> Result<(Finished, Option<DynamicObject>), ApplyError> {
        let restored_at = Timestamp::now()
            .round(Unit::Second)
            .unwrap_or_else(|_| Timestamp::now());
        let swap = json!({
            ANNOTATION_RESTORE: null,
            ANNOTATION_RESTORED_AT: restored_at.to_string(),
        });
        if !self
            .patch_annotations(api, &live, swap, "annotating", identity)
            .await?
        {
            return Ok((Finished::Gone, None));
        }
        self.event_restored(&live, ar, record, "").await;
        Ok((Finished::Restored, Some(live)))
    }

    /// Takes the pending mark off `live`, if it has it, and finishes with `finished`.
    async fn unmark(
        &self,
        api: &Api<DynamicObject>,
        live: DynamicObject,
        finished: Finished,
        identity: &str,
    ) -> Result<(Finished, Option<DynamicObject>), ApplyError> {
        if is_restore_pending(live.metadata.annotations.as_ref())
            && !self
                .patch_annotations(
                    api,
                    &live,
                    json!({ANNOTATION_RESTORE: null}),
                    "unmarking",
                    identity,
                )
                .await?
        {
            return Ok((Finished::Gone, None));
        }
        Ok((finished, Some(live)))
    }

    /// The policy a job restores with: the one resolved when its CREATE was admitted, or the
    /// global one for jobs of older versions.
    fn policy_of<'b>(&'b self, job: &'b RestoreJob) -> &'b RestorePolicy {
        job.policy.as_ref().unwrap_or(self.policy)
    }

    /// Merge-patches annotations of the object (`null` removes one), of this incarnation only:
    /// the patch carries its uid, which the API server refuses to change, so a patch that
    /// would land on an object created again meanwhile fails. Returns false when the object
    /// is gone or replaced.
    async fn patch_annotations(
        &self,
        api: &Api<DynamicObject>,
        obj: &DynamicObject,
        annotations: Value,
        action: &'static str,
        identity: &str,
    ) -> Result<bool, ApplyError> {
        let name = obj.name_any();
        let patch = annotations_patch(obj, annotations);
        match api
            .patch(&name, &self.params(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if api_status_code(&e) == Some(404) => Ok(false),
            Err(e) if matches!(api_status_code(&e), Some(409 | 422)) => {
                match api.get_opt(&name).await {
                    Ok(Some(now)) if now.metadata.uid == obj.metadata.uid => {
                        Err(ApplyError::from_kube(action, identity, e))
                    }
                    Ok(_) => Ok(false),
                    Err(read) => Err(ApplyError::from_kube(action, identity, read)),
                }
            }
            Err(e) => Err(ApplyError::from_kube(action, identity, e)),
        }
    }

    async fn event_restored(
        &self,
        obj: &DynamicObject,
        ar: &ApiResource,
        record: &Record,
        how: &str,
    ) {
        let from = record
            .recorded_at
            .map(|t| t.round(Unit::Second).unwrap_or(t).to_string())
            .unwrap_or_else(|| "an earlier incarnation".into());
        let note = format!("Status restored {how}from the record of {from}");
        self.event(obj, ar, EventType::Normal, "StatusRestored", note)
            .await;
    }

    /// Polls until the object exists as a new incarnation, or the job's deadline passes.
    async fn wait_for_new_incarnation(
        &self,
        api: &Api<DynamicObject>,
        job: &RestoreJob,
        record: Option<&Record>,
        identity: &str,
    ) -> Result<Incarnation, ApplyError> {
        let old_uid = match record {
            Some(record) if job.record_uid.is_empty() => record.uid.as_str(),
            _ => job.record_uid.as_str(),
        };
        let not_before = job
            .created_at
            .checked_sub(jiff::SignedDuration::try_from(CLOCK_SKEW).unwrap_or_default())
            .unwrap_or(job.created_at);
        let started = tokio::time::Instant::now();
        let mut delay = FAST_POLL;
        loop {
            let attempt = tokio::time::Instant::now();
            let got = api.get_opt(&job.identity.name).await;
            tracing::trace!(
                since_create_ms = since(job),
                get_ms = attempt.elapsed().as_millis() as u64,
                found = matches!(got, Ok(Some(_))),
                "looked for the new incarnation"
            );
            match got {
                Ok(Some(obj)) => {
                    let uid = obj.metadata.uid.as_deref().unwrap_or("");
                    let created = obj.metadata.creation_timestamp.as_ref().map(|t| t.0);
                    let older = created.is_some_and(|c| c < not_before);
                    if (!old_uid.is_empty() && uid == old_uid) || older {
                        return Ok(Incarnation::AlreadyExisted);
                    }
                    return Ok(Incarnation::Appeared(Box::new(obj)));
                }
                Ok(None) => {}
                Err(e) => {
                    if Timestamp::now() >= job.deadline {
                        return Err(ApplyError::from_kube("reading", identity, e));
                    }
                    tracing::debug!(error = %error_chain(&e), "reading the recreated object failed; retrying");
                }
            }
            if Timestamp::now() >= job.deadline {
                return Ok(Incarnation::NeverAppeared);
            }
            tokio::time::sleep(delay).await;
            if started.elapsed() >= FAST_POLL_FOR {
                delay = (delay * 2).min(MAX_POLL);
            }
        }
    }

    /// Writes the decided status through the status subresource with the live
    /// resourceVersion as precondition; re-reads and re-decides on a conflict. Falls back to
    /// the main resource for a type without a status subresource. Returns the object as
    /// last seen, or `None` if it was deleted meanwhile.
    async fn patch_status(
        &self,
        api: &Api<DynamicObject>,
        job: &RestoreJob,
        record: &Record,
        mut live: DynamicObject,
        identity: &str,
    ) -> Result<Option<DynamicObject>, ApplyError> {
        let params = self.params();
        let name = job.identity.name.as_str();
        let mut use_subresource = true;
        let mut conflicts = 0;
        loop {
            let Some(status) = decide(&record.status, status_of(&live), self.policy_of(job)) else {
                return Ok(Some(live));
            };
            let patch = JsonPatch(vec![
                patch::expect_resource_version(&live.resource_version().unwrap_or_default()),
                patch::set_status(status),
            ]);
            let result = if use_subresource {
                api.patch_status(name, &params, &Patch::<()>::Json(patch))
                    .await
            } else {
                api.patch(name, &params, &Patch::<()>::Json(patch)).await
            };
            match result {
                Ok(obj) => return Ok(Some(obj)),
                Err(e) => match api_status_code(&e) {
                    Some(409) => {
                        conflicts += 1;
                        if conflicts > self.conflict_retries {
                            return Err(ApplyError::Conflicts {
                                identity: identity.to_owned(),
                                attempts: conflicts,
                            });
                        }
                    }
                    Some(404) if use_subresource => {
                        // Either the object is gone or its type has no status subresource:
                        // not a conflict, so it does not count as a retry.
                        use_subresource = false;
                    }
                    Some(404) => return Ok(None),
                    _ => return Err(ApplyError::from_kube("patching the status of", identity, e)),
                },
            }
            // Re-read and decide again against what is live now.
            match api.get_opt(name).await {
                Ok(Some(obj)) if obj.metadata.uid == live.metadata.uid => live = obj,
                Ok(_) => return Ok(None),
                Err(e) => return Err(ApplyError::from_kube("reading", identity, e)),
            }
        }
    }

    /// After a failure that will not heal: mark the object `restatus.io/restore: failed` (so
    /// status writes are no longer merged) and emit `StatusRestoreFailed`. Only the
    /// incarnation the job was for is marked: the patch carries its uid as a precondition,
    /// so an object created again meanwhile under the same name is left alone.
    pub async fn report_failure(&self, job: &RestoreJob, reason: &str) {
        let ar = api_resource(job);
        let api = self.api(job, &ar);
        let live = match api.get_opt(&job.identity.name).await {
            Ok(Some(live)) => live,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(identity = %job.identity, error = %error_chain(&e), "could not read the object to mark its failed restore");
                return;
            }
        };
        let uid = live.metadata.uid.clone().unwrap_or_default();
        if uid.is_empty() || uid == job.record_uid {
            return;
        }
        let mut ops = vec![patch::expect_uid(&uid)];
        ops.extend(patch::set_annotations(
            live.metadata.annotations.as_ref(),
            &[(ANNOTATION_RESTORE, RESTORE_FAILED)],
        ));
        match api
            .patch(
                &job.identity.name,
                &self.params(),
                &Patch::<()>::Json(JsonPatch(ops)),
            )
            .await
        {
            Ok(obj) => {
                let note: String = reason.chars().take(1000).collect();
                self.event(&obj, &ar, EventType::Warning, "StatusRestoreFailed", note)
                    .await;
            }
            Err(e) => {
                tracing::warn!(identity = %job.identity, error = %error_chain(&e), "could not mark the failed restore on the object")
            }
        }
    }

    async fn event(
        &self,
        obj: &DynamicObject,
        ar: &ApiResource,
        type_: EventType,
        reason: &str,
        note: String,
    ) {
        let reference = obj.object_ref(ar);
        let event = Event {
            type_,
            reason: reason.to_owned(),
            note: Some(note),
            action: "RestoreStatus".to_owned(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &reference).await {
            tracing::warn!(object = %obj.name_any(), error = %error_chain(&e), "could not publish the {reason} event");
        }
    }
}

/// A merge patch of `obj`'s annotations that applies to its incarnation only: it carries the
/// uid, which the API server refuses to change.
fn annotations_patch(obj: &DynamicObject, annotations: Value) -> Value {
    let mut patch = json!({"metadata": {"annotations": annotations}});
    if let Some(uid) = &obj.metadata.uid {
        patch["metadata"]["uid"] = json!(uid);
    }
    patch
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ObjectIdentity;

    #[test]
    fn annotation_patches_name_their_incarnation() {
        let mut obj = DynamicObject::new(
            "n",
            &ApiResource::erase::<k8s_openapi::api::core::v1::Service>(&()),
        );
        obj.metadata.uid = Some("uid-7".into());
        let swap =
            json!({ANNOTATION_RESTORE: null, ANNOTATION_RESTORED_AT: "2026-11-25T00:00:00Z"});
        assert_eq!(
            annotations_patch(&obj, swap.clone()),
            json!({"metadata": {"uid": "uid-7", "annotations": swap}})
        );
    }

    fn job(api_version: &str, kind: &str, resource: &str) -> RestoreJob {
        RestoreJob {
            identity: ObjectIdentity {
                group: String::new(),
                resource: resource.into(),
                namespace: Some("ns".into()),
                name: "n".into(),
            },
            api_version: api_version.into(),
            kind: kind.into(),
            record_uid: "u".into(),
            created_at: Timestamp::now(),
            deadline: Timestamp::now(),
            inline: false,
            request_uid: String::new(),
            policy: None,
        }
    }

    #[test]
    fn api_resource_of_core_and_grouped_types() {
        let ar = api_resource(&job("v1", "Service", "services"));
        assert_eq!(
            (ar.group.as_str(), ar.version.as_str(), ar.plural.as_str()),
            ("", "v1", "services")
        );
        assert_eq!(ar.api_version, "v1");
        let ar = api_resource(&job(
            "infra.example.com/v1alpha1",
            "KubernetesCluster",
            "kubernetesclusters",
        ));
        assert_eq!(ar.group, "infra.example.com");
        assert_eq!(ar.version, "v1alpha1");
        assert_eq!(ar.api_version, "infra.example.com/v1alpha1");
        assert_eq!(ar.plural, "kubernetesclusters");
    }

    #[test]
    fn validation_refusals_name_fields_not_values() {
        let status: kube::core::Status = serde_json::from_value(serde_json::json!({
            "status": "Failure",
            "code": 422,
            "reason": "Invalid",
            "message": "KubernetesCluster.infra.example.com \"x\" is invalid: status.apiServerURL: Invalid value: \"secret-value\": must be a URL",
            "details": {"causes": [{"reason": "FieldValueInvalid", "message": "Invalid value: \"secret-value\"", "field": "status.apiServerURL"}]}
        }))
        .unwrap();
        let text = describe_refusal(&status);
        assert_eq!(text, "HTTP 422 Invalid: status.apiServerURL");
        let forbidden: kube::core::Status = serde_json::from_value(serde_json::json!({
            "code": 403, "reason": "Forbidden", "message": "user cannot patch resource"
        }))
        .unwrap();
        assert_eq!(describe_refusal(&forbidden), "user cannot patch resource");
        let webhook: kube::core::Status = serde_json::from_value(serde_json::json!({
            "code": 403, "reason": "Forbidden",
            "message": "admission webhook \"policy.example.com\" denied the request: token s3cr3t is not allowed"
        }))
        .unwrap();
        assert_eq!(
            describe_refusal(&webhook),
            "HTTP 403 Forbidden (denied by admission)"
        );
    }

    #[test]
    fn client_errors_are_permanent_and_others_transient() {
        let status = |code| {
            kube::Error::Api(Box::new(kube::core::Status {
                code,
                message: "m".into(),
                ..Default::default()
            }))
        };
        assert!(ApplyError::from_kube("x", "i", status(422)).is_permanent());
        assert!(ApplyError::from_kube("x", "i", status(403)).is_permanent());
        assert!(!ApplyError::from_kube("x", "i", status(500)).is_permanent());
        assert!(!ApplyError::from_kube("x", "i", status(429)).is_permanent());
    }
}
