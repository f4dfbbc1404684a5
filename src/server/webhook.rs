//! The HTTPS webhook listener, bounded so that no client can hold it:
//!
//! - at most `max_connections` connections at once (TLS handshakes included). At the cap a
//!   new connection evicts the oldest connection that has not been answered a review, and
//!   takes its place at once; connections that have been answered (the API server's, which
//!   it keeps open) are never evicted for a newcomer, and only when every place is held by
//!   one is a new connection closed as soon as it is accepted ([`super::slots`]). So
//!   connections that never finish a request cannot keep the API server out;
//! - a TLS handshake, and HTTP/1.1 request headers, must arrive within `header_read_timeout`;
//! - a connection with no request in flight for `idle_timeout` is closed (HTTP/2 with GOAWAY),
//!   so one that never sends a request, or stops, does not keep its place;
//! - HTTP/2 connections are pinged every `http2_keepalive_interval` and closed when the peer
//!   stops answering, and carry at most `max_concurrent_streams` requests at once;
//! - request bodies share a budget of bytes and must arrive within `body_read_timeout`
//!   ([`super::body`]).
//!
//! Failed handshakes, evicted and refused connections are logged at debug level with the
//! peer, and at warning level at most once a minute with how many there were, so a scanner
//! cannot flood the logs.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{
    Router,
    body::Body,
    http::{Request, Response, StatusCode, header},
};
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use rustls::{AlertDescription, CertificateError, ServerConfig};
use tokio::{
    net::{TcpListener, TcpStream},
    time::Instant,
};
use tokio_rustls::TlsAcceptor;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tower::ServiceExt;

use super::{
    Readiness,
    body::{BodyBudget, ROOM_WAIT},
    metrics::{Closed, HandshakeFailure, Refused, ServerMetrics},
    slots::{Admission, Establish, Slot, Slots},
};

/// How the webhook listener bounds its clients.
#[derive(Debug, Clone)]
pub struct Limits {
    /// TLS handshake, and HTTP/1.1 request headers.
    pub header_read_timeout: Duration,
    /// A whole request body.
    pub body_read_timeout: Duration,
    /// A connection without a request in flight.
    pub idle_timeout: Duration,
    /// HTTP/2 ping interval, and how long a ping may go unanswered.
    pub http2_keepalive_interval: Duration,
    pub max_connections: usize,
    pub max_concurrent_streams: u32,
    /// The handler's limit of one body; bodies beyond it are handed on for it to refuse.
    pub max_request_bytes: usize,
    /// Body bytes held at once across all connections; at least `max_request_bytes`.
    pub max_inflight_body_bytes: usize,
}

/// The TLS configuration for each new connection, asked for once per connection so that a
/// new one (a new client CA) applies without a restart.
pub type TlsConfigSource = Arc<dyn Fn() -> Arc<ServerConfig> + Send + Sync>;

/// What the webhook listener serves, and how.
pub struct Webhook {
    pub tls: TlsConfigSource,
    pub router: Router,
    pub limits: Limits,
    pub metrics: ServerMetrics,
}

/// How often a kind of trouble is logged at warning level.
const WARN_EVERY: Duration = Duration::from_secs(60);
/// At shutdown, how long a connection with no request in flight may still take to close
/// after its GOAWAY (or the HTTP/1.1 close) before it is dropped.
const SHUTDOWN_LINGER: Duration = Duration::from_secs(1);
/// How often a shutting-down connection checks whether its last request has finished.
const QUIET_POLL: Duration = Duration::from_millis(20);

/// What every connection of the listener shares.
struct Shared {
    router: Router,
    limits: Limits,
    metrics: ServerMetrics,
    budget: BodyBudget,
    http: auto::Builder<TokioExecutor>,
    handshake_warnings: Throttle,
    refusal_warnings: Throttle,
    eviction_warnings: Throttle,
    budget_warnings: Throttle,
}

