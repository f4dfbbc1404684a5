//! The HTTPS webhook listener and the plain-HTTP admin listener.
//!
//! - [`serve_tls`] (in `webhook`) serves the webhook router over TLS within [`Limits`]: time
//!   limits on handshakes, headers, bodies and idle connections, a cap on connections at
//!   which a newcomer evicts the oldest connection never answered ([`slots`]), a cap on
//!   HTTP/2 streams, and a budget of request body bytes held at once ([`body`]).
//! - [`serve_admin`] serves `/livez`, `/readyz` and `/metrics` over plain HTTP.

mod body;
mod metrics;
mod slots;
mod webhook;

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
    routing::get,
};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::telemetry;

pub use metrics::ServerMetrics;
pub use webhook::{Limits, TlsConfigSource, Webhook, serve_tls};

/// Whether the TLS listener accepts connections: a condition of readiness, with the policy
/// caches having synced. Redis health is a metric, not a readiness condition: a Redis outage
/// must not take every replica out of the Service.
#[derive(Debug, Default)]
pub struct Readiness(AtomicBool);

impl Readiness {
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::SeqCst);
    }

    pub fn get(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// A condition of readiness: what is wrong while it does not hold, and whether it holds.
pub type Condition = (&'static str, Arc<dyn Fn() -> bool + Send + Sync>);

#[derive(Clone)]
struct AdminState {
    registry: Arc<Registry>,
    ready: Arc<[Condition]>,
}

/// `/livez`, `/readyz` and `/metrics` (every metric group registered in `registry`). `/readyz`
/// answers 200 when every condition of `ready` holds, else 503 naming those that do not.
pub fn admin_router(registry: Arc<Registry>, ready: Vec<Condition>) -> Router {
    Router::new()
        .route("/livez", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(AdminState {
            registry,
            ready: ready.into(),
        })
}

async fn readyz(State(state): State<AdminState>) -> impl IntoResponse {
    let waiting: Vec<&str> = state
        .ready
        .iter()
        .filter(|(_, holds)| !holds())
        .map(|(what, _)| *what)
        .collect();
    if waiting.is_empty() {
        (StatusCode::OK, "ok\n".to_owned())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", waiting.join("; ")),
        )
    }
}

async fn metrics_text(State(state): State<AdminState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        telemetry::encode(&state.registry),
    )
}

/// Serves the admin router until `shutdown`.
pub async fn serve_admin(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

/// Binds a TCP listener with a clear error.
///
/// The IPv6 unspecified address (`[::]:PORT`) takes IPv4 connections too (dual stack), set
/// on the socket rather than left to the host's `net.ipv6.bindv6only`; any other IPv6
/// address is IPv6 only, and an IPv4 address IPv4 only.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, BindError> {
    bind_socket(addr).map_err(|source| BindError { addr, source })
}

fn bind_socket(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if let SocketAddr::V6(v6) = addr {
        socket.set_only_v6(!v6.ip().is_unspecified())?;
    }
    // As std's TcpListener::bind: a restarted process may bind while old connections linger.
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

#[derive(Debug, thiserror::Error)]
#[error("could not listen on {addr}")]
pub struct BindError {
    pub addr: SocketAddr,
    #[source]
    pub source: std::io::Error,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

    use tokio::net::TcpStream;

    use super::bind;

    /// Connects to `port` at `ip` and checks that the listener accepts it.
    async fn reaches(listener: &tokio::net::TcpListener, ip: std::net::IpAddr) {
        let port = listener.local_addr().unwrap().port();
        let (client, accepted) = tokio::join!(
            TcpStream::connect(SocketAddr::new(ip, port)),
            listener.accept()
        );
        client.unwrap_or_else(|e| panic!("connect to {ip}:{port}: {e}"));
        accepted.unwrap();
    }

    #[tokio::test]
    async fn the_ipv6_unspecified_address_takes_ipv4_and_ipv6_connections() {
        let listener = bind("[::]:0".parse().unwrap()).await.unwrap();
        reaches(&listener, Ipv6Addr::LOCALHOST.into()).await;
        reaches(&listener, Ipv4Addr::LOCALHOST.into()).await;
    }

    #[tokio::test]
    async fn ipv4_and_ipv6_loopback_addresses_are_served() {
        let v4 = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        reaches(&v4, Ipv4Addr::LOCALHOST.into()).await;
        let v6 = bind("[::1]:0".parse().unwrap()).await.unwrap();
        reaches(&v6, Ipv6Addr::LOCALHOST.into()).await;
    }

    #[tokio::test]
    async fn a_taken_address_is_named_in_the_error() {
        let taken = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = taken.local_addr().unwrap();
        let err = bind(addr).await.unwrap_err();
        assert_eq!(err.to_string(), format!("could not listen on {addr}"));
    }
}
