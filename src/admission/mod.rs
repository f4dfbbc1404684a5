//! The mutating webhook: decode the review, plan, record or enqueue, answer.
//!
//! restatus never gets in the cluster's way: whatever goes wrong on its side (Redis down or
//! slow, a corrupt record) the answer is `allowed: true` without a patch, counted and logged
//! with the request uid. Only a body that is not an AdmissionReview gets an HTTP error.

mod metrics;
mod plan;
pub mod review;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{DefaultBodyLimit, State, rejection::BytesRejection},
    http::StatusCode,
    response::{IntoResponse, Response as HttpResponse},
    routing::post,
};
use jiff::{SignedDuration, Timestamp, Unit};
use json_patch::{Patch, PatchOperation};
use kube::core::admission::Operation;
use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore},
    time::Instant,
};

use k8s_openapi::api::core::v1::ObjectReference;

use crate::{
    error::error_chain,
    patch,
    policy::{
        ANNOTATION_RESTORE, ANNOTATION_RESTORE_JOB, ANNOTATION_RESTORED_AT, Access, AccessChecker,
        Caches, GlobalPolicy, InvalidReporter, Level, Policy, PolicyMetrics, RESTORE_PENDING,
        Resolved, RestoreFor, RestoreMode, Skipped, TypeInfo, decide, decide_fill,
    },
    store::{JobKind, RecordWrite, RestoreJob, Store, StoreError, WriteOutcome, new_job_id},
    text::{LOG_FIELD_CHARS, clip},
};

pub use metrics::AdmissionMetrics;
pub use plan::{Context, PendingKind, PendingWrite, plan};
pub use plan::{CreateCheck, Plan, Skip};
pub use review::{Request, Response, StatusError, StatusLimits};

/// Settings of the admission path.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Budget of each Redis call made while answering.
    pub redis_timeout: Duration,
    /// How long a restore job waits for its CREATE to land.
    pub restore_deadline: Duration,
    /// How long a queued restore job stays the live job of its object at most (the worker
    /// ends it sooner when it finishes): the time its pending marker is believed.
    pub job_ttl: Duration,
    /// The global policy, refined per object by annotations.
    pub global: GlobalPolicy,
    /// The user restatus's own requests come as, when known: its status writes are never
    /// merged into a pending object.
    pub own_user: Option<String>,
    /// How large a status is parsed; larger ones are not recorded.
    pub limits: StatusLimits,
    /// Status values parsed at once across all reviews: what bounds the memory of reviews in
    /// flight. A review that finds no room soon is allowed unrecorded.
    pub max_inflight_values: usize,
}

/// What the admission path reads besides the review, all from memory but the access check.
pub struct Sources {
    pub caches: Caches,
    /// Whether both caches have synced: until then a review would miss the namespace's and
    /// the CRD's annotations, so it is allowed unrecorded.
    pub synced: Arc<AtomicBool>,
    /// Told when a review failed open for want of Redis: resync catches up on what an outage
    /// made it miss as soon as Redis answers again.
    pub failed_open: Arc<crate::store::FailedOpen>,
    /// Asks whether a creator may write status; `None` without a Kubernetes API, in which
    /// case only `restore-for: creators` restores.
    pub access: Option<AccessChecker>,
    pub reporter: InvalidReporter,
    pub metrics: PolicyMetrics,
}

