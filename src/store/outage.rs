//! Whether Redis was away while reviews came in: reviews that failed open for want of Redis
//! say so here, and resync probes Redis and runs a pass once an outage is over.

use std::sync::atomic::{AtomicU8, Ordering};

/// What reviews that failed open for want of Redis tell resync: whether Redis may be away.
#[derive(Debug, Default)]
pub struct FailedOpen(AtomicU8);

/// What resync knows of Redis from failed reviews and its own probes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum RedisState {
    /// Nothing failed.
    Fine = 0,
    /// A review ran out of time: Redis may only have been slow.
    Suspect = 1,
    /// Redis could not be reached, by a review or by a probe: reviews fail open meanwhile.
    Away = 2,
}

impl FailedOpen {
    /// A review failed open: `unreachable` when Redis could not be reached at all (a refused,
    /// reset or dropped connection), rather than being slow to answer.
    pub fn review_failed(&self, unreachable: bool) {
        let state = if unreachable {
            RedisState::Away
        } else {
            RedisState::Suspect
        };
        self.0.fetch_max(state as u8, Ordering::SeqCst);
    }

    pub fn state(&self) -> RedisState {
        match self.0.load(Ordering::SeqCst) {
            0 => RedisState::Fine,
            1 => RedisState::Suspect,
            _ => RedisState::Away,
        }
    }

    /// A resync pass answers for every review that failed open before it.
    pub fn clear(&self) {
        self.0.store(RedisState::Fine as u8, Ordering::SeqCst);
    }

    /// Sets the state `from` to `to`, unless it changed meanwhile (a worse one stays).
    pub fn change(&self, from: RedisState, to: RedisState) {
        let _ = self
            .0
            .compare_exchange(from as u8, to as u8, Ordering::SeqCst, Ordering::SeqCst);
    }
}

/// What a probe of Redis, in `state`, that `answered` (or not) leads to: the next state, and
/// whether to resync now. A pass follows only an outage that is over; a review that ran out
/// of time while Redis still answers probes was one slow answer, and the periodic pass
/// covers what it missed.
pub fn after_probe(state: RedisState, answered: bool) -> (RedisState, bool) {
    match (state, answered) {
        (RedisState::Fine, _) => (RedisState::Fine, false),
        (_, false) => (RedisState::Away, false),
        (RedisState::Suspect, true) => (RedisState::Fine, false),
        (RedisState::Away, true) => (RedisState::Away, true),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_outage_that_is_over_starts_a_pass() {
        use RedisState::*;
        // One review ran out of time, and Redis answers the probe: no outage.
        assert_eq!(after_probe(Suspect, true), (Fine, false));
        // It does not answer the probe either: away; a pass once it answers.
        assert_eq!(after_probe(Suspect, false), (Away, false));
        assert_eq!(after_probe(Away, false), (Away, false));
        assert_eq!(after_probe(Away, true), (Away, true));
        assert_eq!(after_probe(Fine, true), (Fine, false));
        assert_eq!(after_probe(Fine, false), (Fine, false));

        let failed = FailedOpen::default();
        failed.review_failed(false);
        assert_eq!(failed.state(), Suspect);
        failed.review_failed(true);
        failed.review_failed(false);
        assert_eq!(failed.state(), Away, "a worse state stays");
        // A probe's answer does not undo what a review told meanwhile.
        failed.change(Suspect, Fine);
        assert_eq!(failed.state(), Away);
        failed.change(Away, Fine);
        assert_eq!(failed.state(), Fine);
    }
}
