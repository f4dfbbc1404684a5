//! Metrics of the certificates: when each expires, and how often each was replaced.

use std::sync::atomic::AtomicI64;

use jiff::Timestamp;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use crate::telemetry::Registrar;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CertificateLabels {
    certificate: &'static str,
}

/// `certificate` is `serving` (what the webhook listener serves) or `ca` (the self-managed CA
/// that signs it).
#[derive(Clone, Debug)]
pub struct CertMetrics {
    expiry: Family<CertificateLabels, Gauge<i64, AtomicI64>>,
    rotations: Family<CertificateLabels, Counter>,
}

impl CertMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let mut r = Registrar::new(registry);
        Self {
            expiry: r.gauges(
                "certificate_expiry_timestamp_seconds",
                "When the certificate expires, in seconds since the Unix epoch, by certificate (serving, ca)",
            ),
            rotations: r.counters(
                "certificate_rotations",
                "Certificates replaced while running, by certificate (serving, ca)",
            ),
        }
    }

    /// `certificate` now expires at `not_after`.
    pub fn expires(&self, certificate: &'static str, not_after: Timestamp) {
        self.expiry
            .get_or_create(&CertificateLabels { certificate })
            .set(not_after.as_second());
    }

    /// `certificate` was replaced by a new one.
    pub fn rotated(&self, certificate: &'static str) {
        self.rotations
            .get_or_create(&CertificateLabels { certificate })
            .inc();
    }
}
