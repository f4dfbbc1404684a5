//! Metrics of the store: Redis calls and what record writes did.

use std::time::Duration;

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};

use super::WriteOutcome;
use crate::telemetry::{HistogramFamily, Registrar, latency_histogram};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CommandLabels {
    command: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

/// Redis latency and errors by command; records written and skipped.
#[derive(Clone)]
pub struct StoreMetrics {
    redis_errors: Family<CommandLabels, Counter>,
    redis_duration: HistogramFamily<CommandLabels>,
    records_written: Counter,
    records_skipped: Family<ReasonLabels, Counter>,
}

impl StoreMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let mut r = Registrar::new(registry);
        let redis_errors = r.counters(
            "redis_errors",
            "Redis calls that failed or ran out of time, by command",
        );
        let redis_duration = r.histograms(
            "redis_duration_seconds",
            "Latency of Redis calls, by command",
            latency_histogram,
        );
        Self {
            redis_errors,
            redis_duration,
            records_written: r.counter("records_written", "Status records written to the store"),
            records_skipped: r.counters(
                "records_skipped",
                "Status records not written, by reason (unchanged, stale)",
            ),
        }
    }

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

    /// What one record write did.
    pub fn record_written(&self, outcome: WriteOutcome) {
        let reason = match outcome {
            WriteOutcome::Written => {
                self.records_written.inc();
                return;
            }
            WriteOutcome::Unchanged => "unchanged",
            WriteOutcome::Stale => "stale",
        };
        self.records_skipped
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }
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
        m.record_written(WriteOutcome::Written);
        m.record_written(WriteOutcome::Unchanged);
        m.record_written(WriteOutcome::Stale);
        m.record_written(WriteOutcome::Stale);
        assert_samples(
            &registry,
            &[
                "restatus_redis_errors_total{command=\"record\"} 1",
                "restatus_redis_duration_seconds_count{command=\"record\"} 2",
                "restatus_records_written_total 1",
                "restatus_records_skipped_total{reason=\"unchanged\"} 1",
                "restatus_records_skipped_total{reason=\"stale\"} 2",
            ],
        );
    }
}
