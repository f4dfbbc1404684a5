//! Logs, and what every metric group shares.
//!
//! Logs name objects by identity and requests by uid; they never contain objects or status
//! contents. Each concern owns its metric group (`AdmissionMetrics`, `StoreMetrics`,
//! `RestoreMetrics`, `CertMetrics`, `PolicyMetrics`, `ServerMetrics`), declared with
//! [`metric_group!`], which gives it a `register` function; the group adds its recording
//! methods. This module holds the registry they register into and the histogram shapes they
//! share.

use std::{fmt::Debug, hash::Hash, io::IsTerminal, sync::atomic::AtomicI64};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::{Metric, Registry},
};
use tracing_subscriber::{EnvFilter, fmt, prelude::*};

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

/// How log lines are written.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// The log filter restatus runs with: `filter` in tracing's EnvFilter syntax, with the
/// Kubernetes client held at `info` unless the filter names it. At `debug` it logs the API
/// server's error responses whole, and a validation error quotes the status values it
/// refused; restatus itself logs only their field paths.
pub fn log_filter(filter: &str) -> Result<EnvFilter, TelemetryError> {
    let invalid = |source| TelemetryError::Filter {
        filter: filter.to_owned(),
        source,
    };
    let mut env_filter = EnvFilter::try_new(filter).map_err(invalid)?;
    if !filter.contains("kube_client") {
        let directive = "kube_client=info".parse().map_err(invalid)?;
        env_filter = env_filter.add_directive(directive);
    }
    Ok(env_filter)
}

/// Installs the global tracing subscriber (text or JSON on stderr) with `filter` (see
/// [`log_filter`]).
pub fn init_logging(format: LogFormat, filter: &str) -> Result<(), TelemetryError> {
    let env_filter = log_filter(filter)?;
    let registry = tracing_subscriber::registry().with(env_filter);
    let result = match format {
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

/// The registry every metric group registers into; all names get the `restatus_` prefix.
pub fn registry() -> Registry {
    Registry::with_prefix("restatus")
}

/// The metrics in Prometheus text exposition format.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, registry);
    out
}

/// What restatus has done, read from its own metrics: the totals a status line compares.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Activity {
    /// Admission reviews answered (`restatus_admission_requests_total`, every label).
    pub reviews: u64,
    /// Status records written (`restatus_records_written_total`).
    pub records: u64,
    /// Restores done (`restatus_restores_total`, outcomes `restored` and `caught_up`).
    pub restores: u64,
    /// Unix time of the last review answered; 0 before the first.
    pub last_review: i64,
}

impl Activity {
    /// The totals in `registry` now.
    pub fn read(registry: &Registry) -> Self {
        Self::parse(&encode(registry))
    }

    /// The totals in an OpenMetrics text exposition.
    fn parse(text: &str) -> Self {
        let mut activity = Self::default();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let (name, labels) = series.split_once('{').unwrap_or((series, ""));
            let Ok(value) = value.parse::<f64>() else {
                continue;
            };
            // Counters and the timestamp are whole numbers.
            let whole = value as u64;
            match name {
                "restatus_admission_requests_total" => activity.reviews += whole,
                "restatus_records_written_total" => activity.records += whole,
                "restatus_restores_total"
                    if labels.contains("outcome=\"restored\"")
                        || labels.contains("outcome=\"caught_up\"") =>
                {
                    activity.restores += whole
                }
                "restatus_admission_last_review_timestamp_seconds" => {
                    activity.last_review = value as i64;
                }
                _ => {}
            }
        }
        activity
    }

    /// What was done since `earlier` (the last review stays this one's).
    pub fn since(&self, earlier: &Self) -> Self {
        Self {
            reviews: self.reviews.saturating_sub(earlier.reviews),
            records: self.records.saturating_sub(earlier.records),
            restores: self.restores.saturating_sub(earlier.restores),
            last_review: self.last_review,
        }
    }
}

