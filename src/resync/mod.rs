//! Resync: corrects the records from the live objects, and catches up on what restatus did
//! not see while it or Redis was away.
//!
//! Admission is not proof that a write landed, and with `failurePolicy: Ignore` nothing is seen
//! while restatus or Redis is down: a status written then is not recorded, a CREATE gets no
//! marker, a DELETE starts no retention clock. A pass lists every tracked type page by page
//! (bounded memory, bounded rate) and, for each object, does what [`check`] says:
//!
//! - records a status restatus has not recorded, through the same script as the webhook (a
//!   newer or unchanged record is kept);
//! - for an object created while restatus was not looking (its uid is not its record's, and it
//!   carries none of restatus's annotations), queues a catch-up restore bound to its uid, where
//!   policy opens restores to any creator; elsewhere it leaves the saved status waiting, counts
//!   it and says why in an Event, once;
//! - then starts the retention clock of the type's records whose object it did not find.
//!
//! A pass runs at start (once the policy caches have synced), every `--resync-interval`, and as
//! soon as Redis answers again after an outage that made reviews fail open (Redis refused or
//! dropped connections, or did not answer a probe either): one slow answer is not an outage,
//! and what it missed waits for the next periodic pass.

mod check;
mod metrics;
mod page;

use std::{
    collections::{HashSet, VecDeque},
    hash::{BuildHasher, RandomState},
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use jiff::{SignedDuration, Timestamp};
use kube::{
    Client,
    api::{ApiResource, ListParams},
    discovery,
    runtime::events::{Event, EventType, Recorder, Reporter},
};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use check::{Check, Leave, Live, check};
pub use metrics::ResyncMetrics;

use crate::{
    error::{api_status_code, error_chain},
    limits::{StatusLimits, parse_status},
    policy::{Caches, GlobalPolicy, RestoreMode},
    store::{FailedOpen, JobKind, ObjectIdentity, RedisState, RestoreJob, Store, after_probe},
};

/// A tracked type: its API group (`""` for the core group) and plural resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackedType {
    pub group: String,
    pub resource: String,
}

impl std::str::FromStr for TrackedType {
    type Err = String;

    /// `resource.group`, or `resource` for the core group: `services`,
    /// `kubernetesclusters.infra.example.com`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let name = s.trim();
        let (resource, group) = match name.split_once('.') {
            Some((resource, group)) => (resource, Some(group)),
            None => (name, None),
        };
        let valid = |s: &str| {
            !s.is_empty()
                && !s.ends_with('.')
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        };
        if !valid(resource) || !group.is_none_or(valid) {
            return Err(format!(
                "{name:?} is not a resource name (plural, lowercase, then .group)"
            ));
        }
        Ok(Self {
            group: group.unwrap_or_default().to_owned(),
            resource: resource.to_owned(),
        })
    }
}

#[derive(Debug, Clone)]
pub struct Settings {
    /// The types to resync.
    pub types: Vec<TrackedType>,
    /// Time between passes; a pass also runs at start and when Redis is back.
    pub interval: Duration,
    /// Objects per list request.
    pub page_size: u32,
    /// Objects per second a pass goes through at most.
    pub rate: u32,
    /// Budget of each Redis call.
    pub redis_timeout: Duration,
    /// How long a catch-up job waits for a worker before resync queues it again.
    pub catch_up_hold: Duration,
    /// Namespaces the webhook is not called for (its namespaceSelector): resync leaves their
    /// objects alone too, as it does those of namespaces labelled [`IGNORE_LABEL`]`=true`.
    pub skip_namespaces: Vec<String>,
    /// The statuses the webhook records (`--max-status-values`): a larger one is left
    /// unrecorded here too.
    pub status_limits: StatusLimits,
}

/// The label that takes a namespace out of the webhook's namespaceSelector (the chart's), and
/// so out of resync.
pub const IGNORE_LABEL: &str = "restatus.io/ignore";

/// Whose turn a pass is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Turn {
    /// This replica runs it.
    Mine,
    /// Another replica holds its lock.
    Theirs,
    /// The lock could not be asked for: Redis did not answer.
    NoRedis,
}

/// Why a pass runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Why {
    Start,
    Interval,
    RedisBack,
}

impl Why {
    fn label(self) -> &'static str {
        match self {
            Why::Start => "start",
            Why::Interval => "interval",
            Why::RedisBack => "redis_back",
        }
    }
}

