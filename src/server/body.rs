//! The budget of request body bytes held at once across all webhook connections.
//!
//! Each request's body is read here before the request reaches the router, with room in the
//! budget taken as its bytes arrive (so a client must send bytes to hold any) and given back
//! when the response is ready. A request that finds no room within [`ROOM_WAIT`] is answered
//! 503 and lets go of what it held; one whose body takes longer than `--body-read-timeout` is
//! answered 408. The per-request `--max-request-bytes` limit stays the handler's: a body
//! beyond it is handed on unread (declared too large) or cut at the limit, and the handler
//! answers 413.

use std::{sync::Arc, time::Duration};

use axum::{
    body::{Body, Bytes},
    http::{HeaderMap, header},
};
use futures::StreamExt;
use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore},
    time::Instant,
};

use super::metrics::{Refused, ServerMetrics};

/// How long a request waits for room in the budget before it is answered 503. Reviews are
/// answered in milliseconds, so room that does not come within this is an overload, and the
/// API server is better served by a quick answer than by a wait inside its own timeout.
pub(super) const ROOM_WAIT: Duration = Duration::from_millis(500);

/// The most a body's buffer is sized ahead of the bytes that arrived.
const FIRST_RESERVE: usize = 64 << 10;

pub(super) struct BodyBudget {
    bytes: Arc<Semaphore>,
    max_request_bytes: usize,
    read_timeout: Duration,
    room_wait: Duration,
    metrics: ServerMetrics,
}

/// A body read within the budget, ready for the router, and the room it holds.
pub(super) struct Read {
    pub body: Body,
    pub held: Held,
}

impl BodyBudget {
    /// `total` bytes shared by all requests, each at most `max_request_bytes` (which must not
    /// exceed `total`, or a request of that size would wait forever).
    pub(super) fn new(
        total: usize,
        max_request_bytes: usize,
        read_timeout: Duration,
        room_wait: Duration,
        metrics: ServerMetrics,
    ) -> Self {
        Self {
            bytes: Arc::new(Semaphore::new(total.min(Semaphore::MAX_PERMITS))),
            max_request_bytes,
            read_timeout,
            room_wait,
            metrics,
        }
    }

    /// Reads `body` within the budget and the read timeout.
    pub(super) async fn read(&self, headers: &HeaderMap, body: Body) -> Result<Read, Refused> {
        let mut held = Held {
            permit: None,
            metrics: self.metrics.clone(),
        };
        // Declared larger than a review may be: the handler refuses it from its length alone.
        if declared_length(headers).is_some_and(|n| n > self.max_request_bytes) {
            return Ok(Read { body, held });
        }
        let deadline = Instant::now() + self.read_timeout;
        // Chunks are copied out as they arrive, so that the connection's read buffers they may
        // point into are not kept alive by a body waiting for room.
        // Sized when the first bytes arrive from a declared length, but never more than
        // FIRST_RESERVE ahead of what arrived: a client that declares megabytes and sends a
        // byte must not make restatus hold megabytes the budget does not count.
        let declared = declared_length(headers)
            .unwrap_or(0)
            .min(self.max_request_bytes)
            .min(FIRST_RESERVE);
        let mut buffer: Vec<u8> = Vec::new();
        let mut stream = body.into_data_stream();
        loop {
            let chunk = match tokio::time::timeout_at(deadline, stream.next()).await {
                Err(_) => return Err(Refused::BodyTimeout),
                Ok(None) => break,
                Ok(Some(Ok(chunk))) => chunk,
                // The client went away or broke the framing: the handler reports it.
                Ok(Some(Err(error))) => {
                    let failed = futures::stream::iter([Err::<Bytes, _>(error)]);
                    return Ok(Read {
                        body: Body::from_stream(failed),
                        held,
                    });
                }
            };
            if buffer.len() + chunk.len() > self.max_request_bytes {
                // Too large for a review: what arrived so far and this chunk take the handler
                // past its limit (413) without reading the rest.
                let parts = [Bytes::from(buffer), chunk].map(Ok::<_, std::convert::Infallible>);
                return Ok(Read {
                    body: Body::from_stream(futures::stream::iter(parts)),
                    held,
                });
            }
            let n = u32::try_from(chunk.len()).map_err(|_| Refused::BodyBudget)?;
            let wait = self
                .room_wait
                .min(deadline.saturating_duration_since(Instant::now()));
            match tokio::time::timeout(wait, self.bytes.clone().acquire_many_owned(n)).await {
                Ok(Ok(permit)) => held.add(permit),
                Ok(Err(_)) => return Err(Refused::BodyBudget),
                Err(_) if Instant::now() >= deadline => return Err(Refused::BodyTimeout),
                Err(_) => return Err(Refused::BodyBudget),
            }
            if buffer.capacity() == 0 {
                buffer.reserve_exact(declared.max(chunk.len()));
            }
            buffer.extend_from_slice(&chunk);
        }
        Ok(Read {
            body: Body::from(buffer),
            held,
        })
    }
}

fn declared_length(headers: &HeaderMap) -> Option<usize> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// Room held in the budget, and in `restatus_webhook_body_bytes_in_flight`, until dropped.
pub(super) struct Held {
    permit: Option<OwnedSemaphorePermit>,
    metrics: ServerMetrics,
}

impl Held {
    fn add(&mut self, permit: OwnedSemaphorePermit) {
        self.metrics.body_bytes_held(permit.num_permits());
        match &mut self.permit {
            Some(held) => held.merge(permit),
            None => self.permit = Some(permit),
        }
    }