/// How a review ended, for metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Skipped(Skip),
    /// The status is beyond `--max-status-values` or the nesting limit: not recorded.
    Unparsed,
    Recorded,
    Unchanged,
    Stale,
    NoRecord,
    RestoreEnqueued,
    RestoredInline,
    Merged,
    /// A record exists, but the creator may not write the object's status.
    NotPermitted,
    /// A record exists, but whether the creator may have it could not be checked in time.
    AccessUnknown,
    /// No room to parse the status within --max-inflight-status-values soon enough.
    Busy,
    /// The policy caches have not synced yet: allowed unrecorded.
    NotReady,
    /// A write of an incarnation created unseen, whose record is an earlier one's: not
    /// recorded, a catch-up restore queued (or already queued).
    CatchUpQueued,
    RetentionStarted,
    /// Redis has not been answering (the circuit breaker is open): allowed unrecorded at
    /// once, without calling it.
    RedisAway,
    Error,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Skipped(skip) => skip.label(),
            Outcome::Unparsed => "status_too_large",
            Outcome::Recorded => "recorded",
            Outcome::Unchanged => "unchanged",
            Outcome::Stale => "stale",
            Outcome::NoRecord => "no_record",
            Outcome::RestoreEnqueued => "restore_enqueued",
            Outcome::RestoredInline => "restored_inline",
            Outcome::Merged => "merged",
            Outcome::NotPermitted => "not_permitted",
            Outcome::AccessUnknown => "access_check_failed",
            Outcome::Busy => "busy",
            Outcome::NotReady => "not_ready",
            Outcome::CatchUpQueued => "catch_up_queued",
            Outcome::RetentionStarted => "retention_started",
            Outcome::RedisAway => "redis_away",
            Outcome::Error => "error",
        }
    }

    /// Whether the answer already set restatus's own annotations (so a client's values in the
    /// request are not undone).
    fn set_marker(self) -> bool {
        matches!(self, Outcome::RestoreEnqueued | Outcome::RestoredInline)
    }
}

fn operation_label(op: &Operation) -> &'static str {
    match op {
        Operation::Create => "CREATE",
        Operation::Update => "UPDATE",
        Operation::Delete => "DELETE",
        Operation::Connect => "CONNECT",
    }
}

/// What restatus answers a review with.
struct Answer {
    outcome: Outcome,
    ops: Vec<PatchOperation>,
    /// A warning for the client (kubectl prints it, controllers log it).
    warning: Option<String>,
}

impl Answer {
    fn just(outcome: Outcome) -> Self {
        Self {
            outcome,
            ops: Vec::new(),
            warning: None,
        }
    }

    fn with_ops(outcome: Outcome, ops: Vec<PatchOperation>) -> Self {
        Self {
            outcome,
            ops,
            warning: None,
        }
    }
}

/// A review being answered, with the policy resolved for its object.
#[derive(Clone, Copy)]
struct Reviewed<'r, 'a> {
    req: &'r Request<'a>,
    policy: &'r Policy,
}

/// How long a dead marker's removal, once queued, holds off queueing it again.
const UNMARK_HOLD: Duration = Duration::from_secs(60);

/// How long a review waits for room to parse its status before it goes on unrecorded.
const PARSE_ROOM_WAIT: Duration = Duration::from_millis(200);

/// The webhook's shared state.
pub struct Admission {
    store: Store,
    sources: Sources,
    metrics: AdmissionMetrics,
    settings: Settings,
    /// Room for status values being parsed, one permit per value.
    parse_room: Arc<Semaphore>,
}

impl Admission {
    pub fn new(
        store: Store,
        sources: Sources,
        metrics: AdmissionMetrics,
        settings: Settings,
    ) -> Self {
        let room = settings
            .max_inflight_values
            .clamp(settings.limits.max_values, Semaphore::MAX_PERMITS);
        Self {
            store,
            sources,
            metrics,
            settings,
            parse_room: Arc::new(Semaphore::new(room)),
        }
    }

    /// Room to parse the status the plan of `req` reads, held until the review is answered;
    /// `None` when there is none soon. A status beyond the limits takes none: it is not
    /// parsed.
    async fn parse_room(
        &self,
        req: &Request<'_>,
        type_info: TypeInfo,
        policy: &Policy,
    ) -> Option<Option<OwnedSemaphorePermit>> {
        // A disabled object, or an update the API server will refuse, is never parsed.
        if !policy.enabled || plan::conflicting(req) {
            return Some(None);
        }
        let values = plan::parsed_status(req, type_info)
            .and_then(|raw| review::values(raw, self.settings.limits))
            .unwrap_or(0);
        if values == 0 {
            return Some(None);
        }
        let values = u32::try_from(values).unwrap_or(u32::MAX);
        let room = self.parse_room.clone().acquire_many_owned(values);
        match tokio::time::timeout(PARSE_ROOM_WAIT, room).await {
            Ok(Ok(permit)) => Some(Some(permit)),
            _ => None,
        }
    }

