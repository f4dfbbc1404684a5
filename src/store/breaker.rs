//! The admission path's circuit breaker: after a run of Redis calls that ran out of their
//! budget (a frozen Redis, a network that drops packets), the store stops calling Redis for
//! admission and fails at once, so that every review is answered at once (allowed, not
//! recorded, counted) instead of after the whole budget. A probe in the background asks
//! Redis every `probe_every`; the first answer closes the breaker.
//!
//! A refused or reset connection neither opens it nor keeps it open: such a call fails at
//! once, so refusing it buys nothing, and the next call after Redis accepts connections again
//! must succeed (a review right after a restart gets its record or restore).
//!
//! The decision is [`step`], pure; [`Breaker`] holds the state, the metrics and the probe.
//! What reviews did not record meanwhile is told to resync through
//! [`super::FailedOpen`] (each refused review fails open), and caught up by the object's next
//! write or by the pass resync runs once Redis answers.

use std::{
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use tokio::sync::watch;

use super::{Store, StoreError, conn};
use crate::telemetry::group::*;

/// Failed calls in a row that open the breaker, unless configured otherwise.
pub const DEFAULT_FAILURES: u32 = 5;

/// Time between probes of Redis while the breaker is open, unless configured otherwise.
pub const DEFAULT_PROBE_EVERY: Duration = Duration::from_millis(250);

/// Where the breaker stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Circuit {
    /// Calls go to Redis; `failures` of them failed in a row, the last ones.
    Closed { failures: u32 },
    /// Calls are refused at once; only the probe reaches Redis.
    Open,
}

/// What a call or a probe found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// Redis answered (an error answer too: it is there).
    Answered,
    /// Redis did not answer within the budget.
    Failed,
}

/// What a call's result tells the breaker: a call that ran out of time failed; one that
/// failed at once (refused, reset) tells nothing; any other result is an answer.
pub(super) fn event_of<T>(result: &Result<T, StoreError>) -> Option<Event> {
    match result {
        Err(StoreError::Timeout { .. }) => Some(Event::Failed),
        Err(StoreError::Redis { source, .. }) if source.is_timeout() => Some(Event::Failed),
        Err(StoreError::Redis { source, .. }) if conn::broken(source) => None,
        Err(StoreError::Connect(_) | StoreError::CircuitOpen { .. }) => None,
        _ => Some(Event::Answered),
    }
}

/// How a step changed the breaker, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    None,
    Opened,
    Closed,
}

/// The next state after `event`, for a breaker that opens after `threshold` failures in a
/// row (0: never). Any answer closes it, since Redis is there; a failure while open keeps it
/// open.
pub fn step(circuit: Circuit, event: Event, threshold: u32) -> (Circuit, Change) {
    match (circuit, event) {
        (Circuit::Closed { .. }, Event::Answered) => {
            (Circuit::Closed { failures: 0 }, Change::None)
        }
        (Circuit::Closed { failures }, Event::Failed) => {
            let failures = failures.saturating_add(1);
            if threshold > 0 && failures >= threshold {
                (Circuit::Open, Change::Opened)
            } else {
                (Circuit::Closed { failures }, Change::None)
            }
        }
        (Circuit::Open, Event::Answered) => (Circuit::Closed { failures: 0 }, Change::Closed),
        (Circuit::Open, Event::Failed) => (Circuit::Open, Change::None),
    }
}

/// The open state in the one word the breaker keeps; a count of failures otherwise.
const OPEN: u32 = u32::MAX;

fn encode(circuit: Circuit) -> u32 {
    match circuit {
        Circuit::Closed { failures } => failures.min(OPEN - 1),
        Circuit::Open => OPEN,
    }
}

fn decode(word: u32) -> Circuit {
    if word == OPEN {
        Circuit::Open
    } else {
        Circuit::Closed { failures: word }
    }
}

/// When the breaker opens and how often it probes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerSettings {
    /// Failed calls in a row that open it (0: it never opens).
    pub failures: u32,
    /// Time between probes while it is open.
    pub probe_every: Duration,
    /// Budget of each probe. Longer than a review's: a probe waits in the background, and a
    /// busy replica whose own scheduling delays answers must still see that Redis is there
    /// (if Redis answers too slowly for reviews, their failures open the breaker again).
    pub probe_budget: Duration,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        Self {
            failures: DEFAULT_FAILURES,
            probe_every: DEFAULT_PROBE_EVERY,
            probe_budget: Duration::from_secs(2),
        }
    }
}

