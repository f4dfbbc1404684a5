//! When the self-managed CA and serving certificate are made, rotated and switched: pure, no
//! I/O. The manager reads the world, asks these functions, and writes what they say.
//!
//! A CA rotation overlaps: the new CA becomes current and the old one stays in the caBundle
//! (as previous) until it expires, so certificates signed by either are trusted. A replica
//! signs only with a CA the API server trusts: one in the caBundle it read from the webhook
//! configuration. It moves its serving certificate to the new CA only once that caBundle has
//! the new CA and the rotation is older than a switch delay, which leaves the API server time
//! to load the new bundle.
//!
//! A CA whose key cannot sign (missing, not PEM, of a type restatus cannot use, or not the
//! certificate's) is replaced the way a rotation replaces it, except that the old certificate
//! stays in the bundle without its key: serving certificates it signed are still trusted
//! while replicas move to the new CA.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

use super::Validity;

/// A CA certificate of the Secret, with its validity, and whether its key can sign.
#[derive(Debug, Clone)]
pub struct Ca {
    pub pem: String,
    pub validity: Validity,
    /// The Secret holds a key for it that restatus can sign with.
    pub can_sign: bool,
}

/// The CA material as the Secret holds it, with validities read from the certificates.
#[derive(Debug, Clone, Default)]
pub struct CaState {
    /// The CA that signs new serving certificates (`ca.crt`), if its certificate is readable.
    pub current: Option<Ca>,
    /// The CA it replaced (`ca-previous.crt`), kept in the bundle while valid.
    pub previous: Option<Ca>,
    /// When the current CA replaced the previous one.
    pub rotated_at: Option<Timestamp>,
}

/// What to do with the CA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaStep {
    /// No readable CA certificate: make a CA.
    Create,
    /// The current CA's key cannot sign: make a new CA; the current certificate becomes the
    /// previous one, without a key, and stays in the bundle while it is valid.
    Replace,
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
        Some(ca) if !ca.can_sign => CaStep::Replace,
        Some(ca) if ca.validity.due(now) => CaStep::Rotate,
        Some(_)
            if state
                .previous
                .as_ref()
                .is_some_and(|p| p.validity.expired(now)) =>
        {
            CaStep::DropPrevious
        }
        Some(_) => CaStep::Keep,
    }
}

/// The caBundle: the current CA, then the previous one while it is valid.
pub fn bundle(state: &CaState, now: Timestamp) -> String {
    let mut out = String::new();
    let previous = state.previous.iter().filter(|p| !p.validity.expired(now));
    for ca in state.current.iter().chain(previous) {
        out.push_str(ca.pem.trim_end());
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

/// The certificates that every one of `bundles` holds, as a PEM bundle: what the API server
/// trusts for a configuration whose webhooks carry these caBundles.
pub fn common_bundle<'a>(bundles: impl IntoIterator<Item = &'a str>) -> String {
    let mut bundles = bundles.into_iter();
    let Some(first) = bundles.next() else {
        return String::new();
    };
    let mut common = pem_bodies(first);
    for other in bundles {
        let other = pem_bodies(other);
        common.retain(|b| other.contains(b));
    }
    common
        .iter()
        .map(|b| format!("-----BEGIN CERTIFICATE-----\n{b}\n-----END CERTIFICATE-----\n"))
        .collect()
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
    /// A serving certificate is needed and no CA of the Secret can sign one.
    NoSigner,
}

/// The serving certificate this replica has.
#[derive(Debug, Clone)]
pub struct Leaf {
    pub validity: Validity,
    /// The CA certificate that signed it.
    pub signed_by: String,
}

/// What the API server trusts: the caBundle of the webhook configuration as last read
/// (`None`: never read).
#[derive(Debug, Clone, Copy)]
struct Trust<'a>(Option<&'a str>);

impl Trust<'_> {
    fn trusts(&self, pem: &str) -> bool {
        self.0.is_some_and(|bundle| bundle_contains(bundle, pem))
    }
}

fn settled(state: &CaState, switch_delay: Duration, now: Timestamp) -> bool {
    state.rotated_at.is_none_or(|at| {
        let delay = SignedDuration::try_from(switch_delay).unwrap_or(SignedDuration::MAX);
        at.checked_add(delay).is_ok_and(|ready| now >= ready)
    })
}