    /// The object's policy: the global one for its type, refined by its CRD's, its
    /// namespace's and its own annotations.
    fn resolve(&self, req: &Request<'_>) -> Resolved {
        self.sources.caches.resolve(
            &self.settings.global,
            &req.resource.group,
            &req.resource.resource,
            plan::namespace(req),
            plan::subject(req).and_then(|o| o.metadata.annotations.as_ref()),
        )
    }

    /// Answers one review. Never fails: restatus's own trouble is logged and allowed.
    #[tracing::instrument(
        skip_all,
        fields(
            uid = %clip(&req.uid, LOG_FIELD_CHARS),
            operation = operation_label(&req.operation),
            resource = %clip(&req.resource.resource, LOG_FIELD_CHARS),
            namespace = %clip(req.namespace.as_deref().unwrap_or(""), LOG_FIELD_CHARS),
            object = %clip(&req.name, LOG_FIELD_CHARS),
        )
    )]
    pub async fn review(&self, req: &Request<'_>) -> Response {
        let start = Instant::now();
        let synced = self.sources.synced.load(Ordering::SeqCst);
        let resolved = self.resolve(req);
        let mut answer = if synced {
            self.answer(req, &resolved).await
        } else {
            // Without the namespace's and the CRD's annotations nothing is recorded or
            // restored; a DELETE still starts its record's clock, so it does not stay forever.
            tracing::debug!("the policy caches have not synced; allowed unrecorded");
            self.expire_on_delete(req, &resolved.policy).await;
            Answer::just(Outcome::NotReady)
        };
        if !answer.outcome.set_marker() {
            let undo = plan::undo_foreign_marker(req, self.settings.own_user.as_deref());
            if !undo.is_empty() {
                tracing::info!(user = %clip(req.user_info.username.as_deref().unwrap_or(""), LOG_FIELD_CHARS), "a {ANNOTATION_RESTORE} annotation only restatus may set was undone");
                answer.ops.extend(undo);
            }
        }
        if synced {
            self.report_skipped(req, &resolved.skipped);
        }
        self.metrics.answered(
            operation_label(&req.operation),
            answer.outcome.label(),
            start.elapsed(),
        );
        tracing::debug!(outcome = answer.outcome.label(), "review answered");

        let mut response = Response::allow(&req.uid);
        if synced {
            response.warnings = resolved.skipped.iter().map(Skipped::warning).collect();
        }
        response.warnings.extend(answer.warning);
        if answer.ops.is_empty() {
            return response;
        }
        let ops = Patch(answer.ops);
        match response.clone().with_patch(&ops) {
            Ok(patched) => patched,
            Err(error) => {
                tracing::warn!(error = %error_chain(&error), "patch could not be encoded; allowed without change");
                response
            }
        }
    }

    /// What a review asks of restatus, once the caches have synced: within the room to parse
    /// its status, the plan and its execution. restatus's own trouble is an `Error` answer.
    async fn answer(&self, req: &Request<'_>, resolved: &Resolved) -> Answer {
        let type_info = self.sources.caches.crds.type_info(
            &req.resource.group,
            &req.resource.version,
            &req.resource.resource,
        );
        let policy = &resolved.policy;
        let Some(_room) = self.parse_room(req, type_info, policy).await else {
            tracing::warn!(
                "no room to parse this review's status within --max-inflight-status-values; allowed unrecorded"
            );
            self.expire_on_delete(req, policy).await;
            let mut answer = Answer::just(Outcome::Busy);
            answer.warning = Some(
                "restatus: too many statuses are being recorded at once; this one is not".into(),
            );
            return answer;
        };
        let ctx = plan::Context {
            type_info,
            own_user: self.settings.own_user.as_deref(),
            policy,
            limits: self.settings.limits,
        };
        let plan = plan::plan(req, &ctx);
        let reviewed = Reviewed { req, policy };
        match self.execute(reviewed, plan).await {
            Ok(answer) => answer,
            Err(error) => {
                if !error.is_permanent() {
                    self.sources
                        .failed_open
                        .review_failed(error.is_unreachable());
                }
                if matches!(error, StoreError::CircuitOpen { .. }) {
                    // Counted by outcome; the breaker logged once when it opened.
                    tracing::debug!(error = %error_chain(&error), "allowed without change");
                    return Answer::just(Outcome::RedisAway);
                }
                tracing::warn!(
                    error = %error_chain(&error),
                    "restatus could not handle this review; allowed without change"
                );
                Answer::just(Outcome::Error)
            }
        }
    }

    /// For a DELETE restatus does not otherwise handle, starts the retention clock of the
    /// object's record, if it has one: the object is gone, and its record must not stay
    /// forever. Failing to is logged; resync starts it at its next pass.
    async fn expire_on_delete(&self, req: &Request<'_>, policy: &Policy) {
        if req.dry_run || req.operation != Operation::Delete || req.sub_resource.is_some() {
            return;
        }
        let identity = plan::identity(req);
        if let Err(error) = self
            .store
            .expire(&identity, policy.retention, self.settings.redis_timeout)
            .await
        {
            if matches!(error, StoreError::CircuitOpen { .. }) {
                tracing::debug!(%identity, error = %error_chain(&error), "the retention clock of a deleted object's record is left to resync");
            } else {
                tracing::warn!(%identity, error = %error_chain(&error), "could not start the retention clock of a deleted object's record");
            }
        }
    }

    /// Counts levels skipped for invalid annotations; an object's own invalid annotations
    /// also get an Event (once per object and value), when it is created or updated.
    fn report_skipped(&self, req: &Request<'_>, skipped: &[Skipped]) {
        for s in skipped {
            self.sources.metrics.invalid_annotation(s.level);
        }
        let main_write = req.sub_resource.is_none()
            && matches!(req.operation, Operation::Create | Operation::Update);
        let Some(own) = skipped.iter().find(|s| s.level == Level::Object) else {
            return;
        };
        let Some(obj) = req.object.as_ref().filter(|_| main_write && !req.dry_run) else {
            return;
        };
        let identity = plan::identity(req);
        let reference = ObjectReference {
            api_version: Some(req.api_version()),
            kind: Some(req.kind.kind.clone()),
            namespace: identity.namespace,
            name: Some(identity.name),
            uid: obj.metadata.uid.clone(),
            ..ObjectReference::default()
        };
        self.sources
            .reporter
            .report(Level::Object, reference, &own.error);
    }

    async fn execute(&self, reviewed: Reviewed<'_, '_>, plan: Plan) -> Result<Answer, StoreError> {
        match plan {
            Plan::Skip(skip) => Ok(Answer::just(Outcome::Skipped(skip))),
            Plan::Unparsed(error) => {
                let identity = plan::identity(reviewed.req);
                tracing::warn!(%identity, reason = error.label(), "{error}; this status is not recorded");
                let mut answer = Answer::just(Outcome::Unparsed);
                answer.warning = Some(format!("restatus: {error}; it is not recorded"));
                Ok(answer)
            }
            Plan::Record(write) => Ok(Answer::just(self.record(&write, reviewed).await?)),
            Plan::Create(check) => self.create(reviewed, check).await,
            Plan::Pending(pending) => self.pending(reviewed, pending).await,
            Plan::Expire {
                identity,
                retention,
            } => {
                let budget = self.settings.redis_timeout;
                let started = self.store.expire(&identity, retention, budget).await?;
                let outcome = match (started, reviewed.policy.enabled) {
                    (true, _) => Outcome::RetentionStarted,
                    (false, true) => Outcome::Skipped(Skip::NoStatus),
                    (false, false) => Outcome::Skipped(Skip::Disabled),
                };
                Ok(Answer::just(outcome))
            }
        }
    }

    async fn record(
        &self,
        write: &RecordWrite,
        reviewed: Reviewed<'_, '_>,
    ) -> Result<Outcome, StoreError> {
        let outcome = self
            .store
            .record(write, self.settings.redis_timeout)
            .await?;
        Ok(match outcome {
            WriteOutcome::Written => Outcome::Recorded,
            WriteOutcome::Unchanged => Outcome::Unchanged,
            WriteOutcome::Stale => Outcome::Stale,
            WriteOutcome::OtherIncarnation { record_uid } => {
                self.queue_catch_up(write, record_uid, reviewed).await?
            }
        })
    }

    /// A write of an incarnation restatus never saw created, where its record still holds an
    /// earlier incarnation's status and policy opens restores to any creator: the record is
    /// kept, and a catch-up restore bound to this incarnation's uid is queued (once while it is
    /// held), rather than the saved status being replaced by this write.
    async fn queue_catch_up(
        &self,
        write: &RecordWrite,
        record_uid: String,
        reviewed: Reviewed<'_, '_>,
    ) -> Result<Outcome, StoreError> {
        let mut restore = reviewed.policy.restore.clone();
        restore.mode = RestoreMode::Fill;
        let now = Timestamp::now();
        let deadline = SignedDuration::try_from(self.settings.restore_deadline)
            .ok()
            .and_then(|d| now.checked_add(d).ok())
            .unwrap_or(now);
        let job = RestoreJob {
            id: String::new(),
            action: JobKind::CatchUp {
                uid: write.uid.clone(),
            },
            identity: write.identity.clone(),
            api_version: write.api_version.clone(),
            kind: write.kind.clone(),
            record_uid,
            created_at: now,
            deadline,
            retry: false,
            inline: false,
            request_uid: reviewed.req.uid.clone(),
            policy: Some(restore),
        };
        let queued = self
            .store
            .enqueue_catch_up(
                &job,
                &write.uid,
                self.settings.job_ttl,
                self.settings.redis_timeout,
            )
            .await?;
        if queued {
            self.metrics.job_enqueued();
            tracing::info!(identity = %write.identity, "an object created while restatus was not looking writes its status, and a saved status of an earlier incarnation waits: catch-up restore queued");
        }
        Ok(Outcome::CatchUpQueued)
    }

    /// Records a status as an ordinary write, narrowed to what the policy keeps; nothing for
    /// an object without one.
    async fn record_ordinary(
        &self,
        write: RecordWrite,
        reviewed: Reviewed<'_, '_>,
        narrowed: bool,
    ) -> Result<Outcome, StoreError> {
        let policy = reviewed.policy;
        if write.status.is_null() {
            return Ok(Outcome::Skipped(Skip::NoStatus));
        }
        let write = if narrowed {
            write
        } else {
            RecordWrite {
                status: policy.restore.restorable(&write.status),
                ..write
            }
        };
        self.record(&write, reviewed).await
    }

    /// Whether the creator may get the saved status of `check` back: anyone when the policy
    /// opens restores to creators, otherwise only a user who may update the object's status.
    async fn may_restore(
        &self,
        reviewed: Reviewed<'_, '_>,
        check: &CreateCheck,
    ) -> Result<(), Outcome> {
        let Reviewed { req, policy } = reviewed;
        if policy.restore_for == RestoreFor::Creators {
            return Ok(());
        }
        let Some(access) = &self.sources.access else {
            tracing::warn!(identity = %check.identity, "no Kubernetes API to check who may get a status back; not restored");
            return Err(Outcome::AccessUnknown);
        };
        let id = &check.identity;
        let user = req.user_info.username.as_deref().unwrap_or_default();
        match access
            .may_write_status(
                &req.user_info,
                &id.group,
                &id.resource,
                id.namespace.as_deref(),
                &id.name,
            )
            .await
        {
            Access::Allowed => Ok(()),
            Access::Denied => {
                tracing::info!(identity = %id, %user, "the creator may not update this object's status; its saved status is not restored");
                Err(Outcome::NotPermitted)
            }
            Access::Unknown(reason) => {
                tracing::warn!(identity = %id, %user, %reason, "could not check whether the creator may get a status back; not restored");
                Err(Outcome::AccessUnknown)
            }
        }
    }

    /// A CREATE: if the object has a record and the creator may have it, restore it, in the
    /// create itself when the type keeps status on create, otherwise by marking the object
    /// pending and queueing a job. Either way the object carries the job's id, which binds the
    /// job to this CREATE: the worker touches no object without it.
    async fn create(
        &self,
        reviewed: Reviewed<'_, '_>,
        check: CreateCheck,
    ) -> Result<Answer, StoreError> {
        let Reviewed { req, policy } = reviewed;
        let budget = self.settings.redis_timeout;
        let Some(record) = self.store.get(&check.identity, budget).await? else {
            // Nothing is recorded on create: the create may still fail, and the first update
            // or the delete records what the API server kept.
            return Ok(Answer::just(Outcome::NoRecord));
        };
        if let Err(outcome) = self.may_restore(reviewed, &check).await {
            return Ok(Answer::just(outcome));
        }

        let now = Timestamp::now();
        let deadline = SignedDuration::try_from(self.settings.restore_deadline)
            .ok()
            .and_then(|d| now.checked_add(d).ok())
            .unwrap_or(now);
        let annotations = req
            .object
            .as_ref()
            .and_then(|o| o.metadata.annotations.as_ref());
        let inline = check.type_info == TypeInfo::KeepsStatusOnCreate;
        let job = RestoreJob {
            id: new_job_id()?,
            action: JobKind::Restore,
            identity: check.identity.clone(),
            api_version: check.api_version,
            kind: check.kind,
            record_uid: record.uid.clone(),
            created_at: now,
            deadline,
            retry: false,
            inline,
            request_uid: req.uid.clone(),
            policy: Some(policy.restore.clone()),
        };

        if inline {
            let mut ops = Vec::new();
            if let Some(status) = decide(&record.status, check.status.as_ref(), &policy.restore) {
                ops.push(patch::set_status(status));
            }
            let restored_at = now.round(Unit::Second).unwrap_or(now).to_string();
            ops.extend(patch::set_annotations(
                annotations,
                &[
                    (ANNOTATION_RESTORED_AT, &restored_at),
                    (ANNOTATION_RESTORE_JOB, &job.id),
                ],
            ));
            ops.extend(patch::remove_annotation(annotations, ANNOTATION_RESTORE));
            // The job only confirms the restore once the object exists; the status is
            // already in the create, so a failure to queue it loses nothing.
            if let Err(error) = self.store.enqueue(&job, budget).await {
                tracing::warn!(error = %error_chain(&error), "restored in the create, but the confirmation job was not queued");
            } else {
                self.metrics.job_enqueued();
            }
            tracing::info!(identity = %check.identity, job = %job.id, "saved status restored in the create");
            return Ok(Answer::with_ops(Outcome::RestoredInline, ops));
        }

        self.store
            .enqueue_pending(&job, self.settings.job_ttl, budget)
            .await?;
        self.metrics.job_enqueued();
        tracing::info!(identity = %check.identity, record_uid = %record.uid, job = %job.id, "recreated object has a record; restore queued");
        let ops = patch::set_annotations(
            annotations,
            &[
                (ANNOTATION_RESTORE, RESTORE_PENDING),
                (ANNOTATION_RESTORE_JOB, &job.id),
            ],
        );
        Ok(Answer::with_ops(Outcome::RestoreEnqueued, ops))
    }

    /// A write to an object marked pending. While Redis holds the marker's job as the
    /// object's live job, restatus set the marker and the restore is under way:
    /// - a status write gets the saved fields the writer did not set, so the saved facts get
    ///   in even if the writer is first, and the writer's fresh facts win. The merged status
    ///   is not recorded: until the restore is done the record keeps the earlier
    ///   incarnation's status, which the worker restores from;
    /// - an update or a DELETE records nothing, the record stays the earlier incarnation's.
    ///
    /// Otherwise the marker proves nothing (it reached the object unreviewed, or its job is
    /// over): the write is an ordinary one, and the marker is taken off — by this answer's
    /// patch for an update, by the worker for a status write, which cannot change metadata.
    async fn pending(
        &self,
        reviewed: Reviewed<'_, '_>,
        pending: PendingWrite,
    ) -> Result<Answer, StoreError> {
        let budget = self.settings.redis_timeout;
        let PendingWrite { kind, job, write } = pending;
        let policy = reviewed.policy;
        match kind {
            PendingKind::StatusWrite => {
                let (record, live) = self
                    .store
                    .get_with_job(&write.identity, &job, budget)
                    .await?;
                if !live {
                    self.queue_unmark(reviewed.req, &write, &job).await;
                    return Ok(Answer::just(
                        self.record_ordinary(write, reviewed, false).await?,
                    ));
                }
                let Some(record) = record.filter(|r| r.uid != write.uid) else {
                    // Nothing saved from an earlier incarnation: an ordinary status write.
                    return Ok(Answer::just(
                        self.record_ordinary(write, reviewed, false).await?,
                    ));
                };
                let written = Some(&write.status).filter(|s| !s.is_null());
                match decide_fill(&record.status, written, &policy.restore) {
                    Some(merged) => Ok(Answer::with_ops(
                        Outcome::Merged,
                        vec![patch::set_status(merged)],
                    )),
                    None => Ok(Answer::just(Outcome::Skipped(Skip::PendingRestore))),
                }
            }
            PendingKind::Update | PendingKind::Delete => {
                if self
                    .store
                    .job_is_live(&write.identity, &job, budget)
                    .await?
                {
                    return Ok(Answer::just(Outcome::Skipped(Skip::PendingRestore)));
                }
                let ops = if kind == PendingKind::Update {
                    plan::strip_marker(reviewed.req)
                } else {
                    Vec::new()
                };
                if !ops.is_empty() {
                    self.metrics.dead_marker("stripped");
                    tracing::info!(identity = %write.identity, "a pending marker without a live restore job was taken off");
                }
                let outcome = self.record_ordinary(write, reviewed, true).await?;
                Ok(Answer::with_ops(outcome, ops))
            }
        }
    }

    /// Queues the removal of a dead pending marker from the object a status write reached,
    /// once per marker while it is held. Failing to is logged: the next update strips it.
    async fn queue_unmark(&self, req: &Request<'_>, write: &RecordWrite, marker: &str) {
        let budget = self.settings.redis_timeout;
        let identity = &write.identity;
        let queued = async {
            if !self
                .store
                .claim_unmark(identity, marker, UNMARK_HOLD, budget)
                .await?
            {
                return Ok(false);
            }
            let now = Timestamp::now();
            let job = RestoreJob {
                id: String::new(),
                action: JobKind::Unmark {
                    uid: write.uid.clone(),
                    marker: marker.to_owned(),
                },
                identity: identity.clone(),
                api_version: write.api_version.clone(),
                kind: write.kind.clone(),
                record_uid: String::new(),
                created_at: now,
                deadline: now,
                retry: false,
                inline: false,
                request_uid: req.uid.clone(),
                policy: None,
            };
            self.store.enqueue(&job, budget).await.map(|_| true)
        };
        match queued.await {
            Ok(true) => {
                self.metrics.dead_marker("queued");
                tracing::info!(%identity, "a pending marker without a live restore job is ignored; its removal is queued");
            }
            Ok(false) => {}
            Err(error) => {
                tracing::warn!(%identity, error = %error_chain(&error), "a pending marker without a live restore job is ignored, but its removal could not be queued");
            }
        }
    }
}

/// The webhook router: `POST /mutate`.
pub fn router(admission: Arc<Admission>, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/mutate", post(mutate))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(admission)
}

async fn mutate(
    State(admission): State<Arc<Admission>>,
    body: Result<Bytes, BytesRejection>,
) -> HttpResponse {
    let body = match body {
        Ok(body) => body,
        Err(rejection) => {
            let status = rejection.status();
            let reason = if status == StatusCode::PAYLOAD_TOO_LARGE {
                "too_large"
            } else {
                "unreadable"
            };
            admission.metrics.invalid(reason);
            tracing::warn!(%status, "request body rejected: {}", rejection.body_text());
            return (status, format!("{}\n", rejection.body_text())).into_response();
        }
    };
    admission.metrics.review_read(body.len());
    let req = match review::decode(&body) {
        Ok(req) => req,
        Err(error) => {
            admission.metrics.invalid(error.reason());
            tracing::warn!(%error, "invalid AdmissionReview");
            return (StatusCode::BAD_REQUEST, format!("{error}\n")).into_response();
        }
    };
    let response = admission.review(&req).await;
    Json(response.into_review()).into_response()
}
