//! The restore queue: a Redis stream read through a consumer group.
//!
//! Any replica takes a job; an acknowledged job is deleted; a job whose consumer died is
//! reclaimed with XAUTOCLAIM by another replica; a job delivered too often moves to the
//! dead-letter stream.

use std::time::Duration;

use jiff::Timestamp;
use redis::{
    Script,
    streams::{StreamAutoClaimReply, StreamId, StreamPendingCountReply, StreamReadReply},
};
use serde::{Deserialize, Serialize};

use super::{ObjectIdentity, Store, StoreError, conn::Conn};
use crate::policy::RestorePolicy;

/// The consumer group every replica reads the queue through.
pub const GROUP: &str = "restatus";
/// About how many dead letters are kept (older ones are trimmed).
pub const DEAD_LETTERS_KEPT: u64 = 10_000;
/// How many jobs the queue holds at most unless configured otherwise
/// (`--restore-queue-max-length`).
pub const DEFAULT_QUEUE_CAP: u64 = 100_000;
const JOB_FIELD: &str = "job";

/// Adds a job unless the queue already holds `cap` jobs (0: no cap). KEYS[1] the queue; ARGV:
/// cap, field, job. Returns the new entry's id, or nil when the queue is full.
const CAPPED_ADD_SCRIPT: &str = r#"
local cap = tonumber(ARGV[1])
if cap > 0 and redis.call('XLEN', KEYS[1]) >= cap then return false end
return redis.call('XADD', KEYS[1], '*', ARGV[2], ARGV[3])
"#;

/// Deletes every consumer of the group, but `ARGV[3]`, that has been idle for `ARGV[2]` ms and
/// holds no pending jobs: replicas that were killed and never left. The check and the removal
/// are one script, so no job is lost in between. KEYS[1] the queue; ARGV: group, min idle ms,
/// the caller's own consumer. Returns the names removed.
pub(super) const REMOVE_IDLE_SCRIPT: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return {} end
local ok, consumers = pcall(redis.call, 'XINFO', 'CONSUMERS', KEYS[1], ARGV[1])
if not ok then return {} end
local removed = {}
for _, c in ipairs(consumers) do
  local f = {}
  for i = 1, #c, 2 do f[c[i]] = c[i + 1] end
  if f['name'] ~= ARGV[3] and tonumber(f['pending']) == 0
      and tonumber(f['idle']) >= tonumber(ARGV[2]) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], f['name'])
    removed[#removed + 1] = f['name']
  end
end
return removed
"#;

/// Deletes a consumer from the group unless it has pending entries (which DELCONSUMER would
/// discard). KEYS[1] the queue; ARGV: group, consumer. Returns 1 when it was removed.
const LEAVE_GROUP_SCRIPT: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local ok, pending = pcall(redis.call, 'XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2])
if not ok or #pending > 0 then return 0 end
return redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2]) == 0 and 1 or 0
"#;

/// What a job asks the worker to do.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "type")]
pub enum JobKind {
    /// Put the record back into the object whose CREATE was marked with the job's id.
    #[default]
    Restore,
    /// Take a pending marker that names `marker`, a job that is not live, off the incarnation
    /// `uid` (a status write cannot change metadata, so the webhook cannot do it itself).
    Unmark { uid: String, marker: String },
    /// Put the record back into the incarnation `uid`, created while restatus was not looking
    /// (resync found it): no CREATE marked it, so the job is bound to its uid.
    CatchUp { uid: String },
}

