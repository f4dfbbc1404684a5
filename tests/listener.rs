//! The webhook listener is bounded: connections that never send a request, or send it too
//! slowly, are closed; connections beyond `--max-connections` are refused while open ones are
//! served; request bodies share `--max-inflight-body-bytes`; and a review is answered promptly
//! while many idle or slow connections are open. Against the `restatus serve` process.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::{
    convert::Infallible,
    sync::Arc,
    time::{Duration, Instant},
};

use futures::channel::mpsc;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::{
    body::{Bytes, Frame},
    client::conn::http2::SendRequest,
};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::ServerName;
use serde_json::Value;
use support::{
    fixture,
    http::Response,
    redis::RedisServer,
    restatus::{Options, Restatus},
};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    task::JoinHandle,
};
use tokio_rustls::{TlsConnector, client::TlsStream};

type Body = BoxBody<Bytes, Infallible>;

/// restatus with `args`, and its Redis.
async fn start(args: &[&str]) -> (RedisServer, Restatus) {
    let redis = RedisServer::start().await;
    let mut opts = Options::new(redis.url());
    opts.args = args.iter().map(|a| (*a).to_owned()).collect();
    let r = Restatus::start(opts).await;
    (redis, r)
}

async fn tcp(r: &Restatus) -> TcpStream {
    let stream = TcpStream::connect(("127.0.0.1", r.port)).await.unwrap();
    // As the API server does: without it, a request written in two pieces waits for
    // restatus's delayed ACK (40 ms), which is not what these tests measure.
    stream.set_nodelay(true).unwrap();
    stream
}

/// A TLS connection to restatus that offers only `alpn`.
async fn tls(r: &Restatus, alpn: &[u8]) -> TlsStream<TcpStream> {
    let mut config = support::http::client_config(&r.ca_file(), None);
    config.alpn_protocols = vec![alpn.to_vec()];
    TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp(r).await)
        .await
        .unwrap()
}

/// An HTTP/2 connection, and the task driving it (it ends when the connection closes).
async fn h2(r: &Restatus) -> (SendRequest<Body>, JoinHandle<Result<(), hyper::Error>>) {
    let io = TokioIo::new(tls(r, b"h2").await);
    let (send, connection) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
        .await
        .unwrap();
    (send, tokio::spawn(connection))
}

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed()
}

/// A body whose chunks the test sends when it wants; dropping the sender ends it.
fn streamed() -> (mpsc::UnboundedSender<Bytes>, Body) {
    let (tx, rx) = mpsc::unbounded::<Bytes>();
    let frames = futures::StreamExt::map(rx, |b| Ok::<_, Infallible>(Frame::data(b)));
    (tx, StreamBody::new(frames).boxed())
}

async fn post(send: &mut SendRequest<Body>, r: &Restatus, body: Body) -> Response {
    send.ready().await.unwrap();
    let request = http::Request::post(r.mutate_url())
        .header("content-type", "application/json")
        .body(body)
        .unwrap();
    let resp = send.send_request(request).await.unwrap();
    support::http::collect(resp).await.unwrap()
}

fn review() -> String {
    fixture("reviews/kc-update-status.json").to_string()
}

/// Posts the fixture review and checks that it is allowed; returns how long it took.
async fn timed_review(send: &mut SendRequest<Body>, r: &Restatus) -> Duration {
    let started = Instant::now();
    let resp = post(send, r, full(review())).await;
    let took = started.elapsed();
    assert_eq!(resp.status, 200, "{}", resp.body);
    let answer: Value = serde_json::from_str(&resp.body).unwrap();
    assert_eq!(answer["response"]["allowed"], true);
    took
}

/// Reads until restatus closes the connection (end of stream or an error), at most `limit`;
/// returns how long that took from `since`.
async fn closed(
    stream: &mut (impl AsyncRead + Unpin),
    since: Instant,
    limit: Duration,
) -> Duration {
    let mut buf = [0u8; 1024];
    let read_to_end = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(limit, read_to_end)
        .await
        .unwrap_or_else(|_| panic!("the connection was still open after {limit:?}"));
    since.elapsed()
}

async fn sample(r: &Restatus, name: &str) -> f64 {
    r.metric(name).await
}

async fn assert_sample(r: &Restatus, name: &str, want: f64) {
    assert_eq!(sample(r, name).await, want, "{name}");
}