metric_group! {
    /// The admission path's circuit breaker.
    #[derive(Clone, Debug)]
    pub struct BreakerMetrics {
        open: IntGauge = gauge("redis_breaker_open", "1 while the admission path's circuit breaker is open: reviews do not call Redis and are allowed unrecorded"),
        opens: Counter = counter("redis_breaker_opens", "Times the admission path's circuit breaker opened after Redis calls ran out of their budget in a row"),
        short_circuited: Counter = counter("redis_breaker_short_circuited", "Redis calls of the admission path not made because the breaker was open; each left a review allowed without recording or restoring"),
        probes: Family<ProbeLabels, Counter> = family("redis_breaker_probes", "Probes of Redis while the breaker was open, by result (answered, failed)"),
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProbeLabels {
    result: &'static str,
}

/// The breaker a store's calls go through (see [`Store::guarded_by`]).
#[derive(Debug)]
pub struct Breaker {
    circuit: AtomicU32,
    /// Whether it is open, for the probe to wait on.
    open: watch::Sender<bool>,
    settings: BreakerSettings,
    metrics: BreakerMetrics,
}

impl Breaker {
    pub fn new(settings: BreakerSettings, metrics: BreakerMetrics) -> Self {
        Self {
            circuit: AtomicU32::new(encode(Circuit::Closed { failures: 0 })),
            open: watch::Sender::new(false),
            settings,
            metrics,
        }
    }

    pub fn circuit(&self) -> Circuit {
        decode(self.circuit.load(Ordering::SeqCst))
    }

    /// Whether a call must not be made now; counted when so.
    pub(super) fn refuses(&self) -> bool {
        let open = self.circuit() == Circuit::Open;
        if open {
            self.metrics.short_circuited.inc();
        }
        open
    }

    /// Takes in what a call or a probe found.
    pub(super) fn observe(&self, event: Event) {
        let threshold = self.settings.failures;
        let mut change = Change::None;
        // The closure runs again if another caller changed the state meanwhile.
        let _ = self
            .circuit
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |word| {
                let (next, changed) = step(decode(word), event, threshold);
                change = changed;
                Some(encode(next))
            });
        match change {
            Change::None => {}
            Change::Opened => {
                self.metrics.opens.inc();
                self.metrics.open.set(1);
                self.open.send_replace(true);
                tracing::warn!(
                    failures = threshold,
                    "{threshold} Redis calls in a row ran out of their budget: reviews no longer call Redis, and are allowed unrecorded until it answers a probe"
                );
            }
            Change::Closed => {
                self.metrics.open.set(0);
                self.open.send_replace(false);
                tracing::info!("Redis answers again: reviews call it again");
            }
        }
    }

    /// Probes Redis through `store` (which must not be guarded by this breaker) every
    /// `probe_every` while the breaker is open; runs until dropped.
    pub async fn probe(&self, store: &Store) {
        let mut open = self.open.subscribe();
        loop {
            if open.wait_for(|open| *open).await.is_err() {
                return;
            }
            tokio::time::sleep(self.settings.probe_every).await;
            if self.circuit() != Circuit::Open {
                continue;
            }
            let answered = store.ping(self.settings.probe_budget).await;
            let result = if answered { "answered" } else { "failed" };
            self.metrics
                .probes
                .get_or_create(&ProbeLabels { result })
                .inc();
            self.observe(if answered {
                Event::Answered
            } else {
                Event::Failed
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::{assert_samples, registered};
    use Circuit::*;
    use Event::*;

    #[test]
    fn opens_after_the_threshold_of_failures_in_a_row() {
        let closed = |failures| Closed { failures };
        assert_eq!(step(closed(0), Failed, 3), (closed(1), Change::None));
        assert_eq!(step(closed(1), Failed, 3), (closed(2), Change::None));
        assert_eq!(step(closed(2), Failed, 3), (Open, Change::Opened));
        // One answer starts the count again.
        assert_eq!(step(closed(2), Answered, 3), (closed(0), Change::None));
        assert_eq!(step(closed(0), Answered, 3), (closed(0), Change::None));
        // A threshold of one opens at the first failure; of zero, never.
        assert_eq!(step(closed(0), Failed, 1), (Open, Change::Opened));
        assert_eq!(step(closed(7), Failed, 0), (closed(8), Change::None));
        // Already past the threshold (it was lowered): opens.
        assert_eq!(step(closed(9), Failed, 3), (Open, Change::Opened));
        // The count never wraps.
        assert_eq!(
            step(closed(u32::MAX), Failed, 0),
            (closed(u32::MAX), Change::None)
        );
    }

    #[test]
    fn an_answer_closes_it_and_a_failure_keeps_it_open() {
        assert_eq!(
            step(Open, Answered, 3),
            (Closed { failures: 0 }, Change::Closed)
        );
        assert_eq!(step(Open, Failed, 3), (Open, Change::None));
        assert_eq!(step(Open, Failed, 0), (Open, Change::None));
    }

    #[test]
    fn only_a_call_that_ran_out_of_time_counts_as_a_failure() {
        use std::io::{Error, ErrorKind};
        let redis = |kind: ErrorKind| {
            Err::<(), _>(StoreError::Redis {
                command: "record",
                key: "k".into(),
                source: Error::from(kind).into(),
            })
        };
        let timeout = Err::<(), _>(StoreError::Timeout {
            command: "record",
            key: "k".into(),
            budget: Duration::from_millis(100),
        });
        assert_eq!(event_of(&timeout), Some(Failed));
        assert_eq!(event_of(&redis(ErrorKind::TimedOut)), Some(Failed));
        assert_eq!(event_of(&redis(ErrorKind::ConnectionRefused)), None);
        assert_eq!(event_of(&redis(ErrorKind::ConnectionReset)), None);
        assert_eq!(event_of(&Ok(())), Some(Answered));
        // An error answer is an answer: Redis is there.
        let answered_with_an_error = Err::<(), _>(StoreError::Redis {
            command: "record",
            key: "k".into(),
            source: (
                redis::ErrorKind::UnexpectedReturnType,
                "an unexpected answer",
            )
                .into(),
        });
        assert_eq!(event_of(&answered_with_an_error), Some(Answered));
        let refused = Err::<(), _>(StoreError::CircuitOpen {
            command: "record",
            key: "k".into(),
        });
        assert_eq!(event_of(&refused), None);
    }

    #[test]
    fn the_state_fits_one_word() {
        for circuit in [Open, Closed { failures: 0 }, Closed { failures: 41 }] {
            assert_eq!(decode(encode(circuit)), circuit);
        }
        // A count that would read as open stays a count.
        assert_eq!(
            decode(encode(Closed { failures: u32::MAX })),
            Closed {
                failures: u32::MAX - 1
            }
        );
    }

    #[test]
    fn counts_opens_and_calls_refused() {
        let (registry, metrics) = registered(BreakerMetrics::register);
        let settings = BreakerSettings {
            failures: 2,
            ..BreakerSettings::default()
        };
        let breaker = Breaker::new(settings, metrics);
        assert!(!breaker.refuses());
        breaker.observe(Failed);
        assert!(!breaker.refuses(), "one failure is not a run");
        breaker.observe(Failed);
        assert_eq!(breaker.circuit(), Open);
        assert!(*breaker.open.borrow());
        assert!(breaker.refuses());
        assert!(breaker.refuses());
        assert_samples(
            &registry,
            &[
                "restatus_redis_breaker_open 1",
                "restatus_redis_breaker_opens_total 1",
                "restatus_redis_breaker_short_circuited_total 2",
            ],
        );
        breaker.observe(Answered);
        assert_eq!(breaker.circuit(), Closed { failures: 0 });
        assert!(!*breaker.open.borrow());
        assert!(!breaker.refuses());
        assert_samples(
            &registry,
            &[
                "restatus_redis_breaker_open 0",
                "restatus_redis_breaker_opens_total 1",
                "restatus_redis_breaker_short_circuited_total 2",
            ],
        );
    }
}