/// Serves `webhook` over TLS (HTTP/2 or HTTP/1.1 by ALPN) until `shutdown`, then stops
/// accepting and lets open connections finish their requests for up to `grace`.
pub async fn serve_tls(
    listener: TcpListener,
    webhook: Webhook,
    ready: Arc<Readiness>,
    shutdown: CancellationToken,
    grace: Duration,
) {
    let Webhook {
        tls,
        router,
        limits,
        metrics,
    } = webhook;
    let mut http = auto::Builder::new(TokioExecutor::new());
    http.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    http.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_concurrent_streams)
        .keep_alive_interval(limits.http2_keepalive_interval)
        .keep_alive_timeout(limits.http2_keepalive_interval);
    metrics.limits(limits.max_connections, limits.max_inflight_body_bytes);
    let shared = Arc::new(Shared {
        router,
        budget: BodyBudget::new(
            limits.max_inflight_body_bytes,
            limits.max_request_bytes,
            limits.body_read_timeout,
            ROOM_WAIT,
            metrics.clone(),
        ),
        metrics,
        http,
        handshake_warnings: Throttle::new(WARN_EVERY),
        refusal_warnings: Throttle::new(WARN_EVERY),
        eviction_warnings: Throttle::new(WARN_EVERY),
        budget_warnings: Throttle::new(WARN_EVERY),
        limits,
    });
    let slots = Slots::new(shared.limits.max_connections);
    let connections = TaskTracker::new();
    ready.set(true);
    loop {
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let slot = match slots.admit() {
            Admission::Free(slot) => slot,
            Admission::Evicted(slot) => {
                shared.metrics.connection_evicted();
                if let Some(evicted) = shared.eviction_warnings.hit() {
                    tracing::warn!(
                        %peer,
                        evicted,
                        limit = shared.limits.max_connections,
                        "webhook connections evicted at --max-connections: new connections took the places of the oldest ones that had not been answered (at most one warning a minute; see restatus_webhook_connections_evicted_total)"
                    );
                }
                slot
            }
            Admission::Full => {
                // Closed at once: every place is held by a connection that has been answered,
                // and waiting would only hold more sockets.
                shared.metrics.connection_refused();
                tracing::debug!(%peer, "connection refused: --max-connections are open, all of them answered");
                shared.refusal_warnings.warn(
                    peer,
                    shared.limits.max_connections,
                    "webhook connections refused at --max-connections, all held by connections that have been answered (at most one warning a minute; see restatus_webhook_connections_refused_total)",
                );
                drop(stream);
                continue;
            }
        };
        // Responses are small and written in several pieces; without TCP_NODELAY the last one
        // can wait for the client's delayed ACK (40 ms on Linux).
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%peer, %error, "could not set TCP_NODELAY");
        }
        connections.spawn(serve_connection(
            shared.clone(),
            stream,
            peer,
            tls(),
            slot,
            shutdown.clone(),
        ));
    }
    ready.set(false);
    drop(listener);
    connections.close();
    tracing::info!("webhook listener closed; finishing in-flight reviews");
    if tokio::time::timeout(grace, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!("connections still open at the end of the shutdown grace period");
    }
}

/// One connection, from the TLS handshake until it closes or is evicted. Holds `slot` all
/// along; every wait is cut short by an eviction, which drops the socket at once.
async fn serve_connection(
    shared: Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    tls: Arc<ServerConfig>,
    slot: Slot,
    shutdown: CancellationToken,
) {
    let _open = shared.metrics.connection_opened();
    let accept = TlsAcceptor::from(tls).accept(stream);
    let handshake = tokio::select! {
        biased;
        () = slot.evicted() => {
            evicted(peer, "during its TLS handshake");
            return;
        }
        handshake = tokio::time::timeout(shared.limits.header_read_timeout, accept) => handshake,
    };
    let tls_stream = match handshake {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => {
            let failure = handshake_failure(&error);
            handshake_failed(&shared, peer, failure, &error);
            return;
        }
        Err(_) => {
            let error = "not finished within --header-read-timeout";
            handshake_failed(&shared, peer, HandshakeFailure::Timeout, &error);
            return;
        }
    };
    let establish = slot.establisher();
    // A client certificate is asked for only with --client-ca-file, and a handshake that
    // carries one has verified it: the caller may call, as the API server does.
    if tls_stream.get_ref().1.peer_certificates().is_some() {
        establish.established();
    }
    // The protocol was agreed by ALPN; a client that offered none is detected from its first
    // bytes.
    let http = match tls_stream.get_ref().1.alpn_protocol() {
        Some(b"h2") => shared.http.clone().http2_only(),
        Some(b"http/1.1") => shared.http.clone().http1_only(),
        _ => shared.http.clone(),
    };
    let activity = Arc::new(Activity::new());
    let service = {
        let (shared, activity) = (shared.clone(), activity.clone());
        hyper::service::service_fn(move |request| {
            handle(
                shared.clone(),
                activity.clone(),
                establish.clone(),
                peer,
                request,
            )
        })
    };
    let connection = http.serve_connection(TokioIo::new(tls_stream), service);
    let mut connection = std::pin::pin!(connection);
    // Once restatus has asked the connection to close: by when it must be gone (idle), or
    // none (shutdown, bounded by the shutdown grace).
    let mut closing: Option<Option<Instant>> = None;
    loop {
        let gone_by = closing.flatten();
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(error) = result {
                    let header_timeout = error
                        .downcast_ref::<hyper::Error>()
                        .is_some_and(hyper::Error::is_timeout);
                    if header_timeout {
                        shared.metrics.connection_closed(Closed::HeaderRead);
                        tracing::debug!(%peer, "connection closed: headers not complete within --header-read-timeout");
                    } else {
                        tracing::debug!(%peer, error = %error, "connection ended with an error");
                    }
                }
                return;
            }
            () = shutdown.cancelled(), if closing.is_none() => {
                connection.as_mut().graceful_shutdown();
                closing = Some(None);
            }
            // Shutting down: once no request is in flight, the connection has nothing more to
            // finish. A client that keeps an idle connection open after the GOAWAY (many
            // HTTP/2 clients do) must not hold the shutdown for the whole grace period.
            () = activity.quiet(), if closing == Some(None) => {
                closing = Some(Some(Instant::now() + SHUTDOWN_LINGER));
            }
            () = activity.idle_for(shared.limits.idle_timeout), if closing.is_none() => {
                shared.metrics.connection_closed(Closed::Idle);
                tracing::debug!(%peer, "connection closed: no request within --idle-timeout");
                connection.as_mut().graceful_shutdown();
                closing = Some(Some(Instant::now() + shared.limits.header_read_timeout));
            }
            () = sleep_until(gone_by), if gone_by.is_some() => {
                tracing::debug!(%peer, "connection dropped: it did not close after it was asked to");
                return;
            }
            () = slot.evicted() => {
                evicted(peer, "before it was answered");
                return;
            }
        }
    }
}

