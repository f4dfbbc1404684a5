//! The Redis store: status records and the restore queue, behind a small API.
//!
//! Every call has a time budget; the admission path passes a small one (default 100 ms) so
//! a slow or absent Redis never holds up the API server. The key schema is in [`KeySchema`]
//! and written down in `docs/store.md`.

mod breaker;
mod conn;
mod keys;
mod metrics;
mod outage;
mod queue;
mod record;
mod seal;

use std::{collections::HashMap, sync::Arc, time::Duration};

use jiff::{SignedDuration, Timestamp};
use redis::{FromRedisValue, RedisError, Script, ScriptInvocation};
use serde_json::Value;
use tokio::time::Instant;

pub use breaker::{
    Breaker, BreakerMetrics, BreakerSettings, Circuit, DEFAULT_FAILURES, DEFAULT_PROBE_EVERY,
};
pub use conn::{ConnectError, RedisOptions, Topology};
pub use keys::{KeySchema, ObjectIdentity};
pub use metrics::StoreMetrics;
pub use outage::{FailedOpen, RedisState, after_probe};
pub use queue::{
    DEFAULT_QUEUE_CAP, Delivery, JobError, JobKind, QueueReader, QueueStats, Reclaimed, RestoreJob,
    new_job_id,
};
pub use record::{DecodeRecordError, Record, RecordWrite, Source, WriteOutcome, canonical, digest};
pub use seal::{Keyring, KeyringError, OpenError, SealError, sealed_with};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("invalid Redis URL")]
    Url(#[source] RedisError),
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("Redis {command} on {key} did not answer within {budget:?}")]
    Timeout {
        command: &'static str,
        key: String,
        budget: Duration,
    },
    #[error(
        "Redis {command} on {key} not tried: Redis has not been answering (the circuit breaker is open)"
    )]
    CircuitOpen { command: &'static str, key: String },
    #[error("Redis {command} on {key} failed")]
    Redis {
        command: &'static str,
        key: String,
        #[source]
        source: RedisError,
    },
    #[error("record {key} cannot be decoded")]
    Corrupt {
        key: String,
        #[source]
        source: DecodeRecordError,
    },
    #[error("the status of record {key} cannot be opened")]
    Sealed {
        key: String,
        #[source]
        source: OpenError,
    },
    #[error(
        "the status of record {key} is not sealed, and sealing is required (--require-sealed): it was not written by restatus, or not since `restatus reseal`"
    )]
    Unsealed { key: String },
    #[error("the status of record {key} cannot be sealed")]
    Seal {
        key: String,
        #[source]
        source: SealError,
    },
    #[error("restore job could not be encoded")]
    EncodeJob(#[source] serde_json::Error),
    #[error("no random bytes for a restore job id")]
    Random,
    #[error("Redis script on {key} answered {answer:?}")]
    UnexpectedAnswer { key: String, answer: String },
    #[error("resealing needs an encryption keyring (--encryption-key-file)")]
    NoKeyring,
    /// The restore queue holds its maximum of jobs (`--restore-queue-max-length`): Redis
    /// answered, and the job was not queued.
    #[error("the restore queue {key} is full ({cap} jobs); the job was not queued")]
    QueueFull { key: String, cap: u64 },
}

impl StoreError {
    /// Whether the error is in what is stored, not in reaching Redis: retrying will not help.
    /// Whether Redis could not be reached at all (no connection, or it was refused, reset or
    /// dropped), rather than answering slowly or with an error.
    pub fn is_unreachable(&self) -> bool {
        match self {
            StoreError::Connect(_) | StoreError::CircuitOpen { .. } => true,
            StoreError::Redis { source, .. } => {
                source.is_io_error()
                    || source.is_connection_refusal()
                    || source.is_connection_dropped()
                    || source.is_unrecoverable_error()
            }
            _ => false,
        }
    }

    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            StoreError::Corrupt { .. }
                | StoreError::Sealed { .. }
                | StoreError::Unsealed { .. }
                | StoreError::Seal { .. }
                | StoreError::EncodeJob(_)
        )
    }
}

/// Replaces a record's status (and its digest) only if it is still the one read, so a write
/// that came in meanwhile is never overwritten. KEYS[1] record; ARGV: the status read, the new
/// status, the new digest. Returns 1 when it replaced it.
const RESEAL_SCRIPT: &str = r#"
if redis.call('HGET', KEYS[1], 'status') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[2], 'digest', ARGV[3])
return 1
"#;

/// Whether a job whose live entry says `until` (ms since the epoch) is live now.
fn live_until(job: &str, until: Option<i64>) -> bool {
    !job.is_empty() && until.is_some_and(|until| until > Timestamp::now().as_millisecond())
}

/// What a history entry of the record `record_key` is sealed for: not the record's key.
fn history_context(record_key: &str) -> String {
    format!("{record_key}#history")
}

/// What [`Store::reseal`] did so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resealed {
    /// Records looked at.
    pub scanned: u64,
    /// Records sealed with an older key, sealed anew with the current one.
    pub resealed: u64,
    /// Records in clear that were sealed (only when asked to).
    pub sealed_from_clear: u64,
    /// Records in clear left as they are: restatus did not write them sealed, and anyone who
    /// can write Redis could have.
    pub left_in_clear: u64,
    /// Records already sealed with the current key.
    pub current: u64,
    /// Records written meanwhile (by restatus, which seals): left as they are.
    pub changed: u64,
    /// Records whose status could not be opened or read: left as they are.
    pub failed: Vec<String>,
}

/// Where a SCAN over every node goes on.
#[derive(Default)]
struct Scan {
    /// The nodes to scan, once known.
    nodes: Option<Vec<conn::ScanNode>>,
    /// The node being scanned, and where its scan goes on.
    node: usize,
    cursor: u64,
}

