//! Metrics of the certificates: when each expires, and how often each was replaced.

use jiff::Timestamp;

use crate::telemetry::group::*;

metric_group! {
    /// `certificate` is `serving` (what the webhook listener serves), `ca` (the self-managed
    /// CA that signs it) or `client_ca` (the CA that callers' certificates must chain to).
    #[derive(Clone, Debug)]
    pub struct CertMetrics {
        expiry: Family<CertificateLabels, IntGauge> = family("certificate_expiry_timestamp_seconds", "When the certificate expires, in seconds since the Unix epoch, by certificate (serving, ca, client_ca)"),
        rotations: Family<CertificateLabels, Counter> = family("certificate_rotations", "Certificates replaced while running, by certificate (serving, ca, client_ca)"),
    }
}

impl CertMetrics {
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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CertificateLabels {
    certificate: &'static str,
}