/// One job for the worker: a restore of the record of `identity` into the object its CREATE
/// made (bound by `id`, which that object carries), or the removal of a dead marker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RestoreJob {
    /// Unguessable, and set on the object by the CREATE's patch (`restatus.io/restore-job`):
    /// the worker restores only into an object that carries it. Empty in jobs that are bound
    /// to nothing, which restore nothing.
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub action: JobKind,
    pub identity: ObjectIdentity,
    /// apiVersion of the CREATE (`v1`, `infra.example.com/v1alpha1`).
    pub api_version: String,
    pub kind: String,
    /// uid of the incarnation the record was taken from (empty when unknown).
    pub record_uid: String,
    /// When the webhook admitted the CREATE.
    pub created_at: Timestamp,
    /// After this, a job whose object never appeared is dropped.
    pub deadline: Timestamp,
    /// Set by hand on a dead letter queued again: the job restores into its object even
    /// though an earlier delivery marked it `restatus.io/restore: failed`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub retry: bool,
    /// The status was already put into the object by the CREATE's patch (a type that keeps
    /// status on create); the worker only confirms and reports.
    #[serde(default)]
    pub inline: bool,
    /// uid of the admission request, to correlate logs.
    #[serde(default)]
    pub request_uid: String,
    /// What to restore and how, as resolved for the object when its CREATE was admitted
    /// (absent in jobs queued by older versions: the worker's global policy applies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<RestorePolicy>,
}

/// What a dead letter's copy of a record's status is sealed for: not the record's key.
pub fn dead_letter_context(record_key: &str) -> String {
    format!("{record_key}#dead-letter")
}

/// A new job id: 128 random bits in hex.
pub fn new_job_id() -> Result<String, StoreError> {
    use ring::rand::{SecureRandom, SystemRandom};
    let mut bytes = [0u8; 16];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| StoreError::Random)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Why a stream entry is not a restore job.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("the stream entry has no field {JOB_FIELD:?}")]
    MissingField,
    #[error("the stream entry's job is not a restore job")]
    Invalid(#[source] serde_json::Error),
}

/// Jobs taken over by [`Store::reclaim`], and where its next call goes on.
#[derive(Debug)]
pub struct Reclaimed {
    pub deliveries: Vec<Delivery>,
    pub cursor: String,
}

/// The queue as last read: how many jobs it holds and when the oldest was queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueStats {
    /// Jobs in the queue, waiting or in progress.
    pub length: u64,
    /// When the oldest of them was queued (its stream id's time), `None` when it is empty.
    pub oldest: Option<Timestamp>,
}

/// A job as read from the stream.
#[derive(Debug)]
pub struct Delivery {
    pub id: String,
    /// The job, or why its entry could not be decoded.
    pub job: Result<RestoreJob, JobError>,
    /// How many times the entry has been delivered, this time included.
    pub deliveries: u64,
    raw: String,
}

impl Delivery {
    fn from_entry(entry: &StreamId, deliveries: u64) -> Self {
        let raw: Option<String> = entry.get(JOB_FIELD);
        let job = match &raw {
            Some(text) => serde_json::from_str(text).map_err(JobError::Invalid),
            None => Err(JobError::MissingField),
        };
        Self {
            id: entry.id.clone(),
            job,
            deliveries,
            raw: raw.unwrap_or_default(),
        }
    }
}

impl Store {
    /// Creates the consumer group (and the stream) unless they exist.
    pub async fn ensure_queue_group(&self, budget: Duration) -> Result<(), StoreError> {
        let key = self.keys.queue();
        // "0": jobs queued before the first worker started are processed too. An existing
        // group (BUSYGROUP) is the usual answer, not an error.
        let create = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&key)
            .arg(GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .clone();
        let create = &create;
        self.with_conn("xgroup_create", &key, budget, |mut conn| async move {
            match create.query_async::<()>(&mut conn).await {
                Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
                other => other,
            }
        })
        .await
    }

    /// Removes this consumer from the group if it holds no jobs (at shutdown), so restarts do
    /// not leave consumers behind. A consumer that still holds jobs stays, for XAUTOCLAIM.
    /// The check and the removal are one script, so no job is lost in between.
    pub async fn remove_consumer_if_idle(
        &self,
        consumer: &str,
        budget: Duration,
    ) -> Result<bool, StoreError> {
        let key = self.keys.queue();
        let script = Script::new(LEAVE_GROUP_SCRIPT);
        let mut invocation = script.prepare_invoke();
        invocation.key(&key).arg(GROUP).arg(consumer);
        let removed: i64 = self.send("leave_group", &key, budget, &invocation).await?;
        Ok(removed == 1)
    }