/// The CA that should sign serving certificates now, among those whose key can sign:
/// - the current one once the API server trusts it and the switch delay since its rotation
///   has passed;
/// - else the previous one if the API server trusts it, or if what the API server trusts is
///   unknown (it was in every caBundle published since before the rotation);
/// - else the current one if the API server trusts it (the previous one cannot sign);
/// - else the current one: nothing that can sign is trusted yet (a first start, or a new CA
///   whose bundle is not published yet), and it is what the next published bundle carries.
///
/// `None` when no CA can sign.
pub fn signer(
    state: &CaState,
    trusted: Option<&str>,
    switch_delay: Duration,
    now: Timestamp,
) -> Option<Signer> {
    let trust = Trust(trusted);
    let current = state.current.as_ref().filter(|c| c.can_sign);
    let previous = state
        .previous
        .as_ref()
        .filter(|p| p.can_sign && !p.validity.expired(now));
    let current_trusted = current.is_some_and(|c| trust.trusts(&c.pem));
    if current_trusted && settled(state, switch_delay, now) {
        return Some(Signer::Current);
    }
    if let Some(p) = previous
        && (trusted.is_none() || trust.trusts(&p.pem))
    {
        return Some(Signer::Previous);
    }
    if current.is_some() {
        return Some(Signer::Current);
    }
    previous.map(|_| Signer::Previous)
}