/// Logs a status line every `interval` until `stop`: reviews received, records written and
/// restores done since the line before, and when the last review came. It does not depend on
/// readiness or on Redis: a replica that the API server no longer calls says so in its logs.
pub async fn status_lines(
    registry: std::sync::Arc<Registry>,
    interval: std::time::Duration,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut earlier = Activity::read(&registry);
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let now = Activity::read(&registry);
        let done = now.since(&earlier);
        earlier = now;
        let seconds = interval.as_secs();
        if done.last_review == 0 {
            tracing::info!(
                reviews = done.reviews,
                records = done.records,
                restores = done.restores,
                interval_seconds = seconds,
                "status: no admission review received since start"
            );
        } else {
            let ago = unix_seconds().saturating_sub(done.last_review);
            tracing::info!(
                reviews = done.reviews,
                records = done.records,
                restores = done.restores,
                last_review_seconds_ago = ago,
                interval_seconds = seconds,
                "status: {} reviews received, {} records written, {} restores done in the last {seconds}s",
                done.reviews,
                done.records,
                done.restores,
            );
        }
    }
}

/// Seconds since the Unix epoch; 0 on a clock set before it.
pub fn unix_seconds() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// What a metric group's module uses, in one import: `use crate::telemetry::group::*;`.
pub(crate) mod group {
    pub(crate) use prometheus_client::{
        encoding::EncodeLabelSet,
        metrics::{counter::Counter, family::Family, histogram::Histogram},
    };

    pub(crate) use super::{
        HistogramFamily, IntGauge, ReasonCounters, count_reason, latency_histogram, metric_group,
        slow_histogram,
    };
}

/// A gauge of whole numbers.
pub type IntGauge = Gauge<i64, AtomicI64>;

/// Counters by `reason`, the label set several groups share.
pub type ReasonCounters = Family<ReasonLabels, Counter>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    reason: &'static str,
}

/// Counts one of `reason` in `counters`.
pub fn count_reason(counters: &ReasonCounters, reason: &'static str) {
    counters.get_or_create(&ReasonLabels { reason }).inc();
}

/// A family of histograms with one shape.
pub type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Makes metrics and registers them in one step, so a metric group builds each of its fields
/// with one call: `requests: r.family("admission_requests", "Reviews answered")`. Groups
/// declare their fields with [`metric_group!`], which calls it.
pub struct Registrar<'a> {
    registry: &'a mut Registry,
}

impl<'a> Registrar<'a> {
    pub fn new(registry: &'a mut Registry) -> Self {
        Self { registry }
    }

    fn add<M: Metric + Clone>(&mut self, name: &str, help: &str, metric: M) -> M {
        self.registry.register(name, help, metric.clone());
        metric
    }

    /// A counter; its samples get the `_total` suffix.
    pub fn counter(&mut self, name: &str, help: &str) -> Counter {
        self.add(name, help, Counter::default())
    }

    /// Metrics of kind `M` (counters, gauges) by label set `L`.
    pub fn family<L, M>(&mut self, name: &str, help: &str) -> Family<L, M>
    where
        L: Clone + Hash + Eq + EncodeLabelSet + Debug + Send + Sync + 'static,
        M: Default + Debug + Send + Sync + 'static,
        Family<L, M>: Metric,
    {
        self.add(name, help, Family::default())
    }

    pub fn gauge(&mut self, name: &str, help: &str) -> IntGauge {
        self.add(name, help, Gauge::default())
    }

    /// A histogram with the buckets `shape` makes.
    pub fn histogram(&mut self, name: &str, help: &str, shape: fn() -> Histogram) -> Histogram {
        self.add(name, help, shape())
    }

    /// Histograms by label set `L`, each with the buckets `shape` makes.
    pub fn histograms<L>(
        &mut self,
        name: &str,
        help: &str,
        shape: fn() -> Histogram,
    ) -> HistogramFamily<L>
    where
        L: Clone + Hash + Eq + EncodeLabelSet + Debug + Send + Sync + 'static,
    {
        self.add(name, help, Family::new_with_constructor(shape))
    }
}