    #[cfg(test)]
    fn bytes(&self) -> usize {
        self.permit.as_ref().map_or(0, |p| p.num_permits())
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(permit) = &self.permit {
            self.metrics.body_bytes_released(permit.num_permits());
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;
    use futures::channel::mpsc;

    use super::*;
    use crate::telemetry::{assert_samples, registered};

    const LONG: Duration = Duration::from_secs(30);

    fn budget(
        total: usize,
        max_request: usize,
        read_timeout: Duration,
    ) -> (prometheus_client::registry::Registry, BodyBudget) {
        let (registry, metrics) = registered(ServerMetrics::register);
        let budget = BodyBudget::new(
            total,
            max_request,
            read_timeout,
            Duration::from_millis(50),
            metrics,
        );
        (registry, budget)
    }

    /// A body fed through a channel, so a test decides when each chunk arrives.
    fn streamed() -> (mpsc::UnboundedSender<Result<Bytes, std::io::Error>>, Body) {
        let (tx, rx) = mpsc::unbounded();
        (tx, Body::from_stream(rx))
    }

    async fn text(body: Body) -> Result<String, axum::Error> {
        let bytes = axum::body::to_bytes(body, usize::MAX).await?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    #[tokio::test]
    async fn a_body_holds_its_bytes_until_dropped() {
        let (registry, b) = budget(100, 100, LONG);
        let (tx, body) = streamed();
        tx.unbounded_send(Ok(Bytes::from_static(b"hello ")))
            .unwrap();
        tx.unbounded_send(Ok(Bytes::from_static(b"world"))).unwrap();
        drop(tx);
        let read = b.read(&HeaderMap::new(), body).await.unwrap();
        assert_eq!(read.held.bytes(), 11);
        assert_eq!(b.bytes.available_permits(), 89);
        assert_samples(&registry, &["restatus_webhook_body_bytes_in_flight 11"]);
        assert_eq!(text(read.body).await.unwrap(), "hello world");
        drop(read.held);
        assert_eq!(b.bytes.available_permits(), 100);
        assert_samples(&registry, &["restatus_webhook_body_bytes_in_flight 0"]);
    }

    /// A body of `text` read within `b`, and the room it holds.
    async fn hold(b: &BodyBudget, text: &'static str) -> Read {
        b.read(&HeaderMap::new(), Body::from(text)).await.unwrap()
    }

    #[tokio::test]
    async fn no_room_soon_enough_refuses_and_gives_back_what_was_held() {
        let (_registry, b) = budget(10, 10, LONG);
        let first = hold(&b, "123456").await;
        let (tx, body) = streamed();
        tx.unbounded_send(Ok(Bytes::from_static(b"abc"))).unwrap();
        tx.unbounded_send(Ok(Bytes::from_static(b"defg"))).unwrap();
        assert!(matches!(
            b.read(&HeaderMap::new(), body).await,
            Err(Refused::BodyBudget)
        ));
        assert_eq!(
            b.bytes.available_permits(),
            4,
            "only the first body holds room"
        );
        drop(first);
        assert_eq!(b.bytes.available_permits(), 10);
    }

    #[tokio::test]
    async fn room_that_frees_up_within_the_wait_is_taken() {
        let (_registry, b) = budget(10, 10, LONG);
        let first = hold(&b, "123456789").await;
        let headers = HeaderMap::new();
        let second = b.read(&headers, Body::from("abc"));
        let release = async move {
            tokio::task::yield_now().await;
            drop(first);
        };
        let (second, ()) = tokio::join!(second, release);
        assert_eq!(second.unwrap().held.bytes(), 3);
    }

    #[tokio::test]
    async fn a_body_slower_than_the_read_timeout_is_refused() {
        let (_registry, b) = budget(100, 100, Duration::from_millis(50));
        let (tx, body) = streamed();
        tx.unbounded_send(Ok(Bytes::from_static(b"{"))).unwrap();
        assert!(matches!(
            b.read(&HeaderMap::new(), body).await,
            Err(Refused::BodyTimeout)
        ));
        assert_eq!(b.bytes.available_permits(), 100);
        drop(tx);
    }

    #[tokio::test]
    async fn a_body_beyond_the_request_limit_is_handed_on_for_the_handler_to_refuse() {
        let (_registry, b) = budget(100, 10, LONG);
        let mut declared = HeaderMap::new();
        declared.insert(header::CONTENT_LENGTH, HeaderValue::from_static("11"));
        let (_tx, body) = streamed();
        let read = b.read(&declared, body).await.unwrap();
        assert_eq!(read.held.bytes(), 0, "nothing read, nothing held");

        let (tx, body) = streamed();
        tx.unbounded_send(Ok(Bytes::from_static(b"12345678")))
            .unwrap();
        tx.unbounded_send(Ok(Bytes::from_static(b"9ab"))).unwrap();
        let read = b.read(&HeaderMap::new(), body).await.unwrap();
        assert_eq!(read.held.bytes(), 8, "what was read before the limit");
        assert_eq!(text(read.body).await.unwrap(), "123456789ab");
        drop(tx);
    }

    #[tokio::test]
    async fn a_broken_body_reaches_the_handler_as_an_error() {
        let (_registry, b) = budget(100, 100, LONG);
        let (tx, body) = streamed();
        tx.unbounded_send(Err(std::io::Error::other("reset")))
            .unwrap();
        let read = b.read(&HeaderMap::new(), body).await.unwrap();
        assert!(text(read.body).await.is_err());
    }
}
