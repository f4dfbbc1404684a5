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
        ANNOTATION_RESTORE, ANNOTATION_RESTORE_JOB, ANNOTATION_RESTORED_AT, RESTORE_FAILED,
        RESTORE_PENDING, RestorePolicy, decide, pending_job, restore_job, status_of,
    },
    store::{JobKind, Record, RestoreJob},
};

/// A foreign object that is not being deleted is looked at again for this long after the
/// job's CREATE was admitted, in case it goes away before the CREATE is stored; after that the
/// job ends as `not_ours`. An object being deleted is waited for until the job's deadline.
const SETTLE: Duration = Duration::from_secs(2);
/// A CREATE usually lands a few milliseconds after its admission: poll every 5 ms for the
/// first 100 ms, then back off to 500 ms.
const FAST_POLL: Duration = Duration::from_millis(5);
const FAST_POLL_FOR: Duration = Duration::from_millis(100);
const MAX_POLL: Duration = Duration::from_millis(500);
/// Rounds of read, decide and write one delivery makes at most, beside conflict retries: a
/// step that keeps asking for the same write is a bug, not a reason to spin.
const MAX_ROUNDS: u32 = 16;

/// How a job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finished {
    /// The saved status is in the object (patched now, or found there), and the object is
    /// marked restored.
    Restored,
    /// A duplicate delivery of a job that was already done.
    AlreadyRestored,
    /// An object of that name exists, but it does not carry this job's id: its CREATE was
    /// someone else's (or this job's CREATE failed, with AlreadyExists). Nothing was touched.
    NotOurs,
    /// The object never appeared before the deadline: the CREATE never landed.
    Expired,
    /// The object was deleted again before its status could be written.
    Gone,
    /// The record was forgotten meanwhile; the object is only unmarked.
    NoRecord,
    /// The record now belongs to a third incarnation: it is not the deleted object's status,
    /// so nothing is restored and the object is unmarked.
    RecordReplaced,
    /// A duplicate delivery of a job whose restore failed for good.
    AlreadyFailed,
    /// Someone took the pending marker off before the restore: nothing is written.
    Cancelled,
    /// A dead pending marker was taken off (or was already gone).
    Unmarked,
    /// A catch-up restore: the saved status is in an object created while restatus was not
    /// looking.
    CaughtUp,
    /// A catch-up whose record was written after the object was created: no earlier
    /// incarnation's status (a forged review's, one planted in Redis, or clocks far apart),
    /// so nothing is restored.
    RecordNotEarlier,
    /// The restore failed for good: reported on the object, moved to the dead letters.
    Failed,
    /// Delivered too often, or not decodable: moved to the dead letters.
    DeadLettered,
}

impl Finished {
    pub fn label(self) -> &'static str {
        match self {
            Finished::Restored => "restored",
            Finished::AlreadyRestored => "already_restored",
            Finished::NotOurs => "not_ours",
            Finished::Expired => "expired",
            Finished::Gone => "gone",
            Finished::NoRecord => "no_record",
            Finished::RecordReplaced => "record_replaced",
            Finished::AlreadyFailed => "already_failed",
            Finished::Cancelled => "cancelled",
            Finished::Unmarked => "unmarked",
            Finished::CaughtUp => "caught_up",
            Finished::RecordNotEarlier => "record_not_earlier",
            Finished::Failed => "failed",
            Finished::DeadLettered => "dead_lettered",
        }
    }

    /// Every outcome, for the metric's documentation.
    pub const ALL: [Finished; 14] = [
        Finished::Restored,
        Finished::AlreadyRestored,
        Finished::NotOurs,
        Finished::Expired,
        Finished::Gone,
        Finished::NoRecord,
        Finished::RecordReplaced,
        Finished::AlreadyFailed,
        Finished::Cancelled,
        Finished::Unmarked,
        Finished::CaughtUp,
        Finished::RecordNotEarlier,
        Finished::Failed,
        Finished::DeadLettered,
    ];

    /// Whether the record now belongs to the restored object (mark it so).
    pub fn restored(self) -> bool {
        matches!(
            self,
            Finished::Restored | Finished::AlreadyRestored | Finished::CaughtUp
        )
    }
}

