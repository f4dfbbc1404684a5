//! Redis faults under load, against a real `redis-server`: frozen (SIGSTOP) while status
//! writes flow, and a network path that drops everything (a blackhole, not a reset).
//!
//! The reviews are sent straight to restatus's `/mutate` over HTTP/2 connections, as the API
//! server sends them: a 2-core machine cannot drive hundreds of status writes a second
//! through the API server and restatus at once, and what is measured is restatus's answer.
//! The freeze runs at 100 writes a second by default, what a loaded 2-core machine sends and
//! answers with debug builds; `RESTATUS_FAULT_RATE=500` asks for more, and the figures say
//! what was sent. Figures are printed (`-- --nocapture`) and quoted in docs/operations.md.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use restatus::store::{KeySchema, ObjectIdentity};
use serde_json::{Value, json};
use support::{
    fixture,
    http::{Alpn, TlsClient},
    redis::RedisServer,
    restatus::{Options, Restatus},
};
use tokio::{
    io::AsyncWriteExt,
    net::{TcpListener, TcpStream},
    sync::watch,
};

/// Held by each test of this file while it runs: their timings are not measured against each
/// other's load.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// restatus's budget for each Redis call while answering (the default).
const BUDGET: Duration = Duration::from_millis(100);

/// What an answer may take at most: the webhook's `timeoutSeconds` in the chart, beyond
/// which the API server stops waiting. On a loaded 2-core machine a debug build's answers
/// queue for hundreds of milliseconds whatever Redis does; that the breaker makes answers
/// fast is checked on restatus's own latency, against its own before the fault.
const ANSWER_BOUND: Duration = Duration::from_secs(5);

fn identity(object: usize) -> ObjectIdentity {
    ObjectIdentity {
        name: format!("load-{object}"),
        ..support::fixture_cluster()
    }
}

/// A status write of object `object`, the `seq`th write sent: its resourceVersion and its
/// status's `seq` rise with every write. Made from the fixture once, then by replacing.
fn status_write(object: usize, seq: u64) -> String {
    static TEMPLATE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let template = TEMPLATE.get_or_init(|| {
        let mut review = fixture("reviews/kc-update-status.json");
        let req = &mut review["request"];
        req["uid"] = json!("@UID@");
        req["name"] = json!("@NAME@");
        for side in ["object", "oldObject"] {
            req[side]["metadata"]["name"] = json!("@NAME@");
            req[side]["metadata"]["uid"] = json!("@OBJUID@");
            req[side]["metadata"]["resourceVersion"] = json!("@RV@");
        }
        req["object"]["status"]["seq"] = json!("@SEQ@");
        review.to_string()
    });
    template
        .replace("@UID@", &format!("w-{seq}"))
        .replace("@NAME@", &format!("load-{object}"))
        .replace("@OBJUID@", &format!("0f4c7a52-0000-4000-8000-{object:012}"))
        .replace("@RV@", &(10_000 + seq).to_string())
        .replace("\"@SEQ@\"", &seq.to_string())
}