/// How often, while a review failed open for want of Redis, Redis is asked whether it is back.
const PROBE_EVERY: Duration = Duration::from_secs(2);
/// How long the replica that runs the pass after Redis is back keeps others from running one.
const REDIS_BACK_HOLD: Duration = Duration::from_secs(30);
/// `SavedStatusWaiting` Events a pass publishes per type at most.
const HELD_EVENTS_PER_TYPE: u32 = 100;
/// A list continued after its continue token expired starts over at most this often per type.
const LIST_RESTARTS: u32 = 3;
/// A type is listed within this, faster than `--resync-rate` when it has too many objects for
/// it: a continue token lives until etcd compacts (every 5 minutes by default), and a list
/// that outlives it starts over, and would never finish.
const LIST_WITHIN: Duration = Duration::from_secs(240);
/// Pages in a row whose records could not be read before a type's pass stops: Redis is away,
/// and listing on only loads the API server.
const STORE_FAILURES: u32 = 3;
/// Objects whose held catch-up was reported, remembered to report each once.
const REPORTED: usize = 10_000;

/// What a pass did with one type.
#[derive(Debug, Default)]
struct Tally {
    scanned: u64,
    corrected: u64,
    queued: u64,
    held: u64,
    /// `SavedStatusWaiting` Events published.
    held_events: u32,
}

pub struct Resync {
    client: Client,
    store: Store,
    caches: Caches,
    global: GlobalPolicy,
    settings: Settings,
    metrics: ResyncMetrics,
    recorder: Recorder,
    /// Told by the webhook when a review failed open for want of Redis.
    failed_open: Arc<FailedOpen>,
    /// Incarnations whose held catch-up was reported.
    reported: Reported,
    /// This replica's name, as the holder of the resync lock.
    instance: String,
}

/// Incarnations already reported, remembered up to a number, the oldest forgotten first.
struct Reported {
    capacity: usize,
    seen: Mutex<(HashSet<String>, VecDeque<String>)>,
}

impl Reported {
    fn new(capacity: usize) -> Self {
        Self {
            capacity,
            seen: Mutex::new((HashSet::new(), VecDeque::new())),
        }
    }

    /// True the first time `uid` is seen (or again once it was forgotten).
    fn first(&self, uid: &str) -> bool {
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        let (set, order) = &mut *seen;
        if !set.insert(uid.to_owned()) {
            return false;
        }
        order.push_back(uid.to_owned());
        if order.len() > self.capacity
            && let Some(oldest) = order.pop_front()
        {
            set.remove(&oldest);
        }
        true
    }
}

