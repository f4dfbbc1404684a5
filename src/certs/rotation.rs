//! When the self-managed CA and serving certificate are made, rotated and switched: pure, no
//! I/O. The manager reads the world, asks these functions, and writes what they say.
//!
//! A CA rotation overlaps: the new CA becomes current and the old one stays in the caBundle
//! (as previous) until it expires, so certificates signed by either are trusted. A replica
//! moves its serving certificate to the new CA only once the API server has the new CA in
//! the webhook's caBundle and the rotation is older than a switch delay, which leaves the
//! API server time to load the new bundle.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

use super::Validity;

/// The CA material as the Secret holds it, with validities read from the certificates.
#[derive(Debug, Clone, Default)]
pub struct CaState {
    /// The CA that signs new serving certificates (`ca.crt`), if there is a usable one.
    pub current: Option<(String, Validity)>,
    /// The CA it replaced (`ca-previous.crt`), kept in the bundle while valid.
    pub previous: Option<(String, Validity)>,
    /// When the current CA replaced the previous one.
    pub rotated_at: Option<Timestamp>,
}

/// What to do with the CA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaStep {
    /// No usable CA: make one.
    Create,
    /// The current CA has less than a third of its life left: make a new one; the current
    /// one becomes the previous.
    Rotate,
    /// The previous CA expired: stop carrying it.
    DropPrevious,
    Keep,
}

pub fn ca_step(state: &CaState, now: Timestamp) -> CaStep {
    match &state.current {
        None => CaStep::Create,
        Some((_, validity)) if validity.due(now) => CaStep::Rotate,
        Some(_) if state.previous.as_ref().is_some_and(|(_, v)| v.expired(now)) => {
            CaStep::DropPrevious
        }
        Some(_) => CaStep::Keep,
    }
}

/// The caBundle: the current CA, then the previous one while it is valid.
pub fn bundle(state: &CaState, now: Timestamp) -> String {
    let mut out = String::new();
    let previous = state.previous.iter().filter(|(_, v)| !v.expired(now));
    for (pem, _) in state.current.iter().chain(previous) {
        out.push_str(pem.trim_end());
        out.push('\n');
    }
    out
}

/// The base64 bodies of the PEM certificates in `text`, whitespace removed, so the same
/// certificate compares equal however it was wrapped.
pub fn pem_bodies(text: &str) -> Vec<String> {
    let mut bodies = Vec::new();
    let mut body: Option<String> = None;
    for line in text.lines().map(str::trim) {
        if line.starts_with("-----BEGIN CERTIFICATE") {
            body = Some(String::new());
        } else if line.starts_with("-----END CERTIFICATE") {
            bodies.extend(body.take());
        } else if let Some(b) = body.as_mut() {
            b.push_str(line);
        }
    }
    bodies
}

/// True when every certificate in `pem` is in `bundle`.
pub fn bundle_contains(bundle: &str, pem: &str) -> bool {
    let have = pem_bodies(bundle);
    let want = pem_bodies(pem);
    !want.is_empty() && want.iter().all(|w| have.contains(w))
}

/// Which CA signs a serving certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signer {
    Current,
    Previous,
}

/// What to do with this replica's serving certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeafStep {
    Keep,
    /// Issue a serving certificate signed by this CA.
    Issue(Signer),
}

/// The serving certificate this replica has.
#[derive(Debug, Clone)]
pub struct Leaf {
    pub validity: Validity,
    /// The CA certificate that signed it.
    pub signed_by: String,
}

/// The CA that should sign serving certificates now: the current one once the API server
/// trusts it and the switch delay since its rotation has passed, else the previous one if
/// the API server trusts that, else the current one (nothing is trusted yet: a first start).
pub fn signer(
    state: &CaState,
    published: Option<&str>,
    switch_delay: Duration,
    now: Timestamp,
) -> Signer {
    let Some((current, _)) = &state.current else {
        return Signer::Current;
    };
    let Some(published) = published else {
        return Signer::Current;
    };
    let settled = state.rotated_at.is_none_or(|at| {
        let delay = SignedDuration::try_from(switch_delay).unwrap_or(SignedDuration::MAX);
        at.checked_add(delay).is_ok_and(|ready| now >= ready)
    });
    if bundle_contains(published, current) && settled {
        return Signer::Current;
    }
    match &state.previous {
        Some((previous, v)) if !v.expired(now) && bundle_contains(published, previous) => {
            Signer::Previous
        }
        _ => Signer::Current,
    }
}

