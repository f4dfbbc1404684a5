//! The places of the webhook listener (`--max-connections`), and who gives one up when a new
//! connection arrives at the cap.
//!
//! A connection is *established* once the handler has answered one of its requests with a
//! success: the API server keeps its HTTP/2 connections open and sends its reviews over them,
//! so once it has been answered, its connection is safe. With `--client-ca-file` a connection
//! is established as soon as its TLS handshake has verified the caller's certificate: a
//! caller that can do that could as well send a review, and the API server's new connection
//! is then safe from the moment of its handshake, before its first review is answered.
//! Established connections are never evicted; they leave when they close, or after
//! `--idle-timeout` without a request.
//!
//! Every other connection can be evicted: a TLS handshake under way, a connection that sent
//! nothing or half a request, an HTTP/2 connection without a stream, one whose requests were
//! all refused. At the cap a new connection evicts the oldest of them and takes its place at
//! once; only when every place is held by an established connection is the new one refused.
//!
//! Why the oldest: nothing tells a flood's connection from the API server's new one until it
//! is established. Evicting the oldest gives a newcomer the longest time to get there: it is
//! evicted only after every other evictable place has gone to a connection that came after
//! it. A flood of connections that never finish a request evicts its own connections, one for
//! one, and the API server's new connection has as many arrivals' time as there are places
//! to be answered. Without `--client-ca-file` anyone who reaches the port can send a review
//! and hold an established place; that is for the client CA and the NetworkPolicy to stop.
//!
//! An evicted connection's place goes to the newcomer at once, not when the evicted task has
//! noticed: the task is told through a [`CancellationToken`] that cuts short its every wait,
//! and it drops its socket then.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, PoisonError},
};

use tokio_util::sync::CancellationToken;

/// The listener's places.
pub(super) struct Slots {
    cap: usize,
    state: Mutex<State>,
}

struct State {
    /// Places held, by connections that have not been evicted.
    held: usize,
    /// The id of the next connection: ids grow with arrival, so the smallest is the oldest.
    next: u64,
    /// Connections that can be evicted, oldest first, and how each is told.
    evictable: BTreeMap<u64, CancellationToken>,
}

/// What a new connection got.
pub(super) enum Admission {
    /// A free place.
    Free(Slot),
    /// The place of the oldest connection that was not established, which is told to go.
    Evicted(Slot),
    /// Nothing: every place is held by an established connection.
    Full,
}

impl Slots {
    pub(super) fn new(cap: usize) -> Arc<Self> {
        Arc::new(Self {
            cap,
            state: Mutex::new(State {
                held: 0,
                next: 0,
                evictable: BTreeMap::new(),
            }),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A place for a new connection, if one can be had.
    pub(super) fn admit(self: &Arc<Self>) -> Admission {
        let mut state = self.state();
        let evicted = if state.held < self.cap {
            state.held += 1;
            false
        } else if let Some((_, oldest)) = state.evictable.pop_first() {
            // Its place passes to the newcomer: `held` stays as it is.
            oldest.cancel();
            true
        } else {
            return Admission::Full;
        };
        let id = state.next;
        state.next += 1;
        let evict = CancellationToken::new();
        state.evictable.insert(id, evict.clone());
        let slot = Slot {
            slots: self.clone(),
            id,
            evict,
        };
        if evicted {
            Admission::Evicted(slot)
        } else {
            Admission::Free(slot)
        }
    }

    /// How many places are held now.
    #[cfg(test)]
    fn held(&self) -> usize {
        self.state().held
    }
}

/// One connection's place, given back when it is dropped (unless it was evicted: then the
/// newcomer already has it).
pub(super) struct Slot {
    slots: Arc<Slots>,
    id: u64,
    evict: CancellationToken,
}

impl Slot {
    /// What marks the connection established, for its request handlers.
    pub(super) fn establisher(&self) -> Establish {
        Establish {
            slots: self.slots.clone(),
            id: self.id,
        }
    }

    /// Returns once the connection has been evicted.
    pub(super) async fn evicted(&self) {
        self.evict.cancelled().await;
    }

    #[cfg(test)]
    fn is_evicted(&self) -> bool {
        self.evict.is_cancelled()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut state = self.slots.state();
        // Evicted under the same lock, so this cannot race with `admit`.
        if !self.evict.is_cancelled() {
            state.held -= 1;
            state.evictable.remove(&self.id);
        }
    }
}

/// Marks one connection established. Cheap to clone; once the connection is gone it does
/// nothing.
#[derive(Clone)]
pub(super) struct Establish {
    slots: Arc<Slots>,
    id: u64,
}

impl Establish {
    /// From now on the connection is never evicted. Too late if it already was.
    pub(super) fn established(&self) {
        self.slots.state().evictable.remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(admission: Admission) -> (Slot, &'static str) {
        match admission {
            Admission::Free(slot) => (slot, "free"),
            Admission::Evicted(slot) => (slot, "evicted"),
            Admission::Full => panic!("refused"),
        }
    }

    #[test]
    fn at_the_cap_the_oldest_connection_that_is_not_established_makes_room() {
        let slots = Slots::new(3);
        let (a, how) = slot(slots.admit());
        assert_eq!(how, "free");
        let (b, _) = slot(slots.admit());
        let (c, _) = slot(slots.admit());
        assert_eq!(slots.held(), 3);
        a.establisher().established();

        // a is established: b, the oldest of the others, goes; then c; then d.
        let (d, how) = slot(slots.admit());
        assert_eq!(how, "evicted");
        assert!(b.is_evicted() && !a.is_evicted() && !c.is_evicted());
        let (e, _) = slot(slots.admit());
        assert!(c.is_evicted() && !d.is_evicted());
        assert_eq!(slots.held(), 3, "an evicted place passes to the newcomer");
        // Dropping an evicted slot gives back nothing: its place is already taken.
        drop((b, c));
        assert_eq!(slots.held(), 3);

        // All established: the next is refused, and nobody is evicted.
        d.establisher().established();
        e.establisher().established();
        assert!(matches!(slots.admit(), Admission::Full));
        assert!(!a.is_evicted() && !d.is_evicted() && !e.is_evicted());

        // A place given up is free again.
        drop(d);
        assert_eq!(slots.held(), 2);
        let (f, how) = slot(slots.admit());
        assert_eq!(how, "free");
        assert_eq!(slots.held(), 3);
        drop((a, e, f));
        assert_eq!(slots.held(), 0);
    }

    #[test]
    fn establishing_an_evicted_or_closed_connection_changes_nothing() {
        let slots = Slots::new(1);
        let (a, _) = slot(slots.admit());
        let late = a.establisher();
        let (b, how) = slot(slots.admit());
        assert_eq!(how, "evicted");
        // a was evicted before it was answered: too late to keep its place, and b stays
        // evictable.
        late.established();
        drop(a);
        let (c, how) = slot(slots.admit());
        assert_eq!(how, "evicted");
        assert!(b.is_evicted());
        // Marking a connection that has closed does not protect its successor.
        let gone = c.establisher();
        drop((b, c));
        assert_eq!(slots.held(), 0);
        gone.established();
        let (d, how) = slot(slots.admit());
        assert_eq!(how, "free");
        let (_e, how) = slot(slots.admit());
        assert_eq!(how, "evicted");
        assert!(d.is_evicted());
    }
}
