//! Field patterns: `FieldPattern`/`FieldPatterns` parsing, `select` and `exclude`.
//!
//! Input: a header line of comma-separated patterns, then a JSON document.
//!
//! Invariants:
//! - parsing any string never panics; a parsed pattern prints as what it was parsed from and
//!   parses back to itself; a list joined with commas parses back to the same list;
//! - `select` with no patterns is the identity; its output is a sub-tree of its input (or
//!   `{}` when nothing is selected); it keeps what any one of the patterns selects; repeating
//!   a pattern changes nothing;
//! - `exclude` never adds anything: its output is a sub-tree of its input; afterwards no
//!   pattern without an index token selects anything (an index token may select an element
//!   that moved into a removed one's place).
#![no_main]

use libfuzzer_sys::fuzz_target;
use restatus::policy::{FieldPattern, FieldPatterns, exclude, select};
use restatus_fuzz::{
    documents, has_index_token, is_empty_object, is_subtree, patterns, split_header,
};

fuzz_target!(|data: &[u8]| {
    let (header, rest) = match split_header(data) {
        Some(split) => split,
        None => (std::str::from_utf8(data).unwrap_or(""), &[][..]),
    };
    // Any string: parsed as one pattern and as a list, never a panic.
    if let Ok(p) = header.parse::<FieldPattern>() {
        let printed = p.to_string();
        assert_eq!(printed, header.trim(), "a pattern prints as written");
        assert_eq!(printed.parse::<FieldPattern>().as_ref(), Ok(&p));
    }
    let _ = header.parse::<FieldPatterns>();

    let ps = patterns(header);
    let joined = ps
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",");
    assert_eq!(
        joined.parse::<FieldPatterns>().map(|l| l.0).as_ref(),
        Ok(&ps),
        "a list prints and parses back"
    );

    let (docs, _) = documents(rest, 1);
    let Some(value) = docs.into_iter().next() else {
        return;
    };

    assert_eq!(select(&value, &[]), value, "no patterns select everything");
    let selected = select(&value, &ps);
    assert!(
        is_subtree(&selected, &value) || is_empty_object(&selected),
        "select added something: {value} -> {selected}"
    );
    for p in &ps {
        let one = select(&value, std::slice::from_ref(p));
        assert!(
            is_subtree(&one, &selected) || is_empty_object(&one),
            "{p} alone selects {one}, more than the list's {selected}"
        );
    }
    let twice: Vec<FieldPattern> = ps.iter().chain(ps.iter()).cloned().collect();
    assert_eq!(
        select(&value, &twice),
        selected,
        "a repeated pattern changes nothing"
    );

    let mut excluded = value.clone();
    exclude(&mut excluded, &ps);
    assert!(
        is_subtree(&excluded, &value),
        "exclude added something: {value} -> {excluded}"
    );
    for p in ps.iter().filter(|p| !has_index_token(p)) {
        let left = select(&excluded, std::slice::from_ref(p));
        assert!(
            is_empty_object(&left),
            "{p} still selects {left} after it was excluded from {value}"
        );
    }
});