/// One answered review: when it was sent (from the start of the run), how long it took, and
/// whether it was answered 200 `allowed`.
#[derive(Clone, Copy)]
struct Answered {
    sent: Duration,
    took: Duration,
    allowed: bool,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    assert!(!sorted.is_empty(), "no answers in this window");
    let rank = ((sorted.len() as f64) * p).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The answers sent within `[from, to)`, their latencies sorted.
fn window(answers: &[Answered], from: Duration, to: Duration) -> Vec<Duration> {
    let mut took: Vec<Duration> = answers
        .iter()
        .filter(|a| a.sent >= from && a.sent < to)
        .map(|a| a.took)
        .collect();
    took.sort();
    took
}

/// restatus's own histogram of the time it takes to answer a status write (UPDATE):
/// cumulative counts by upper bound in seconds.
async fn answer_histogram(r: &Restatus) -> Vec<(f64, f64)> {
    let mut buckets: Vec<(f64, f64)> = r
        .metrics()
        .await
        .into_iter()
        .filter(|(k, _)| {
            k.starts_with("restatus_admission_duration_seconds_bucket{")
                && k.contains("operation=\"UPDATE\"")
        })
        .filter_map(|(k, v)| {
            let le = k.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, v))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    buckets
}

/// The upper bound of the bucket that holds quantile `q` of what was observed between two
/// snapshots of [`answer_histogram`].
fn histogram_quantile(from: &[(f64, f64)], to: &[(f64, f64)], q: f64) -> Duration {
    let counts: Vec<(f64, f64)> = to
        .iter()
        .map(|(le, n)| {
            let before = from.iter().find(|(l, _)| l == le).map_or(0.0, |(_, n)| *n);
            (*le, n - before)
        })
        .collect();
    let total = counts.last().map_or(0.0, |(_, n)| *n);
    assert!(total > 0.0, "nothing observed between the snapshots");
    let le = counts
        .iter()
        .find(|(_, n)| *n >= total * q)
        .map_or(f64::INFINITY, |(le, _)| *le);
    Duration::from_secs_f64(le.min(3600.0))
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// Sends status writes at `rate` a second, round-robin over `objects` objects and four
/// HTTP/2 connections, until `stop` says so. Returns the answers and, per object, the `seq`
/// of the last write sent.
async fn drive(
    r: &Restatus,
    rate: u32,
    objects: usize,
    start: Instant,
    mut stop: watch::Receiver<bool>,
) -> (Vec<Answered>, HashMap<usize, u64>) {
    let clients: Vec<Arc<TlsClient>> = (0..4)
        .map(|_| Arc::new(TlsClient::new(&r.ca_file(), Alpn::Http2)))
        .collect();
    let url = r.mutate_url();
    let mut tick = tokio::time::interval(Duration::from_secs(1) / rate);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut inflight = tokio::task::JoinSet::new();
    let mut last = HashMap::new();
    let mut seq = 0u64;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => break,
        }
        seq += 1;
        let object = (seq as usize) % objects;
        last.insert(object, seq);
        let body = status_write(object, seq);
        let client = clients[(seq as usize) % clients.len()].clone();
        let url = url.clone();
        inflight.spawn(async move {
            let sent = Instant::now();
            let resp = client.post(&url, body).await;
            let took = sent.elapsed();
            let allowed = resp.is_ok_and(|resp| {
                resp.status == 200
                    && serde_json::from_str::<Value>(&resp.body)
                        .is_ok_and(|a| a["response"]["allowed"] == true)
            });
            Answered {
                sent: sent - start,
                took,
                allowed,
            }
        });
    }
    let answers = inflight.join_all().await;
    (answers, last)
}

/// The `seq` of the status recorded for `object`.
async fn recorded_seq(redis: &RedisServer, key_prefix: &str, object: usize) -> Option<u64> {
    let key = KeySchema::new(key_prefix, "default").record(&identity(object));
    let record = redis.hgetall(&key).await;
    let status: Value = serde_json::from_str(record.get("status")?).ok()?;
    status["seq"].as_u64()
}

