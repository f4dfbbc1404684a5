//! Logs and metrics.
//!
//! Logs name objects by identity and requests by uid; they never contain objects or status
//! contents. Metrics are Prometheus text served on the admin port.

use std::{io::IsTerminal, sync::atomic::AtomicI64};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};
use tracing_subscriber::{EnvFilter, fmt, prelude::*};

use crate::config::{LogArgs, LogFormat};

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("invalid log filter {filter:?}")]
    Filter {
        filter: String,
        #[source]
        source: tracing_subscriber::filter::ParseError,
    },
    #[error("a global tracing subscriber is already installed")]
    AlreadyInstalled,
}

/// Installs the global tracing subscriber (text or JSON on stderr).
pub fn init_logging(args: &LogArgs) -> Result<(), TelemetryError> {
    let filter = EnvFilter::try_new(&args.log_level).map_err(|source| TelemetryError::Filter {
        filter: args.log_level.clone(),
        source,
    })?;
    let registry = tracing_subscriber::registry().with(filter);
    let result = match args.log_format {
        LogFormat::Text => registry
            .with(
                fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(std::io::stderr().is_terminal())
                    .with_target(false),
            )
            .try_init(),
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
    };
    result.map_err(|_| TelemetryError::AlreadyInstalled)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AdmissionLabels {
    pub operation: &'static str,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabels {
    pub operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CommandLabels {
    pub command: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 250 µs .. ~8 s
    Histogram::new(exponential_buckets(0.00025, 2.0, 16))
}

fn restore_histogram() -> Histogram {
    // 1 ms .. ~65 s: a restore waits for its CREATE to land.
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

/// Every metric restatus exports. Cheap to clone behind an `Arc`.
pub struct Metrics {
    registry: Registry,
    pub admission_requests: Family<AdmissionLabels, Counter>,
    pub admission_duration: HistogramFamily<OperationLabels>,
    pub admission_invalid: Family<ReasonLabels, Counter>,
    pub records_written: Counter,
    pub records_skipped: Family<ReasonLabels, Counter>,
    pub redis_errors: Family<CommandLabels, Counter>,
    pub redis_duration: HistogramFamily<CommandLabels>,
    pub restore_jobs_enqueued: Counter,
    pub restores: Family<OutcomeLabels, Counter>,
    pub restore_latency: Histogram,
    pub restore_queue_depth: Gauge<i64, AtomicI64>,
    pub restore_dead_letters: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("restatus");
        let admission_requests = Family::<AdmissionLabels, Counter>::default();
        registry.register(
            "admission_requests",
            "Admission reviews answered, by operation and outcome",
            admission_requests.clone(),
        );
        let admission_duration: HistogramFamily<OperationLabels> =
            Family::new_with_constructor(latency_histogram);
        registry.register(
            "admission_duration_seconds",
            "Time to answer an admission review, by operation",
            admission_duration.clone(),
        );
        let admission_invalid = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "admission_invalid_requests",
            "Requests to /mutate answered 4xx because the body was not a usable AdmissionReview",
            admission_invalid.clone(),
        );
        let records_written = Counter::default();
        registry.register(
            "records_written",
            "Status records written to the store",
            records_written.clone(),
        );
        let records_skipped = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "records_skipped",
            "Status records not written, by reason (unchanged, stale)",
            records_skipped.clone(),
        );
        let redis_errors = Family::<CommandLabels, Counter>::default();
        registry.register(
            "redis_errors",
            "Redis calls that failed or ran out of time, by command",
            redis_errors.clone(),
        );
        let redis_duration: HistogramFamily<CommandLabels> =
            Family::new_with_constructor(latency_histogram);
        registry.register(
            "redis_duration_seconds",
            "Latency of Redis calls, by command",
            redis_duration.clone(),
        );
        let restore_jobs_enqueued = Counter::default();
        registry.register(
            "restore_jobs_enqueued",
            "Restore jobs added to the queue by the webhook",
            restore_jobs_enqueued.clone(),
        );
        let restores = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "restores",
            "Restore jobs finished, by outcome (restored, already_restored, already_exists, expired, gone, no_record, failed, dead_lettered)",
            restores.clone(),
        );
        let restore_latency = restore_histogram();
        registry.register(
            "restore_latency_seconds",
            "Time from the CREATE admission to the restored status",
            restore_latency.clone(),
        );
        let restore_queue_depth = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "restore_queue_depth",
            "Restore jobs in the queue (waiting or in progress)",
            restore_queue_depth.clone(),
        );
        let restore_dead_letters = Counter::default();
        registry.register(
            "restore_dead_letters",
            "Restore jobs moved to the dead-letter stream",
            restore_dead_letters.clone(),
        );
        Self {
            registry,
            admission_requests,
            admission_duration,
            admission_invalid,
            records_written,
            records_skipped,
            redis_errors,
            redis_duration,
            restore_jobs_enqueued,
            restores,
            restore_latency,
            restore_queue_depth,
            restore_dead_letters,
        }
    }

    /// The metrics in Prometheus text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    pub fn restore_outcome(&self, outcome: &'static str) {
        self.restores
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_prometheus_text_with_prefix_and_labels() {
        let m = Metrics::new();
        m.admission_requests
            .get_or_create(&AdmissionLabels {
                operation: "UPDATE",
                outcome: "recorded",
            })
            .inc();
        m.admission_duration
            .get_or_create(&OperationLabels {
                operation: "UPDATE",
            })
            .observe(0.001);
        m.restore_outcome("restored");
        let text = m.encode();
        assert!(text.contains(
            "restatus_admission_requests_total{operation=\"UPDATE\",outcome=\"recorded\"} 1"
        ));
        assert!(text.contains("restatus_admission_duration_seconds_bucket"));
        assert!(text.contains("restatus_restores_total{outcome=\"restored\"} 1"));
        assert!(text.ends_with("# EOF\n"));
    }
}