/// Waits until the gauge `restatus_webhook_connections` reads at least `n`.
async fn connections_open(r: &Restatus, n: f64) {
    support::eventually(
        Duration::from_secs(20),
        &format!("{n} connections open"),
        || async { (sample(r, "restatus_webhook_connections").await >= n).then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn connections_that_never_send_a_request_are_closed() {
    let (_redis, r) = start(&["--header-read-timeout=1s", "--idle-timeout=2s"]).await;
    let (at_least, at_most) = (Duration::from_millis(900), Duration::from_secs(5));

    // No TLS handshake at all.
    let since = Instant::now();
    let took = closed(&mut tcp(&r).await, since, at_most).await;
    assert!(took >= at_least, "closed before the timeout: {took:?}");

    // TLS, then no HTTP/1.1 request.
    let mut stream = tls(&r, b"http/1.1").await;
    let since = Instant::now();
    let took = closed(&mut stream, since, at_most).await;
    assert!(took >= at_least, "closed before the timeout: {took:?}");

    // An HTTP/2 client (preface, settings, pings answered) that sends no request, and one
    // that stops after a request: closed --idle-timeout after their last request.
    let (_send, connection) = h2(&r).await;
    let since = Instant::now();
    let (mut send, after_request) = h2(&r).await;
    let last_request = timed_review(&mut send, &r).await;
    let requested = Instant::now();
    tokio::time::timeout(at_most, connection)
        .await
        .expect("an idle HTTP/2 connection stays open")
        .unwrap()
        .ok();
    assert!(since.elapsed() >= Duration::from_millis(1900));
    tokio::time::timeout(at_most, after_request)
        .await
        .expect("an HTTP/2 connection idle after a request stays open")
        .unwrap()
        .ok();
    assert!(
        requested.elapsed() >= Duration::from_millis(1900),
        "idle counts from the end of the last request ({last_request:?})"
    );

    assert_sample(
        &r,
        "restatus_tls_handshake_failures_total{reason=\"timeout\"}",
        1.0,
    )
    .await;
    assert_sample(
        &r,
        "restatus_webhook_connections_closed_total{reason=\"header_read\"}",
        1.0,
    )
    .await;
    assert_sample(
        &r,
        "restatus_webhook_connections_closed_total{reason=\"idle\"}",
        2.0,
    )
    .await;
    assert_sample(&r, "restatus_webhook_connections", 0.0).await;
}

/// The headers of a request, long enough that sending them a byte at a time takes seconds.
fn slow_head() -> Vec<u8> {
    let mut head =
        b"POST /mutate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n".to_vec();
    head.extend_from_slice(format!("X-Padding: {}\r\n\r\n", "a".repeat(200)).as_bytes());
    head
}

#[tokio::test]
async fn a_slow_loris_is_cut_off() {
    let (_redis, r) = start(&["--header-read-timeout=1s", "--body-read-timeout=1s"]).await;

    // HTTP/1.1 headers a byte every 20 ms: they would take 6 s.
    let (mut reader, mut writer) = tokio::io::split(tls(&r, b"http/1.1").await);
    let since = Instant::now();
    let cut = tokio::spawn(async move { closed(&mut reader, since, Duration::from_secs(5)).await });
    let head = slow_head();
    let mut pace = tokio::time::interval(Duration::from_millis(20));
    let mut sent = 0;
    for byte in &head {
        pace.tick().await;
        if cut.is_finished() || writer.write_all(&[*byte]).await.is_err() {
            break;
        }
        sent += 1;
    }
    let took = cut.await.unwrap();
    assert!(
        (Duration::from_millis(900)..Duration::from_secs(3)).contains(&took),
        "cut off after {took:?}"
    );
    assert!(
        sent < head.len(),
        "all {sent} bytes of the headers went through"
    );
    assert_sample(
        &r,
        "restatus_webhook_connections_closed_total{reason=\"header_read\"}",
        1.0,
    )
    .await;

    // An HTTP/2 request whose body stops halfway is answered 408.
    let (mut send, _connection) = h2(&r).await;
    let (tx, body) = streamed();
    let review = review();
    tx.unbounded_send(Bytes::from(review[..100].to_owned()))
        .unwrap();
    let since = Instant::now();
    let resp = tokio::time::timeout(Duration::from_secs(5), post(&mut send, &r, body))
        .await
        .expect("a request with a stalled body stays unanswered");
    let took = since.elapsed();
    assert_eq!(resp.status, 408, "{}", resp.body);
    assert!(resp.body.contains("--body-read-timeout"), "{}", resp.body);
    assert!(
        took >= Duration::from_millis(900),
        "answered after {took:?}"
    );
    assert_sample(
        &r,
        "restatus_webhook_requests_refused_total{reason=\"body_timeout\"}",
        1.0,
    )
    .await;
    // The connection goes on serving.
    timed_review(&mut send, &r).await;
    drop(tx);
}

#[tokio::test]
async fn at_the_connection_cap_new_connections_are_closed_while_open_ones_are_served() {
    let (_redis, r) = start(&["--max-connections=8", "--header-read-timeout=60s"]).await;
    let (mut send, _connection) = h2(&r).await;
    timed_review(&mut send, &r).await;
    let mut idle = Vec::new();
    for _ in 0..7 {
        idle.push(tcp(&r).await);
    }
    connections_open(&r, 8.0).await;

    // Closed at once, not after the 60 s header timeout.
    let since = Instant::now();
    let took = closed(&mut tcp(&r).await, since, Duration::from_secs(5)).await;
    assert!(took < Duration::from_secs(1), "closed after {took:?}");
    assert!(sample(&r, "restatus_webhook_connections_refused_total").await >= 1.0);
    assert_sample(&r, "restatus_webhook_connections_limit", 8.0).await;

    // The connection that holds a place is still served promptly.
    let took = timed_review(&mut send, &r).await;
    assert!(took < Duration::from_millis(500), "took {took:?}");

    // A place given up is taken by the next connection.
    drop(idle.pop());
    support::eventually(Duration::from_secs(10), "a place to free up", || async {
        (sample(&r, "restatus_webhook_connections").await <= 7.0).then_some(())
    })
    .await;
    let (mut next, _next_connection) = h2(&r).await;
    timed_review(&mut next, &r).await;
}

#[tokio::test]
async fn a_review_is_answered_promptly_while_many_idle_and_slow_connections_are_open() {
    // The default limits.
    let (_redis, r) = start(&[]).await;
    let (mut send, _connection) = h2(&r).await;
    timed_review(&mut send, &r).await;

    // 200 connections without a handshake, 100 HTTP/2 connections without a request, and 50
    // clients sending HTTP/1.1 headers a byte every 100 ms.
    let mut sockets = Vec::new();
    for _ in 0..200 {
        sockets.push(tcp(&r).await);
    }
    let mut quiet = Vec::new();
    for _ in 0..100 {
        quiet.push(h2(&r).await);
    }
    let mut slow = Vec::new();
    for _ in 0..50 {
        let mut stream = tls(&r, b"http/1.1").await;
        slow.push(tokio::spawn(async move {
            let mut pace = tokio::time::interval(Duration::from_millis(100));
            for byte in slow_head() {
                pace.tick().await;
                if stream.write_all(&[byte]).await.is_err() {
                    return;
                }
            }
        }));
    }
    connections_open(&r, 351.0).await;
    let open = sample(&r, "restatus_webhook_connections").await;

    let mut on_open_connection = Vec::new();
    for _ in 0..20 {
        on_open_connection.push(timed_review(&mut send, &r).await);
    }
    let mut on_new_connection = Vec::new();
    for _ in 0..5 {
        let since = Instant::now();
        let (mut fresh, _fresh_connection) = h2(&r).await;
        timed_review(&mut fresh, &r).await;
        on_new_connection.push(since.elapsed());
    }
    on_open_connection.sort();
    on_new_connection.sort();
    let (median, slowest) = (on_open_connection[10], on_open_connection[19]);
    let slowest_new = on_new_connection[4];
    eprintln!(
        "with {open} connections open: reviews on an open connection took {median:?} (median), \
         {slowest:?} (slowest of 20); on a new connection, handshake included, {slowest_new:?} \
         (slowest of 5)"
    );
    assert!(
        slowest < Duration::from_millis(500),
        "{on_open_connection:?}"
    );
    assert!(
        slowest_new < Duration::from_millis(500),
        "{on_new_connection:?}"
    );
    for task in slow {
        task.abort();
    }
    drop((sockets, quiet));
}

/// A review padded with whitespace (still valid JSON) to `len` bytes, in two parts: the first
/// `first` bytes, and the rest.
fn padded_review(len: usize, first: usize) -> (Bytes, Bytes) {
    let mut text = review().into_bytes();
    text.resize(len, b' ');
    let rest = text.split_off(first);
    (Bytes::from(text), Bytes::from(rest))
}

#[tokio::test]
async fn the_inflight_body_budget_answers_503_when_full() {
    let (_redis, r) = start(&["--max-request-bytes=1Mi", "--max-inflight-body-bytes=2Mi"]).await;
    let (send, _connection) = h2(&r).await;

    // Two large reviews hold 1.8 MB of the 2 MiB while their bodies are still arriving.
    let mut held = Vec::new();
    for _ in 0..2 {
        let (tx, body) = streamed();
        let (first, rest) = padded_review(950_000, 900_000);
        tx.unbounded_send(first).unwrap();
        let mut send = send.clone();
        let r_url = r.mutate_url();
        let answer = tokio::spawn(async move {
            send.ready().await.unwrap();
            let request = http::Request::post(r_url).body(body).unwrap();
            let resp = send.send_request(request).await.unwrap();
            support::http::collect(resp).await.unwrap()
        });
        held.push((tx, rest, answer));
    }
    support::eventually(
        Duration::from_secs(10),
        "1.8 MB of bodies in flight",
        || async {
            (sample(&r, "restatus_webhook_body_bytes_in_flight").await >= 1_800_000.0).then_some(())
        },
    )
    .await;

    // A third finds no room soon and is answered 503, quickly.
    let (first, rest) = padded_review(950_000, 900_000);
    let since = Instant::now();
    let resp = post(&mut send.clone(), &r, full([first, rest].concat())).await;
    let took = since.elapsed();
    assert_eq!(resp.status, 503, "{}", resp.body);
    assert!(
        resp.body.contains("--max-inflight-body-bytes"),
        "{}",
        resp.body
    );
    assert!(took < Duration::from_secs(2), "took {took:?}");
    assert_sample(
        &r,
        "restatus_webhook_requests_refused_total{reason=\"body_budget\"}",
        1.0,
    )
    .await;

    // The two that hold room finish and are served; then the room is free again.
    for (tx, rest, answer) in held {
        tx.unbounded_send(rest).unwrap();
        drop(tx);
        let resp = answer.await.unwrap();
        assert_eq!(resp.status, 200, "{}", resp.body);
    }
    support::eventually(
        Duration::from_secs(10),
        "the bodies' room to be given back",
        || async {
            (sample(&r, "restatus_webhook_body_bytes_in_flight").await == 0.0).then_some(())
        },
    )
    .await;
    let resp = post(
        &mut send.clone(),
        &r,
        full(padded_review(950_000, 950_000).0),
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.body);
    assert_eq!(
        sample(&r, "restatus_webhook_body_bytes_limit").await,
        2_097_152.0
    );
}

#[tokio::test]
async fn http2_streams_per_connection_are_capped() {
    let (_redis, r) = start(&["--max-concurrent-streams=2", "--body-read-timeout=2s"]).await;
    let (send, _connection) = h2(&r).await;
    // The first exchange brings restatus's SETTINGS, and with them the cap, to the client.
    timed_review(&mut send.clone(), &r).await;

    // Two requests whose bodies stall take both streams until they are answered 408.
    let mut stalled = Vec::new();
    for _ in 0..2 {
        let (tx, body) = streamed();
        tx.unbounded_send(Bytes::from_static(b"{\"apiVersion\""))
            .unwrap();
        let (mut send, r_url) = (send.clone(), r.mutate_url());
        stalled.push((
            tx,
            tokio::spawn(async move {
                send.ready().await.unwrap();
                let request = http::Request::post(r_url).body(body).unwrap();
                let resp = send.send_request(request).await.unwrap();
                support::http::collect(resp).await.unwrap()
            }),
        ));
    }
    support::eventually(Duration::from_secs(10), "two bodies in flight", || async {
        (sample(&r, "restatus_webhook_body_bytes_in_flight").await >= 26.0).then_some(())
    })
    .await;

    // A third request on that connection waits for a stream; on another connection a review
    // is answered at once.
    let since = Instant::now();
    let mut third = send.clone();
    let (third, other) = tokio::join!(
        async { post(&mut third, &r, full(review())).await },
        async {
            let (mut other, _other_connection) = h2(&r).await;
            timed_review(&mut other, &r).await
        }
    );
    let waited = since.elapsed();
    assert_eq!(third.status, 200, "{}", third.body);
    assert!(
        waited >= Duration::from_millis(1500),
        "no wait for a stream: {waited:?}"
    );
    assert!(other < Duration::from_millis(500), "took {other:?}");
    for (tx, answer) in stalled {
        assert_eq!(answer.await.unwrap().status, 408);
        drop(tx);
    }
}
