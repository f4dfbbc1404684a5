//! The restore worker: takes jobs from the queue and puts saved status back.
//!
//! Every `restatus serve` process runs one worker, a consumer in the queue's consumer group.
//! What to write is decided by the pure [`crate::policy::decide`]; `apply` talks to the API
//! server.

mod apply;
mod metrics;

use std::{
    collections::HashSet,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use jiff::Timestamp;
use kube::{
    Client, ResourceExt,
    runtime::events::{Recorder, Reporter},
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

pub use apply::{ApplyError, Finished, Live, Ran, SETTLE, Step, step};
pub use metrics::RestoreMetrics;

use crate::{
    error::error_chain,
    policy::RestorePolicy,
    store::{Delivery, JobKind, QueueReader, RestoreJob, Store, StoreError},
    text::{LOG_FIELD_CHARS, clip},
};
use apply::Applier;

/// How long one XREADGROUP waits for new jobs.
const READ_BLOCK: Duration = Duration::from_secs(2);
/// How long after its CREATE's admission a job waits for its object while holding a worker
/// slot: a CREATE lands within milliseconds of its admission, or is refused (by a later
/// admission plugin, or with AlreadyExists). After that the job is parked: it gives its slot
/// back and looks again every [`PARK_FIRST`], doubling up to [`PARK_MAX`], until its
/// deadline. A job read late (a backlog) looks once before it is parked.
const PATIENCE: Duration = Duration::from_millis(500);
const PARK_FIRST: Duration = Duration::from_millis(500);
const PARK_MAX: Duration = Duration::from_secs(5);
/// Parked jobs a replica holds at most per worker slot (each about a kilobyte); beyond, a job
/// waits in its slot.
const PARKED_PER_SLOT: usize = 64;
/// How much of the shutdown grace is kept for leaving the consumer group.
const LEAVE_SHARE: u32 = 4;

#[derive(Debug, Clone)]
pub struct Settings {
    /// This replica's consumer name in the group.
    pub consumer: String,
    pub concurrency: usize,
    pub max_deliveries: u64,
    pub claim_min_idle: Duration,
    pub conflict_retries: u32,
    /// Budget of each Redis call.
    pub redis_timeout: Duration,
    pub policy: RestorePolicy,
    pub field_manager: String,
    /// Consumers of the group idle this long, without jobs, are removed (replicas that were
    /// killed and never left).
    pub consumer_idle_timeout: Duration,
}

/// Where a job runs: the worker slots, the tasks to wait for at shutdown, and the shutdown
/// signal.
#[derive(Clone)]
struct Pool {
    permits: Arc<Semaphore>,
    /// Places for parked jobs ([`PARKED_PER_SLOT`] per slot).
    parking: Arc<Semaphore>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
}

/// How one run of a delivery ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Processed {
    /// Acknowledged, left for a retry, or dead-lettered.
    Done,
    /// Waiting for its object without a slot.
    Parked,
}

pub struct Worker {
    store: Store,
    client: Client,
    recorder: Recorder,
    metrics: RestoreMetrics,
    settings: Settings,
    /// Jobs this replica is working on; their idle time is reset so no one reclaims them.
    inflight: Mutex<HashSet<String>>,
}

impl Worker {
    pub fn new(
        store: Store,
        client: Client,
        metrics: RestoreMetrics,
        settings: Settings,
    ) -> Arc<Self> {
        let reporter = Reporter {
            controller: "restatus".into(),
            instance: Some(settings.consumer.clone()),
        };
        Arc::new(Self {
            recorder: Recorder::new(client.clone(), reporter),
            store,
            client,
            metrics,
            settings,
            inflight: Mutex::new(HashSet::new()),
        })
    }

    fn applier(&self) -> Applier<'_> {
        Applier {
            client: &self.client,
            recorder: &self.recorder,
            policy: &self.settings.policy,
            field_manager: &self.settings.field_manager,
            conflict_retries: self.settings.conflict_retries,
        }
    }

    /// Reads and processes jobs until `shutdown`, then lets in-flight jobs finish and leaves
    /// the consumer group, all within `grace`: jobs still running then are left to be
    /// reclaimed by another replica.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken, grace: Duration) {
        let pool = Pool {
            permits: Arc::new(Semaphore::new(self.settings.concurrency)),
            parking: Arc::new(Semaphore::new(
                self.settings.concurrency.saturating_mul(PARKED_PER_SLOT),
            )),
            tracker: TaskTracker::new(),
            shutdown: shutdown.clone(),
        };
        pool.tracker.spawn(self.clone().maintain(pool.clone()));
        tracing::info!(consumer = %self.settings.consumer, "restore worker started");

        let mut reader: Option<QueueReader> = None;
        let mut backoff = Duration::from_millis(100);
        loop {
            let permit = tokio::select! {
                () = shutdown.cancelled() => break,
                permit = pool.permits.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break,
                },
            };
            let count = 1 + pool.permits.available_permits();
            let result = match reader.as_mut() {
                Some(reader) => tokio::select! {
                    () = shutdown.cancelled() => break,
                    result = reader.read(&self.settings.consumer, count, READ_BLOCK) => result,
                },
                None => tokio::select! {
                    () = shutdown.cancelled() => break,
                    opened = self.open_reader() => opened.map(|r| {
                        reader = Some(r);
                        Vec::new()
                    }),
                },
            };
            match result {
                Ok(deliveries) => {
                    backoff = Duration::from_millis(100);
                    self.dispatch(deliveries, permit, &pool).await;
                }
                Err(error) => {
                    drop(permit);
                    reader = None;
                    tracing::warn!(error = %error_chain(&error), "reading the restore queue failed; retrying in {backoff:?}");
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(backoff) => {},
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        // The drain and the leave share the grace: a slow Redis can hold up neither past it.
        let stopping = tokio::time::Instant::now();
        let leave_budget = self.settings.redis_timeout.min(grace / LEAVE_SHARE);
        pool.tracker.close();
        let drain = grace.saturating_sub(leave_budget);
        if tokio::time::timeout(drain, pool.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                "restore jobs still running at the end of the shutdown grace period; they will be reclaimed by another replica"
            );
        }
        let left = grace.saturating_sub(stopping.elapsed());
        self.leave_group(leave_budget.min(left).max(Duration::from_millis(1)))
            .await;
        tracing::info!("restore worker stopped");
    }

    /// Removes this replica's consumer from the group unless it still holds jobs (those stay
    /// for another replica to reclaim), so restarts do not leave consumers behind.
    async fn leave_group(&self, budget: Duration) {
        let consumer = &self.settings.consumer;
        match self.store.remove_consumer_if_idle(consumer, budget).await {
            Ok(true) => tracing::info!(%consumer, "left the restore queue's consumer group"),
            Ok(false) => {
                tracing::info!(%consumer, "consumer still holds restore jobs; it stays in the group for another replica to reclaim them")
            }
            Err(error) => {
                tracing::warn!(%consumer, error = %error_chain(&error), "could not leave the restore queue's consumer group")
            }
        }
    }

    async fn open_reader(&self) -> Result<QueueReader, StoreError> {
        let budget = self.settings.redis_timeout;
        self.store.ensure_queue_group(budget).await?;
        self.store.reader(budget).await
    }

    /// Starts one task per delivery; the first uses `permit`, the others wait for theirs.
    /// Waiting deliveries count as in flight, so they stay claimed; at shutdown those still
    /// waiting are left for another replica to reclaim.
    async fn dispatch(
        self: &Arc<Self>,
        deliveries: Vec<Delivery>,
        permit: OwnedSemaphorePermit,
        pool: &Pool,
    ) {
        self.set_inflight(&deliveries, true);
        let mut first = Some(permit);
        let mut waiting = deliveries.into_iter();
        while let Some(delivery) = waiting.next() {
            let permit = match first.take() {
                Some(p) => Some(p),
                None => tokio::select! {
                    () = pool.shutdown.cancelled() => None,
                    permit = pool.permits.clone().acquire_owned() => permit.ok(),
                },
            };
            let Some(permit) = permit else {
                let left: Vec<Delivery> = std::iter::once(delivery).chain(waiting).collect();
                self.set_inflight(&left, false);
                return;
            };
            self.spawn_delivery(delivery, permit, pool);
        }
    }

    /// Processes `delivery` in a task of the pool, holding `permit` while it runs; a job
    /// that waits for its object is parked, without the permit, until it runs again.
    fn spawn_delivery(
        self: &Arc<Self>,
        delivery: Delivery,
        permit: OwnedSemaphorePermit,
        pool: &Pool,
    ) {
        let worker = self.clone();
        let pool_ = pool.clone();
        let patience = delivery.job.as_ref().map_or(Duration::ZERO, |job| {
            let since = Timestamp::now().duration_since(job.created_at);
            PATIENCE.saturating_sub(Duration::try_from(since).unwrap_or(PATIENCE))
        });
        pool.tracker.spawn(async move {
            let processed = worker.process(&delivery, patience).await;
            if processed == Processed::Parked {
                // With every parking place taken, the job waits in its slot, as the reader
                // must not take the whole queue into this replica's memory.
                let (place, slot) = match pool_.parking.clone().try_acquire_owned() {
                    Ok(place) => {
                        drop(permit);
                        (Some(place), None)
                    }
                    Err(_) => (None, Some(permit)),
                };
                worker.metrics.parked(true);
                worker.park(&delivery, &pool_, slot).await;
                worker.metrics.parked(false);
                drop(place);
            } else {
                drop(permit);
            }
            worker.set_inflight(std::slice::from_ref(&delivery), false);
        });
    }

    /// A job whose object has not appeared: looks again with a growing pause, taking a slot
    /// only for each look (unless it keeps `slot`), until it is finished (its object came,
    /// its deadline passed, or a later CREATE of the same name superseded it). At shutdown it
    /// is left, still claimed by this consumer, for another replica to reclaim.
    async fn park(&self, delivery: &Delivery, pool: &Pool, slot: Option<OwnedSemaphorePermit>) {
        let mut pause = PARK_FIRST;
        loop {
            tokio::select! {
                () = pool.shutdown.cancelled() => return,
                () = tokio::time::sleep(pause) => {},
            }
            pause = (pause * 2).min(PARK_MAX);
            if let Ok(job) = &delivery.job
                && self.superseded(job).await
            {
                tracing::info!(identity = %job.identity, "a later CREATE of the same name queued its own job; this one, whose object never appeared, ends");
                if let Err(error) = self.release(job).await {
                    tracing::debug!(error = %error_chain(&error), "could not end the superseded job's hold on its object");
                }
                self.finish(delivery, Finished::Superseded).await;
                return;
            }
            let permit = match &slot {
                Some(_) => None,
                None => tokio::select! {
                    () = pool.shutdown.cancelled() => return,
                    permit = pool.permits.clone().acquire_owned() => match permit {
                        Ok(permit) => Some(permit),
                        Err(_) => return,
                    },
                },
            };
            let processed = self.process(delivery, Duration::ZERO).await;
            drop(permit);
            if processed == Processed::Done {
                return;
            }
        }
    }

    /// Whether `job`, a restore whose CREATE was admitted long enough ago to have landed, has
    /// a later job of the same object beside it.
    async fn superseded(&self, job: &RestoreJob) -> bool {
        let settled = Timestamp::now()
            .duration_since(job.created_at)
            .try_into()
            .is_ok_and(|since: Duration| since >= SETTLE);
        if !settled || job.id.is_empty() || job.action != JobKind::Restore {
            return false;
        }
        self.store
            .has_newer_job(&job.identity, &job.id, self.settings.redis_timeout)
            .await
            .unwrap_or_else(|error| {
                tracing::debug!(error = %error_chain(&error), "could not look for a later job of the object");
                false
            })
    }

    /// Adds `deliveries` to the jobs kept claimed, or removes them.
    fn set_inflight(&self, deliveries: &[Delivery], inflight: bool) {
        let mut set = self.inflight.lock().unwrap_or_else(PoisonError::into_inner);
        for delivery in deliveries {
            if inflight {
                set.insert(delivery.id.clone());
            } else {
                set.remove(&delivery.id);
            }
        }
    }

    /// Periodically: keep in-flight jobs claimed, reclaim jobs of consumers that died, remove
    /// consumers of replicas that were killed, and publish the queue's length and age.
    async fn maintain(self: Arc<Self>, pool: Pool) {
        let interval = (self.settings.claim_min_idle / 3)
            .clamp(Duration::from_millis(100), Duration::from_secs(10));
        let sweep_every = (self.settings.consumer_idle_timeout / 2)
            .clamp(Duration::from_millis(100), Duration::from_secs(60));
        let mut swept = tokio::time::Instant::now();
        let budget = self.settings.redis_timeout;
        let mut cursor = String::from("0-0");
        loop {
            tokio::select! {
                () = pool.shutdown.cancelled() => return,
                () = tokio::time::sleep(interval) => {},
            }
            let inflight: Vec<String> = self
                .inflight
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .cloned()
                .collect();
            if let Err(error) = self
                .store
                .touch(&self.settings.consumer, &inflight, budget)
                .await
            {
                tracing::warn!(error = %error_chain(&error), "could not refresh claims on in-flight restore jobs");
            }
            // Reclaim only as many jobs as there are permits to run them now: a reclaimed
            // job waiting for a permit would go idle again.
            let mut held: Vec<OwnedSemaphorePermit> =
                std::iter::from_fn(|| pool.permits.clone().try_acquire_owned().ok()).collect();
            if !held.is_empty() {
                match self
                    .store
                    .reclaim(
                        &self.settings.consumer,
                        self.settings.claim_min_idle,
                        &cursor,
                        held.len(),
                        budget,
                    )
                    .await
                {
                    Ok(reclaimed) => {
                        cursor = reclaimed.cursor;
                        let reclaimed: Vec<Delivery> = reclaimed
                            .deliveries
                            .into_iter()
                            .filter(|d| !inflight.contains(&d.id))
                            .collect();
                        if !reclaimed.is_empty() {
                            tracing::info!(
                                count = reclaimed.len(),
                                "reclaimed restore jobs left idle by another consumer"
                            );
                            self.metrics.reclaimed(reclaimed.len());
                            self.set_inflight(&reclaimed, true);
                            for delivery in reclaimed {
                                let Some(permit) = held.pop() else { break };
                                self.spawn_delivery(delivery, permit, &pool);
                            }
                        }
                    }
                    Err(error) => {
                        tracing::warn!(error = %error_chain(&error), "could not reclaim idle restore jobs");
                    }
                }
            }
            drop(held);
            if swept.elapsed() >= sweep_every {
                swept = tokio::time::Instant::now();
                self.remove_dead_consumers(budget).await;
            }
            match self.store.queue_stats(budget).await {
                Ok(stats) => {
                    let age = stats
                        .oldest
                        .and_then(|t| Duration::try_from(Timestamp::now().duration_since(t)).ok())
                        .unwrap_or_default();
                    self.metrics.queue(stats.length, age);
                }
                Err(error) => {
                    tracing::debug!(error = %error_chain(&error), "could not read the queue's length")
                }
            }
        }
    }

    /// Removes consumers idle for `--restore-consumer-idle-timeout` that hold no jobs: those
    /// of replicas that were killed (their jobs were reclaimed first).
    async fn remove_dead_consumers(&self, budget: Duration) {
        match self
            .store
            .remove_idle_consumers(
                &self.settings.consumer,
                self.settings.consumer_idle_timeout,
                budget,
            )
            .await
        {
            Ok(removed) if !removed.is_empty() => {
                self.metrics.consumers_removed(removed.len());
                tracing::info!(consumers = ?removed, "removed idle consumers without jobs from the restore queue's group (replicas that stopped without leaving)");
            }
            Ok(_) => {}
            Err(error) => {
                tracing::debug!(error = %error_chain(&error), "could not remove idle consumers")
            }
        }
    }

    /// Handles one delivery to its end: acknowledged, left for a retry, or dead-lettered.
    /// Or parked, when its object has not appeared after `patience`.
    #[tracing::instrument(skip_all, fields(entry = %delivery.id, job = tracing::field::Empty, request = tracing::field::Empty))]
    async fn process(&self, delivery: &Delivery, patience: Duration) -> Processed {
        let budget = self.settings.redis_timeout;
        let job = match &delivery.job {
            Ok(job) => {
                // The uid of the CREATE's review, as the webhook logged it.
                let request = clip(&job.request_uid, LOG_FIELD_CHARS);
                let span = tracing::Span::current();
                span.record("request", tracing::field::display(request));
                // The id the object carries in restatus.io/restore-job.
                span.record(
                    "job",
                    tracing::field::display(clip(&job.id, LOG_FIELD_CHARS)),
                );
                job
            }
            Err(error) => {
                let reason = error_chain(error);
                tracing::warn!(%reason, "restore job cannot be decoded; moved to the dead-letter stream");
                self.metrics.finished(Finished::DeadLettered);
                self.dead_letter(delivery, &reason, None).await;
                return Processed::Done;
            }
        };
        let record = match &job.action {
            JobKind::Unmark { .. } => None,
            JobKind::Restore | JobKind::CatchUp { .. } => {
                match self.store.get(&job.identity, budget).await {
                    Ok(record) => record,
                    Err(error) if error.is_permanent() => {
                        // What is stored cannot be used (corrupt, not sealed while sealing is
                        // required, sealed with a key the keyring lacks): retrying will not help.
                        let reason = error_chain(&error);
                        tracing::warn!(identity = %job.identity, %reason, "the saved status cannot be used; moved to the dead-letter stream");
                        self.applier().report_failure(job, &reason).await;
                        self.metrics.finished(Finished::DeadLettered);
                        if let Err(error) = self.release(job).await {
                            tracing::debug!(error = %error_chain(&error), "could not end the job's hold on its object");
                        }
                        self.dead_letter(delivery, &reason, None).await;
                        return Processed::Done;
                    }
                    Err(error) => {
                        self.retry_or_give_up(delivery, job, None, &error_chain(&error))
                            .await;
                        return Processed::Done;
                    }
                }
            }
        };
        let saved = record.as_ref().map(|r| &r.status);
        match self.applier().restore(job, record.as_ref(), patience).await {
            Ok(Ran::Parked) => return Processed::Parked,
            Ok(Ran::Finished(finished, live)) => {
                // The job is over: it is no longer its object's live job, and a restored
                // record belongs to the new incarnation. A duplicate marks again: an earlier
                // delivery may have stopped before it.
                let ended = match (&live, &record) {
                    (Some(live), Some(record)) if finished.restored() => {
                        let new_uid = live.uid().unwrap_or_default();
                        self.store
                            .mark_restored(&job.identity, &record.uid, &new_uid, &job.id, budget)
                            .await
                            .map(|_| ())
                    }
                    _ => self.release(job).await,
                };
                if let Err(error) = ended {
                    if finished.restored() && delivery.deliveries < self.settings.max_deliveries {
                        tracing::warn!(error = %error_chain(&error), "status restored, but the record could not be marked; the job will be retried to mark it");
                        return Processed::Done;
                    }
                    tracing::warn!(error = %error_chain(&error), "the job is finished, but its record could not be updated; a restored record may expire with the old incarnation's retention");
                }
                if finished == Finished::Restored {
                    let latency = Timestamp::now().duration_since(job.created_at);
                    self.metrics
                        .restored_after(Duration::try_from(latency).unwrap_or_default());
                    tracing::info!(identity = %job.identity, latency_ms = latency.as_millis(), "status restored");
                } else if finished == Finished::CaughtUp {
                    tracing::info!(identity = %job.identity, "status restored into an object created while restatus was not looking");
                } else {
                    tracing::info!(identity = %job.identity, outcome = finished.label(), "restore job finished without a restore");
                }
                self.finish(delivery, finished).await;
            }
            Err(error) if error.is_permanent() => {
                let reason = error_chain(&error);
                tracing::warn!(identity = %job.identity, %reason, "restore failed for good");
                self.applier().report_failure(job, &reason).await;
                self.metrics.finished(Finished::Failed);
                if let Err(error) = self.release(job).await {
                    tracing::debug!(error = %error_chain(&error), "could not end the failed job's hold on its object");
                }
                self.dead_letter(delivery, &reason, saved).await;
            }
            Err(error) => {
                self.retry_or_give_up(delivery, job, saved, &error_chain(&error))
                    .await;
            }
        }
        Processed::Done
    }

    /// Ends a restore job in Redis: it is no longer its object's live job.
    async fn release(&self, job: &RestoreJob) -> Result<(), StoreError> {
        if job.id.is_empty() || job.action != JobKind::Restore {
            return Ok(());
        }
        self.store
            .release_job(&job.identity, &job.id, self.settings.redis_timeout)
            .await
            .map(|_| ())
    }

    async fn finish(&self, delivery: &Delivery, outcome: Finished) {
        self.metrics.finished(outcome);
        if let Err(error) = self
            .store
            .ack(&delivery.id, self.settings.redis_timeout)
            .await
        {
            tracing::warn!(error = %error_chain(&error), "could not acknowledge a finished restore job; it will be delivered again (restores are idempotent)");
        }
    }

    /// A transient failure: leave the job pending so it is reclaimed after the min-idle time,
    /// unless it was delivered too often already.
    async fn retry_or_give_up(
        &self,
        delivery: &Delivery,
        job: &RestoreJob,
        saved: Option<&serde_json::Value>,
        reason: &str,
    ) {
        if delivery.deliveries >= self.settings.max_deliveries {
            tracing::warn!(identity = %job.identity, deliveries = delivery.deliveries, %reason, "restore job failed too often; moved to the dead-letter stream");
            self.applier()
                .report_failure(
                    job,
                    &format!("gave up after {} attempts: {reason}", delivery.deliveries),
                )
                .await;
            self.metrics.finished(Finished::DeadLettered);
            if let Err(error) = self.release(job).await {
                tracing::debug!(error = %error_chain(&error), "could not end the dead-lettered job's hold on its object");
            }
            self.dead_letter(delivery, reason, saved).await;
        } else {
            tracing::warn!(identity = %job.identity, deliveries = delivery.deliveries, %reason, "restore attempt failed; it will be retried");
        }
    }

    async fn dead_letter(
        &self,
        delivery: &Delivery,
        reason: &str,
        saved: Option<&serde_json::Value>,
    ) {
        self.metrics.dead_lettered();
        if let Err(error) = self
            .store
            .dead_letter(delivery, reason, saved, self.settings.redis_timeout)
            .await
        {
            tracing::warn!(error = %error_chain(&error), "could not move a restore job to the dead-letter stream");
        }
    }
}
