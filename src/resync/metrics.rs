//! Metrics of resync: passes, objects scanned, records corrected, catch-ups queued and held.

use std::time::Duration;

use crate::telemetry::group::*;

metric_group! {
    /// Resync passes and what they found.
    #[derive(Clone)]
    pub struct ResyncMetrics {
        duration: Histogram = histogram("resync_duration_seconds", "Time a resync pass over every tracked type took", slow_histogram),
        passes: ReasonCounters = family("resync_passes", "Resync passes finished, by why they ran (start, interval, redis_back) "),
        last_success: IntGauge = gauge("resync_last_success_timestamp_seconds", "When the last resync pass that reached every tracked type finished, or, until one has, when resync started (Unix time)"),
        scanned: Counter = counter("resync_objects_scanned", "Live objects a resync pass looked at"),
        corrected: Counter = counter("resync_records_corrected", "Records a resync pass wrote: missing, or older than the live object"),
        expired: Counter = counter("resync_retention_started", "Records whose object is gone (its DELETE was not seen), whose retention clock a resync pass started"),
        catch_ups: ReasonCounters = family("catchup_restores", "Objects created while restatus was not looking, whose saved status a resync pass found: queued for a catch-up restore, or held because policy keeps restores to status writers"),
        too_large: Counter = counter("resync_statuses_too_large", "Live statuses a resync pass left unrecorded, as the webhook does: more values or deeper than --max-status-values and its depth limit allow"),
        errors: ReasonCounters = family("resync_errors", "Resync steps that failed, by what (discovery, list, store)"),
    }
}

impl ResyncMetrics {
    /// A pass that ran because of `why` finished after `elapsed`; `complete` when it reached
    /// every tracked type.
    pub fn pass(&self, why: &'static str, elapsed: Duration, complete: bool) {
        self.duration.observe(elapsed.as_secs_f64());
        count_reason(&self.passes, why);
        if complete {
            let now = jiff::Timestamp::now().as_second();
            self.last_success.set(now);
        }
    }

    /// Resync starts: until a pass completes, the time since is the time without one.
    pub fn started(&self) {
        self.last_success.set(jiff::Timestamp::now().as_second());
    }

    pub fn scanned(&self, objects: u64) {
        self.scanned.inc_by(objects);
    }

    pub fn too_large(&self) {
        self.too_large.inc();
    }

    pub fn corrected(&self) {
        self.corrected.inc();
    }

    pub fn expired(&self, records: u64) {
        self.expired.inc_by(records);
    }

    /// A catch-up was `queued` or `held`.
    pub fn catch_up(&self, outcome: &'static str) {
        count_reason(&self.catch_ups, outcome);
    }

    pub fn error(&self, what: &'static str) {
        count_reason(&self.errors, what);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::{assert_samples, registered};

    #[test]
    fn counts_passes_objects_corrections_and_catch_ups() {
        let (registry, m) = registered(ResyncMetrics::register);
        m.pass("start", Duration::from_millis(20), true);
        m.scanned(3);
        m.corrected();
        m.too_large();
        m.expired(2);
        m.catch_up("queued");
        m.catch_up("held");
        m.error("list");
        assert_samples(
            &registry,
            &[
                "restatus_resync_duration_seconds_count 1",
                "restatus_resync_passes_total{reason=\"start\"} 1",
                "restatus_resync_statuses_too_large_total 1",
                "restatus_resync_objects_scanned_total 3",
                "restatus_resync_records_corrected_total 1",
                "restatus_resync_retention_started_total 2",
                "restatus_catchup_restores_total{reason=\"queued\"} 1",
                "restatus_catchup_restores_total{reason=\"held\"} 1",
                "restatus_resync_errors_total{reason=\"list\"} 1",
            ],
        );
        assert!(
            crate::telemetry::encode(&registry)
                .contains("restatus_resync_last_success_timestamp_seconds ")
        );
    }
}