/// How long before a resync list a record must have been written for the list to overrule it
/// at the same resourceVersion: longer than any write takes from the webhook to storage
/// (webhooks time out within 30 s, requests within 60 s), so a write recorded earlier either
/// shows in the list or never landed.
pub const RESYNC_OVERRULES_AFTER: Duration = Duration::from_secs(120);

/// Compares the new status with what is stored and writes it when it is newer and different.
/// KEYS[1] record, KEYS[2] its history; ARGV: status, digest, apiVersion, kind, uid,
/// resourceVersion, generation, source rank, now, deleting (1/0), retention in ms, the history
/// entry of this status, how many entries the history keeps (0: none), the restore job this
/// is restatus's own write for ("" for none), and the writer's creation time when a record of
/// an earlier incarnation is caught up rather than replaced ("" for never): a record of
/// another uid written (to the second) no later than that is answered `other:<its uid>`; and,
/// for resync's observations, when its list was taken ("" for none).
///
/// The retention clock: a DELETE (rank 2) starts it, again if it already runs, so it counts
/// from the last DELETE even when an earlier one never landed (a later webhook or a
/// precondition refused it). An update of an object that has a `deletionTimestamp` starts it
/// only when it does not run. Any other write of the incarnation stops it, even with an
/// unchanged status; of the DELETE's own resourceVersion, only resync's observation from a
/// list taken well after the DELETE was recorded (the object outlived it). The history
/// follows the record's clock, and gains an entry whenever the status changes.
///
/// Resync's observation (`listed_at` given) overrules a record of the same uid written more
/// than [`RESYNC_OVERRULES_AFTER`] before its list, at the same or a later resourceVersion,
/// and replaces a record of another uid even when that one's object was deleted: resync asks
/// for that only when the status is the live object's own (see `resync::check`).
const RECORD_SCRIPT: &str = r#"
local key, hist = KEYS[1], KEYS[2]
local uid, rv, rank = ARGV[5], ARGV[6], tonumber(ARGV[8])
local now, deleting, retention = ARGV[9], ARGV[10] == '1', tonumber(ARGV[11])
local keep = tonumber(ARGV[13])
local function follow()
  local ttl = redis.call('PTTL', key)
  if ttl > 0 then redis.call('PEXPIRE', hist, ttl) else redis.call('PERSIST', hist) end
end
local cur = redis.call('HMGET', key, 'uid', 'digest', 'resourceVersion', 'rank', 'deletedAt',
  'recordedAt')
local cur_uid, cur_digest, cur_rv, cur_rank, cur_deleted = cur[1], cur[2], cur[3], cur[4], cur[5]
local cur_at = cur[6]
local same_deletion = false
if cur_uid then
  if cur_uid == uid then
    local a, b = tonumber(rv), tonumber(cur_rv)
    if a and b and (a < b or (a == b and rank < (tonumber(cur_rank) or 0))) then
      -- Unless resync lists the object well after the record was written (ARGV[16] is the
      -- list's time less the margin): a write that landed would show in a later
      -- resourceVersion, so a record of the same or a later one holds a write that never
      -- landed (a DELETE or status write refused after restatus saw it) or that no API
      -- server made (a forged review, a record planted in Redis). The object overrules it.
      local overruled = not deleting and ARGV[16] ~= '' and cur_at
        and string.sub(cur_at, 1, 19) < string.sub(ARGV[16], 1, 19)
      if not overruled then return 'stale' end
    end
    local deleted = cur_deleted and true or false
    if cur_digest == ARGV[2] and deleting == deleted then
      if rank == 2 then
        redis.call('HSET', key, 'deletedAt', now, 'recordedAt', now)
        redis.call('PEXPIRE', key, retention)
        follow()
      end
      return 'unchanged'
    end
    same_deletion = deleting and deleted and rank ~= 2
  elseif ARGV[15] ~= '' and cur_uid ~= '' and cur_at
      and string.sub(cur_at, 1, 19) <= string.sub(ARGV[15], 1, 19) then
    -- RFC 3339 times compared to the second, as Record::predates does.
    return 'other:' .. cur_uid
  elseif cur_deleted and rank == 0 and ARGV[16] == '' then
    -- The webhook's oldObject of a new incarnation: the saved status waits for its restore.
    -- Resync asks to record another incarnation's status only as that object's own.
    return 'stale'
  end
end
if cur_uid and cur_uid ~= uid then
  -- restoredAt says which incarnation a restore went into: not this one.
  redis.call('HDEL', key, 'restoredAt')
end
redis.call('HSET', key, 'status', ARGV[1], 'digest', ARGV[2], 'apiVersion', ARGV[3],
  'kind', ARGV[4], 'uid', uid, 'resourceVersion', rv, 'generation', ARGV[7],
  'rank', rank, 'recordedAt', now)
if ARGV[14] ~= '' then
  redis.call('HSET', key, 'restoredBy', ARGV[14])
else
  redis.call('HDEL', key, 'restoredBy')
end
if deleting then
  if not same_deletion then
    redis.call('HSET', key, 'deletedAt', now)
    redis.call('PEXPIRE', key, retention)
  end
else
  redis.call('HDEL', key, 'deletedAt')
  redis.call('PERSIST', key)
end
if keep > 0 and cur_digest ~= ARGV[2] then
  redis.call('LPUSH', hist, ARGV[12])
  redis.call('LTRIM', hist, 0, keep - 1)
end
follow()
return 'written'
"#;

/// Starts the retention clock of a record, again if it already runs (as a recorded DELETE
/// does): the object is deleted while restatus does not record it (its policy is disabled),
/// or resync found it gone. KEYS[1] record, KEYS[2] its history; ARGV: now, retention in ms,
/// and optionally a time: only a record written before it is expired (resync: a record
/// written since the list was taken belongs to an object the list could not see). Returns 1
/// when it started the clock.
const EXPIRE_SCRIPT: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if ARGV[3] then
  -- RFC 3339 times compared to the second (the fraction has no fixed width).
  local at = redis.call('HGET', KEYS[1], 'recordedAt')
  if redis.call('HEXISTS', KEYS[1], 'deletedAt') == 1 or not at
    or string.sub(at, 1, 19) >= string.sub(ARGV[3], 1, 19) then return 0 end
end
redis.call('HSET', KEYS[1], 'deletedAt', ARGV[1])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[2]))
return 1
"#;

