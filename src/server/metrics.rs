//! Metrics of the webhook listener: refused TLS handshakes, connections (open, evicted,
//! refused, closed), and requests refused before they reach the handler.

use crate::telemetry::group::*;

/// Why a TLS handshake failed: the `reason` label of `restatus_tls_handshake_failures_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// The listener requires a client certificate and the caller sent none.
    NoClientCertificate,
    /// The caller's certificate does not chain to the client CA (or is expired, or not for
    /// client authentication).
    UntrustedClientCertificate,
    /// The caller's certificate chains to the client CA but carries none of
    /// `--client-allowed-names`.
    ClientNameNotAllowed,
    /// The caller refused restatus's serving certificate (a `caBundle` that does not hold
    /// restatus's CA, or a certificate without the name the caller asked for).
    ServerCertificateRejected,
    /// Not finished within `--header-read-timeout`.
    Timeout,
    /// Anything else: not TLS at all, a connection closed halfway, no common cipher.
    Other,
}

impl HandshakeFailure {
    pub fn label(self) -> &'static str {
        match self {
            Self::NoClientCertificate => "no_client_certificate",
            Self::UntrustedClientCertificate => "untrusted_client_certificate",
            Self::ClientNameNotAllowed => "client_name_not_allowed",
            Self::ServerCertificateRejected => "server_certificate_rejected",
            Self::Timeout => "timeout",
            Self::Other => "other",
        }
    }
}

/// Why a connection was closed by restatus before the client closed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// No request in flight for `--idle-timeout`.
    Idle,
    /// HTTP/1.1 headers not complete within `--header-read-timeout`.
    HeaderRead,
}

/// Why a request was answered before it reached the handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// No room for its body within `--max-inflight-body-bytes` soon enough (503).
    BodyBudget,
    /// Its body did not arrive within `--body-read-timeout` (408).
    BodyTimeout,
}

metric_group! {
    /// Handshakes refused, connections open and closed, requests refused, body bytes held.
    #[derive(Clone, Debug)]
    pub struct ServerMetrics {
        connections_refused: Counter = counter("webhook_connections_refused", "Webhook connections closed as soon as they were accepted, because --max-connections were open and every one of them had been answered (none could be evicted)"),
        connections_evicted: Counter = counter("webhook_connections_evicted", "Webhook connections closed to make room for a new one at --max-connections: each time the oldest connection that had not been answered a review"),
        handshake_failures: ReasonCounters = family("tls_handshake_failures", "TLS handshakes of the webhook listener that failed, by reason (no_client_certificate, untrusted_client_certificate, client_name_not_allowed, server_certificate_rejected, timeout, other)"),
        connections_closed: ReasonCounters = family("webhook_connections_closed", "Webhook connections restatus closed, by reason (idle: no request for --idle-timeout; header_read: HTTP/1.1 headers not complete within --header-read-timeout)"),
        requests_refused: ReasonCounters = family("webhook_requests_refused", "Requests answered before reaching the handler, by reason (body_budget: 503, no room within --max-inflight-body-bytes; body_timeout: 408, body not complete within --body-read-timeout)"),
        connections: IntGauge = gauge("webhook_connections", "Webhook connections open, TLS handshakes in progress included"),
        connections_limit: IntGauge = gauge("webhook_connections_limit", "Webhook connections allowed open at once (--max-connections)"),
        body_bytes: IntGauge = gauge("webhook_body_bytes_in_flight", "Bytes of request bodies held at once across webhook connections"),
        body_bytes_limit: IntGauge = gauge("webhook_body_bytes_limit", "Bytes of request bodies allowed at once (--max-inflight-body-bytes)"),
    }
}

impl ServerMetrics {
    /// The limits the listener runs with, for ratios in dashboards and alerts.
    pub(super) fn limits(&self, connections: usize, body_bytes: usize) {
        self.connections_limit.set(saturating_i64(connections));
        self.body_bytes_limit.set(saturating_i64(body_bytes));
    }

    pub(super) fn handshake_failed(&self, failure: HandshakeFailure) {
        count_reason(&self.handshake_failures, failure.label());
    }

    /// A connection was accepted; it counts as open until the guard is dropped.
    pub(super) fn connection_opened(&self) -> OpenConnection {
        self.connections.inc();
        OpenConnection(self.connections.clone())
    }

    pub(super) fn connection_refused(&self) {
        self.connections_refused.inc();
    }

    pub(super) fn connection_evicted(&self) {
        self.connections_evicted.inc();
    }

    pub(super) fn connection_closed(&self, why: Closed) {
        let reason = match why {
            Closed::Idle => "idle",
            Closed::HeaderRead => "header_read",
        };
        count_reason(&self.connections_closed, reason);
    }

    pub(super) fn request_refused(&self, why: Refused) {
        let reason = match why {
            Refused::BodyBudget => "body_budget",
            Refused::BodyTimeout => "body_timeout",
        };
        count_reason(&self.requests_refused, reason);
    }

    pub(super) fn body_bytes_held(&self, bytes: usize) {
        self.body_bytes.inc_by(saturating_i64(bytes));
    }

    pub(super) fn body_bytes_released(&self, bytes: usize) {
        self.body_bytes.dec_by(saturating_i64(bytes));
    }
}

fn saturating_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// An open connection in `restatus_webhook_connections`.
pub(super) struct OpenConnection(IntGauge);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::{assert_samples, registered};

    #[test]
    fn counts_by_reason_and_open_connections() {
        let (registry, metrics) = registered(ServerMetrics::register);
        metrics.limits(512, 32 << 20);
        metrics.handshake_failed(HandshakeFailure::NoClientCertificate);
        metrics.handshake_failed(HandshakeFailure::Timeout);
        metrics.connection_refused();
        metrics.connection_evicted();
        metrics.connection_evicted();
        metrics.connection_closed(Closed::Idle);
        metrics.request_refused(Refused::BodyBudget);
        let open = metrics.connection_opened();
        metrics.body_bytes_held(100);
        assert_samples(
            &registry,
            &[
                "restatus_tls_handshake_failures_total{reason=\"no_client_certificate\"} 1",
                "restatus_tls_handshake_failures_total{reason=\"timeout\"} 1",
                "restatus_webhook_connections 1",
                "restatus_webhook_connections_limit 512",
                "restatus_webhook_connections_refused_total 1",
                "restatus_webhook_connections_evicted_total 2",
                "restatus_webhook_connections_closed_total{reason=\"idle\"} 1",
                "restatus_webhook_requests_refused_total{reason=\"body_budget\"} 1",
                "restatus_webhook_body_bytes_in_flight 100",
                "restatus_webhook_body_bytes_limit 33554432",
            ],
        );
        drop(open);
        metrics.body_bytes_released(100);
        assert_samples(
            &registry,
            &[
                "restatus_webhook_connections 0",
                "restatus_webhook_body_bytes_in_flight 0",
            ],
        );
    }
}
