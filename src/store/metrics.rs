//! Metrics of the store: Redis calls and what record writes did.

use std::time::Duration;

use super::WriteOutcome;
use crate::telemetry::group::*;

metric_group! {
    /// Redis latency and errors by command; records written and skipped.
    #[derive(Clone)]
    pub struct StoreMetrics {
        redis_duration: HistogramFamily<CommandLabels> = histograms("redis_duration_seconds", "Latency of Redis calls, by command", latency_histogram),
        redis_errors: Family<CommandLabels, Counter> = family("redis_errors", "Redis calls that failed or ran out of time, by command"),
        records_written: Counter = counter("records_written", "Status records written to the store"),
        records_skipped: ReasonCounters = family("records_skipped", "Status records not written, by reason (unchanged, stale, other_incarnation)"),
        unsealed_refused: Counter = counter("unsealed_records_refused", "Stored statuses refused because they are not sealed while --require-sealed is on"),
        jobs_refused: Counter = counter("restore_jobs_refused", "Restore jobs not queued because the queue held --restore-queue-max-length jobs"),
    }
}

impl StoreMetrics {
    /// One Redis call of `command` that took `elapsed` and succeeded or not.
    pub fn redis_call(&self, command: &'static str, elapsed: Duration, ok: bool) {
        let labels = CommandLabels { command };
        self.redis_duration
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
        if !ok {
            self.redis_errors.get_or_create(&labels).inc();
        }
    }

    /// A stored status that is not sealed was refused.
    pub fn unsealed_refused(&self) {
        self.unsealed_refused.inc();
    }

    /// A restore job was not queued: the queue was full.
    pub fn job_refused(&self) {
        self.jobs_refused.inc();
    }

    /// What one record write did.
    pub fn record_written(&self, outcome: &WriteOutcome) {
        let reason = match outcome {
            WriteOutcome::Written => {
                self.records_written.inc();
                return;
            }
            WriteOutcome::Unchanged => "unchanged",
            WriteOutcome::Stale => "stale",
            WriteOutcome::OtherIncarnation { .. } => "other_incarnation",
        };
        count_reason(&self.records_skipped, reason);
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CommandLabels {
    command: &'static str,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::{assert_samples, registered};

    #[test]
    fn counts_calls_errors_and_write_outcomes() {
        let (registry, m) = registered(StoreMetrics::register);
        m.redis_call("record", Duration::from_millis(1), true);
        m.redis_call("record", Duration::from_millis(2), false);
        m.record_written(&WriteOutcome::Written);
        m.record_written(&WriteOutcome::Unchanged);
        m.record_written(&WriteOutcome::Stale);
        m.record_written(&WriteOutcome::Stale);
        m.unsealed_refused();
        m.job_refused();
        assert_samples(
            &registry,
            &[
                "restatus_redis_errors_total{command=\"record\"} 1",
                "restatus_redis_duration_seconds_count{command=\"record\"} 2",
                "restatus_records_written_total 1",
                "restatus_records_skipped_total{reason=\"unchanged\"} 1",
                "restatus_records_skipped_total{reason=\"stale\"} 2",
                "restatus_unsealed_records_refused_total 1",
                "restatus_restore_jobs_refused_total 1",
            ],
        );
    }
}