/// A duration in whole milliseconds for Redis, at least 1.
fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}

/// Marks a record as belonging to the restored incarnation, recorded now: it no longer
/// expires (nor does its history); and ends the job, which is no longer one of the object's live jobs.
/// KEYS[1] record, KEYS[2] live job, KEYS[3] history; ARGV: the uid the restore started from,
/// the new uid, now, the job id.
const MARK_RESTORED_SCRIPT: &str = r#"
redis.call('HDEL', KEYS[2], ARGV[4])
local key = KEYS[1]
local cur_uid = redis.call('HGET', key, 'uid')
if not cur_uid then return 0 end
if cur_uid ~= ARGV[1] and cur_uid ~= ARGV[2] then return 0 end
redis.call('HSET', key, 'uid', ARGV[2], 'restoredAt', ARGV[3], 'recordedAt', ARGV[3])
redis.call('HDEL', key, 'deletedAt')
redis.call('PERSIST', key)
redis.call('PERSIST', KEYS[3])
return 1
"#;

/// Takes a lock, keeps it for its holder, or (hold 0) releases it if the holder has it.
/// KEYS[1] lock; ARGV: holder, hold in ms. Returns 1 when the holder holds it (or released it).
/// A lock without an expiry was not set by restatus (which always sets one): it is taken, so
/// that no one who can write Redis stops the passes for good with one.
const LOCK_SCRIPT: &str = r#"
local cur = redis.call('GET', KEYS[1])
local hold = tonumber(ARGV[2])
if hold == 0 then
  if cur == ARGV[1] then redis.call('DEL', KEYS[1]) return 1 end
  return 0
end
if cur == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], hold)
  return 1
end
if cur and redis.call('PTTL', KEYS[1]) ~= -1 then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', hold)
return 1
"#;

/// Holds a catch-up for one incarnation. KEYS[1] the hold; ARGV: the incarnation's uid, hold
/// in ms. Returns 1 when the hold is new: absent, or held for another incarnation (whose job,
/// if any, finds its object gone). A hold for the same uid is left as it is, so that nothing
/// renews it but its expiry.
const CATCH_UP_HOLD_SCRIPT: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', tonumber(ARGV[2]))
return 1
"#;

/// One Redis request: a command, a pipeline (a MULTI/EXEC transaction when built with
/// `atomic()`), or a Lua script (EVALSHA, loading the script when Redis does not know it).
enum Request<'a> {
    Command(&'a redis::Cmd),
    Pipeline(&'a redis::Pipeline),
    Script(&'a ScriptInvocation<'a>),
}

impl<'a> From<&'a redis::Cmd> for Request<'a> {
    fn from(cmd: &'a redis::Cmd) -> Self {
        Request::Command(cmd)
    }
}

impl<'a> From<&'a mut redis::Cmd> for Request<'a> {
    fn from(cmd: &'a mut redis::Cmd) -> Self {
        Request::Command(cmd)
    }
}

impl<'a> From<&'a redis::Pipeline> for Request<'a> {
    fn from(pipe: &'a redis::Pipeline) -> Self {
        Request::Pipeline(pipe)
    }
}

impl<'a> From<&'a ScriptInvocation<'a>> for Request<'a> {
    fn from(invocation: &'a ScriptInvocation<'a>) -> Self {
        Request::Script(invocation)
    }
}

/// The store. Cheap to clone; clones share one multiplexed, self-reconnecting connection.
#[derive(Clone)]
pub struct Store {
    conn: Arc<conn::Connection>,
    keys: KeySchema,
    metrics: StoreMetrics,
    /// Seals saved statuses at rest when configured.
    keyring: Option<Arc<Keyring>>,
    /// Refuse a stored status that is not sealed (with a keyring only).
    require_sealed: bool,
    /// How many of an object's last statuses are kept beside its record (0: none).
    history: usize,
    record_script: Arc<Script>,
    expire_script: Arc<Script>,
    mark_restored_script: Arc<Script>,
    lock_script: Arc<Script>,
    catch_up_hold_script: Arc<Script>,
    /// Calls fail at once while it is open, and tell it what they found (the admission
    /// path's store only).
    breaker: Option<Arc<Breaker>>,
    remove_idle_script: Arc<Script>,
    /// How many jobs the restore queue holds at most (0: no cap).
    queue_cap: u64,
}

impl Store {
    /// Prepares a connection to `url` for the keys of cluster `cluster` under `key_prefix`
    /// (see [`KeySchema`]). It connects lazily, so restatus starts (and answers reviews)
    /// while Redis is unreachable, and reconnects on its own.
    pub fn connect(
        url: &str,
        key_prefix: &str,
        cluster: &str,
        metrics: StoreMetrics,
        keyring: Option<Arc<Keyring>>,
    ) -> Result<Self, StoreError> {
        let options = RedisOptions {
            url: url.to_owned(),
            keepalive: Duration::from_secs(10),
            ..RedisOptions::default()
        };
        Self::connect_with(&options, key_prefix, cluster, metrics, keyring)
    }