/// Redis frozen (SIGSTOP) for 30 s while status writes flow (100 a second, or
/// `RESTATUS_FAULT_RATE`). Every review is
/// allowed, within the bound; once the breaker is open (after the first second) the p99 is
/// within twice its value before the freeze; after SIGCONT the breaker closes, and every
/// object's record converges on its last status through the writes that follow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_redis_under_load_costs_no_review_its_budget_once_the_breaker_is_open() {
    // Writes a second: RESTATUS_FAULT_RATE, else what a loaded 2-core machine sends and
    // answers at once (the figures say which rate was sent).
    let rate: u32 = std::env::var("RESTATUS_FAULT_RATE")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(100);
    const OBJECTS: usize = 200;
    const WARM: Duration = Duration::from_secs(3);
    const NORMAL: Duration = Duration::from_secs(7);
    const FROZEN: Duration = Duration::from_secs(30);
    const AFTER: Duration = Duration::from_secs(8);

    let _alone = ONE_AT_A_TIME.lock().await;
    let redis = RedisServer::start().await;
    let mut opts = Options::new(redis.url());
    opts.args = vec![
        "--log-level=info".into(),
        format!("--redis-timeout={}ms", BUDGET.as_millis()),
    ];
    let r = Restatus::start(opts).await;

    let start = Instant::now();
    let (stop_tx, stop_rx) = watch::channel(false);
    let load = async { drive(&r, rate, OBJECTS, start, stop_rx).await };
    let faults = async {
        tokio::time::sleep_until((start + WARM).into()).await;
        let warm = answer_histogram(&r).await;
        tokio::time::sleep_until((start + WARM + NORMAL).into()).await;
        let normal = answer_histogram(&r).await;
        // Opens before the freeze: a busy machine's own delays can run calls out of their
        // budget too.
        let opens_before = r.metric("restatus_redis_breaker_opens_total").await;
        let frozen_at = start.elapsed();
        redis.pause();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let first_second = answer_histogram(&r).await;
        tokio::time::sleep(FROZEN - Duration::from_secs(1)).await;
        let frozen = answer_histogram(&r).await;
        let open_during = r.metric("restatus_redis_breaker_open").await;
        redis.resume();
        let resumed_at = start.elapsed();
        // How long the breaker stays open once Redis answers again (None: beyond 10 s).
        let mut closed_after = None;
        while closed_after.is_none() && start.elapsed() - resumed_at < Duration::from_secs(10) {
            if r.metric("restatus_redis_breaker_open").await == 0.0 {
                closed_after = Some(start.elapsed() - resumed_at);
            } else {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        tokio::time::sleep(AFTER).await;
        stop_tx.send(true).unwrap();
        let server = (
            histogram_quantile(&warm, &normal, 0.99),
            histogram_quantile(&first_second, &frozen, 0.99),
        );
        (
            frozen_at,
            resumed_at,
            open_during,
            closed_after,
            opens_before,
            server,
        )
    };
    let ((answers, last), (frozen_at, resumed_at, open_during, closed_after, opens_before, server)) =
        tokio::join!(load, faults);
    let (server_normal_p99, server_frozen_p99) = server;

    // Every review allowed.
    let failed = answers.iter().filter(|a| !a.allowed).count();
    assert_eq!(
        failed,
        0,
        "{failed} of {} reviews not allowed",
        answers.len()
    );
    // The rate actually sent.
    let sent_rate = answers.len() as f64 / start.elapsed().as_secs_f64();
    let slowest = answers.iter().map(|a| a.took).max().unwrap();
    let normal = window(&answers, WARM, frozen_at);
    let first_second = window(&answers, frozen_at, frozen_at + Duration::from_secs(1));
    let outage = window(&answers, frozen_at + Duration::from_secs(1), resumed_at);
    let closed = closed_after.unwrap_or(Duration::from_secs(10));
    let after = window(&answers, resumed_at + closed, start.elapsed());
    let waited = outage.iter().filter(|t| **t >= BUDGET).count();
    let m = r.metrics().await;
    let sample = |name: &str| m.get(name).copied().unwrap_or(0.0);
    let away =
        sample("restatus_admission_requests_total{operation=\"UPDATE\",outcome=\"redis_away\"}");
    let errors =
        sample("restatus_admission_requests_total{operation=\"UPDATE\",outcome=\"error\"}");
    eprintln!(
        "frozen Redis under load: {} reviews at {sent_rate:.0}/s ({OBJECTS} objects, budget {}), none failed; \
         restatus's own p99 (histogram bucket) before the freeze <= {}, after its first second <= {}; \
         at the client: \
         p50/p99 before the freeze {}/{}; in the first second of it {}/{} (max {}); \
         after it {}/{} ({} answers, {waited} of them >= the budget); after SIGCONT {}/{}; slowest {}; \
         breaker opened {} time(s) ({opens_before} before the freeze), closed {} after SIGCONT (probes: {} answered, {} failed); \
         {away} reviews redis_away, {errors} error",
        answers.len(),
        ms(BUDGET),
        ms(server_normal_p99),
        ms(server_frozen_p99),
        ms(percentile(&normal, 0.5)),
        ms(percentile(&normal, 0.99)),
        ms(percentile(&first_second, 0.5)),
        ms(percentile(&first_second, 0.99)),
        ms(*first_second.last().unwrap()),
        ms(percentile(&outage, 0.5)),
        ms(percentile(&outage, 0.99)),
        outage.len(),
        ms(percentile(&after, 0.5)),
        ms(percentile(&after, 0.99)),
        ms(slowest),
        sample("restatus_redis_breaker_opens_total"),
        closed_after.map_or("never".into(), ms),
        sample("restatus_redis_breaker_probes_total{result=\"answered\"}"),
        sample("restatus_redis_breaker_probes_total{result=\"failed\"}"),
    );
    assert!(
        closed_after.is_some(),
        "the breaker did not close within 10 s of SIGCONT"
    );

    assert!(
        slowest < ANSWER_BOUND,
        "a review took {slowest:?}, beyond {ANSWER_BOUND:?}"
    );
    assert_eq!(
        open_during, 1.0,
        "the breaker was not open during the freeze"
    );
    // restatus's own answer time: what the breaker changes. At the client, a busy machine's
    // stalls (other processes, the client's own scheduling) come on top; the figures show it.
    assert!(
        server_frozen_p99 <= server_normal_p99 * 2,
        "restatus's p99 while frozen {server_frozen_p99:?} is beyond twice its p99 before {server_normal_p99:?}"
    );
    assert!(
        away as usize >= outage.len() * 9 / 10,
        "{away} reviews answered redis_away of {} during the outage",
        outage.len()
    );
    assert!(sample("restatus_redis_breaker_short_circuited_total") >= away);
    // Only the reviews in flight when Redis froze, those until the breaker opened, and those
    // of a busy machine's own delays waited out their budget.
    assert!(
        errors < (outage.len() / 10) as f64,
        "{errors} reviews failed (waited out their budget) of {} in the outage",
        outage.len()
    );

    // The records converge: each object's holds the last status sent for it.
    let mut behind = Vec::new();
    for (object, seq) in &last {
        let recorded = recorded_seq(&redis, &r.key_prefix, *object).await;
        if recorded != Some(*seq) {
            behind.push((*object, *seq, recorded));
        }
    }
    assert!(
        behind.is_empty(),
        "{} of {} records did not converge, e.g. {:?}",
        behind.len(),
        last.len(),
        &behind[..behind.len().min(5)]
    );
}

/// A TCP proxy to Redis that can stop forwarding without closing anything: a network path
/// that drops packets rather than refusing them. In userspace the kernel still acknowledges
/// what is sent to the proxy, so TCP keepalive and `TCP_USER_TIMEOUT` never fire here; what
/// this shows is restatus leaving a connection that stopped answering for a new one.
struct Blackhole {
    port: u16,
    /// (epoch, dropping): a connection forwards while the epoch is the one it was accepted
    /// in; a connection accepted while dropping is held without forwarding.
    state: watch::Sender<(u64, bool)>,
    /// Connections forwarded to Redis so far.
    forwarded: Arc<AtomicU64>,
}

impl Blackhole {
    async fn start(upstream: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = watch::Sender::new((0u64, false));
        let forwarded = Arc::new(AtomicU64::new(0));
        let (rx, count) = (state.subscribe(), forwarded.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                let mut rx = rx.clone();
                let count = count.clone();
                tokio::spawn(async move {
                    let (epoch, dropping) = *rx.borrow_and_update();
                    if dropping {
                        // Held open, never forwarded, never closed.
                        std::future::pending::<()>().await;
                    }
                    count.fetch_add(1, Ordering::SeqCst);
                    let mut server = TcpStream::connect(("127.0.0.1", upstream)).await.unwrap();
                    server.set_nodelay(true).unwrap();
                    client.set_nodelay(true).unwrap();
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {
                            let _ = client.shutdown().await;
                        }
                        _ = async { rx.wait_for(|(now, _)| *now != epoch).await.map(|_| ()) } => {
                            // The path is gone: both sockets stay open, nothing moves.
                            let _hold = (client, server);
                            std::future::pending::<()>().await;
                        }
                    }
                });
            }
        });
        Self {
            port,
            state,
            forwarded,
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Drops everything from now on: open connections and new ones.
    fn cut(&self) {
        self.state.send_modify(|(epoch, dropping)| {
            *epoch += 1;
            *dropping = true;
        });
    }

    /// New connections get through again; those open during the cut stay dead, as after a
    /// node is lost and Redis answers elsewhere behind the same address.
    fn heal(&self) {
        self.state.send_modify(|(_, dropping)| *dropping = false);
    }
}