fn evicted(peer: SocketAddr, when: &str) {
    tracing::debug!(%peer, "connection evicted {when}: a new connection took its place at --max-connections");
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

fn handshake_failed(
    shared: &Shared,
    peer: SocketAddr,
    failure: HandshakeFailure,
    error: &dyn std::fmt::Display,
) {
    shared.metrics.handshake_failed(failure);
    let reason = failure.label();
    tracing::debug!(%peer, reason, %error, "TLS handshake failed");
    if let Some(count) = shared.handshake_warnings.hit() {
        tracing::warn!(
            %peer,
            reason,
            %error,
            failed = count,
            "TLS handshakes of webhook callers are failing (at most one warning a minute; see restatus_tls_handshake_failures_total)"
        );
    }
}

/// Why a handshake failed, from the error rustls reported.
fn handshake_failure(error: &std::io::Error) -> HandshakeFailure {
    let Some(tls) = error
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
    else {
        return HandshakeFailure::Other;
    };
    match tls {
        rustls::Error::NoCertificatesPresented => HandshakeFailure::NoClientCertificate,
        // The client CA's verifier reports a certificate without an allowed name this way
        // (WebPki never does).
        rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure) => {
            HandshakeFailure::ClientNameNotAllowed
        }
        rustls::Error::InvalidCertificate(_) => HandshakeFailure::UntrustedClientCertificate,
        rustls::Error::AlertReceived(
            AlertDescription::BadCertificate
            | AlertDescription::UnknownCA
            | AlertDescription::CertificateUnknown
            | AlertDescription::CertificateExpired
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::CertificateRevoked,
        ) => HandshakeFailure::ServerCertificateRejected,
        _ => HandshakeFailure::Other,
    }
}

/// One request: its body read within the budget, then the router. A success marks the
/// connection established: it is never evicted from then on.
async fn handle(
    shared: Arc<Shared>,
    activity: Arc<Activity>,
    establish: Establish,
    peer: SocketAddr,
    request: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let _active = activity.begin();
    let (parts, body) = request.into_parts();
    let read = match shared.budget.read(&parts.headers, Body::new(body)).await {
        Ok(read) => read,
        Err(refused) => return Ok(refuse(&shared, peer, refused)),
    };
    let request = Request::from_parts(parts, read.body);
    let Ok(response) = shared.router.clone().oneshot(request).await;
    // The body's room is given back once the answer is ready.
    drop(read.held);
    if response.status().is_success() {
        establish.established();
    }
    Ok(response)
}

fn refuse(shared: &Shared, peer: SocketAddr, refused: Refused) -> Response<Body> {
    shared.metrics.request_refused(refused);
    let (status, text) = match refused {
        Refused::BodyBudget => {
            tracing::debug!(%peer, "request refused: no room within --max-inflight-body-bytes");
            shared.budget_warnings.warn(
                peer,
                shared.limits.max_inflight_body_bytes,
                "requests answered 503: request bodies in flight fill --max-inflight-body-bytes (at most one warning a minute; see restatus_webhook_requests_refused_total)",
            );
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "restatus is holding as many request bodies as --max-inflight-body-bytes allows; try again\n",
            )
        }
        Refused::BodyTimeout => {
            tracing::debug!(%peer, "request refused: body not complete within --body-read-timeout");
            (
                StatusCode::REQUEST_TIMEOUT,
                "the request body did not arrive within --body-read-timeout\n",
            )
        }
    };
    let mut response = Response::new(Body::from(text));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Requests in flight on one connection, and since when it has had none.