    /// [`Store::connect`] with every way of reaching Redis: TLS, an ACL user, keepalive.
    pub fn connect_with(
        options: &RedisOptions,
        key_prefix: &str,
        cluster: &str,
        metrics: StoreMetrics,
        keyring: Option<Arc<Keyring>>,
    ) -> Result<Self, StoreError> {
        let keys = KeySchema::new(key_prefix, cluster);
        let conn = Arc::new(conn::Connection::new(options)?);
        conn::Connection::watch(&conn);
        Ok(Self {
            conn,
            keys,
            metrics,
            keyring,
            require_sealed: false,
            history: 0,
            record_script: Arc::new(Script::new(RECORD_SCRIPT)),
            expire_script: Arc::new(Script::new(EXPIRE_SCRIPT)),
            mark_restored_script: Arc::new(Script::new(MARK_RESTORED_SCRIPT)),
            lock_script: Arc::new(Script::new(LOCK_SCRIPT)),
            catch_up_hold_script: Arc::new(Script::new(CATCH_UP_HOLD_SCRIPT)),
            breaker: None,
            remove_idle_script: Arc::new(Script::new(queue::REMOVE_IDLE_SCRIPT)),
            queue_cap: DEFAULT_QUEUE_CAP,
        })
    }

    /// The same store on a connection of its own (made the same way, with `options`), for
    /// bulk work that must not delay the calls on the shared one.
    pub fn with_own_connection(&self, options: &RedisOptions) -> Result<Self, StoreError> {
        let conn = Arc::new(conn::Connection::new(options)?);
        conn::Connection::watch(&conn);
        Ok(Self {
            conn,
            ..self.clone()
        })
    }

    /// Refuses, from now on, a stored status that is not sealed: with a keyring, after every
    /// record was sealed (`restatus reseal`), so that no one who can write Redis plants one.
    /// Without a keyring it changes nothing.
    pub fn require_sealed(mut self, required: bool) -> Self {
        self.require_sealed = required && self.keyring.is_some();
        self
    }

    /// The same store with its calls going through `breaker`: refused at once while it is
    /// open, and each call's answer or failure told to it. For the admission path, whose
    /// every call would otherwise wait its whole budget while Redis is away.
    pub fn guarded_by(&self, breaker: Arc<Breaker>) -> Self {
        Self {
            breaker: Some(breaker),
            ..self.clone()
        }
    }

    /// The same store with no breaker: what the breaker's probe asks Redis through.
    pub fn unguarded(&self) -> Self {
        Self {
            breaker: None,
            ..self.clone()
        }
    }

    /// Queues at most `jobs` restore jobs (0: no cap); a job beyond is refused
    /// ([`StoreError::QueueFull`]) and counted.
    pub fn cap_queue(mut self, jobs: u64) -> Self {
        self.queue_cap = jobs;
        self
    }

    /// Keeps the last `entries` statuses of each object beside its record (0: none).
    pub fn keep_history(mut self, entries: usize) -> Self {
        self.history = entries;
        self
    }

