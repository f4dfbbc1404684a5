//! The mutating webhook: decode the review, plan, record or enqueue, answer.
//!
//! restatus never gets in the cluster's way: whatever goes wrong on its side (Redis down or
//! slow, a corrupt record) the answer is `allowed: true` without a patch, counted and logged
//! with the request uid. Only a body that is not an AdmissionReview gets an HTTP error.

mod metrics;
mod plan;
pub mod review;

use std::{sync::Arc, time::Duration};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{DefaultBodyLimit, State, rejection::BytesRejection},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::post,
};
use jiff::{SignedDuration, Timestamp, Unit};
use json_patch::{Patch, PatchOperation};
use kube::core::{
    DynamicObject,
    admission::{AdmissionRequest, AdmissionResponse, Operation},
};
use tokio::time::Instant;

use crate::{
    error::error_chain,
    patch,
    policy::{
        ANNOTATION_RESTORE, ANNOTATION_RESTORED_AT, CrdCache, RESTORE_PENDING, RestoreMode,
        RestorePolicy, TypeInfo, decide,
    },
    store::{RecordWrite, RestoreJob, Store, StoreError, WriteOutcome},
};

pub use metrics::AdmissionMetrics;
pub use plan::{CreateCheck, Plan, Skip};

/// Settings of the admission path.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Budget of each Redis call made while answering.
    pub redis_timeout: Duration,
    /// Retention of a deleted object's record.
    pub retention: Duration,
    /// How long a restore job waits for its CREATE to land.
    pub restore_deadline: Duration,
    pub policy: RestorePolicy,
    /// restatus's own field manager.
    pub field_manager: String,
}

/// How a review ended, for metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Skipped(Skip),
    Recorded,
    Unchanged,
    Stale,
    NoRecord,
    RestoreEnqueued,
    RestoredInline,
    Merged,
    Error,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Skipped(skip) => skip.label(),
            Outcome::Recorded => "recorded",
            Outcome::Unchanged => "unchanged",
            Outcome::Stale => "stale",
            Outcome::NoRecord => "no_record",
            Outcome::RestoreEnqueued => "restore_enqueued",
            Outcome::RestoredInline => "restored_inline",
            Outcome::Merged => "merged",
            Outcome::Error => "error",
        }
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

/// The webhook's shared state.
pub struct Admission {
    store: Store,
    crds: CrdCache,
    metrics: AdmissionMetrics,
    settings: Settings,
    /// The policy with mode `fill`: status writes to pending objects are always filled.
    merge_policy: RestorePolicy,
}

impl Admission {
    pub fn new(
        store: Store,
        crds: CrdCache,
        metrics: AdmissionMetrics,
        settings: Settings,
    ) -> Self {
        let merge_policy = RestorePolicy {
            mode: RestoreMode::Fill,
            ..settings.policy.clone()
        };
        Self {
            store,
            crds,
            metrics,
            settings,
            merge_policy,
        }
    }