/// Declares a metric group: a struct with one field per metric, and a `register` function
/// that makes each field with the [`Registrar`] method named after its `=` and registers it.
/// Each metric's type, name and help stand together, once:
///
/// ```ignore
/// metric_group! {
///     #[derive(Clone)]
///     pub struct ExampleMetrics {
///         requests: Family<Labels, Counter> = family("example_requests", "Requests, by outcome"),
///         latency: Histogram = histogram("example_seconds", "Time taken", latency_histogram),
///     }
/// }
/// ```
macro_rules! metric_group {
    (
        $(#[$attr:meta])*
        $vis:vis struct $group:ident {
            $( $field:ident : $ty:ty = $make:ident ( $($arg:expr),+ $(,)? ) ),+ $(,)?
        }
    ) => {
        $(#[$attr])*
        $vis struct $group {
            $( $field: $ty, )+
        }

        impl $group {
            /// Makes every metric of the group and registers it in `registry`.
            pub fn register(registry: &mut ::prometheus_client::registry::Registry) -> Self {
                let mut r = $crate::telemetry::Registrar::new(registry);
                Self { $( $field: r.$make($($arg),+), )+ }
            }
        }
    };
}
pub(crate) use metric_group;

/// Request-sized latencies: 250 µs .. ~8 s.
pub fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.00025, 2.0, 16))
}

/// Sizes in bytes: 1 KiB .. 16 MiB, by powers of four.
pub fn size_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1024.0, 4.0, 8))
}

/// Latencies that include waiting for the API server: 1 ms .. ~65 s.
pub fn slow_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

/// Asserts that the text exposition of `registry` has every one of `samples` (whole lines
/// or line prefixes such as `restatus_x_total{a="b"} 1`).
#[cfg(test)]
pub fn assert_samples(registry: &Registry, samples: &[&str]) {
    let text = encode(registry);
    for sample in samples {
        assert!(text.contains(sample), "{sample} missing from\n{text}");
    }
}

/// A fresh registry with one metric group registered by `register`.
#[cfg(test)]
pub fn registered<G>(register: fn(&mut Registry) -> G) -> (Registry, G) {
    let mut registry = registry();
    let group = register(&mut registry);
    (registry, group)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn activity_sums_reviews_records_and_restores_done() {
        let text = "\
# TYPE restatus_admission_requests counter
restatus_admission_requests_total{operation=\"UPDATE\",outcome=\"recorded\"} 7
restatus_admission_requests_total{operation=\"CREATE\",outcome=\"no_record\"} 3
restatus_admission_last_review_timestamp_seconds 1764675000
restatus_records_written_total 9
restatus_restores_total{outcome=\"restored\"} 2
restatus_restores_total{outcome=\"caught_up\"} 1
restatus_restores_total{outcome=\"expired\"} 4
restatus_records_skipped_total 5
# EOF
";
        let activity = Activity::parse(text);
        assert_eq!(
            activity,
            Activity {
                reviews: 10,
                records: 9,
                restores: 3,
                last_review: 1_764_675_000,
            }
        );
        let earlier = Activity {
            reviews: 4,
            records: 9,
            restores: 5,
            last_review: 1,
        };
        assert_eq!(
            activity.since(&earlier),
            Activity {
                reviews: 6,
                records: 0,
                restores: 0,
                last_review: 1_764_675_000,
            },
            "counters that went back (another process) count as none"
        );
    }

    #[test]
    fn activity_reads_the_registry_it_is_given() {
        let mut registry = registry();
        let counter = Counter::<u64>::default();
        registry.register("records_written", "Records", counter.clone());
        counter.inc_by(4);
        assert_eq!(Activity::read(&registry).records, 4);
    }

    #[test]
    fn encodes_prometheus_text_with_the_prefix() {
        let mut registry = registry();
        let counter = Counter::<u64>::default();
        registry.register("example", "An example", counter.clone());
        let histogram = latency_histogram();
        registry.register("example_seconds", "An example", histogram.clone());
        counter.inc();
        histogram.observe(0.001);
        let text = encode(&registry);
        assert!(text.contains("restatus_example_total 1"), "{text}");
        assert!(
            text.contains("restatus_example_seconds_bucket{le=\"0.001\"} 1"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn the_kubernetes_client_stays_at_info_unless_named() {
        let quiet = log_filter("debug").unwrap().to_string();
        assert!(quiet.contains("kube_client=info"), "{quiet}");
        let asked = log_filter("debug,kube_client=debug").unwrap().to_string();
        assert!(!asked.contains("kube_client=info"), "{asked}");
    }

    #[test]
    fn invalid_log_filters_are_named() {
        let err = init_logging(LogFormat::Text, "restatus=loud").unwrap_err();
        assert!(err.to_string().contains("restatus=loud"), "{err}");
    }
}