/// Redis behind a path that drops everything (no reset): reviews are answered within the
/// bound throughout, the breaker opens, and once the path carries new connections again
/// restatus records again through a new connection, within the keepalive bound (three times
/// `--redis-keepalive`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_behind_a_blackhole_is_left_for_a_new_connection_within_the_keepalive_bound() {
    const KEEPALIVE: Duration = Duration::from_secs(2);
    let _alone = ONE_AT_A_TIME.lock().await;
    let redis = RedisServer::start().await;
    let proxy = Blackhole::start(redis.port).await;
    let mut opts = Options::new(proxy.url());
    opts.args = vec![
        "--log-level=info".into(),
        format!("--redis-timeout={}ms", BUDGET.as_millis()),
        format!("--redis-keepalive={}s", KEEPALIVE.as_secs()),
    ];
    let r = Restatus::start(opts).await;
    let client = TlsClient::new(&r.ca_file(), Alpn::Http2);
    let mut seq = 0u64;
    let mut send = |object: usize| {
        seq += 1;
        (status_write(object, seq), seq)
    };

    let (body, first) = send(0);
    let resp = client.post(&r.mutate_url(), body).await.unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(recorded_seq(&redis, &r.key_prefix, 0).await, Some(first));

    // The path drops everything for 3 s while writes flow (50 a second).
    proxy.cut();
    let mut slowest = Duration::ZERO;
    let cut_at = Instant::now();
    while cut_at.elapsed() < Duration::from_secs(3) {
        let (body, _) = send(0);
        let sent = Instant::now();
        let resp = client.post(&r.mutate_url(), body).await.unwrap();
        slowest = slowest.max(sent.elapsed());
        assert_eq!(resp.status, 200, "{}", resp.body);
        assert!(resp.body.contains("\"allowed\":true"), "{}", resp.body);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        slowest < ANSWER_BOUND,
        "a review took {slowest:?} behind the blackhole"
    );
    assert_eq!(r.metric("restatus_redis_breaker_open").await, 1.0);

    // New connections get through; the old ones stay dead.
    let before_heal = proxy.forwarded.load(Ordering::SeqCst);
    proxy.heal();
    let healed = Instant::now();
    let recovered = support::eventually(
        Duration::from_secs(30),
        "a write to be recorded after the path healed",
        || {
            let (body, seq) = send(1);
            let (client, r, redis) = (&client, &r, &redis);
            async move {
                let resp = client.post(&r.mutate_url(), body).await.ok()?;
                assert_eq!(resp.status, 200);
                (recorded_seq(redis, &r.key_prefix, 1).await == Some(seq)).then(|| healed.elapsed())
            }
        },
    )
    .await;
    let reconnected = proxy.forwarded.load(Ordering::SeqCst) - before_heal;
    eprintln!(
        "blackholed Redis: slowest answer while cut {} (budget {}); recording again {} after the path healed \
         (bound: 3 x --redis-keepalive {}s); {reconnected} new connection(s) to Redis since",
        ms(slowest),
        ms(BUDGET),
        ms(recovered),
        KEEPALIVE.as_secs(),
    );
    assert!(
        recovered <= KEEPALIVE * 3,
        "recording resumed only {recovered:?} after the path healed"
    );
    assert!(reconnected >= 1, "no new connection was made");
}