    /// Answers one review. Never fails: restatus's own trouble is logged and allowed.
    #[tracing::instrument(
        skip_all,
        fields(
            uid = %req.uid,
            operation = operation_label(&req.operation),
            resource = %req.resource.resource,
            namespace = req.namespace.as_deref().unwrap_or(""),
            object = %req.name,
        )
    )]
    pub async fn review(&self, req: &AdmissionRequest<DynamicObject>) -> AdmissionResponse {
        let start = Instant::now();
        let type_info = self.crds.type_info(
            &req.resource.group,
            &req.resource.version,
            &req.resource.resource,
        );
        let ctx = plan::Context {
            type_info,
            field_manager: &self.settings.field_manager,
        };
        let plan = plan::plan(req, &ctx);
        let (outcome, ops) = match self.execute(req, plan).await {
            Ok(done) => done,
            Err(error) => {
                tracing::warn!(
                    error = %error_chain(&error),
                    "restatus could not handle this review; allowed without change"
                );
                (Outcome::Error, Vec::new())
            }
        };
        self.metrics.answered(
            operation_label(&req.operation),
            outcome.label(),
            start.elapsed(),
        );
        tracing::debug!(outcome = outcome.label(), "review answered");

        let response = AdmissionResponse::from(req);
        if ops.is_empty() {
            return response;
        }
        match response.clone().with_patch(Patch(ops)) {
            Ok(patched) => patched,
            Err(error) => {
                tracing::warn!(error = %error_chain(&error), "patch could not be encoded; allowed without change");
                response
            }
        }
    }

    async fn execute(
        &self,
        req: &AdmissionRequest<DynamicObject>,
        plan: Plan,
    ) -> Result<(Outcome, Vec<PatchOperation>), StoreError> {
        match plan {
            Plan::Skip(skip) => Ok((Outcome::Skipped(skip), Vec::new())),
            Plan::Record(write) => Ok((self.record(&write).await?, Vec::new())),
            Plan::Create(check) => self.create(req, check).await,
            Plan::PendingStatusWrite(write) => self.merge_pending(write).await,
        }
    }

    async fn record(&self, write: &RecordWrite) -> Result<Outcome, StoreError> {
        let outcome = self
            .store
            .record(write, self.settings.retention, self.settings.redis_timeout)
            .await?;
        Ok(match outcome {
            WriteOutcome::Written => Outcome::Recorded,
            WriteOutcome::Unchanged => Outcome::Unchanged,
            WriteOutcome::Stale => Outcome::Stale,
        })
    }

    /// A CREATE: if the object has a record, restore it, in the create itself when the type
    /// keeps status on create, otherwise by marking the object pending and queueing a job.
    async fn create(
        &self,
        req: &AdmissionRequest<DynamicObject>,
        check: CreateCheck,
    ) -> Result<(Outcome, Vec<PatchOperation>), StoreError> {
        let budget = self.settings.redis_timeout;
        let Some(record) = self.store.get(&check.identity, budget).await? else {
            // Nothing is recorded on create: the create may still fail, and the first update
            // or the delete records what the API server kept.
            return Ok((Outcome::NoRecord, Vec::new()));
        };

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
            identity: check.identity.clone(),
            api_version: check.api_version,
            kind: check.kind,
            record_uid: record.uid.clone(),
            created_at: now,
            deadline,
            inline,
            request_uid: req.uid.clone(),
        };

        if inline {
            let mut ops = Vec::new();
            if let Some(status) =
                decide(&record.status, check.status.as_ref(), &self.settings.policy)
            {
                ops.push(patch::set_status(status));
            }
            let restored_at = now.round(Unit::Second).unwrap_or(now).to_string();
            ops.extend(patch::set_annotations(
                annotations,
                &[(ANNOTATION_RESTORED_AT, &restored_at)],
            ));
            ops.extend(patch::remove_annotation(annotations, ANNOTATION_RESTORE));
            // The job only confirms the restore once the object exists; the status is
            // already in the create, so a failure to queue it loses nothing.
            if let Err(error) = self.store.enqueue(&job, budget).await {
                tracing::warn!(error = %error_chain(&error), "restored in the create, but the confirmation job was not queued");
            } else {
                self.metrics.job_enqueued();
            }
            tracing::info!(identity = %check.identity, "saved status restored in the create");
            return Ok((Outcome::RestoredInline, ops));
        }

        self.store.enqueue(&job, budget).await?;
        self.metrics.job_enqueued();
        tracing::info!(identity = %check.identity, record_uid = %record.uid, "recreated object has a record; restore queued");
        let ops = patch::set_annotations(annotations, &[(ANNOTATION_RESTORE, RESTORE_PENDING)]);
        Ok((Outcome::RestoreEnqueued, ops))
    }

    /// A status write to an object waiting for its restore: the saved fields the writer did
    /// not set are filled in, so the saved facts get in even if the writer is first, and the
    /// writer's fresh facts win.
    ///
    /// The merged status is not recorded: until the restore is done the record keeps the
    /// earlier incarnation's status, which the worker restores from (in `replace` mode it
    /// must win over what the writer set). Once restored, writes are recorded again.
    async fn merge_pending(
        &self,
        write: RecordWrite,
    ) -> Result<(Outcome, Vec<PatchOperation>), StoreError> {
        let record = self
            .store
            .get(&write.identity, self.settings.redis_timeout)
            .await?;
        let Some(record) = record.filter(|r| r.uid != write.uid) else {
            // Nothing saved from an earlier incarnation: an ordinary status write.
            if write.status.is_null() {
                return Ok((Outcome::Skipped(Skip::NoStatus), Vec::new()));
            }
            return Ok((self.record(&write).await?, Vec::new()));
        };
        let written = Some(&write.status).filter(|s| !s.is_null());
        match decide(&record.status, written, &self.merge_policy) {
            Some(merged) => Ok((Outcome::Merged, vec![patch::set_status(merged)])),
            None => Ok((Outcome::Skipped(Skip::PendingRestore), Vec::new())),
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
) -> Response {
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