/// What a step needs to know of the live object.
#[derive(Debug, Clone, Copy)]
pub struct Live<'a> {
    pub uid: &'a str,
    /// The restore job id it carries (`restatus.io/restore-job`).
    pub job: Option<&'a str>,
    /// The job id of its pending marker, `Some("")` for a marker that names none.
    pub pending: Option<&'a str>,
    /// Its restore failed for good (`restatus.io/restore: failed`).
    pub failed: bool,
    /// It carries the time of a restore (`restatus.io/restored-at`).
    pub restored: bool,
    /// It has a deletionTimestamp.
    pub deleting: bool,
    /// When it was created.
    pub created: Option<Timestamp>,
    pub status: Option<&'a Value>,
}

impl<'a> Live<'a> {
    pub fn of(obj: &'a DynamicObject) -> Self {
        let annotations = obj.metadata.annotations.as_ref();
        Self {
            uid: obj.metadata.uid.as_deref().unwrap_or(""),
            job: restore_job(annotations),
            pending: pending_job(annotations),
            failed: annotations
                .and_then(|a| a.get(ANNOTATION_RESTORE))
                .is_some_and(|v| v == RESTORE_FAILED),
            restored: annotations.is_some_and(|a| a.contains_key(ANNOTATION_RESTORED_AT)),
            deleting: obj.metadata.deletion_timestamp.is_some(),
            created: obj.metadata.creation_timestamp.as_ref().map(|t| t.0),
            status: status_of(obj),
        }
    }
}

/// [`step`] for a catch-up job: bound to the incarnation `uid`, which must still carry none of
/// restatus's annotations (but the failed marker of this catch-up, when the job is retried by
/// hand), and whose record must still be the one found, written before the object was created.
fn catch_up(
    job: &RestoreJob,
    uid: &str,
    record: Option<&Record>,
    live: Option<&Live<'_>>,
    policy: &RestorePolicy,
) -> Step {
    // An incarnation on its way out is as good as gone: a restore would only take its
    // record's retention clock away.
    let Some(live) = live.filter(|l| l.uid == uid && !l.deleting) else {
        return Step::Finish(Finished::Gone);
    };
    if live.restored && live.pending.is_none() && live.job.is_none() {
        // Only a catch-up sets restored-at without a job id: this one, delivered again.
        return Step::Finish(Finished::AlreadyRestored);
    }
    if live.failed && live.job.is_none() && live.pending.is_none() && !job.retry {
        return Step::Finish(Finished::AlreadyFailed);
    }
    if live.job.is_some() || live.pending.is_some() || (live.failed && !job.retry) {
        // restatus has marked this object otherwise since: not this job's to touch.
        return Step::Finish(Finished::NotOurs);
    }
    let Some(record) = record else {
        return Step::Finish(Finished::NoRecord);
    };
    if record.uid != job.record_uid {
        // Adopted by this incarnation's own status write, or by another: nothing to restore.
        return Step::Finish(Finished::RecordReplaced);
    }
    if !live.created.is_some_and(|created| record.predates(created)) {
        // The job may come from a forged review: only the live object says when it was made.
        return Step::Finish(Finished::RecordNotEarlier);
    }
    match crate::policy::decide_fill(&record.status, live.status, policy) {
        Some(status) => Step::Patch(status),
        None => Step::Annotate,
    }
}

/// What to do next for a job, from the job, its record and the live object as read now.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Nothing of this job's yet: look again (until the deadline).
    Wait,
    /// Done, with nothing (more) to write.
    Finish(Finished),
    /// Take the pending marker off (the job id stays, saying which job the object had) and
    /// finish.
    Unmark(Finished),
    /// Report a restore the CREATE carried (a type that keeps status on create).
    ConfirmInline,
    /// Write this status through the status subresource, on the live resourceVersion.
    Patch(Value),
    /// The live status has every saved fact: swap the pending marker for the restore time.
    Annotate,
    /// Take a dead marker off (an `Unmark` job).
    StripMarker,
}

