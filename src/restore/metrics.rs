//! Metrics of the restore worker: jobs by outcome, create-to-restored latency, the queue.

use std::time::Duration;

use super::Finished;
use crate::telemetry::group::*;

metric_group! {
    /// Jobs by outcome, create-to-restored latency, the queue's length and oldest job,
    /// reclaims, dead letters, jobs waiting for their object, consumers removed.
    #[derive(Clone)]
    pub struct RestoreMetrics {
        restores: Family<OutcomeLabels, Counter> = family("restores", "Restore jobs finished, by outcome (restored, already_restored, not_ours, expired, superseded, gone, no_record, record_replaced, already_failed, cancelled, unmarked, caught_up, record_not_earlier, failed, dead_lettered)"),
        latency: Histogram = histogram("restore_latency_seconds", "Time from the CREATE admission to the restored status", slow_histogram),
        queue_depth: IntGauge = gauge("restore_queue_depth", "Restore jobs in the queue (waiting or in progress)"),
        oldest_age: IntGauge = gauge("restore_queue_oldest_job_age_seconds", "Age of the oldest job in the queue (waiting or in progress), 0 when it is empty"),
        dead_letters: Counter = counter("restore_dead_letters", "Restore jobs moved to the dead-letter stream"),
        reclaimed: Counter = counter("restore_jobs_reclaimed", "Restore jobs taken over after they sat idle with a consumer: a replica that died or stalled, or an attempt that failed and is retried"),
        parked: IntGauge = gauge("restore_jobs_parked", "Restore jobs of this replica waiting for their object without holding a worker slot"),
        consumers_removed: Counter = counter("restore_consumers_removed", "Idle consumers without jobs removed from the queue's group (replicas that were killed)"),
    }
}

impl RestoreMetrics {
    /// A job finished with `outcome`.
    pub fn finished(&self, outcome: Finished) {
        self.restores
            .get_or_create(&OutcomeLabels {
                outcome: outcome.label(),
            })
            .inc();
    }

    /// A status restored `latency` after its CREATE was admitted.
    pub fn restored_after(&self, latency: Duration) {
        self.latency.observe(latency.as_secs_f64());
    }

    /// A job moved to the dead-letter stream.
    pub fn dead_lettered(&self) {
        self.dead_letters.inc();
    }

    /// Jobs in the queue and the age of the oldest, as last read from Redis.
    pub fn queue(&self, depth: u64, oldest_age: Duration) {
        self.queue_depth
            .set(i64::try_from(depth).unwrap_or(i64::MAX));
        self.oldest_age
            .set(i64::try_from(oldest_age.as_secs()).unwrap_or(i64::MAX));
    }

    /// `count` jobs were taken over from idle consumers.
    pub fn reclaimed(&self, count: usize) {
        self.reclaimed
            .inc_by(u64::try_from(count).unwrap_or(u64::MAX));
    }

    /// A job started (`true`) or stopped (`false`) waiting for its object without a slot.
    pub fn parked(&self, parked: bool) {
        self.parked.inc_by(if parked { 1 } else { -1 });
    }

    /// `count` consumers of dead replicas were removed from the group.
    pub fn consumers_removed(&self, count: usize) {
        self.consumers_removed
            .inc_by(u64::try_from(count).unwrap_or(u64::MAX));
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::{assert_samples, registered};

    #[test]
    fn the_help_text_lists_every_outcome() {
        let (registry, m) = registered(RestoreMetrics::register);
        // A family without samples is not written at all.
        m.finished(Finished::Restored);
        let text = crate::telemetry::encode(&registry);
        let help = text
            .lines()
            .find(|l| l.starts_with("# HELP restatus_restores "))
            .unwrap_or_else(|| panic!("{text}"));
        for outcome in Finished::ALL {
            assert!(
                help.contains(outcome.label()),
                "{} missing from {help}",
                outcome.label()
            );
        }
    }

    #[test]
    fn counts_outcomes_latency_depth_and_dead_letters() {
        let (registry, m) = registered(RestoreMetrics::register);
        m.queue(7, Duration::from_millis(2500));
        m.reclaimed(3);
        m.parked(true);
        m.parked(true);
        m.parked(false);
        m.consumers_removed(2);
        m.finished(Finished::Restored);
        m.finished(Finished::Expired);
        m.finished(Finished::Restored);
        m.restored_after(Duration::from_millis(12));
        m.dead_lettered();
        assert_samples(
            &registry,
            &[
                "restatus_restores_total{outcome=\"restored\"} 2",
                "restatus_restores_total{outcome=\"expired\"} 1",
                "restatus_restore_latency_seconds_count 1",
                "restatus_restore_latency_seconds_bucket{le=\"0.016\"} 1",
                "restatus_restore_queue_depth 7",
                "restatus_restore_queue_oldest_job_age_seconds 2",
                "restatus_restore_jobs_reclaimed_total 3",
                "restatus_restore_jobs_parked 1",
                "restatus_restore_consumers_removed_total 2",
                "restatus_restore_dead_letters_total 1",
            ],
        );
    }
}