    /// The capped add of `payload` to the queue, as one command of a request.
    fn capped_add(&self, key: &str, payload: String) -> redis::Cmd {
        redis::cmd("EVAL")
            .arg(CAPPED_ADD_SCRIPT)
            .arg(1)
            .arg(key)
            .arg(self.queue_cap)
            .arg(JOB_FIELD)
            .arg(payload)
            .clone()
    }

    /// A job the full queue refused: counted, and the error that says so.
    fn refused(&self, key: String) -> StoreError {
        self.metrics.job_refused();
        StoreError::QueueFull {
            key,
            cap: self.queue_cap,
        }
    }

    /// Adds a job unless the queue is full ([`StoreError::QueueFull`], counted); returns its
    /// stream id.
    pub async fn enqueue(&self, job: &RestoreJob, budget: Duration) -> Result<String, StoreError> {
        let key = self.keys.queue();
        let payload = serde_json::to_string(job).map_err(StoreError::EncodeJob)?;
        let add = self.capped_add(&key, payload);
        let id: Option<String> = self.send("xadd", &key, budget, &add).await?;
        id.ok_or_else(|| self.refused(key))
    }

    /// Adds a restore job whose object will carry the pending marker, and makes its id one of
    /// the object's live jobs for `ttl` (or until the worker finishes it): while it is, status
    /// writes to the marked object are merged with the saved status. Each job has an entry of
    /// its own, so a later CREATE of the same name (refused or not) never takes the place of
    /// the one whose object exists. One round trip; a second one when the queue is full
    /// ([`StoreError::QueueFull`]), to end the job's live entry.
    pub async fn enqueue_pending(
        &self,
        job: &RestoreJob,
        ttl: Duration,
        budget: Duration,
    ) -> Result<String, StoreError> {
        let key = self.keys.queue();
        let payload = serde_json::to_string(job).map_err(StoreError::EncodeJob)?;
        let live = self.keys.job(&job.identity);
        let ttl_ms = super::millis(ttl);
        let until = Timestamp::now()
            .as_millisecond()
            .saturating_add(i64::try_from(ttl_ms).unwrap_or(i64::MAX));
        let mut pipe = redis::pipe();
        pipe.cmd("HSET")
            .arg(&live)
            .arg(&job.id)
            .arg(until)
            .ignore()
            // Every entry ends before the newest one: the key outlives none of them.
            .cmd("PEXPIRE")
            .arg(&live)
            .arg(ttl_ms)
            .ignore();
        let add = self.capped_add(&key, payload);
        let id: Option<String> = if self.conn.is_cluster() {
            // The live job is in the object's slot, the queue in the cluster's: a pipeline
            // keeps to one slot, so the live job goes first, then the job.
            let () = self.send("hset", &live, budget, &pipe).await?;
            self.send("xadd", &key, budget, &add).await?
        } else {
            pipe.add_command(add);
            let (id,): (Option<String>,) = self.send("xadd", &key, budget, &pipe).await?;
            id
        };
        if let Some(id) = id {
            return Ok(id);
        }
        // No job behind the entry: a marker naming it must not be believed. Should this fail,
        // the entry ends with its TTL; no object carries its id meanwhile.
        if let Err(error) = self.release_job(&job.identity, &job.id, budget).await {
            tracing::debug!(error = %crate::error::error_chain(&error), "could not end the live entry of a job the full queue refused");
        }
        Err(self.refused(key))
    }

    /// Whether `job`, one of the object's jobs, has a newer live job beside it: a later CREATE
    /// of the same name was admitted (jobs are ordered by the end of their lifetime, which
    /// each gets as its admission time plus the same TTL).
    pub async fn has_newer_job(
        &self,
        identity: &ObjectIdentity,
        job: &str,
        budget: Duration,
    ) -> Result<bool, StoreError> {
        let key = self.keys.job(identity);
        let live: std::collections::HashMap<String, i64> = self
            .send("hgetall", &key, budget, redis::cmd("HGETALL").arg(&key))
            .await?;
        let Some(mine) = live.get(job).copied() else {
            return Ok(false);
        };
        let now = Timestamp::now().as_millisecond();
        Ok(live
            .iter()
            .any(|(id, until)| id != job && *until > mine && *until > now))
    }