impl Resync {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        client: Client,
        store: Store,
        caches: Caches,
        global: GlobalPolicy,
        settings: Settings,
        metrics: ResyncMetrics,
        instance: String,
        failed_open: Arc<FailedOpen>,
    ) -> Arc<Self> {
        let reporter = Reporter {
            controller: "restatus".into(),
            instance: Some(instance.clone()),
        };
        Arc::new(Self {
            instance: instance.clone(),
            recorder: Recorder::new(client.clone(), reporter),
            client,
            store,
            caches,
            global,
            settings,
            metrics,
            failed_open,
            reported: Reported::new(REPORTED),
        })
    }

    /// Runs passes until `shutdown`: once `synced` says the policy caches have synced, then
    /// every interval, and when Redis answers again after a review failed open.
    pub async fn run(
        self: Arc<Self>,
        mut synced: tokio::sync::watch::Receiver<bool>,
        shutdown: CancellationToken,
    ) {
        self.metrics.started();
        tokio::select! {
            result = synced.wait_for(|synced| *synced) => if result.is_err() { return },
            () = shutdown.cancelled() => return,
        }
        let mut why = Why::Start;
        loop {
            match self.take_turn(why).await {
                Turn::Mine => {
                    // This pass answers for every review that failed open before it.
                    self.failed_open.clear();
                    tokio::select! {
                        () = self.pass(why) => {},
                        () = self.keep_turn(why) => {},
                        () = shutdown.cancelled() => return,
                    }
                    self.end_turn(why).await;
                }
                // Another replica runs the pass after the outage: it answers for this
                // replica's failed reviews too. A periodic pass elsewhere does not, if this
                // replica saw an outage since: that one still runs once Redis answers.
                Turn::Theirs if why == Why::RedisBack => self.failed_open.clear(),
                Turn::Theirs | Turn::NoRedis => {}
            }
            let next = Instant::now() + self.settings.interval;
            why = loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep_until(next) => break Why::Interval,
                    () = tokio::time::sleep(PROBE_EVERY) => {
                        let state = self.failed_open.state();
                        if state == RedisState::Fine {
                            continue;
                        }
                        let answered = self.store.ping(self.settings.redis_timeout).await;
                        let (next, resync) = after_probe(state, answered);
                        self.failed_open.change(state, next);
                        if resync {
                            tracing::info!("Redis answers again after reviews failed open; resyncing now");
                            break Why::RedisBack;
                        }
                    }
                }
            };
        }
    }

    /// Whether this replica runs the pass. Every replica runs one when it starts (it cannot
    /// know what was missed while it was away). Of the periodic passes, one replica of the
    /// cluster runs one per interval, the one that takes the lock; of the passes that catch up
    /// once Redis is back, the first replica to see it. Without Redis, none.
    async fn take_turn(&self, why: Why) -> Turn {
        let Some((name, hold)) = self.lock_of(why) else {
            return Turn::Mine;
        };
        match self
            .store
            .try_lock(name, &self.instance, hold, self.settings.redis_timeout)
            .await
        {
            Ok(true) => Turn::Mine,
            Ok(false) => {
                tracing::debug!(
                    reason = why.label(),
                    "another replica runs this resync pass"
                );
                Turn::Theirs
            }
            Err(error) => {
                tracing::warn!(error = %error_chain(&error), "could not take the resync lock; this pass is skipped");
                if why == Why::RedisBack {
                    self.failed_open.review_failed(true);
                }
                Turn::NoRedis
            }
        }
    }

    /// Releases the lock of the pass after an outage, so that a replica whose reviews fail
    /// open after it runs one of its own at once. The periodic lock is kept for its interval:
    /// it is what keeps the other replicas from a periodic pass of their own.
    async fn end_turn(&self, why: Why) {
        if why != Why::RedisBack {
            return;
        }
        if let Some((name, _)) = self.lock_of(why)
            && let Err(error) = self
                .store
                .unlock(name, &self.instance, self.settings.redis_timeout)
                .await
        {
            tracing::debug!(error = %error_chain(&error), "could not release the resync lock; it expires on its own");
        }
    }

    /// The lock a pass takes, and for how long: none for a pass at start.
    fn lock_of(&self, why: Why) -> Option<(&'static str, Duration)> {
        match why {
            Why::Start => None,
            Why::RedisBack => Some(("resync-redis-back", REDIS_BACK_HOLD)),
            Why::Interval => Some(("resync", self.settings.interval)),
        }
    }

    /// Keeps the lock of a running pass, so that a pass longer than its hold does not let
    /// another replica start one beside it; never returns.
    async fn keep_turn(&self, why: Why) {
        let Some((name, hold)) = self.lock_of(why) else {
            return std::future::pending().await;
        };
        loop {
            tokio::time::sleep(hold / 2).await;
            match self
                .store
                .try_lock(name, &self.instance, hold, self.settings.redis_timeout)
                .await
            {
                Ok(true) => {}
                Ok(false) => tracing::warn!(
                    reason = why.label(),
                    "another replica took the resync lock while this pass runs"
                ),
                Err(error) => {
                    tracing::debug!(error = %error_chain(&error), "could not keep the resync lock")
                }
            }
        }
    }

    /// One pass over every tracked type.
    async fn pass(&self, why: Why) {
        let started = Instant::now();
        let mut complete = true;
        for tracked in &self.settings.types {
            match self.sync_type(tracked).await {
                Ok(tally) => tracing::info!(
                    group = %tracked.group,
                    resource = %tracked.resource,
                    scanned = tally.scanned,
                    corrected = tally.corrected,
                    catch_ups = tally.queued,
                    held = tally.held,
                    "resynced"
                ),
                Err(error) => {
                    complete = false;
                    tracing::warn!(group = %tracked.group, resource = %tracked.resource, %error, "resync of this type failed; it is tried again at the next pass");
                }
            }
        }
        self.metrics.pass(why.label(), started.elapsed(), complete);
        tracing::info!(
            reason = why.label(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            complete,
            "resync pass finished"
        );
    }

    /// Resyncs one type: its live objects page by page, then its records whose object is gone.
    async fn sync_type(&self, tracked: &TrackedType) -> Result<Tally, String> {
        let ar = self.resolve(tracked).await.inspect_err(|_| {
            self.metrics.error("discovery");
        })?;
        let hasher = RandomState::new();
        let mut seen: HashSet<u64> = HashSet::new();
        let mut tally = Tally::default();
        let listed_at = Timestamp::now();
        let mut restarts = 0;
        let mut continue_token: Option<String> = None;
        let started = Instant::now();
        let mut rate = f64::from(self.settings.rate.max(1));
        let mut store_failures = 0;
        let mut page_size = self.settings.page_size.max(1);
        loop {
            let params = ListParams {
                limit: Some(page_size),
                continue_token: continue_token.clone(),
                ..ListParams::default()
            };
            let body = match page::read(&self.client, &ar, &params, page::PAGE_BYTES).await {
                Ok(page::Read::Body(body)) => body,
                Ok(page::Read::TooLarge) if page_size > 1 => {
                    page_size = (page_size / 2).max(1);
                    tracing::info!(
                        resource = %tracked.resource,
                        page_size,
                        "a page of this type is larger than {} MiB; listing it with fewer objects a page",
                        page::PAGE_BYTES >> 20
                    );
                    continue;
                }
                Ok(page::Read::TooLarge) => {
                    self.metrics.error("list");
                    return Err(format!(
                        "listing failed: one object is larger than {} MiB",
                        page::PAGE_BYTES >> 20
                    ));
                }
                // The continue token expired (compaction): start the type over.
                Err(e) if api_status_code(&e) == Some(410) && restarts < LIST_RESTARTS => {
                    restarts += 1;
                    continue_token = None;
                    continue;
                }
                Err(e) => {
                    self.metrics.error("list");
                    return Err(format!("listing failed: {}", error_chain(&e)));
                }
            };
            let page = match page::decode(&body) {
                Ok(page) => page,
                Err(e) => {
                    self.metrics.error("list");
                    return Err(format!("the list is not JSON of a list: {e}"));
                }
            };
            for item in &page.items {
                let identity = identity_of(&ar, item);
                seen.insert(hasher.hash_one(self.store.keys().record(&identity)));
            }
            match self
                .sync_page(&ar, &page.items, listed_at, &mut tally)
                .await
            {
                Ok(()) => store_failures = 0,
                Err(error) => {
                    store_failures += 1;
                    if store_failures >= STORE_FAILURES {
                        return Err(error);
                    }
                }
            }
            self.metrics.scanned(page.items.len() as u64);
            continue_token = page.metadata.continue_token.filter(|t| !t.is_empty());
            if continue_token.is_none() {
                break;
            }
            if let Some(remaining) = page.metadata.remaining_item_count {
                let needed = pace(tally.scanned, remaining, self.settings.rate);
                if needed > rate {
                    tracing::info!(
                        resource = %tracked.resource,
                        objects_per_second = needed as u64,
                        "listing this type faster than --resync-rate, to finish before its continue token expires"
                    );
                    rate = needed;
                }
            }
            // At most `rate` objects a second.
            let due = Duration::from_secs_f64(tally.scanned as f64 / rate);
            tokio::time::sleep_until(started + due).await;
        }
        let seen_record = |key: &str| seen.contains(&hasher.hash_one(key));
        let retention = |id: &ObjectIdentity| {
            self.caches
                .resolve(
                    &self.global,
                    &id.group,
                    &id.resource,
                    id.namespace.as_deref(),
                    None,
                )
                .policy
                .retention
        };
        let expired = self
            .store
            .expire_unseen_of_type(
                &tracked.group,
                &tracked.resource,
                &seen_record,
                &retention,
                listed_at,
                self.settings.redis_timeout,
            )
            .await
            .map_err(|e| {
                self.metrics.error("store");
                format!(
                    "expiring records of deleted objects failed: {}",
                    error_chain(&e)
                )
            })?;
        self.metrics.expired(expired);
        Ok(tally)
    }

    /// The API resource of a tracked type: at the version the API server prefers for its
    /// group when it is served there, else at its own most stable version (a group's CRDs
    /// need not share versions).
    async fn resolve(&self, tracked: &TrackedType) -> Result<ApiResource, String> {
        let group = discovery::group(&self.client, &tracked.group)
            .await
            .map_err(|e| format!("discovery failed: {}", error_chain(&e)))?;
        group
            .recommended_resources()
            .into_iter()
            .chain(group.resources_by_stability())
            .map(|(ar, _)| ar)
            .find(|ar| ar.plural == tracked.resource)
            .ok_or_else(|| "the API server serves no such resource".to_owned())
    }

    /// Checks one page of live objects against their records. Fails when the records cannot
    /// be read: the page is checked at the next pass.
    async fn sync_page(
        &self,
        ar: &ApiResource,
        objects: &[page::Item<'_>],
        listed_at: Timestamp,
        tally: &mut Tally,
    ) -> Result<(), String> {
        let budget = self.settings.redis_timeout;
        let identities: Vec<ObjectIdentity> = objects.iter().map(|o| identity_of(ar, o)).collect();
        let records = match self.store.get_many(&identities, budget).await {
            Ok(records) => records,
            Err(error) => {
                self.metrics.error("store");
                tracing::warn!(error = %error_chain(&error), "reading records failed; this page is checked at the next pass");
                return Err(format!("reading records failed: {}", error_chain(&error)));
            }
        };
        for ((obj, identity), record) in objects.iter().zip(identities).zip(records) {
            tally.scanned += 1;
            if identity
                .namespace
                .as_deref()
                .is_some_and(|ns| self.skipped(ns))
            {
                continue;
            }
            let record = match record {
                Ok(record) => record,
                Err(error) => {
                    tracing::warn!(%identity, error = %error_chain(&error), "the record cannot be read; left as it is");
                    continue;
                }
            };
            // Parsed within the limits the webhook records under, one object at a time.
            let status = match obj.raw_status() {
                None => None,
                Some(raw) => match parse_status(raw, self.settings.status_limits) {
                    Ok(status) => Some(status),
                    Err(error) => {
                        self.metrics.too_large();
                        tracing::debug!(%identity, %error, "this status is not recorded");
                        continue;
                    }
                },
            };
            let meta = &obj.metadata;
            let resolved = self.caches.resolve(
                &self.global,
                &identity.group,
                &identity.resource,
                identity.namespace.as_deref(),
                meta.annotations.as_ref(),
            );
            let policy = resolved.policy;
            let live = Live {
                identity,
                api_version: &ar.api_version,
                kind: &ar.kind,
                uid: &meta.uid,
                resource_version: &meta.resource_version,
                generation: meta.generation,
                created: obj.created(),
                annotations: meta.annotations.as_ref(),
                deleting: meta.deletion_timestamp.is_some(),
                status: status.as_ref(),
            };
            match check(&live, record.as_ref(), &policy, listed_at) {
                Check::Leave(_) => {}
                Check::Record(write) => match self.store.record(&write, budget).await {
                    Ok(crate::store::WriteOutcome::Written) => {
                        tally.corrected += 1;
                        self.metrics.corrected();
                    }
                    Ok(_) => {}
                    Err(error) => {
                        self.metrics.error("store");
                        tracing::warn!(identity = %live.identity, error = %error_chain(&error), "recording failed; tried again at the next pass");
                    }
                },
                Check::CatchUp { record_uid } => {
                    let mut restore = policy.restore.clone();
                    restore.mode = RestoreMode::Fill;
                    let now = Timestamp::now();
                    let job = RestoreJob {
                        id: String::new(),
                        action: JobKind::CatchUp {
                            uid: live.uid.to_owned(),
                        },
                        identity: live.identity.clone(),
                        api_version: ar.api_version.clone(),
                        kind: ar.kind.clone(),
                        record_uid,
                        created_at: now,
                        deadline: now
                            .checked_add(SignedDuration::from_secs(60))
                            .unwrap_or(now),
                        retry: false,
                        inline: false,
                        request_uid: String::new(),
                        policy: Some(restore),
                    };
                    match self
                        .store
                        .enqueue_catch_up(&job, live.uid, self.settings.catch_up_hold, budget)
                        .await
                    {
                        Ok(true) => {
                            tally.queued += 1;
                            self.metrics.catch_up("queued");
                            tracing::info!(identity = %live.identity, "an object created while restatus was not looking has a saved status; catch-up restore queued");
                        }
                        Ok(false) => {}
                        Err(error) => {
                            self.metrics.error("store");
                            tracing::warn!(identity = %live.identity, error = %error_chain(&error), "queueing a catch-up restore failed; tried again at the next pass");
                        }
                    }
                }
                Check::Hold { .. } => {
                    tally.held += 1;
                    // A bounded number of Events a type and pass, so that many held objects
                    // neither flood the API server nor slow the pass past its list's life;
                    // the rest are reported at later passes.
                    if tally.held_events < HELD_EVENTS_PER_TYPE && self.reported.first(live.uid) {
                        tally.held_events += 1;
                        self.metrics.catch_up("held");
                        tracing::info!(identity = %live.identity, "an object whose creator restatus did not see permitted has a saved status of an earlier incarnation, not restored: restores here are for status writers");
                        self.event_held(ar, obj).await;
                    }
                }
            }
        }
        Ok(())
    }

    /// Whether the webhook is not called for `namespace`, so resync leaves it alone too.
    fn skipped(&self, namespace: &str) -> bool {
        self.settings
            .skip_namespaces
            .iter()
            .any(|ns| ns == namespace)
            || self.caches.namespaces.get(namespace).is_some_and(|ns| {
                ns.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(IGNORE_LABEL))
                    .is_some_and(|v| v == "true")
            })
    }

    async fn event_held(&self, ar: &ApiResource, obj: &page::Item<'_>) {
        let event = Event {
            type_: EventType::Normal,
            reason: "SavedStatusWaiting".into(),
            note: Some(
                "A saved status of an earlier incarnation waits: restatus did not see a creator of this object who may update its status (it was created while restatus was not looking, or its creator was not permitted), and restores here go only to such creators (restatus.io/restore-for: status-writers). The object's first status write replaces the saved status, which stays in the record's history. To restore it, an administrator sets restatus.io/restore-for: creators on the namespace or the CRD before then; the next resync pass restores it."
                    .into(),
            ),
            action: "RestoreStatus".into(),
            secondary: None,
        };
        let reference = obj.reference(ar);
        if let Err(e) = self.recorder.publish(&event, &reference).await {
            tracing::warn!(object = %obj.metadata.name, error = %error_chain(&e), "could not publish the SavedStatusWaiting event");
        }
    }
}