/// Through the real API server: status writes while Redis is frozen are allowed (the first
/// ones after their budget, the rest at once once the breaker is open), and what they did not
/// record is recorded by the resync pass that runs as soon as Redis answers again, with no
/// write after SIGCONT.
#[tokio::test]
async fn writes_short_circuited_while_redis_is_frozen_are_recorded_by_resync_once_it_thaws() {
    use kube::api::PostParams;
    use support::cluster::{Env, EnvOptions, kubernetes_cluster, patch_status};

    let _alone = ONE_AT_A_TIME.lock().await;
    let env = Env::start(EnvOptions::with_args(&[
        "--resync-resources=kubernetesclusters.infra.example.com",
        "--resync-interval=1h",
    ]))
    .await;
    let api = env.clusters();
    api.create(&PostParams::default(), &kubernetes_cluster("frozen"))
        .await
        .unwrap();
    let before = json!({"phase": "Provisioning"});
    patch_status(&api, "frozen", before.clone()).await;
    env.wait_recorded(&env.kc_id("frozen"), &before).await;

    env.redis.pause();
    let mut took = Vec::new();
    for step in 1..=10 {
        let sent = Instant::now();
        patch_status(&api, "frozen", json!({"phase": format!("step-{step}")})).await;
        took.push(sent.elapsed());
    }
    let r = &env.restatus[0];
    assert_eq!(r.metric("restatus_redis_breaker_open").await, 1.0);
    let away = r
        .metric("restatus_admission_requests_total{operation=\"UPDATE\",outcome=\"redis_away\"}")
        .await;
    assert!(away >= 1.0, "no review was short-circuited");
    let passes = r
        .metric("restatus_resync_passes_total{reason=\"redis_back\"}")
        .await;
    env.redis.resume();

    let last = json!({"phase": "step-10"});
    env.wait_recorded(&env.kc_id("frozen"), &last).await;
    let r = &env.restatus[0];
    assert!(
        r.metric("restatus_resync_passes_total{reason=\"redis_back\"}")
            .await
            > passes,
        "no resync pass ran when Redis came back"
    );
    assert_eq!(r.metric("restatus_redis_breaker_open").await, 0.0);
    eprintln!(
        "frozen Redis through the API server: status writes took {:?} \
         (--redis-timeout 1s, the environment's); {away} short-circuited",
        took
    );
    // The first writes wait out their budget (--redis-timeout=1s here); once the breaker is
    // open a write costs what it costs without restatus's Redis call.
    let last_five = &took[took.len() - 5..];
    assert!(
        last_five.iter().all(|t| *t < took[0]),
        "writes once the breaker was open took {last_five:?}, the first {:?}",
        took[0]
    );
}