    /// Acknowledges and deletes a finished job, atomically.
    pub async fn ack(&self, id: &str, budget: Duration) -> Result<(), StoreError> {
        let key = self.keys.queue();
        let mut pipe = redis::pipe();
        pipe.atomic()
            .xack(&key, GROUP, &[id])
            .ignore()
            .xdel(&key, &[id])
            .ignore();
        self.send("xack", &key, budget, &pipe).await
    }

    /// Moves a job to the dead-letter stream with the reason and, when known, the saved
    /// status it was to restore (the new incarnation's writes replace the record, so the
    /// dead letter keeps it for a restore by hand). The stream keeps about the newest
    /// [`DEAD_LETTERS_KEPT`] entries.
    pub async fn dead_letter(
        &self,
        delivery: &Delivery,
        reason: &str,
        saved_status: Option<&serde_json::Value>,
        budget: Duration,
    ) -> Result<(), StoreError> {
        let key = self.keys.queue();
        let dead = self.keys.dead_letters();
        let deliveries = delivery.deliveries.to_string();
        let failed_at = Timestamp::now().to_string();
        // Sealed like the record it came from, but for a context of its own: a dead letter's
        // copy never opens as the record, so it cannot be replayed into it.
        let status = match (saved_status, &delivery.job) {
            (Some(status), Ok(job)) => Some(
                self.seal(
                    &dead_letter_context(&self.keys.record(&job.identity)),
                    status,
                )?
                .0,
            ),
            _ => None,
        };
        let mut fields: Vec<(&str, &str)> = vec![
            (JOB_FIELD, delivery.raw.as_str()),
            ("reason", reason),
            ("id", delivery.id.as_str()),
            ("deliveries", &deliveries),
            ("failedAt", &failed_at),
        ];
        if let Some(status) = &status {
            fields.push(("status", status));
        }
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("XADD")
            .arg(&dead)
            .arg("MAXLEN")
            .arg("~")
            .arg(DEAD_LETTERS_KEPT)
            .arg("*")
            .arg(&fields)
            .ignore()
            .xack(&key, GROUP, &[&delivery.id])
            .ignore()
            .xdel(&key, &[&delivery.id])
            .ignore();
        self.send("dead_letter", &key, budget, &pipe).await
    }

    /// Takes over jobs that sat unacknowledged with any consumer for `min_idle`, with how
    /// often each was delivered (the claim counts as one more delivery), scanning the pending
    /// jobs from `cursor` on. Redis looks at a bounded number of pending jobs per call, so the
    /// scan goes on where the last call stopped: the returned cursor, `0-0` once it wrapped.
    pub async fn reclaim(
        &self,
        consumer: &str,
        min_idle: Duration,
        cursor: &str,
        count: usize,
        budget: Duration,
    ) -> Result<Reclaimed, StoreError> {
        let key = self.keys.queue();
        let claim = redis::cmd("XAUTOCLAIM")
            .arg(&key)
            .arg(GROUP)
            .arg(consumer)
            .arg(u64::try_from(min_idle.as_millis()).unwrap_or(u64::MAX))
            .arg(cursor)
            .arg("COUNT")
            .arg(count)
            .clone();
        let reply: StreamAutoClaimReply = self.send("xautoclaim", &key, budget, &claim).await?;
        let cursor = reply.next_stream_id;
        if reply.claimed.is_empty() {
            return Ok(Reclaimed {
                deliveries: Vec::new(),
                cursor,
            });
        }
        let mut pipe = redis::pipe();
        for entry in &reply.claimed {
            pipe.cmd("XPENDING")
                .arg(&key)
                .arg(GROUP)
                .arg(&entry.id)
                .arg(&entry.id)
                .arg(1);
        }
        let counts: Vec<StreamPendingCountReply> =
            self.send("xpending", &key, budget, &pipe).await?;
        let deliveries = reply
            .claimed
            .iter()
            .zip(counts)
            .map(|(entry, pending)| {
                let deliveries = pending
                    .ids
                    .first()
                    .map_or(1, |p| u64::try_from(p.times_delivered).unwrap_or(u64::MAX));
                Delivery::from_entry(entry, deliveries)
            })
            .collect();
        Ok(Reclaimed { deliveries, cursor })
    }