/// Whether to issue a serving certificate now, and with which CA.
pub fn leaf_step(
    leaf: Option<&Leaf>,
    state: &CaState,
    published: Option<&str>,
    switch_delay: Duration,
    now: Timestamp,
) -> LeafStep {
    let signer = signer(state, published, switch_delay, now);
    let Some(leaf) = leaf else {
        return LeafStep::Issue(signer);
    };
    let signer_pem = match signer {
        Signer::Current => state.current.as_ref(),
        Signer::Previous => state.previous.as_ref(),
    }
    .map(|(pem, _)| pem.as_str());
    let signed_by_signer =
        signer_pem.is_some_and(|pem| pem_bodies(pem) == pem_bodies(&leaf.signed_by));
    if !signed_by_signer || leaf.validity.due(now) {
        LeafStep::Issue(signer)
    } else {
        LeafStep::Keep
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = 3600;

    fn at(hours: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + hours * HOUR).unwrap()
    }

    /// A fake certificate whose body is `name`, valid from `from` to `to` (hours).
    fn cert(name: &str, from: i64, to: i64) -> (String, Validity) {
        let pem = format!("-----BEGIN CERTIFICATE-----\n{name}\n-----END CERTIFICATE-----\n");
        (
            pem,
            Validity {
                not_before: at(from),
                not_after: at(to),
            },
        )
    }

    /// A serving certificate valid from `from` to `to` (hours), signed by `ca`.
    fn leaf(ca: &str, from: i64, to: i64) -> Leaf {
        Leaf {
            validity: Validity {
                not_before: at(from),
                not_after: at(to),
            },
            signed_by: ca.to_owned(),
        }
    }

    fn state(current: Option<(&str, i64, i64)>, previous: Option<(&str, i64, i64)>) -> CaState {
        CaState {
            current: current.map(|(n, f, t)| cert(n, f, t)),
            previous: previous.map(|(n, f, t)| cert(n, f, t)),
            rotated_at: previous.map(|_| at(30)),
        }
    }

    #[test]
    fn the_ca_is_created_rotated_at_two_thirds_and_the_previous_dropped_when_expired() {
        assert_eq!(ca_step(&CaState::default(), at(0)), CaStep::Create);
        let fresh = state(Some(("new", 0, 30)), None);
        assert_eq!(ca_step(&fresh, at(19)), CaStep::Keep);
        assert_eq!(ca_step(&fresh, at(21)), CaStep::Rotate);
        assert_eq!(ca_step(&fresh, at(31)), CaStep::Rotate);
        let overlapping = state(Some(("new", 20, 50)), Some(("old", 0, 30)));
        assert_eq!(ca_step(&overlapping, at(25)), CaStep::Keep);
        assert_eq!(ca_step(&overlapping, at(30)), CaStep::DropPrevious);
    }

    #[test]
    fn the_bundle_carries_the_previous_ca_only_while_it_is_valid() {
        let s = state(Some(("new", 20, 50)), Some(("old", 0, 30)));
        let during = bundle(&s, at(25));
        assert_eq!(pem_bodies(&during), ["new", "old"]);
        assert_eq!(pem_bodies(&bundle(&s, at(31))), ["new"]);
        assert_eq!(bundle(&CaState::default(), at(0)), "");
    }

    #[test]
    fn bundles_compare_by_certificate_not_by_wrapping() {
        let wrapped = "-----BEGIN CERTIFICATE-----\nab\ncd\n-----END CERTIFICATE-----";
        let one_line = "  -----BEGIN CERTIFICATE-----\r\nabcd\r\n-----END CERTIFICATE-----\n";
        assert!(bundle_contains(wrapped, one_line));
        assert!(bundle_contains(
            &format!("{wrapped}\n{}", cert("x", 0, 1).0),
            one_line
        ));
        assert!(!bundle_contains(&cert("x", 0, 1).0, one_line));
        assert!(!bundle_contains(wrapped, "no certificate"));
    }

    #[test]
    fn a_first_start_signs_with_the_current_ca() {
        let s = state(Some(("new", 0, 30)), None);
        assert_eq!(
            leaf_step(None, &s, None, Duration::ZERO, at(1)),
            LeafStep::Issue(Signer::Current)
        );
        // Not published yet (an empty caBundle): nothing is trusted, so no reason to wait.
        assert_eq!(
            leaf_step(None, &s, Some(""), Duration::ZERO, at(1)),
            LeafStep::Issue(Signer::Current)
        );
    }

    #[test]
    fn after_a_rotation_leaves_move_to_the_new_ca_once_it_is_published_and_settled() {
        let s = state(Some(("new", 25, 70)), Some(("old", 0, 40)));
        let on_old = leaf(&s.previous.clone().unwrap().0, 28, 60);
        let delay = Duration::from_secs(3600);
        let only_old = cert("old", 0, 40).0;
        let both = bundle(&s, at(30));
        // The API server does not trust the new CA yet: keep the old-CA certificate.
        assert_eq!(
            leaf_step(Some(&on_old), &s, Some(&only_old), delay, at(30)),
            LeafStep::Keep
        );
        // Trusted, but the rotation (at hour 30) is younger than the switch delay.
        assert_eq!(
            leaf_step(Some(&on_old), &s, Some(&both), delay, at(30)),
            LeafStep::Keep
        );
        // Trusted and settled: switch.
        assert_eq!(
            leaf_step(Some(&on_old), &s, Some(&both), delay, at(31)),
            LeafStep::Issue(Signer::Current)
        );
        // A replica starting during the overlap signs with what the API server trusts.
        assert_eq!(
            leaf_step(None, &s, Some(&both), delay, at(30)),
            LeafStep::Issue(Signer::Previous)
        );
    }

    #[test]
    fn a_leaf_is_renewed_at_two_thirds_of_its_life_with_the_same_ca() {
        let s = state(Some(("ca", 0, 100)), None);
        let leaf = leaf(&s.current.clone().unwrap().0, 0, 30);
        let published = bundle(&s, at(0));
        assert_eq!(
            leaf_step(Some(&leaf), &s, Some(&published), Duration::ZERO, at(19)),
            LeafStep::Keep
        );
        assert_eq!(
            leaf_step(Some(&leaf), &s, Some(&published), Duration::ZERO, at(21)),
            LeafStep::Issue(Signer::Current)
        );
    }

    #[test]
    fn a_leaf_signed_by_a_ca_nobody_trusts_is_replaced() {
        let s = state(Some(("ca", 0, 100)), None);
        let stray = leaf(&cert("someone-else", 0, 100).0, 0, 30);
        let published = bundle(&s, at(0));
        assert_eq!(
            leaf_step(Some(&stray), &s, Some(&published), Duration::ZERO, at(1)),
            LeafStep::Issue(Signer::Current)
        );
    }
}
