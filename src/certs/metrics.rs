//! Metrics of the certificates: when each expires, how often each was replaced, and CA keys
//! found unusable.

use jiff::Timestamp;

use crate::telemetry::group::*;

metric_group! {
    /// `certificate` is `serving` (what the webhook listener serves), `ca` (the self-managed
    /// CA that signs it) or `client_ca` (the CA that callers' certificates must chain to).
    #[derive(Clone, Debug)]
    pub struct CertMetrics {
        expiry: Family<CertificateLabels, IntGauge> = family("certificate_expiry_timestamp_seconds", "When the certificate expires, in seconds since the Unix epoch, by certificate (serving, ca, client_ca)"),
        rotations: Family<CertificateLabels, Counter> = family("certificate_rotations", "Certificates replaced while running, by certificate (serving, ca, client_ca)"),
        unusable_ca_keys: ReasonCounters = family("certificate_ca_key_unusable", "Checks that found the self-managed CA's key (ca.key of the CA Secret) unable to sign, by reason (missing, not_pem, unsupported, mismatch); the CA is then replaced"),
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

    /// A check found the CA key unusable, for `reason`.
    pub fn unusable_ca_key(&self, reason: &'static str) {
        count_reason(&self.unusable_ca_keys, reason);
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CertificateLabels {
    certificate: &'static str,
}