/// Whether to issue a serving certificate now, and with which CA. A serving certificate that
/// the API server trusts and that is not due is kept until the CA to move to is trusted too
/// (and, for a new current CA, settled), so a replica never swaps a trusted certificate for
/// one the API server does not trust yet.
pub fn leaf_step(
    leaf: Option<&Leaf>,
    state: &CaState,
    trusted: Option<&str>,
    switch_delay: Duration,
    now: Timestamp,
) -> LeafStep {
    let signer = signer(state, trusted, switch_delay, now);
    let Some(leaf) = leaf else {
        return signer.map_or(LeafStep::NoSigner, LeafStep::Issue);
    };
    if leaf.validity.due(now) {
        return signer.map_or(LeafStep::NoSigner, LeafStep::Issue);
    }
    let Some(signer) = signer else {
        return LeafStep::Keep;
    };
    let signer_pem = match signer {
        Signer::Current => state.current.as_ref(),
        Signer::Previous => state.previous.as_ref(),
    }
    .map(|ca| ca.pem.as_str())
    .unwrap_or_default();
    if pem_bodies(signer_pem) == pem_bodies(&leaf.signed_by) {
        return LeafStep::Keep;
    }
    let trust = Trust(trusted);
    let ready = trust.trusts(signer_pem)
        && (signer == Signer::Previous || settled(state, switch_delay, now));
    if trust.trusts(&leaf.signed_by) && !ready {
        LeafStep::Keep
    } else {
        LeafStep::Issue(signer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = 3600;

    fn at(hours: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + hours * HOUR).unwrap()
    }

    fn pem(name: &str) -> String {
        format!("-----BEGIN CERTIFICATE-----\n{name}\n-----END CERTIFICATE-----\n")
    }

    /// A fake CA certificate whose body is `name`, valid from `from` to `to` (hours), whose
    /// key signs.
    fn ca(name: &str, from: i64, to: i64) -> Ca {
        Ca {
            pem: pem(name),
            validity: Validity {
                not_before: at(from),
                not_after: at(to),
            },
            can_sign: true,
        }
    }

    /// The same CA with a key that cannot sign.
    fn keyless(ca: Ca) -> Ca {
        Ca {
            can_sign: false,
            ..ca
        }
    }

    /// A serving certificate valid from `from` to `to` (hours), signed by `ca`.
    fn leaf(ca: &str, from: i64, to: i64) -> Leaf {
        Leaf {
            validity: Validity {
                not_before: at(from),
                not_after: at(to),
            },
            signed_by: pem(ca),
        }
    }

    /// A CA state; a previous CA means a rotation at hour 30.
    fn state(current: Option<Ca>, previous: Option<Ca>) -> CaState {
        CaState {
            rotated_at: previous.as_ref().map(|_| at(30)),
            current,
            previous,
        }
    }

    fn bundle_of(names: &[&str]) -> String {
        names.iter().map(|n| pem(n)).collect()
    }

    #[test]
    fn the_ca_is_created_replaced_rotated_and_its_previous_dropped() {
        let cases = [
            ("no CA", CaState::default(), 0, CaStep::Create),
            (
                "fresh",
                state(Some(ca("new", 0, 30)), None),
                19,
                CaStep::Keep,
            ),
            (
                "two thirds",
                state(Some(ca("new", 0, 30)), None),
                21,
                CaStep::Rotate,
            ),
            (
                "expired",
                state(Some(ca("new", 0, 30)), None),
                31,
                CaStep::Rotate,
            ),
            (
                "a key that cannot sign",
                state(Some(keyless(ca("new", 0, 30))), None),
                1,
                CaStep::Replace,
            ),
            (
                "a key that cannot sign, also due",
                state(Some(keyless(ca("new", 0, 30))), None),
                25,
                CaStep::Replace,
            ),
            (
                "overlap",
                state(Some(ca("new", 20, 50)), Some(ca("old", 0, 30))),
                25,
                CaStep::Keep,
            ),
            (
                "previous expired",
                state(Some(ca("new", 20, 50)), Some(ca("old", 0, 30))),
                30,
                CaStep::DropPrevious,
            ),
            (
                "a replaced CA's keyless certificate expired",
                state(Some(ca("new", 20, 50)), Some(keyless(ca("old", 0, 30)))),
                30,
                CaStep::DropPrevious,
            ),
        ];
        for (what, s, hour, want) in cases {
            assert_eq!(ca_step(&s, at(hour)), want, "{what}");
        }
    }

    #[test]
    fn the_bundle_carries_the_previous_ca_only_while_it_is_valid() {
        let s = state(Some(ca("new", 20, 50)), Some(keyless(ca("old", 0, 30))));
        assert_eq!(pem_bodies(&bundle(&s, at(25))), ["new", "old"]);
        assert_eq!(pem_bodies(&bundle(&s, at(31))), ["new"]);
        assert_eq!(bundle(&CaState::default(), at(0)), "");
    }

    #[test]
    fn bundles_compare_by_certificate_not_by_wrapping() {
        let wrapped = "-----BEGIN CERTIFICATE-----\nab\ncd\n-----END CERTIFICATE-----";
        let one_line = "  -----BEGIN CERTIFICATE-----\r\nabcd\r\n-----END CERTIFICATE-----\n";
        assert!(bundle_contains(wrapped, one_line));
        assert!(bundle_contains(
            &format!("{wrapped}\n{}", pem("x")),
            one_line
        ));
        assert!(!bundle_contains(&pem("x"), one_line));
        assert!(!bundle_contains(wrapped, "no certificate"));
    }

    #[test]
    fn the_trusted_bundle_of_several_webhooks_is_what_they_all_hold() {
        let cases: [(&[&str], &[&str]); 4] = [
            (&[], &[]),
            (&["a\nb"], &["a", "b"]),
            (&["a\nb", "b\nc"], &["b"]),
            (&["a", ""], &[]),
        ];
        for (bundles, want) in cases {
            let bundles: Vec<String> = bundles
                .iter()
                .map(|b| b.lines().map(pem).collect())
                .collect();
            let common = common_bundle(bundles.iter().map(String::as_str));
            assert_eq!(pem_bodies(&common), *want, "{bundles:?}");
        }
    }

    /// One row of the serving certificate table.
    struct Row {
        what: &'static str,
        leaf: Option<Leaf>,
        state: CaState,
        /// The caBundle read from the webhook configuration; `None`: never read.
        trusted: Option<String>,
        hour: i64,
        want: LeafStep,
    }

    const ISSUE_CURRENT: LeafStep = LeafStep::Issue(Signer::Current);
    const ISSUE_PREVIOUS: LeafStep = LeafStep::Issue(Signer::Previous);

    #[test]
    fn serving_certificates_are_signed_by_a_ca_the_api_server_trusts() {
        // A rotation at hour 30 from "old" to "new"; the switch delay is one hour.
        let rotated = || state(Some(ca("new", 25, 70)), Some(ca("old", 0, 40)));
        let only_old = Some(bundle_of(&["old"]));
        let both = Some(bundle_of(&["new", "old"]));
        let rows = [
            Row {
                what: "a first start, never read a bundle",
                leaf: None,
                state: state(Some(ca("new", 0, 30)), None),
                trusted: None,
                hour: 1,
                want: ISSUE_CURRENT,
            },
            Row {
                what: "a first start, the bundle not published yet",
                leaf: None,
                state: state(Some(ca("new", 0, 30)), None),
                trusted: Some(String::new()),
                hour: 1,
                want: ISSUE_CURRENT,
            },
            Row {
                what: "a start right after a rotation, the new CA not in the bundle",
                leaf: None,
                state: rotated(),
                trusted: only_old.clone(),
                hour: 30,
                want: ISSUE_PREVIOUS,
            },
            Row {
                what: "a start right after a rotation, the bundle not readable",
                leaf: None,
                state: rotated(),
                trusted: None,
                hour: 30,
                want: ISSUE_PREVIOUS,
            },
            Row {
                what: "a start during the overlap, before the switch delay",
                leaf: None,
                state: rotated(),
                trusted: both.clone(),
                hour: 30,
                want: ISSUE_PREVIOUS,
            },
            Row {
                what: "a start during the overlap, after the switch delay",
                leaf: None,
                state: rotated(),
                trusted: both.clone(),
                hour: 31,
                want: ISSUE_CURRENT,
            },
            Row {
                what: "the new CA is not trusted yet: keep the old-CA certificate",
                leaf: Some(leaf("old", 28, 60)),
                state: rotated(),
                trusted: only_old.clone(),
                hour: 31,
                want: LeafStep::Keep,
            },
            Row {
                what: "trusted, but the rotation is younger than the switch delay",
                leaf: Some(leaf("old", 28, 60)),
                state: rotated(),
                trusted: both.clone(),
                hour: 30,
                want: LeafStep::Keep,
            },
            Row {
                what: "trusted and settled: switch",
                leaf: Some(leaf("old", 28, 60)),
                state: rotated(),
                trusted: both.clone(),
                hour: 31,
                want: ISSUE_CURRENT,
            },
            Row {
                what: "signed by the new CA before the bundle was read, which has only the old",
                leaf: Some(leaf("new", 30, 60)),
                state: rotated(),
                trusted: only_old.clone(),
                hour: 31,
                want: ISSUE_PREVIOUS,
            },
            Row {
                what: "renewed at two thirds of its life with the same CA",
                leaf: Some(leaf("ca", 0, 30)),
                state: state(Some(ca("ca", 0, 100)), None),
                trusted: Some(bundle_of(&["ca"])),
                hour: 21,
                want: ISSUE_CURRENT,
            },
            Row {
                what: "not due yet",
                leaf: Some(leaf("ca", 0, 30)),
                state: state(Some(ca("ca", 0, 100)), None),
                trusted: Some(bundle_of(&["ca"])),
                hour: 19,
                want: LeafStep::Keep,
            },
            Row {
                what: "signed by a CA nobody trusts",
                leaf: Some(leaf("someone-else", 0, 30)),
                state: state(Some(ca("ca", 0, 100)), None),
                trusted: Some(bundle_of(&["ca"])),
                hour: 1,
                want: ISSUE_CURRENT,
            },
        ];
        check(rows);
    }

    #[test]
    fn a_ca_whose_key_cannot_sign_is_never_asked_to() {
        // "old" lost its key and was replaced by "new" at hour 30.
        let replaced = || state(Some(ca("new", 30, 100)), Some(keyless(ca("old", 0, 60))));
        let rows = [
            Row {
                what: "the trusted old-CA certificate is kept until the new CA is published",
                leaf: Some(leaf("old", 20, 50)),
                state: replaced(),
                trusted: Some(bundle_of(&["old"])),
                hour: 30,
                want: LeafStep::Keep,
            },
            Row {
                what: "and until the switch delay has passed",
                leaf: Some(leaf("old", 20, 50)),
                state: replaced(),
                trusted: Some(bundle_of(&["new", "old"])),
                hour: 30,
                want: LeafStep::Keep,
            },
            Row {
                what: "then it moves to the new CA",
                leaf: Some(leaf("old", 20, 50)),
                state: replaced(),
                trusted: Some(bundle_of(&["new", "old"])),
                hour: 31,
                want: ISSUE_CURRENT,
            },
            Row {
                what: "a due certificate is renewed from the new CA even before it is published",
                leaf: Some(leaf("old", 0, 45)),
                state: replaced(),
                trusted: Some(bundle_of(&["old"])),
                hour: 31,
                want: ISSUE_CURRENT,
            },
            Row {
                what: "a start never signs with the keyless previous CA",
                leaf: None,
                state: replaced(),
                trusted: Some(bundle_of(&["old"])),
                hour: 30,
                want: ISSUE_CURRENT,
            },
            Row {
                what: "a previous CA whose key broke is skipped during a rotation",
                leaf: None,
                state: state(Some(ca("new", 25, 70)), Some(keyless(ca("old", 0, 40)))),
                trusted: Some(bundle_of(&["new", "old"])),
                hour: 30,
                want: ISSUE_CURRENT,
            },
            Row {
                what: "no CA can sign and a certificate is needed",
                leaf: None,
                state: state(Some(keyless(ca("ca", 0, 100))), None),
                trusted: Some(bundle_of(&["ca"])),
                hour: 1,
                want: LeafStep::NoSigner,
            },
            Row {
                what: "no CA can sign and the certificate is not due",
                leaf: Some(leaf("ca", 0, 30)),
                state: state(Some(keyless(ca("ca", 0, 100))), None),
                trusted: Some(bundle_of(&["ca"])),
                hour: 1,
                want: LeafStep::Keep,
            },
            Row {
                what: "no CA can sign and the certificate is due",
                leaf: Some(leaf("ca", 0, 30)),
                state: state(Some(keyless(ca("ca", 0, 100))), None),
                trusted: Some(bundle_of(&["ca"])),
                hour: 25,
                want: LeafStep::NoSigner,
            },
        ];
        check(rows);
    }

    fn check(rows: impl IntoIterator<Item = Row>) {
        let delay = Duration::from_secs(3600);
        for row in rows {
            let got = leaf_step(
                row.leaf.as_ref(),
                &row.state,
                row.trusted.as_deref(),
                delay,
                at(row.hour),
            );
            assert_eq!(got, row.want, "{}", row.what);
        }
    }
}
