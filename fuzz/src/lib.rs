//! Helpers shared by the fuzz targets: how an input is cut into a header line and JSON
//! documents, pattern lists read leniently, and the tree relations the invariants use.
//!
//! Inputs are text, so that the committed corpus is readable and seeds are made from the
//! review fixtures: a first line for the parameters (policy, patterns, context), then one or
//! two JSON documents, parsed with serde_json's own limits, as restatus parses bodies.

use restatus::policy::FieldPattern;
use serde_json::Value;

/// The longest a message restatus derives from a hostile input may be: an error answered
/// with 400 and logged, or an admission warning. Its fixed text is well under this; what
/// goes beyond it is the input quoted back.
pub const MESSAGE_LIMIT: usize = 1024;

/// Names of invariants that are known to be broken and reported, listed (comma-separated)
/// in `RESTATUS_FUZZ_SKIP` to let a run go on past them. Empty by default: every invariant
/// is checked.
pub fn skipped(invariant: &str) -> bool {
    std::env::var("RESTATUS_FUZZ_SKIP")
        .map(|list| list.split(',').any(|s| s.trim() == invariant))
        .unwrap_or(false)
}

/// The first line (without its `\n`) and the rest; `None` when there is no `\n` or the line
/// is not UTF-8.
pub fn split_header(data: &[u8]) -> Option<(&str, &[u8])> {
    let end = data.iter().position(|b| *b == b'\n')?;
    let header = std::str::from_utf8(&data[..end]).ok()?;
    Some((header, &data[end + 1..]))
}

/// Up to `max` JSON documents from the start of `bytes`, stopping at the first that does not
/// parse, and the offset just after the last one read.
pub fn documents(bytes: &[u8], max: usize) -> (Vec<Value>, usize) {
    let mut stream = serde_json::Deserializer::from_slice(bytes).into_iter::<Value>();
    let mut out = Vec::new();
    while out.len() < max {
        match stream.next() {
            Some(Ok(v)) => out.push(v),
            _ => break,
        }
    }
    (out, stream.byte_offset())
}

/// The patterns of a comma-separated list, skipping the entries that do not parse (so that a
/// mutation that breaks one entry does not throw the others away).
pub fn patterns(list: &str) -> Vec<FieldPattern> {
    list.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// A pattern token that selects an array index: what the crate's `matches_index` accepts.
pub fn is_index_token(token: &str) -> bool {
    token.parse::<usize>().is_ok() && !token.starts_with('+')
}

/// True when some token of `pattern` (as written) can select an array element by index.
pub fn has_index_token(pattern: &FieldPattern) -> bool {
    pattern
        .to_string()
        .split('/')
        .skip(1)
        .any(|raw| is_index_token(&raw.replace("~1", "/").replace("~0", "~")))
}

/// `sub` is `full` with some object members and array elements left out, at any depth:
/// every member of `sub` is in `full` under the same key, array elements keep their order,
/// and scalars are equal.
pub fn is_subtree(sub: &Value, full: &Value) -> bool {
    match (sub, full) {
        (Value::Object(s), Value::Object(f)) => s
            .iter()
            .all(|(k, sv)| f.get(k).is_some_and(|fv| is_subtree(sv, fv))),
        (Value::Array(s), Value::Array(f)) => {
            // Greedy matching of a subsequence is enough: each element's test is independent.
            let mut rest = f.iter();
            s.iter().all(|sv| rest.any(|fv| is_subtree(sv, fv)))
        }
        _ => sub == full,
    }
}

/// True for `{}`.
pub fn is_empty_object(v: &Value) -> bool {
    v.as_object().is_some_and(serde_json::Map::is_empty)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn subtrees() {
        let full = json!({"a": [1, {"b": 2, "c": 3}, 4], "d": "x"});
        assert!(is_subtree(&json!({"a": [{"c": 3}, 4]}), &full));
        assert!(is_subtree(&json!({}), &full));
        assert!(!is_subtree(&json!({"a": [4, 1]}), &full));
        assert!(!is_subtree(&json!({"e": 1}), &full));
        assert!(!is_subtree(&json!({"d": "y"}), &full));
    }

    #[test]
    fn headers_and_documents() {
        let (h, rest) = split_header(b"fill|/a\n{\"a\":1} {\"b\":2} x").unwrap();
        assert_eq!(h, "fill|/a");
        let (docs, _) = documents(rest, 3);
        assert_eq!(docs, vec![json!({"a": 1}), json!({"b": 2})]);
        assert_eq!(patterns("/a, b ,/c~2,/d").len(), 2);
        assert!(has_index_token(&"/a/01".parse().unwrap()));
        assert!(!has_index_token(&"/a/+1".parse().unwrap()));
    }
}