/// The pure decision of the worker: what `job` should do now, given its `record` and the
/// `live` object (`None`: no object of that name) at `now`.
///
/// A restore goes only into an object that carries the job's id, which only the answer to
/// the job's own CREATE put there: a new uid, a recent creation time or a pending marker
/// alone prove nothing, since another CREATE of the same name may have made the object. And
/// what is written is decided from the live status, never from what an earlier delivery may
/// have done: admission is not proof that a write landed.
pub fn step(
    job: &RestoreJob,
    record: Option<&Record>,
    live: Option<&Live<'_>>,
    now: Timestamp,
    policy: &RestorePolicy,
) -> Step {
    match &job.action {
        JobKind::Unmark { uid, marker } => {
            return match live {
                Some(live) if live.uid == uid => match live.pending {
                    Some(pending) if pending == marker => Step::StripMarker,
                    _ => Step::Finish(Finished::Unmarked),
                },
                _ => Step::Finish(Finished::Gone),
            };
        }
        JobKind::CatchUp { uid } => return catch_up(job, uid, record, live, policy),
        JobKind::Restore => {}
    }
    if job.id.is_empty() {
        // Bound to no CREATE: nothing can prove an object is its own.
        return Step::Finish(Finished::NotOurs);
    }
    let before_deadline = now < job.deadline;
    let Some(live) = live else {
        return if before_deadline {
            Step::Wait
        } else {
            Step::Finish(Finished::Expired)
        };
    };
    if live.job != Some(job.id.as_str()) {
        let settling = now
            .duration_since(job.created_at)
            .try_into()
            .is_ok_and(|since: Duration| since < SETTLE);
        return if before_deadline && (live.deleting || settling) {
            Step::Wait
        } else {
            Step::Finish(Finished::NotOurs)
        };
    }
    if live.failed && !job.retry {
        return Step::Finish(Finished::AlreadyFailed);
    }
    if job.inline {
        return match record {
            Some(_) => Step::ConfirmInline,
            None => Step::Finish(Finished::NoRecord),
        };
    }
    // A dead letter queued again by hand restores into the object it failed on.
    if live.pending.is_none() && !(live.failed && job.retry) {
        return Step::Finish(if live.restored {
            Finished::AlreadyRestored
        } else {
            Finished::Cancelled
        });
    }
    let Some(record) = record else {
        return Step::Unmark(Finished::NoRecord);
    };
    // The record is the deleted incarnation's, or this one's once restatus's own status write
    // for this job was recorded (possibly by a delivery that died after it): that record
    // names the job. A record of this incarnation that does not holds its own status, which
    // replaced the saved one.
    let adopted = record.uid == live.uid && record.restored_by.as_deref() == Some(job.id.as_str());
    if record.uid != job.record_uid && !adopted {
        return Step::Unmark(Finished::RecordReplaced);
    }
    match decide(&record.status, live.status, policy) {
        Some(status) => Step::Patch(status),
        None => Step::Annotate,
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

/// The API resource of a job's object: the group and resource of the identity whose record the
/// job restores (never a group the job's apiVersion claims besides), at the job's version.
fn api_resource(job: &RestoreJob) -> ApiResource {
    let version = match job.api_version.rsplit_once('/') {
        Some((_, v)) => v,
        None => job.api_version.as_str(),
    };
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(&job.identity.group, version, &job.kind),
        &job.identity.resource,
    )
}

/// How a status patch ended.
enum Written {
    Done(Box<DynamicObject>),
    /// The object changed since it was read (409): read it again and decide again.
    Conflict,
    Gone,
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

    /// Performs one job with the record it refers to (`None` when the record was forgotten
    /// meanwhile): reads the object, asks [`step`] what to do, does it, and again, until the
    /// job is finished. Returns how, with the object as last seen.
    pub async fn restore(
        &self,
        job: &RestoreJob,
        record: Option<&Record>,
    ) -> Result<(Finished, Option<DynamicObject>), ApplyError> {
        let ar = api_resource(job);
        let api = self.api(job, &ar);
        let identity = job.identity.to_string();
        let policy = self.policy_of(job);
        let started = tokio::time::Instant::now();
        let mut delay = FAST_POLL;
        let mut conflicts = 0;
        let mut rounds = 0;
        // The object as last read or written; `None` once it is known to be absent.
        let mut live = self.read(&api, job, &identity).await?;
        loop {
            let now = Timestamp::now();
            let step = step(
                job,
                record,
                live.as_ref().map(Live::of).as_ref(),
                now,
                policy,
            );
            tracing::trace!(since_create_ms = since(job), ?step, "restore step");
            match step {
                Step::Wait => {
                    tokio::time::sleep(delay).await;
                    if started.elapsed() >= FAST_POLL_FOR {
                        delay = (delay * 2).min(MAX_POLL);
                    }
                    live = self.read(&api, job, &identity).await?;
                    continue;
                }
                Step::Finish(finished) => return Ok((finished, live)),
                Step::Unmark(finished) => {
                    let Some(obj) = live else {
                        return Ok((Finished::Gone, None));
                    };
                    let unmark = json!({ANNOTATION_RESTORE: null});
                    if !self
                        .patch_annotations(&api, &obj, unmark, "unmarking", &identity)
                        .await?
                    {
                        return Ok((Finished::Gone, None));
                    }
                    return Ok((finished, Some(obj)));
                }
                Step::ConfirmInline => {
                    let Some(obj) = live else {
                        return Ok((Finished::Gone, None));
                    };
                    if let Some(record) = record {
                        self.event_restored(&obj, &ar, record, "in the create ")
                            .await;
                    }
                    return Ok((Finished::Restored, Some(obj)));
                }
                Step::Annotate => {
                    let Some(obj) = live else {
                        return Ok((Finished::Gone, None));
                    };
                    let restored_at = Timestamp::now()
                        .round(Unit::Second)
                        .unwrap_or_else(|_| Timestamp::now());
                    let swap = json!({
                        ANNOTATION_RESTORE: null,
                        ANNOTATION_RESTORED_AT: restored_at.to_string(),
                    });
                    if !self
                        .patch_annotations(&api, &obj, swap, "annotating", &identity)
                        .await?
                    {
                        return Ok((Finished::Gone, None));
                    }
                    let caught_up = matches!(job.action, JobKind::CatchUp { .. });
                    if let Some(record) = record {
                        let how = if caught_up {
                            "(a catch-up: the object was created while restatus was not looking) "
                        } else {
                            ""
                        };
                        self.event_restored(&obj, &ar, record, how).await;
                    }
                    let finished = if caught_up {
                        Finished::CaughtUp
                    } else {
                        Finished::Restored
                    };
                    return Ok((finished, Some(obj)));
                }
                Step::Patch(status) => {
                    let Some(obj) = live.take() else {
                        return Ok((Finished::Gone, None));
                    };
                    live = match self.patch_status(&api, &obj, status, &identity).await? {
                        Written::Done(patched) => Some(*patched),
                        Written::Conflict => {
                            conflicts += 1;
                            if conflicts > self.conflict_retries {
                                return Err(ApplyError::Conflicts {
                                    identity,
                                    attempts: conflicts,
                                });
                            }
                            self.read(&api, job, &identity).await?
                        }
                        Written::Gone => return Ok((Finished::Gone, None)),
                    };
                    tracing::debug!(since_create_ms = since(job), "status patched");
                }
                Step::StripMarker => {
                    let Some(obj) = live.take() else {
                        return Ok((Finished::Gone, None));
                    };
                    if self.strip_marker(&api, &obj, job, &identity).await? {
                        return Ok((Finished::Unmarked, Some(obj)));
                    }
                    // The object changed under the patch's tests: decide again on what it is.
                    live = self.read(&api, job, &identity).await?;
                }
            }
            rounds += 1;
            if rounds > MAX_ROUNDS + self.conflict_retries {
                return Err(ApplyError::Conflicts {
                    identity,
                    attempts: rounds,
                });
            }
        }
    }

    /// Reads the object of `job`: `None` when there is none. A failed read is retried until
    /// the job's deadline for a restore that has not found its object yet.
    async fn read(
        &self,
        api: &Api<DynamicObject>,
        job: &RestoreJob,
        identity: &str,
    ) -> Result<Option<DynamicObject>, ApplyError> {
        let mut delay = FAST_POLL;
        loop {
            match api.get_opt(&job.identity.name).await {
                Ok(found) => return Ok(found),
                Err(e) if Timestamp::now() >= job.deadline => {
                    return Err(ApplyError::from_kube("reading", identity, e));
                }
                Err(e) => {
                    tracing::debug!(error = %error_chain(&e), "reading the object failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(MAX_POLL);
                }
            }
        }
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

    /// Writes `status` into `live` through the status subresource with the live
    /// resourceVersion as precondition, falling back to the main resource for a type without
    /// a status subresource.
    async fn patch_status(
        &self,
        api: &Api<DynamicObject>,
        live: &DynamicObject,
        status: Value,
        identity: &str,
    ) -> Result<Written, ApplyError> {
        let params = self.params();
        let name = live.name_any();
        let patch = JsonPatch(vec![
            patch::expect_resource_version(&live.resource_version().unwrap_or_default()),
            patch::set_status(status),
        ]);
        let patch = Patch::<()>::Json(patch);
        let result = match api.patch_status(&name, &params, &patch).await {
            // Either the object is gone or its type has no status subresource.
            Err(e) if api_status_code(&e) == Some(404) => api.patch(&name, &params, &patch).await,
            other => other,
        };
        match result {
            Ok(obj) => Ok(Written::Done(Box::new(obj))),
            Err(e) => match api_status_code(&e) {
                Some(409) => Ok(Written::Conflict),
                Some(404) => Ok(Written::Gone),
                _ => Err(ApplyError::from_kube("patching the status of", identity, e)),
            },
        }
    }

    /// Takes a dead pending marker off `live`: a JSON patch that tests the uid and the marker
    /// first, so nothing else is touched. Returns false when those tests failed (the object
    /// changed meanwhile).
    async fn strip_marker(
        &self,
        api: &Api<DynamicObject>,
        live: &DynamicObject,
        job: &RestoreJob,
        identity: &str,
    ) -> Result<bool, ApplyError> {
        let JobKind::Unmark { uid, marker } = &job.action else {
            return Ok(true);
        };
        let mut ops = vec![
            patch::expect_uid(uid),
            patch::expect_annotation(ANNOTATION_RESTORE, RESTORE_PENDING),
        ];
        let annotations = live.metadata.annotations.as_ref();
        if !marker.is_empty() {
            ops.push(patch::expect_annotation(ANNOTATION_RESTORE_JOB, marker));
        }
        ops.extend(patch::remove_annotation(annotations, ANNOTATION_RESTORE));
        ops.extend(patch::remove_annotation(
            annotations,
            ANNOTATION_RESTORE_JOB,
        ));
        match api
            .patch(
                &live.name_any(),
                &self.params(),
                &Patch::<()>::Json(JsonPatch(ops)),
            )
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if api_status_code(&e) == Some(404) => Ok(true),
            Err(e) if matches!(api_status_code(&e), Some(409 | 422)) => Ok(false),
            Err(e) => Err(ApplyError::from_kube("unmarking", identity, e)),
        }
    }

    /// After a failure that will not heal: mark the object `restatus.io/restore: failed` (so
    /// status writes are no longer merged) and emit `StatusRestoreFailed`. Only the object
    /// that carries the job's id is marked: the patch tests its uid and that id, so an object
    /// someone else created under the same name is left alone.
    pub async fn report_failure(&self, job: &RestoreJob, reason: &str) {
        // A restore job marks the object that carries its id; a catch-up, the incarnation it
        // is bound to (whose writes then stop asking for a catch-up and are recorded).
        let catch_up = match &job.action {
            JobKind::Restore if !job.id.is_empty() => None,
            JobKind::CatchUp { uid } => Some(uid.as_str()),
            _ => return,
        };
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
        let annotations = live.metadata.annotations.as_ref();
        let ours = match catch_up {
            None => restore_job(annotations) == Some(job.id.as_str()),
            Some(bound) => uid == bound && restore_job(annotations).is_none(),
        };
        if uid.is_empty() || !ours {
            return;
        }
        let mut ops = vec![patch::expect_uid(&uid)];
        if catch_up.is_none() {
            ops.push(patch::expect_annotation(ANNOTATION_RESTORE_JOB, &job.id));
        }
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
            id: "j-1".into(),
            action: JobKind::Restore,
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
            retry: false,
            inline: false,
            request_uid: String::new(),
            policy: None,
        }
    }

    use crate::policy::RestoreMode;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + seconds).unwrap()
    }

    /// What a case is called, its job, record, live object, time, and the step it must take.
    type StepCase<'a> = (
        &'a str,
        &'a RestoreJob,
        Option<&'a Record>,
        Option<Live<'a>>,
        Timestamp,
        Step,
    );

    /// A restore job admitted at 0 s with its deadline at 60 s, from the record of `old-uid`.
    fn bound() -> RestoreJob {
        RestoreJob {
            record_uid: "old-uid".into(),
            created_at: at(0),
            deadline: at(60),
            ..job("v1", "Service", "services")
        }
    }

    fn record(uid: &str, status: Value) -> Record {
        Record {
            status,
            digest: String::new(),
            api_version: "v1".into(),
            kind: "Service".into(),
            uid: uid.into(),
            resource_version: "1".into(),
            generation: None,
            recorded_at: None,
            deleted_at: None,
            restored_at: None,
            restored_by: None,
        }
    }

    fn fill() -> RestorePolicy {
        RestorePolicy {
            mode: RestoreMode::Fill,
            fields: vec![],
            narrowed_to: vec![],
            exclude_fields: vec![],
        }
    }

    /// The new incarnation, marked pending by job `j-1`.
    fn ours(status: Option<&Value>) -> Live<'_> {
        Live {
            uid: "new-uid",
            job: Some("j-1"),
            pending: Some("j-1"),
            failed: false,
            restored: false,
            deleting: false,
            created: Some(at(1)),
            status,
        }
    }

    #[test]
    fn a_catch_up_goes_only_into_its_unmarked_incarnation_from_a_record_older_than_it() {
        let saved = json!({"phase": "Ready", "id": "c-1"});
        let job = RestoreJob {
            id: String::new(),
            action: JobKind::CatchUp {
                uid: "new-uid".into(),
            },
            ..bound()
        };
        let retried = RestoreJob {
            retry: true,
            ..job.clone()
        };
        let earlier = Record {
            recorded_at: Some(at(10)),
            ..record("old-uid", saved.clone())
        };
        let same_second = Record {
            recorded_at: Some(at(20)),
            ..earlier.clone()
        };
        // Written after the object was created: planted, or from a forged review.
        let planted = Record {
            recorded_at: Some(at(21)),
            ..earlier.clone()
        };
        let undated = Record {
            recorded_at: None,
            ..earlier.clone()
        };
        let adopted = Record {
            recorded_at: Some(at(30)),
            ..record("new-uid", json!({"phase": "Own"}))
        };
        let unseen = Live {
            uid: "new-uid",
            job: None,
            pending: None,
            failed: false,
            restored: false,
            deleting: false,
            created: Some(at(20)),
            status: None,
        };
        let filled = Live {
            status: Some(&saved),
            ..unseen
        };
        let caught_up = Live {
            restored: true,
            ..filled
        };
        let failed = Live {
            failed: true,
            ..unseen
        };
        let restored_by_a_job = Live {
            job: Some("j-1"),
            restored: true,
            ..unseen
        };
        let pending = Live {
            job: Some("j-1"),
            pending: Some("j-1"),
            ..unseen
        };
        let other = Live {
            uid: "third-uid",
            ..unseen
        };
        let undated_object = Live {
            created: None,
            ..unseen
        };
        let deleting = Live {
            deleting: true,
            ..unseen
        };
        let patch = Step::Patch(saved.clone());
        type Case<'a> = (
            &'a str,
            &'a RestoreJob,
            Option<&'a Record>,
            Option<Live<'a>>,
            Step,
        );
        let cases: [Case<'_>; 15] = [
            (
                "being deleted",
                &job,
                Some(&earlier),
                Some(deleting),
                Step::Finish(Finished::Gone),
            ),
            (
                "created unseen",
                &job,
                Some(&earlier),
                Some(unseen),
                patch.clone(),
            ),
            (
                "recorded within the second it was created",
                &job,
                Some(&same_second),
                Some(unseen),
                patch.clone(),
            ),
            (
                "the saved facts are in it",
                &job,
                Some(&earlier),
                Some(filled),
                Step::Annotate,
            ),
            (
                "a record written after it was created",
                &job,
                Some(&planted),
                Some(unseen),
                Step::Finish(Finished::RecordNotEarlier),
            ),
            (
                "a record that does not say when it was written",
                &job,
                Some(&undated),
                Some(unseen),
                Step::Finish(Finished::RecordNotEarlier),
            ),
            (
                "an object that does not say when it was created",
                &job,
                Some(&earlier),
                Some(undated_object),
                Step::Finish(Finished::RecordNotEarlier),
            ),
            (
                "delivered again",
                &job,
                Some(&earlier),
                Some(caught_up),
                Step::Finish(Finished::AlreadyRestored),
            ),
            (
                "failed for good",
                &job,
                Some(&earlier),
                Some(failed),
                Step::Finish(Finished::AlreadyFailed),
            ),
            (
                "failed, retried by hand",
                &retried,
                Some(&earlier),
                Some(failed),
                patch.clone(),
            ),
            (
                "restored by a restore job since",
                &job,
                Some(&earlier),
                Some(restored_by_a_job),
                Step::Finish(Finished::NotOurs),
            ),
            (
                "a restore under way",
                &retried,
                Some(&earlier),
                Some(pending),
                Step::Finish(Finished::NotOurs),
            ),
            (
                "the record adopted by its own status",
                &job,
                Some(&adopted),
                Some(unseen),
                Step::Finish(Finished::RecordReplaced),
            ),
            (
                "no record",
                &job,
                None,
                Some(unseen),
                Step::Finish(Finished::NoRecord),
            ),
            (
                "another incarnation",
                &job,
                Some(&earlier),
                Some(other),
                Step::Finish(Finished::Gone),
            ),
        ];
        for (what, job, record, live, want) in cases {
            assert_eq!(
                step(job, record, live.as_ref(), at(40), &fill()),
                want,
                "{what}"
            );
        }
    }

    #[test]
    fn a_job_restores_only_into_the_object_that_carries_its_id() {
        let saved = json!({"phase": "Ready", "id": "c-1"});
        let rec = record("old-uid", saved.clone());
        let empty = json!({});
        let foreign = Live {
            uid: "tenant-uid",
            job: None,
            pending: None,
            failed: false,
            restored: false,
            deleting: false,
            created: Some(at(1)),
            status: None,
        };
        let forged_marker = Live {
            pending: Some(""),
            ..foreign
        };
        let other_job = Live {
            job: Some("j-2"),
            pending: Some("j-2"),
            ..foreign
        };
        let deleting = Live {
            deleting: true,
            ..foreign
        };
        let restored = Live {
            pending: None,
            restored: true,
            ..ours(Some(&saved))
        };
        let cancelled = Live {
            pending: None,
            ..ours(None)
        };
        let failed = Live {
            failed: true,
            pending: None,
            ..ours(None)
        };
        let p = fill();
        let job = bound();
        let unbound = RestoreJob {
            id: String::new(),
            ..bound()
        };
        let inline = RestoreJob {
            inline: true,
            ..bound()
        };
        let retry = RestoreJob {
            retry: true,
            ..bound()
        };
        let cases: Vec<StepCase<'_>> = vec![
            ("not there yet", &job, Some(&rec), None, at(1), Step::Wait),
            (
                "never appeared",
                &job,
                Some(&rec),
                None,
                at(60),
                Step::Finish(Finished::Expired),
            ),
            (
                "someone else's object, just after the CREATE",
                &job,
                Some(&rec),
                Some(foreign),
                at(1),
                Step::Wait,
            ),
            (
                "someone else's object",
                &job,
                Some(&rec),
                Some(foreign),
                at(3),
                Step::Finish(Finished::NotOurs),
            ),
            (
                "a marker without the job's id",
                &job,
                Some(&rec),
                Some(forged_marker),
                at(3),
                Step::Finish(Finished::NotOurs),
            ),
            (
                "another job's object",
                &job,
                Some(&rec),
                Some(other_job),
                at(3),
                Step::Finish(Finished::NotOurs),
            ),
            (
                "an object being deleted may still make way",
                &job,
                Some(&rec),
                Some(deleting),
                at(30),
                Step::Wait,
            ),
            (
                "until the deadline",
                &job,
                Some(&rec),
                Some(deleting),
                at(61),
                Step::Finish(Finished::NotOurs),
            ),
            (
                "a job bound to no CREATE",
                &unbound,
                Some(&rec),
                Some(ours(None)),
                at(1),
                Step::Finish(Finished::NotOurs),
            ),
            (
                "ours, empty",
                &job,
                Some(&rec),
                Some(ours(None)),
                at(1),
                Step::Patch(saved.clone()),
            ),
            (
                "ours, an empty status object",
                &job,
                Some(&rec),
                Some(ours(Some(&empty))),
                at(1),
                Step::Patch(saved.clone()),
            ),
            (
                "ours, already holding every saved fact",
                &job,
                Some(&rec),
                Some(ours(Some(&saved))),
                at(1),
                Step::Annotate,
            ),
            (
                "ours, after the deadline",
                &job,
                Some(&rec),
                Some(ours(None)),
                at(90),
                Step::Patch(saved.clone()),
            ),
            (
                "already restored",
                &job,
                Some(&rec),
                Some(restored),
                at(1),
                Step::Finish(Finished::AlreadyRestored),
            ),
            (
                "already failed",
                &job,
                Some(&rec),
                Some(failed),
                at(1),
                Step::Finish(Finished::AlreadyFailed),
            ),
            (
                "the marker was taken off",
                &job,
                Some(&rec),
                Some(cancelled),
                at(1),
                Step::Finish(Finished::Cancelled),
            ),
            (
                "a failed restore queued again by hand",
                &retry,
                Some(&rec),
                Some(failed),
                at(90),
                Step::Patch(saved.clone()),
            ),
            (
                "the record was forgotten",
                &job,
                None,
                Some(ours(None)),
                at(1),
                Step::Unmark(Finished::NoRecord),
            ),
            (
                "inline",
                &inline,
                Some(&rec),
                Some(restored),
                at(1),
                Step::ConfirmInline,
            ),
            (
                "inline, record forgotten",
                &inline,
                None,
                Some(restored),
                at(1),
                Step::Finish(Finished::NoRecord),
            ),
            (
                "inline, someone else's object",
                &inline,
                Some(&rec),
                Some(foreign),
                at(3),
                Step::Finish(Finished::NotOurs),
            ),
        ];
        for (what, job, record, live, now, want) in cases {
            assert_eq!(step(job, record, live.as_ref(), now, &p), want, "{what}");
        }
    }

    #[test]
    fn a_redelivered_job_decides_from_the_live_status_not_from_the_record() {
        let saved = json!({"phase": "Ready", "id": "c-1"});
        let job = bound();
        let p = fill();
        // An earlier delivery's own status write was recorded (the record adopted the new
        // uid), but the API server never stored it: the live status is still empty, so the
        // saved status is written again.
        let adopted = Record {
            restored_by: Some("j-1".into()),
            ..record("new-uid", saved.clone())
        };
        assert_eq!(
            step(&job, Some(&adopted), Some(&ours(None)), at(1), &p),
            Step::Patch(saved.clone())
        );
        // It did land: only the annotations are left to do.
        assert_eq!(
            step(&job, Some(&adopted), Some(&ours(Some(&saved))), at(1), &p),
            Step::Annotate
        );
        // The controller wrote part of it meanwhile: what is missing is filled in.
        let partial = json!({"phase": "Provisioning"});
        assert_eq!(
            step(&job, Some(&adopted), Some(&ours(Some(&partial))), at(1), &p),
            Step::Patch(json!({"phase": "Provisioning", "id": "c-1"}))
        );
        // This incarnation's own status replaced the saved one (its marker was not believed
        // for a while): nothing saved is left to restore, and nothing is claimed restored.
        let replaced = record("new-uid", json!({"phase": "Provisioning"}));
        assert_eq!(
            step(
                &job,
                Some(&replaced),
                Some(&ours(Some(&json!({"phase": "Provisioning"})))),
                at(1),
                &p
            ),
            Step::Unmark(Finished::RecordReplaced)
        );
        // A record of a third incarnation is not this object's to get.
        let third = record("third-uid", saved);
        assert_eq!(
            step(&job, Some(&third), Some(&ours(None)), at(1), &p),
            Step::Unmark(Finished::RecordReplaced)
        );
    }

    #[test]
    fn an_unmark_job_strips_only_its_dead_marker_from_its_incarnation() {
        let unmark = RestoreJob {
            id: String::new(),
            action: JobKind::Unmark {
                uid: "new-uid".into(),
                marker: "dead".into(),
            },
            ..bound()
        };
        let p = fill();
        let marked = Live {
            job: Some("dead"),
            pending: Some("dead"),
            ..ours(None)
        };
        let other_marker = ours(None);
        let other_incarnation = Live {
            uid: "later-uid",
            ..marked
        };
        let cases = [
            (Some(marked), Step::StripMarker),
            (Some(other_marker), Step::Finish(Finished::Unmarked)),
            (Some(other_incarnation), Step::Finish(Finished::Gone)),
            (None, Step::Finish(Finished::Gone)),
        ];
        for (live, want) in cases {
            assert_eq!(
                step(&unmark, None, live.as_ref(), at(1), &p),
                want,
                "{live:?}"
            );
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
        let mut grouped = job(
            "infra.example.com/v1alpha1",
            "KubernetesCluster",
            "kubernetesclusters",
        );
        grouped.identity.group = "infra.example.com".into();
        let ar = api_resource(&grouped);
        assert_eq!(ar.group, "infra.example.com");
        assert_eq!(ar.version, "v1alpha1");
        assert_eq!(ar.api_version, "infra.example.com/v1alpha1");
        assert_eq!(ar.plural, "kubernetesclusters");
        // A job whose apiVersion names another group than its record (a forged review's)
        // still targets the object whose record it restores.
        grouped.api_version = "other.example.com/v1".into();
        let ar = api_resource(&grouped);
        assert_eq!(ar.group, "infra.example.com");
        assert_eq!(ar.api_version, "infra.example.com/v1");
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