    /// Runs one Redis call within `budget`, with its latency and errors counted.
    async fn call<T>(
        &self,
        command: &'static str,
        key: &str,
        budget: Duration,
        fut: impl Future<Output = Result<T, RedisError>>,
    ) -> Result<T, StoreError> {
        let start = Instant::now();
        let result = tokio::time::timeout(budget, fut).await;
        self.metrics
            .redis_call(command, start.elapsed(), matches!(result, Ok(Ok(_))));
        match result {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(source)) => Err(StoreError::Redis {
                command,
                key: key.to_owned(),
                source,
            }),
            Err(_) => Err(StoreError::Timeout {
                command,
                key: key.to_owned(),
                budget,
            }),
        }
    }

    /// Runs `f` on the shared connection within `budget`, connecting first if there is none.
    /// A connection that broke, or on which the call ran out of time (a Redis that vanished
    /// without a reset looks like that), is dropped: the next call connects again.
    async fn with_conn<T, F, Fut>(
        &self,
        command: &'static str,
        key: &str,
        budget: Duration,
        f: F,
    ) -> Result<T, StoreError>
    where
        F: FnOnce(conn::Conn) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        if let Some(breaker) = &self.breaker
            && breaker.refuses()
        {
            return Err(StoreError::CircuitOpen {
                command,
                key: key.to_owned(),
            });
        }
        let mut used = None;
        let run = async {
            let (id, conn) = self.conn.get().await?;
            used = Some(id);
            let result = f(conn).await;
            if let Err(error) = &result
                && conn::broken(error)
            {
                self.conn.forget(id).await;
            }
            result
        };
        let result = self.call(command, key, budget, run).await;
        if matches!(result, Err(StoreError::Timeout { .. }))
            && let Some(id) = used
        {
            self.conn.forget(id).await;
        }
        if let Some(breaker) = &self.breaker
            && let Some(event) = breaker::event_of(&result)
        {
            breaker.observe(event);
        }
        result
    }

    /// Sends one request on the shared connection, within `budget`.
    async fn send<'a, T: FromRedisValue>(
        &self,
        command: &'static str,
        key: &str,
        budget: Duration,
        request: impl Into<Request<'a>>,
    ) -> Result<T, StoreError> {
        let request = request.into();
        self.with_conn(command, key, budget, |mut conn| async move {
            match request {
                Request::Command(cmd) => cmd.query_async(&mut conn).await,
                Request::Pipeline(pipe) => pipe.query_async(&mut conn).await,
                Request::Script(invocation) => invocation.invoke_async(&mut conn).await,
            }
        })
        .await
    }

    /// Sends `requests` in one round trip (a pipeline) and answers each in order. On a Redis
    /// Cluster, where a pipeline must keep to one slot, they go as separate requests at once
    /// (the cluster connection still pipelines those bound for one node).
    async fn send_many<'a, T: FromRedisValue>(
        &self,
        command: &'static str,
        key: &str,
        budget: Duration,
        requests: &[Request<'a>],
    ) -> Result<Vec<T>, StoreError> {
        if !self.conn.is_cluster() {
            let mut pipe = redis::pipe();
            for request in requests {
                match request {
                    Request::Command(cmd) => {
                        pipe.add_command((*cmd).clone());
                    }
                    Request::Pipeline(_) => {
                        return Err(StoreError::UnexpectedAnswer {
                            key: key.to_owned(),
                            answer: "a pipeline within a pipeline".to_owned(),
                        });
                    }
                    Request::Script(invocation) => {
                        pipe.invoke_script(invocation);
                    }
                }
            }
            return self.send(command, key, budget, &pipe).await;
        }
        self.with_conn(command, key, budget, |conn| async move {
            let calls = requests.iter().map(|request| {
                let mut conn = conn.clone();
                async move {
                    match request {
                        Request::Command(cmd) => cmd.query_async(&mut conn).await,
                        Request::Pipeline(pipe) => pipe.query_async(&mut conn).await,
                        Request::Script(invocation) => invocation.invoke_async(&mut conn).await,
                    }
                }
            });
            futures::future::try_join_all(calls).await
        })
        .await
    }

    /// The next page of the keys that match `pattern`, `None` once every node was scanned
    /// to its end. A key may show up twice, and one written or moved (cluster slot migration)
    /// during the scan may be missed: SCAN's own promise.
    async fn scan_page(
        &self,
        scan: &mut Scan,
        pattern: &str,
        budget: Duration,
    ) -> Result<Option<Vec<String>>, StoreError> {
        if scan.nodes.is_none() {
            let nodes = self
                .with_conn("scan", pattern, budget, |mut conn| async move {
                    conn.scan_nodes().await
                })
                .await?;
            scan.nodes = Some(nodes);
        }
        let Some(node) = scan.nodes.as_ref().and_then(|n| n.get(scan.node)).cloned() else {
            return Ok(None);
        };
        let cursor = scan.cursor;
        let (next, keys) = self
            .with_conn("scan", pattern, budget, |mut conn| async move {
                conn.scan(&node, cursor, pattern, 1000).await
            })
            .await?;
        if next == 0 {
            scan.node += 1;
        }
        scan.cursor = next;
        Ok(Some(keys))
    }

    /// Records a status if it is newer than and different from the stored one.
    pub async fn record(
        &self,
        write: &RecordWrite,
        budget: Duration,
    ) -> Result<WriteOutcome, StoreError> {
        let key = self.keys.record(&write.identity);
        let now = Timestamp::now().to_string();
        let json = write.status.to_string();
        let (status, digest) = self.seal_text(&key, json.as_bytes())?;
        let entry = if self.history > 0 {
            self.history_entry(&key, &now, write, &json)?
        } else {
            String::new()
        };
        let mut invocation = self.record_script.prepare_invoke();
        invocation
            .key(&key)
            .key(self.keys.history(&write.identity))
            .arg(status)
            .arg(digest)
            .arg(&write.api_version)
            .arg(&write.kind)
            .arg(&write.uid)
            .arg(&write.resource_version)
            .arg(write.generation.map(|g| g.to_string()).unwrap_or_default())
            .arg(write.source as u8)
            .arg(&now)
            .arg(if write.deleting { "1" } else { "0" })
            .arg(millis(write.retention))
            .arg(entry)
            .arg(self.history)
            .arg(write.restored_by.as_deref().unwrap_or(""))
            .arg(write.catch_up.map(|at| at.to_string()).unwrap_or_default())
            .arg(
                write
                    .listed_at
                    .map(|at| {
                        at.checked_sub(
                            SignedDuration::try_from(RESYNC_OVERRULES_AFTER).unwrap_or_default(),
                        )
                        .unwrap_or(at)
                        .to_string()
                    })
                    .unwrap_or_default(),
            );
        let answer: String = self.send("record", &key, budget, &invocation).await?;
        let outcome = match answer.as_str() {
            "written" => WriteOutcome::Written,
            "unchanged" => WriteOutcome::Unchanged,
            "stale" => WriteOutcome::Stale,
            other => match other.strip_prefix("other:") {
                Some(uid) => WriteOutcome::OtherIncarnation {
                    record_uid: uid.to_owned(),
                },
                None => return Err(StoreError::UnexpectedAnswer { key, answer }),
            },
        };
        self.metrics.record_written(&outcome);
        Ok(outcome)
    }

    /// Connects and loads the scripts, so that the first review does not pay for it within
    /// its budget. Redis being down now is not fatal: the store connects when it comes back.
    pub async fn warm_up(&self, budget: Duration) {
        let key = self.keys.queue();
        let scripts = [
            &self.record_script,
            &self.expire_script,
            &self.mark_restored_script,
        ];
        let load = |mut conn: conn::Conn| async move {
            redis::cmd("PING").query_async::<()>(&mut conn).await?;
            for script in scripts {
                script.load_async(&mut conn).await?;
            }
            Ok::<(), RedisError>(())
        };
        match self.with_conn("warm_up", &key, budget, load).await {
            Ok(()) => tracing::info!("connected to Redis"),
            Err(error) => tracing::warn!(
                error = %crate::error::error_chain(&error),
                "Redis is not reachable yet; reviews are allowed unrecorded until it is"
            ),
        }
    }

    /// Starts the retention clock of an object's record, if it has one, again if it already
    /// runs. Returns whether there was a record.
    pub async fn expire(
        &self,
        identity: &ObjectIdentity,
        retention: Duration,
        budget: Duration,
    ) -> Result<bool, StoreError> {
        let args = [Timestamp::now().to_string(), millis(retention).to_string()];
        self.flag("expire", &self.expire_script, identity, &args, budget)
            .await
    }

    /// Starts the retention clock of an object's record, unless it already runs or the record
    /// was written at or after `seen_by` (resync: the object may exist after its list was
    /// taken). Returns whether it started the clock.
    pub async fn expire_unseen(
        &self,
        identity: &ObjectIdentity,
        retention: Duration,
        seen_by: Timestamp,
        budget: Duration,
    ) -> Result<bool, StoreError> {
        // The script compares times to the second: a record written in the second the list
        // was taken is not expired, which errs only towards expiring less.
        let args = [
            Timestamp::now().to_string(),
            millis(retention).to_string(),
            seen_by.to_string(),
        ];
        self.flag("expire", &self.expire_script, identity, &args, budget)
            .await
    }

    /// Runs a script that answers 1 when it changed the record of `identity`, else 0.
    async fn flag(
        &self,
        command: &'static str,
        script: &Script,
        identity: &ObjectIdentity,
        args: &[String],
        budget: Duration,
    ) -> Result<bool, StoreError> {
        let key = self.keys.record(identity);
        let mut invocation = script.prepare_invoke();
        invocation.key(&key).key(self.keys.history(identity));
        for arg in args {
            invocation.arg(arg);
        }
        let changed: i64 = self.send(command, &key, budget, &invocation).await?;
        Ok(changed == 1)
    }

    /// The status text and digest to store for `status` in the record `key`: sealed and
    /// with a keyed digest when a keyring is configured, plain JSON and SHA-256 otherwise.
    /// `key` is what the sealed text is bound to: the record's key, or another context for a
    /// copy kept elsewhere (a dead letter), which then never opens as the record.
    fn seal(&self, key: &str, status: &Value) -> Result<(String, String), StoreError> {
        self.seal_text(key, status.to_string().as_bytes())
    }

    /// [`Store::seal`] of a status already serialized: serde_json writes object keys sorted,
    /// so its text is the canonical one the digest is taken of.
    fn seal_text(&self, key: &str, json: &[u8]) -> Result<(String, String), StoreError> {
        match &self.keyring {
            None => Ok((
                String::from_utf8_lossy(json).into_owned(),
                record::digest_text(json),
            )),
            Some(keyring) => {
                let sealed = keyring.seal(key, json).map_err(|source| StoreError::Seal {
                    key: key.to_owned(),
                    source,
                })?;
                Ok((sealed, keyring.digest(key, json)))
            }
        }
    }

    /// The history entry of a write: when, of which incarnation and version, and the status
    /// (its JSON `json`). Sealed for the history of `key` when a keyring is configured, so
    /// that it never opens as the record.
    fn history_entry(
        &self,
        key: &str,
        now: &str,
        write: &RecordWrite,
        json: &str,
    ) -> Result<String, StoreError> {
        let entry = format!(
            "{{\"recordedAt\":{},\"uid\":{},\"resourceVersion\":{},\"status\":{json}}}",
            Value::from(now),
            Value::from(write.uid.as_str()),
            Value::from(write.resource_version.as_str()),
        );
        match &self.keyring {
            None => Ok(entry),
            Some(keyring) => keyring
                .seal(&history_context(key), entry.as_bytes())
                .map_err(|source| StoreError::Seal {
                    key: key.to_owned(),
                    source,
                }),
        }
    }

    /// The plain JSON of a stored status (sealed ones are opened; plain ones written before
    /// encryption was turned on are read as they are, unless sealing is required).
    fn open(&self, key: &str, stored: &str) -> Result<String, StoreError> {
        if !seal::is_sealed(stored) {
            if self.require_sealed {
                self.metrics.unsealed_refused();
                return Err(StoreError::Unsealed {
                    key: key.to_owned(),
                });
            }
            return Ok(stored.to_owned());
        }
        let sealed = |source| StoreError::Sealed {
            key: key.to_owned(),
            source,
        };
        let keyring = self.keyring.as_ref().ok_or(sealed(OpenError::NoKeyring))?;
        let plain = keyring.open(key, stored).map_err(sealed)?;
        String::from_utf8(plain).map_err(|_| sealed(OpenError::Malformed))
    }

    /// The key schema this store writes with.
    pub fn keys(&self) -> &KeySchema {
        &self.keys
    }

    /// The record of an object, if there is one.
    pub async fn get(
        &self,
        identity: &ObjectIdentity,
        budget: Duration,
    ) -> Result<Option<Record>, StoreError> {
        let key = self.keys.record(identity);
        let fields: HashMap<String, String> = self
            .send("hgetall", &key, budget, redis::cmd("HGETALL").arg(&key))
            .await?;
        self.decode(key, fields)
    }

    /// A record from the fields of its hash (none when there are none), its status opened.
    fn decode(
        &self,
        key: String,
        mut fields: HashMap<String, String>,
    ) -> Result<Option<Record>, StoreError> {
        if fields.is_empty() {
            return Ok(None);
        }
        if let Some(status) = fields.get_mut("status") {
            *status = self.open(&key, status)?;
        }
        Record::from_fields(fields)
            .map(Some)
            .map_err(|source| StoreError::Corrupt { key, source })
    }

    /// The record of an object and whether `job` is one of its live restore jobs, in one round
    /// trip.
    pub async fn get_with_job(
        &self,
        identity: &ObjectIdentity,
        job: &str,
        budget: Duration,
    ) -> Result<(Option<Record>, bool), StoreError> {
        let key = self.keys.record(identity);
        let mut pipe = redis::pipe();
        pipe.cmd("HGETALL")
            .arg(&key)
            .cmd("HGET")
            .arg(self.keys.job(identity))
            .arg(job);
        let (fields, until): (HashMap<String, String>, Option<i64>) =
            self.send("hgetall", &key, budget, &pipe).await?;
        Ok((self.decode(key, fields)?, live_until(job, until)))
    }

    /// The records of `identities`, in one round trip; each `None` where there is none, or an
    /// error for a record that cannot be read (that object alone).
    pub async fn get_many(
        &self,
        identities: &[ObjectIdentity],
        budget: Duration,
    ) -> Result<Vec<Result<Option<Record>, StoreError>>, StoreError> {
        if identities.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = identities.iter().map(|id| self.keys.record(id)).collect();
        let reads: Vec<redis::Cmd> = keys
            .iter()
            .map(|key| redis::cmd("HGETALL").arg(key).clone())
            .collect();
        let requests: Vec<Request<'_>> = reads.iter().map(Request::from).collect();
        let all: Vec<HashMap<String, String>> = self
            .send_many("hgetall", &keys[0], budget, &requests)
            .await?;
        Ok(keys
            .into_iter()
            .zip(all)
            .map(|(key, fields)| self.decode(key, fields))
            .collect())
    }

    /// Takes the lock `name` for `hold` unless another holder has it, or keeps it for `hold`
    /// from now when `holder` has it already: true when `holder` holds it. One replica of a
    /// cluster does what the lock is for; the lock ends on its own.
    pub async fn try_lock(
        &self,
        name: &str,
        holder: &str,
        hold: Duration,
        budget: Duration,
    ) -> Result<bool, StoreError> {
        let key = self.keys.lock(name);
        let mut invocation = self.lock_script.prepare_invoke();
        invocation.key(&key).arg(holder).arg(millis(hold).max(1));
        let held: i64 = self.send("lock", &key, budget, &invocation).await?;
        Ok(held == 1)
    }

    /// Releases the lock `name` if `holder` has it.
    pub async fn unlock(
        &self,
        name: &str,
        holder: &str,
        budget: Duration,
    ) -> Result<(), StoreError> {
        let key = self.keys.lock(name);
        let mut invocation = self.lock_script.prepare_invoke();
        invocation.key(&key).arg(holder).arg(0);
        let _: i64 = self.send("lock", &key, budget, &invocation).await?;
        Ok(())
    }

    /// Answers whether Redis answers within `budget`.
    pub async fn ping(&self, budget: Duration) -> bool {
        let key = self.keys.queue();
        self.send::<String>("ping", &key, budget, &redis::cmd("PING"))
            .await
            .is_ok()
    }

    /// Queues a catch-up job unless one for the same incarnation was queued within `hold`:
    /// resync finds the same object again at every pass until its job has run.
    pub async fn enqueue_catch_up(
        &self,
        job: &RestoreJob,
        uid: &str,
        hold: Duration,
        budget: Duration,
    ) -> Result<bool, StoreError> {
        let key = self.keys.catch_up(&job.identity);
        let mut invocation = self.catch_up_hold_script.prepare_invoke();
        invocation.key(&key).arg(uid).arg(millis(hold));
        let set: i64 = self.send("hold", &key, budget, &invocation).await?;
        if set == 0 {
            return Ok(false);
        }
        match self.enqueue(job, budget).await {
            Ok(_) => Ok(true),
            Err(error) => {
                // No job behind the hold: let the next write or pass queue one at once.
                let release = redis::cmd("DEL").arg(&key).clone();
                if let Err(e) = self.send::<i64>("del", &key, budget, &release).await {
                    tracing::debug!(error = %crate::error::error_chain(&e), "could not release a catch-up hold");
                }
                Err(error)
            }
        }
    }

    /// Starts the retention clock of every record of the type `group`/`resource` that `seen`
    /// does not know, was written before `seen_by` and whose clock does not run: objects
    /// deleted while restatus did not see the DELETE. `retention` gives each its retention.
    /// Returns how many clocks it started.
    pub async fn expire_unseen_of_type(
        &self,
        group: &str,
        resource: &str,
        seen: &(dyn Fn(&str) -> bool + Sync),
        retention: &(dyn Fn(&ObjectIdentity) -> Duration + Sync),
        seen_by: Timestamp,
        budget: Duration,
    ) -> Result<u64, StoreError> {
        let pattern = self.keys.type_pattern(group, resource);
        let mut scan = Scan::default();
        let mut started = 0;
        while let Some(keys) = self.scan_page(&mut scan, &pattern, budget).await? {
            for key in keys.iter().filter(|k| !seen(k)) {
                let Some(identity) = self.keys.identity_of(key) else {
                    continue;
                };
                if self
                    .expire_unseen(&identity, retention(&identity), seen_by, budget)
                    .await?
                {
                    started += 1;
                }
            }
        }
        Ok(started)
    }

    /// Whether `job` is one of the live restore jobs of an object.
    pub async fn job_is_live(
        &self,
        identity: &ObjectIdentity,
        job: &str,
        budget: Duration,
    ) -> Result<bool, StoreError> {
        let key = self.keys.job(identity);
        let until: Option<i64> = self
            .send("hget", &key, budget, redis::cmd("HGET").arg(&key).arg(job))
            .await?;
        Ok(live_until(job, until))
    }

    /// Ends `job`: it is no longer one of the object's live jobs. Returns whether it was.
    pub async fn release_job(
        &self,
        identity: &ObjectIdentity,
        job: &str,
        budget: Duration,
    ) -> Result<bool, StoreError> {
        let key = self.keys.job(identity);
        let released: i64 = self
            .send("hdel", &key, budget, redis::cmd("HDEL").arg(&key).arg(job))
            .await?;
        Ok(released == 1)
    }

    /// Claims the removal of the dead marker `marker` of an object for `hold`: true for the
    /// first caller, so that a burst of writes to the object queues one removal.
    pub async fn claim_unmark(
        &self,
        identity: &ObjectIdentity,
        marker: &str,
        hold: Duration,
        budget: Duration,
    ) -> Result<bool, StoreError> {
        let key = self.keys.unmark(identity);
        let set: Option<String> = self
            .send(
                "set",
                &key,
                budget,
                redis::cmd("SET")
                    .arg(&key)
                    .arg(marker)
                    .arg("NX")
                    .arg("PX")
                    .arg(millis(hold)),
            )
            .await?;
        Ok(set.is_some())
    }

    /// After a restore: the record now belongs to `new_uid` and no longer expires, and `job`
    /// is no longer the object's live job. A record that meanwhile belongs to a third
    /// incarnation is left alone.
    pub async fn mark_restored(
        &self,
        identity: &ObjectIdentity,
        old_uid: &str,
        new_uid: &str,
        job: &str,
        budget: Duration,
    ) -> Result<bool, StoreError> {
        let key = self.keys.record(identity);
        let mut invocation = self.mark_restored_script.prepare_invoke();
        invocation
            .key(&key)
            .key(self.keys.job(identity))
            .key(self.keys.history(identity))
            .arg(old_uid)
            .arg(new_uid)
            .arg(Timestamp::now().to_string())
            .arg(job);
        let changed: i64 = self
            .send("mark_restored", &key, budget, &invocation)
            .await?;
        Ok(changed == 1)
    }

    /// Seals every record of this cluster sealed with an older key with the keyring's current
    /// key, and with `seal_plaintext` the records in clear too (written before encryption was
    /// turned on; but anyone who can write Redis may have planted one, so that is a decision
    /// for whoever migrates). Each record is replaced only if it did not change since it was
    /// read. Calls `progress` after each batch. With `dry_run`, only counts what it would do.
    pub async fn reseal(
        &self,
        dry_run: bool,
        seal_plaintext: bool,
        budget: Duration,
        mut progress: impl FnMut(&Resealed),
    ) -> Result<Resealed, StoreError> {
        let keyring = self.keyring.clone().ok_or(StoreError::NoKeyring)?;
        let script = Script::new(RESEAL_SCRIPT);
        let pattern = self.keys.record_pattern();
        let mut done = Resealed::default();
        let mut scan = Scan::default();
        while let Some(keys) = self.scan_page(&mut scan, &pattern, budget).await? {
            if !keys.is_empty() {
                let reads: Vec<redis::Cmd> = keys
                    .iter()
                    .map(|key| redis::cmd("HGET").arg(key).arg("status").clone())
                    .collect();
                let requests: Vec<Request<'_>> = reads.iter().map(Request::from).collect();
                let stored: Vec<Option<String>> =
                    self.send_many("hget", &pattern, budget, &requests).await?;
                let mut writes: Vec<(String, String, String, String)> = Vec::new();
                for (key, stored) in keys.into_iter().zip(stored) {
                    done.scanned += 1;
                    let Some(stored) = stored else {
                        // Expired or forgotten since the scan saw it.
                        done.changed += 1;
                        continue;
                    };
                    if sealed_with(&stored) == Some(keyring.sealing_id()) {
                        done.current += 1;
                        continue;
                    }
                    let in_clear = !seal::is_sealed(&stored);
                    if in_clear && !seal_plaintext {
                        done.left_in_clear += 1;
                        continue;
                    }
                    let plain = if in_clear {
                        Some(stored.clone())
                    } else {
                        keyring
                            .open(&key, &stored)
                            .ok()
                            .and_then(|p| String::from_utf8(p).ok())
                    };
                    let Some(status) = plain.and_then(|p| serde_json::from_str::<Value>(&p).ok())
                    else {
                        done.failed.push(key);
                        continue;
                    };
                    let (sealed, digest) = self.seal(&key, &status)?;
                    writes.push((key, stored, sealed, digest));
                }
                let count = |done: &mut Resealed, stored: &str| {
                    if seal::is_sealed(stored) {
                        done.resealed += 1;
                    } else {
                        done.sealed_from_clear += 1;
                    }
                };
                if dry_run {
                    for (_, stored, _, _) in &writes {
                        count(&mut done, stored);
                    }
                } else if !writes.is_empty() {
                    let script = &script;
                    self.with_conn("script_load", &pattern, budget, |mut conn| async move {
                        script.load_async(&mut conn).await.map(|_| ())
                    })
                    .await?;
                    let invocations: Vec<ScriptInvocation<'_>> = writes
                        .iter()
                        .map(|(key, old, new, digest)| {
                            let mut invocation = script.prepare_invoke();
                            invocation.key(key).arg(old).arg(new).arg(digest);
                            invocation
                        })
                        .collect();
                    let requests: Vec<Request<'_>> =
                        invocations.iter().map(Request::from).collect();
                    let replaced: Vec<i64> = self
                        .send_many("reseal", &pattern, budget, &requests)
                        .await?;
                    for ((_, stored, _, _), replaced) in writes.iter().zip(replaced) {
                        if replaced == 1 {
                            count(&mut done, stored);
                        } else {
                            done.changed += 1;
                        }
                    }
                }
                progress(&done);
            }
        }
        Ok(done)
    }
}