/// The objects a second a type's list goes through, after `scanned` objects with `remaining`
/// to go: `rate`, or faster when that would not list them all within [`LIST_WITHIN`].
fn pace(scanned: u64, remaining: i64, rate: u32) -> f64 {
    let total = scanned as f64 + remaining.max(0) as f64;
    f64::from(rate.max(1)).max(total / LIST_WITHIN.as_secs_f64())
}

/// The identity of a listed object of `ar`.
fn identity_of(ar: &ApiResource, obj: &page::Item<'_>) -> ObjectIdentity {
    ObjectIdentity {
        group: ar.group.clone(),
        resource: ar.plural.clone(),
        namespace: obj.metadata.namespace.clone().filter(|ns| !ns.is_empty()),
        name: obj.metadata.name.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracked_types_read_like_kubectl_resource_names() {
        let t: TrackedType = "kubernetesclusters.infra.example.com".parse().unwrap();
        assert_eq!(
            (t.group.as_str(), t.resource.as_str()),
            ("infra.example.com", "kubernetesclusters")
        );
        let t: TrackedType = " services ".parse().unwrap();
        assert_eq!((t.group.as_str(), t.resource.as_str()), ("", "services"));
        for bad in ["", "Services", "services.", "a b", "x.Y"] {
            assert!(bad.parse::<TrackedType>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_type_is_listed_at_the_rate_unless_its_list_would_outlive_its_continue_token() {
        assert_eq!(pace(100, 9_900, 500), 500.0);
        assert_eq!(pace(0, 0, 0), 1.0);
        // 120,000 objects at 500/s take exactly 240 s.
        assert_eq!(pace(100, 119_900, 500), 500.0);
        assert_eq!(pace(100, 239_900, 500), 1_000.0);
        assert_eq!(pace(100, -5, 500), 500.0);
    }

    #[test]
    fn a_held_catch_up_is_reported_once_per_incarnation_within_a_bound() {
        let reported = Reported::new(2);
        assert!(reported.first("a"));
        assert!(!reported.first("a"));
        assert!(reported.first("b"));
        assert!(!reported.first("b"));
        // A third forgets the oldest.
        assert!(reported.first("c"));
        assert!(reported.first("a"));
        assert!(!reported.first("c"));
    }
}
