//! Metrics of policy resolution: invalid annotations, and the checks of who may get a
//! status back.

use super::Level;
use crate::telemetry::group::*;

metric_group! {
    /// Invalid policy annotations by level; access checks by outcome.
    #[derive(Clone, Debug)]
    pub struct PolicyMetrics {
        invalid_reviews: Family<LevelLabels, Counter> = family("policy_invalid_annotations", "Reviews whose policy annotations at a level were invalid (that level was skipped), by level"),
        invalid_seen: Family<LevelLabels, Counter> = family("policy_invalid_annotations_reported", "Objects newly seen with an invalid policy annotation (an InvalidPolicyAnnotation Event), by level"),
        access_checks: Family<AccessLabels, Counter> = family("access_checks", "Checks that a creator may update <resource>/status before a restore, by outcome (allowed, denied, failed) and whether the answer was cached"),
    }
}

impl PolicyMetrics {
    /// A review skipped the annotations of `level`.
    pub fn invalid_annotation(&self, level: Level) {
        self.invalid_reviews
            .get_or_create(&LevelLabels {
                level: level.label(),
            })
            .inc();
    }

    /// An object at `level` was newly seen with an invalid annotation.
    pub fn invalid_annotation_seen(&self, level: Level) {
        self.invalid_seen
            .get_or_create(&LevelLabels {
                level: level.label(),
            })
            .inc();
    }

    /// An access check ended with `outcome` (`allowed`, `denied`, `failed`).
    pub fn access_check(&self, outcome: &'static str, cached: bool) {
        let cached = if cached { "true" } else { "false" };
        self.access_checks
            .get_or_create(&AccessLabels { outcome, cached })
            .inc();
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LevelLabels {
    level: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AccessLabels {
    outcome: &'static str,
    cached: &'static str,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::{assert_samples, registered};

    #[test]
    fn counts_invalid_levels_and_access_checks() {
        let (registry, m) = registered(PolicyMetrics::register);
        m.invalid_annotation(Level::Namespace);
        m.invalid_annotation_seen(Level::Object);
        m.access_check("allowed", false);
        m.access_check("allowed", true);
        m.access_check("failed", false);
        assert_samples(
            &registry,
            &[
                "restatus_policy_invalid_annotations_total{level=\"namespace\"} 1",
                "restatus_policy_invalid_annotations_reported_total{level=\"object\"} 1",
                "restatus_access_checks_total{outcome=\"allowed\",cached=\"false\"} 1",
                "restatus_access_checks_total{outcome=\"allowed\",cached=\"true\"} 1",
                "restatus_access_checks_total{outcome=\"failed\",cached=\"false\"} 1",
            ],
        );
    }
}