struct Activity {
    in_flight: AtomicUsize,
    idle_since: Mutex<Instant>,
}

impl Activity {
    fn new() -> Self {
        Self {
            in_flight: AtomicUsize::new(0),
            idle_since: Mutex::new(Instant::now()),
        }
    }

    fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(self.clone())
    }

    fn idle_since(&self) -> Instant {
        *self
            .idle_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Returns once no request is in flight.
    async fn quiet(&self) {
        while self.in_flight.load(Ordering::SeqCst) > 0 {
            tokio::time::sleep(QUIET_POLL).await;
        }
    }

    /// Returns once the connection has had no request in flight for `timeout`. Checks again
    /// at most every `timeout` while requests are in flight.
    async fn idle_for(&self, timeout: Duration) {
        loop {
            let deadline = if self.in_flight.load(Ordering::SeqCst) == 0 {
                self.idle_since() + timeout
            } else {
                Instant::now() + timeout
            };
            if deadline <= Instant::now() {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// A request in flight; the connection is idle again from when the last one ends.
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            let now = Instant::now();
            *self
                .0
                .idle_since
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = now;
        }
    }
}

/// Lets one warning through per period and counts the events in between.
struct Throttle {
    every: Duration,
    state: Mutex<(Option<Instant>, u64)>,
}

impl Throttle {
    fn new(every: Duration) -> Self {
        Self {
            every,
            state: Mutex::new((None, 0)),
        }
    }

    /// Records an event; returns how many there were since the last warning when one is due.
    fn hit(&self) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let (last, count) = &mut *state;
        *count += 1;
        let now = Instant::now();
        if last.is_some_and(|at| now.duration_since(at) < self.every) {
            return None;
        }
        *last = Some(now);
        Some(std::mem::take(count))
    }

    /// Records a refusal of `peer` at `limit`; logs `message` with the count when a warning is
    /// due.
    fn warn(&self, peer: SocketAddr, limit: usize, message: &'static str) {
        if let Some(refused) = self.hit() {
            tracing::warn!(%peer, refused, limit, "{message}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_throttle_lets_one_through_per_period_with_the_count() {
        let throttle = Throttle::new(Duration::from_secs(3600));
        assert_eq!(throttle.hit(), Some(1));
        assert_eq!(throttle.hit(), None);
        assert_eq!(throttle.hit(), None);
        let quick = Throttle::new(Duration::ZERO);
        assert_eq!(quick.hit(), Some(1));
        assert_eq!(quick.hit(), Some(1));
    }

    #[test]
    fn handshake_failures_are_told_apart() {
        let io = |e: rustls::Error| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
        assert_eq!(
            handshake_failure(&io(rustls::Error::NoCertificatesPresented)),
            HandshakeFailure::NoClientCertificate
        );
        assert_eq!(
            handshake_failure(&io(rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer
            ))),
            HandshakeFailure::UntrustedClientCertificate
        );
        assert_eq!(
            handshake_failure(&io(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure
            ))),
            HandshakeFailure::ClientNameNotAllowed
        );
        assert_eq!(
            handshake_failure(&io(rustls::Error::AlertReceived(
                AlertDescription::BadCertificate
            ))),
            HandshakeFailure::ServerCertificateRejected
        );
        assert_eq!(
            handshake_failure(&std::io::Error::from(std::io::ErrorKind::UnexpectedEof)),
            HandshakeFailure::Other
        );
    }

    #[tokio::test]
    async fn a_connection_is_idle_only_without_requests_in_flight() {
        let activity = Arc::new(Activity::new());
        let timeout = Duration::from_millis(30);
        let started = Instant::now();
        activity.idle_for(timeout).await;
        assert!(started.elapsed() >= timeout);

        let request = activity.begin();
        let idle = activity.idle_for(timeout);
        tokio::pin!(idle);
        // With a request in flight the connection never becomes idle.
        assert!(
            tokio::time::timeout(timeout * 3, idle.as_mut())
                .await
                .is_err()
        );
        let ended = Instant::now();
        drop(request);
        idle.await;
        assert!(
            ended.elapsed() >= timeout,
            "idle counts from the last request's end"
        );
    }
}
