//! Metrics of the webhook: reviews answered, how long they took, bodies refused, jobs queued.

use std::time::Duration;

use crate::telemetry::{group::*, size_histogram, unix_seconds};

metric_group! {
    /// Reviews answered and their latency by operation; bodies refused; jobs queued.
    #[derive(Clone)]
    pub struct AdmissionMetrics {
        requests: Family<AnsweredLabels, Counter> = family("admission_requests", "Admission reviews answered, by operation and outcome"),
        last_review: IntGauge = gauge("admission_last_review_timestamp_seconds", "Unix time of the last admission review answered; 0 until the first"),
        duration: HistogramFamily<OperationLabels> = histograms("admission_duration_seconds", "Time to answer an admission review, by operation", latency_histogram),
        invalid: ReasonCounters = family("admission_invalid_requests", "Requests to /mutate answered 4xx because the body was not a usable AdmissionReview"),
        review_bytes: Histogram = histogram("admission_review_bytes", "Size of the AdmissionReview bodies read, in bytes (for --max-request-bytes)", size_histogram),
        jobs_enqueued: Counter = counter("restore_jobs_enqueued", "Restore jobs added to the queue by the webhook"),
        dead_markers: Family<ActionLabels, Counter> = family("dead_markers", "Pending markers without a live restore job, found on writes: taken off by the answer (stripped) or their removal queued for the worker (queued)"),
    }
}

impl AdmissionMetrics {
    /// A review of `operation` answered with `outcome` after `elapsed`.
    pub fn answered(&self, operation: &'static str, outcome: &'static str, elapsed: Duration) {
        self.requests
            .get_or_create(&AnsweredLabels { operation, outcome })
            .inc();
        self.duration
            .get_or_create(&OperationLabels { operation })
            .observe(elapsed.as_secs_f64());
        self.last_review.set(unix_seconds());
    }

    /// A review body of `bytes` was read.
    pub fn review_read(&self, bytes: usize) {
        self.review_bytes.observe(bytes as f64);
    }

    /// A body refused before it became a review.
    pub fn invalid(&self, reason: &'static str) {
        count_reason(&self.invalid, reason);
    }

    pub fn job_enqueued(&self) {
        self.jobs_enqueued.inc();
    }

    /// A pending marker without a live job was `stripped` or its removal `queued`.
    pub fn dead_marker(&self, action: &'static str) {
        self.dead_markers
            .get_or_create(&ActionLabels { action })
            .inc();
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AnsweredLabels {
    operation: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActionLabels {
    action: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    operation: &'static str,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::{assert_samples, registered};

    #[test]
    fn counts_answers_by_operation_and_outcome() {
        let (registry, m) = registered(AdmissionMetrics::register);
        assert_samples(
            &registry,
            &["restatus_admission_last_review_timestamp_seconds 0"],
        );
        let before = unix_seconds();
        m.answered("UPDATE", "recorded", Duration::from_millis(1));
        m.answered("UPDATE", "recorded", Duration::from_millis(1));
        m.answered("CREATE", "no_record", Duration::from_millis(1));
        m.invalid("not_json");
        m.review_read(3000);
        m.job_enqueued();
        m.dead_marker("stripped");
        assert_samples(
            &registry,
            &[
                "restatus_admission_requests_total{operation=\"UPDATE\",outcome=\"recorded\"} 2",
                "restatus_admission_requests_total{operation=\"CREATE\",outcome=\"no_record\"} 1",
                "restatus_admission_duration_seconds_count{operation=\"UPDATE\"} 2",
                "restatus_admission_invalid_requests_total{reason=\"not_json\"} 1",
                "restatus_admission_review_bytes_bucket{le=\"4096.0\"} 1",
                "restatus_restore_jobs_enqueued_total 1",
                "restatus_dead_markers_total{action=\"stripped\"} 1",
            ],
        );
        let last = m.last_review.get();
        assert!(last >= before && last <= unix_seconds(), "{last}");
    }
}
