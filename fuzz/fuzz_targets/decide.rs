//! `policy::decide(saved, live, &policy)` on statuses and policies from the input.
//!
//! Input: a header line `mode|fields|narrowed-to|exclude-fields` (`replace` or anything
//! else for fill; comma-separated patterns, entries that do not parse left out), then the
//! saved status and, optionally, the live one as JSON documents.
//!
//! Invariants, with `r` the restorable part of the saved status and `e` what the status is
//! after the decision (the returned value, or the live one when `None`):
//! - it never panics; `None` only when there is a live status;
//! - fill: every non-null live value is kept (objects recursively); every field of `r` is in
//!   `e` wherever the live status has an object or nothing; without a live status `e == r`;
//! - replace: every field of `r` is in `e` with its saved value (objects recursively); every
//!   live field `r` does not have is kept;
//! - deciding again on `e` asks for nothing (`None`): the decision is a fixpoint, so `None`
//!   means the live status already is what would be written;
//! - what is restorable is within the saved status, and within what each of `fields` and
//!   `narrowed-to` selects from it;
//! - narrowing to the very fields the policy selects changes nothing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use restatus::policy::{RestoreMode, RestorePolicy, decide, select};
use restatus_fuzz::{documents, is_empty_object, is_subtree, patterns, skipped, split_header};
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Some((header, rest)) = split_header(data) else {
        return;
    };
    let mut parts = header.split('|');
    let mode = match parts.next() {
        Some("replace") => RestoreMode::Replace,
        _ => RestoreMode::Fill,
    };
    let policy = RestorePolicy {
        mode,
        fields: patterns(parts.next().unwrap_or("")),
        narrowed_to: patterns(parts.next().unwrap_or("")),
        exclude_fields: patterns(parts.next().unwrap_or("")),
    };
    let (docs, _) = documents(rest, 2);
    let mut docs = docs.into_iter();
    let Some(saved) = docs.next() else {
        return;
    };
    let live = docs.next();

    let r = policy.restorable(&saved);
    // Within the saved status (or `{}` when nothing is selected from a scalar).
    assert!(
        is_subtree(&r, &saved) || is_empty_object(&r),
        "restorable {r} is not within saved {saved}"
    );
    // What both lists select, each on the saved status itself: within either selection.
    for list in [&policy.fields, &policy.narrowed_to] {
        let selected = select(&saved, list);
        assert!(
            is_subtree(&r, &selected) || is_empty_object(&r),
            "restorable {r} is not within the selection {selected}"
        );
    }

    if !skipped("narrow_same") && !policy.fields.is_empty() {
        let same = RestorePolicy {
            narrowed_to: policy.fields.clone(),
            ..policy.clone()
        };
        let unnarrowed = RestorePolicy {
            narrowed_to: vec![],
            ..policy.clone()
        };
        assert_eq!(
            same.restorable(&saved),
            unnarrowed.restorable(&saved),
            "narrowing to the selected fields {:?} changed what is restorable",
            policy
                .fields
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
        );
    }

    let decided = decide(&saved, live.as_ref(), &policy);
    let l = live.as_ref().filter(|v| !v.is_null());
    let e = match (&decided, l) {
        (Some(m), _) => m,
        (None, Some(l)) => l,
        (None, None) => panic!("no decision although there is no live status"),
    };
    match mode {
        RestoreMode::Fill => {
            match l {
                Some(l) => assert!(fill_keeps(e, l), "fill lost a live value: {l} -> {e}"),
                None => assert_eq!(e, &r),
            }
            assert!(
                fill_covers(e, &r),
                "fill left out a saved field: {r} -> {e}"
            );
        }
        RestoreMode::Replace => {
            assert!(replaced(e, &r), "replace did not write {r}: {e}");
            if let Some(l) = l {
                assert!(
                    replace_keeps(e, l, &r),
                    "replace lost a live field: {l} -> {e}"
                );
            }
        }
    }
    // A decision is a fixpoint: once written, there is nothing more to write. A null
    // decision (a null saved status, which restatus never records) is left out: a null
    // live status counts as none.
    if let Some(m) = &decided
        && !m.is_null()
    {
        assert_eq!(
            decide(&saved, Some(m), &policy),
            None,
            "deciding again on {m} asks for more"
        );
    }
});

/// Fill keeps every non-null live value, merging into live objects.
fn fill_keeps(e: &Value, live: &Value) -> bool {
    match live {
        Value::Object(l) => e.as_object().is_some_and(|e| {
            l.iter()
                .filter(|(_, v)| !v.is_null())
                .all(|(k, v)| e.get(k).is_some_and(|ev| fill_keeps(ev, v)))
        }),
        other => e == other,
    }
}

/// Where `e` has an object and `r` too, every key of `r` is in `e`, recursively; a non-null
/// saved value never ends up null.
fn fill_covers(e: &Value, r: &Value) -> bool {
    match (r, e) {
        (_, Value::Null) => r.is_null(),
        (Value::Object(r), Value::Object(e)) => r
            .iter()
            .all(|(k, rv)| e.get(k).is_some_and(|ev| fill_covers(ev, rv))),
        _ => true,
    }
}

/// Every saved field is in `e` with its saved value; objects merge.
fn replaced(e: &Value, r: &Value) -> bool {
    match r {
        Value::Object(r) => e.as_object().is_some_and(|e| {
            r.iter()
                .all(|(k, rv)| e.get(k).is_some_and(|ev| replaced(ev, rv)))
        }),
        other => e == other,
    }
}

/// Live fields the saved status does not have are kept.
fn replace_keeps(e: &Value, live: &Value, r: &Value) -> bool {
    match (live, r) {
        (Value::Object(l), Value::Object(r)) => e.as_object().is_some_and(|e| {
            l.iter().all(|(k, lv)| match r.get(k) {
                None => e.get(k) == Some(lv),
                Some(rv) => e.get(k).is_some_and(|ev| replace_keeps(ev, lv, rv)),
            })
        }),
        _ => true,
    }
}