    /// Resets the idle time of jobs this consumer is still working on, so no other replica
    /// reclaims them.
    pub async fn touch(
        &self,
        consumer: &str,
        ids: &[String],
        budget: Duration,
    ) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        let key = self.keys.queue();
        let claim = redis::cmd("XCLAIM")
            .arg(&key)
            .arg(GROUP)
            .arg(consumer)
            .arg(0)
            .arg(ids)
            .arg("JUSTID")
            .clone();
        let _: Vec<String> = self.send("xclaim", &key, budget, &claim).await?;
        Ok(())
    }

    /// Jobs in the queue, waiting or in progress, and when the oldest was queued.
    pub async fn queue_stats(&self, budget: Duration) -> Result<QueueStats, StoreError> {
        let key = self.keys.queue();
        let mut pipe = redis::pipe();
        pipe.cmd("XLEN")
            .arg(&key)
            .cmd("XRANGE")
            .arg(&key)
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(1);
        let (length, first): (u64, Vec<(String, redis::Value)>) =
            self.send("xlen", &key, budget, &pipe).await?;
        // A stream id is `<ms since the epoch>-<sequence>`.
        let oldest = first
            .first()
            .and_then(|(id, _)| id.split_once('-'))
            .and_then(|(ms, _)| ms.parse::<i64>().ok())
            .and_then(|ms| Timestamp::from_millisecond(ms).ok());
        Ok(QueueStats { length, oldest })
    }

    /// Removes the consumers of the group, other than `consumer`, that have been idle for
    /// `min_idle` and hold no jobs: those of replicas that were killed and never left. A
    /// consumer that still holds jobs stays until they are reclaimed from it. Removing a live
    /// but idle consumer loses nothing (it holds no jobs; its next read makes it again).
    /// Returns the names removed.
    pub async fn remove_idle_consumers(
        &self,
        consumer: &str,
        min_idle: Duration,
        budget: Duration,
    ) -> Result<Vec<String>, StoreError> {
        let key = self.keys.queue();
        let mut invocation = self.remove_idle_script.prepare_invoke();
        invocation
            .key(&key)
            .arg(GROUP)
            .arg(super::millis(min_idle))
            .arg(consumer);
        self.send("remove_idle_consumers", &key, budget, &invocation)
            .await
    }

    /// A reader with its own connection, for blocking reads that would otherwise hold up the
    /// shared connection.
    pub async fn reader(&self, budget: Duration) -> Result<QueueReader, StoreError> {
        let key = self.keys.queue();
        let conn = self
            .call("connect", &key, budget, self.conn.dedicated(budget))
            .await?;
        Ok(QueueReader {
            store: self.clone(),
            conn,
        })
    }
}

/// Reads new jobs with XREADGROUP on a dedicated connection.
pub struct QueueReader {
    store: Store,
    conn: Conn,
}

impl QueueReader {
    /// Waits up to `block` for at most `count` new jobs for `consumer`.
    pub async fn read(
        &mut self,
        consumer: &str,
        count: usize,
        block: Duration,
    ) -> Result<Vec<Delivery>, StoreError> {
        let key = self.store.keys.queue();
        let block_ms = u64::try_from(block.as_millis()).unwrap_or(u64::MAX);
        let reply: Option<StreamReadReply> = self
            .store
            .call(
                "xreadgroup",
                &key,
                block + Duration::from_secs(2),
                redis::cmd("XREADGROUP")
                    .arg("GROUP")
                    .arg(GROUP)
                    .arg(consumer)
                    .arg("COUNT")
                    .arg(count)
                    .arg("BLOCK")
                    .arg(block_ms)
                    .arg("STREAMS")
                    .arg(&key)
                    .arg(">")
                    .query_async(&mut self.conn),
            )
            .await?;
        Ok(reply
            .into_iter()
            .flat_map(|r| r.keys)
            .flat_map(|k| k.ids)
            .map(|entry| Delivery::from_entry(&entry, 1))
            .collect())
    }
}
