//! JSON pointer patterns into `.status`: `/loadBalancer/ingress`, `/conditions/*/observedGeneration`.
//!
//! A pattern is an RFC 6901 pointer whose tokens may be `*`, matching any object key or array
//! index. Patterns select what a restore brings back (`fields`) and what it never brings back
//! (`exclude-fields`).
//!
//! Every pattern, of every list and every level, names a location in the status as it is:
//! selection and exclusion are worked out together on the original document ([`keep`]), so
//! an array index means the same element whatever else is selected or removed around it.
//! A saved record has had its arrays closed up, so when it is narrowed again for a restore
//! ([`keep_kept`]) index tokens are not applied a second time.

use std::{fmt, str::FromStr};

use serde_json::Value;

use crate::text::clip;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PatternError {
    #[error("field pattern {pattern:?} must start with '/' (a JSON pointer into .status)")]
    NotAPointer { pattern: String },
    #[error("field pattern {pattern:?} has an invalid escape (use ~0 for '~' and ~1 for '/')")]
    BadEscape { pattern: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Any,
    Key(String),
}

impl Token {
    fn matches_key(&self, key: &str) -> bool {
        match self {
            Token::Any => true,
            Token::Key(k) => k == key,
        }
    }

    fn matches_index(&self, index: usize) -> bool {
        match self {
            Token::Any => true,
            Token::Key(k) => as_index(k) == Some(index),
        }
    }

    /// True for a token that names one array index.
    fn is_index(&self) -> bool {
        match self {
            Token::Any => false,
            Token::Key(k) => as_index(k).is_some(),
        }
    }
}

/// The array index a token names, written as RFC 6901 writes one: decimal digits, without a
/// sign or leading zeros (`01` and `+1` are keys only).
fn as_index(token: &str) -> Option<usize> {
    let canonical =
        token.bytes().all(|b| b.is_ascii_digit()) && (token == "0" || !token.starts_with('0'));
    if canonical { token.parse().ok() } else { None }
}

/// A parsed pattern such as `/conditions/*/observedGeneration`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldPattern {
    source: String,
    tokens: Vec<Token>,
}

impl FromStr for FieldPattern {
    type Err = PatternError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let Some(rest) = s.strip_prefix('/') else {
            return Err(PatternError::NotAPointer {
                pattern: clip(s, 64),
            });
        };
        let tokens = rest
            .split('/')
            .map(|raw| {
                if raw == "*" {
                    Ok(Token::Any)
                } else {
                    unescape(raw)
                        .map(Token::Key)
                        .ok_or_else(|| PatternError::BadEscape {
                            pattern: clip(s, 64),
                        })
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(FieldPattern {
            source: s.to_owned(),
            tokens,
        })
    }
}

impl fmt::Display for FieldPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

/// A comma-separated list of patterns, as flags and annotations write it. Empty entries are
/// ignored, so an empty string is an empty list.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FieldPatterns(pub Vec<FieldPattern>);

impl FromStr for FieldPatterns {
    type Err = PatternError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(str::parse)
            .collect::<Result<Vec<_>, _>>()
            .map(FieldPatterns)
    }
}

/// Patterns as JSON strings, for restore jobs.
pub(super) mod serde_patterns {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    use super::FieldPattern;

    pub fn serialize<S: Serializer>(patterns: &[FieldPattern], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(patterns.iter().map(|p| p.source.as_str()))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<FieldPattern>, D::Error> {
        Vec::<String>::deserialize(d)?
            .iter()
            .map(|p| p.parse().map_err(D::Error::custom))
            .collect()
    }
}

fn unescape(raw: &str) -> Option<String> {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c == '~' {
            match chars.next() {
                Some('0') => out.push('~'),
                Some('1') => out.push('/'),
                _ => return None,
            }
        } else {
            out.push(c);
        }
    }
    Some(out)
}

/// Keeps only the parts of `value` that some pattern selects (with their parents).
/// An empty pattern list selects everything. Array elements keep their order; elements with
/// nothing selected are left out.
pub fn select(value: &Value, patterns: &[FieldPattern]) -> Value {
    keep(value, &[patterns], &[])
}

/// Keeps only the parts of `value` that every list of patterns selects: the intersection of
/// the selections, each made on `value` itself (so an array index in one list means the
/// same element as in the others). An empty list selects everything.
pub fn select_all(value: &Value, lists: &[&[FieldPattern]]) -> Value {
    keep(value, lists, &[])
}

/// Removes every location some pattern matches. Every pattern names a location in `value`
/// as it is before anything is removed: `/a/0,/a/1` removes the first two elements of `a`.
pub fn exclude(value: &mut Value, patterns: &[FieldPattern]) {
    if !patterns.is_empty() {
        *value = keep(value, &[], patterns);
    }
}

/// What is kept of `value`: what every list of `selections` selects ([`select_all`]), less
/// every location an exclusion matches, all of them matched against `value` itself in one
/// pass. So no selection can move an element into a place an exclusion names, and no
/// exclusion can move one out of it. Arrays are closed up only in the result.
///
/// A container kept only as the parent of selected fields is left out when exclusions leave
/// none of them; a container selected itself (or the whole status) stays, emptied or not.
pub fn keep(value: &Value, selections: &[&[FieldPattern]], exclusions: &[FieldPattern]) -> Value {
    keep_with(value, selections, exclusions, Indices::Original)
}

/// [`keep`] on what an earlier [`keep`] kept, such as a saved record: its arrays have been
/// closed up, so an index no longer names the element it named. Index tokens were applied
/// when the record was made, and are not applied again: in a selection an index matches any
/// element (the record holds only elements that were selected), in an exclusion none (the
/// elements it named are gone). Key tokens and `*` apply as in [`keep`]. With the patterns
/// the record was made with, this keeps the whole record.
pub fn keep_kept(
    value: &Value,
    selections: &[&[FieldPattern]],
    exclusions: &[FieldPattern],
) -> Value {
    keep_with(value, selections, exclusions, Indices::Applied)
}

/// What an array index token in a pattern refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Indices {
    /// A position in the document at hand.
    Original,
    /// A position in a document that has since been closed up: see [`keep_kept`].
    Applied,
}

impl Indices {
    fn selects(self, token: &Token, index: usize) -> bool {
        match self {
            Indices::Original => token.matches_index(index),
            Indices::Applied => matches!(token, Token::Any) || token.is_index(),
        }
    }

    fn excludes(self, token: &Token, index: usize) -> bool {
        match self {
            Indices::Original => token.matches_index(index),
            Indices::Applied => matches!(token, Token::Any),
        }
    }
}

fn keep_with(
    value: &Value,
    selections: &[&[FieldPattern]],
    exclusions: &[FieldPattern],
    indices: Indices,
) -> Value {
    let lists: Vec<Vec<&[Token]>> = selections
        .iter()
        .filter(|l| !l.is_empty())
        .map(|l| l.iter().map(|p| p.tokens.as_slice()).collect())
        .collect();
    let excluded: Vec<&[Token]> = exclusions.iter().map(|p| p.tokens.as_slice()).collect();
    keep_in(value, &lists, &excluded, indices).unwrap_or_else(|| Value::Object(Default::default()))
}

/// The paths of each list that continue below a child the list's first tokens match; `None`
/// when some list selects nothing below it.
fn descend<'a>(
    lists: &[Vec<&'a [Token]>],
    matches: impl Fn(&Token) -> bool,
) -> Option<Vec<Vec<&'a [Token]>>> {
    lists
        .iter()
        .map(|paths| {
            let rest: Vec<&[Token]> = paths
                .iter()
                .filter(|p| p.first().is_some_and(&matches))
                .map(|p| &p[1..])
                .collect();
            (!rest.is_empty()).then_some(rest)
        })
        .collect()
}

/// The exclusions that continue below a child whose first tokens match; `None` when one of
/// them ends there, excluding the child itself.
fn descend_excluded<'a>(
    excluded: &[&'a [Token]],
    matches: impl Fn(&Token) -> bool,
) -> Option<Vec<&'a [Token]>> {
    let mut rest = Vec::new();
    for path in excluded {
        if let Some((first, tail)) = path.split_first()
            && matches(first)
        {
            if tail.is_empty() {
                return None;
            }
            rest.push(tail);
        }
    }
    Some(rest)
}

/// What is kept of `value`, which no exclusion names itself; `None` when nothing is.
fn keep_in(
    value: &Value,
    lists: &[Vec<&[Token]>],
    excluded: &[&[Token]],
    indices: Indices,
) -> Option<Value> {
    // A list with a path that ends here selects this whole subtree: it constrains no more.
    let active: Vec<Vec<&[Token]>> = lists
        .iter()
        .filter(|paths| !paths.iter().any(|p| p.is_empty()))
        .cloned()
        .collect();
    let whole = active.is_empty();
    if whole && excluded.is_empty() {
        return Some(value.clone());
    }
    // Each child: what every list selects below it, and the exclusions that reach into it.
    let child =
        |child: &Value, selects: &dyn Fn(&Token) -> bool, excludes: &dyn Fn(&Token) -> bool| {
            let rest = if whole {
                Vec::new()
            } else {
                descend(&active, selects)?
            };
            let excluded = descend_excluded(excluded, excludes)?;
            keep_in(child, &rest, &excluded, indices)
        };
    match value {
        Value::Object(map) => {
            let out: serde_json::Map<String, Value> = map
                .iter()
                .filter_map(|(key, value)| {
                    let matches = |t: &Token| t.matches_key(key);
                    Some((key.clone(), child(value, &matches, &matches)?))
                })
                .collect();
            (whole || !out.is_empty()).then_some(Value::Object(out))
        }
        Value::Array(items) => {
            let out: Vec<Value> = items
                .iter()
                .enumerate()
                .filter_map(|(i, value)| {
                    child(value, &|t| indices.selects(t, i), &|t| {
                        indices.excludes(t, i)
                    })
                })
                .collect();
            (whole || !out.is_empty()).then_some(Value::Array(out))
        }
        _ => whole.then(|| value.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn patterns(list: &[&str]) -> Vec<FieldPattern> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn parses_and_unescapes() {
        let p: FieldPattern = "/a~1b/~0c/*".parse().unwrap();
        assert_eq!(
            p.tokens,
            vec![
                Token::Key("a/b".into()),
                Token::Key("~c".into()),
                Token::Any
            ]
        );
        assert_eq!(p.to_string(), "/a~1b/~0c/*");
        assert!(matches!(
            "observedGeneration".parse::<FieldPattern>(),
            Err(PatternError::NotAPointer { .. })
        ));
        assert!(matches!(
            "/a~2".parse::<FieldPattern>(),
            Err(PatternError::BadEscape { .. })
        ));
    }

    #[test]
    fn lists_split_on_commas_and_may_be_empty() {
        let list: FieldPatterns = " /a , /b/*,".parse().unwrap();
        assert_eq!(list.0, patterns(&["/a", "/b/*"]));
        assert_eq!(
            "".parse::<FieldPatterns>().unwrap(),
            FieldPatterns::default()
        );
        assert!("/a,b".parse::<FieldPatterns>().is_err());
    }

    #[test]
    fn default_excludes_drop_observed_generation_everywhere_it_is_meant() {
        let mut status = json!({
            "observedGeneration": 7,
            "phase": "Ready",
            "conditions": [
                {"type": "Ready", "status": "True", "observedGeneration": 7},
                {"type": "Synced", "status": "True"}
            ],
            "nested": {"observedGeneration": 3}
        });
        exclude(
            &mut status,
            &patterns(&["/observedGeneration", "/conditions/*/observedGeneration"]),
        );
        assert_eq!(
            status,
            json!({
                "phase": "Ready",
                "conditions": [
                    {"type": "Ready", "status": "True"},
                    {"type": "Synced", "status": "True"}
                ],
                "nested": {"observedGeneration": 3}
            })
        );
    }

    #[test]
    fn exclude_by_index_and_wildcard_key() {
        let mut v = json!({"list": [1, 2, 3], "map": {"a": 1, "b": 2}});
        exclude(&mut v, &patterns(&["/list/1", "/map/*"]));
        assert_eq!(v, json!({"list": [1, 3], "map": {}}));
    }

    /// Every exclusion names a place in the document as it was: removing one never moves
    /// what another names.
    #[test]
    fn exclusions_name_places_in_the_original_document() {
        let cases = [
            // Two indices, in either order, and one beyond the end.
            (json!({"a": [0, 1, 2]}), "/a/0,/a/1", json!({"a": [2]})),
            (json!({"a": [0, 1, 2]}), "/a/1,/a/0", json!({"a": [2]})),
            (
                json!({"a": [0, 1, 2, 3]}),
                "/a/0,/a/2",
                json!({"a": [1, 3]}),
            ),
            (
                json!({"a": [0, 1, 2, 3]}),
                "/a/3,/a/9",
                json!({"a": [0, 1, 2]}),
            ),
            // An element, and a field of a later one.
            (
                json!({"a": [{"x": 0}, {"x": 1}, {"x": 2}]}),
                "/a/0,/a/1/x",
                json!({"a": [{}, {"x": 2}]}),
            ),
            // Indices inside an element whose own index another pattern names.
            (
                json!({"a": [{"b": [0, 1, 2]}, {"b": [3]}]}),
                "/a/0/b/0,/a/0/b/1",
                json!({"a": [{"b": [2]}, {"b": [3]}]}),
            ),
            (
                json!({"a": [{"b": [0, 1]}, {"b": [2, 3]}]}),
                "/a/0,/a/1/b/0",
                json!({"a": [{"b": [3]}]}),
            ),
            // Wildcards at each level.
            (json!({"a": [1], "b": {"c": 2}}), "/*", json!({})),
            (
                json!({"a": [1, 2], "b": 3}),
                "/a/*",
                json!({"a": [], "b": 3}),
            ),
            (
                json!({"a": [{"b": 1, "c": 1}, {"b": 2}, 3]}),
                "/a/*/b",
                json!({"a": [{"c": 1}, {}, 3]}),
            ),
            (
                json!({"a": [{"b": 1}, [1, 2], 3], "d": 4}),
                "/a/*/*",
                json!({"a": [{}, [], 3], "d": 4}),
            ),
            // A wildcard and an index that name the same place, and overlapping patterns.
            (json!({"a": [0, 1]}), "/a/*,/a/0", json!({"a": []})),
            (
                json!({"a": [{"x": 0}, {"x": 1}, {"x": 2}]}),
                "/a/1/x,/a/1,/a/*/y",
                json!({"a": [{"x": 0}, {"x": 2}]}),
            ),
            // Nothing to exclude where a pattern goes past a scalar or a missing key.
            (
                json!({"a": 1, "b": [2]}),
                "/a/x,/b/0/y,/c",
                json!({"a": 1, "b": [2]}),
            ),
        ];
        for (document, list, want) in cases {
            let list: FieldPatterns = list.parse().unwrap();
            let mut got = document.clone();
            exclude(&mut got, &list.0);
            assert_eq!(got, want, "{document} less {list:?}");
        }
    }

    #[test]
    fn select_keeps_matches_and_their_parents() {
        let status = json!({
            "apiServerURL": "https://10.0.0.1",
            "masterVersion": "1.30",
            "loadBalancer": {"ingress": [{"ip": "1.2.3.4", "ports": [{"port": 80}]}]},
            "conditions": [{"type": "Ready", "reason": "Up"}, {"type": "Synced"}]
        });
        let out = select(
            &status,
            &patterns(&[
                "/apiServerURL",
                "/loadBalancer/ingress/*/ip",
                "/conditions/*/type",
            ]),
        );
        assert_eq!(
            out,
            json!({
                "apiServerURL": "https://10.0.0.1",
                "loadBalancer": {"ingress": [{"ip": "1.2.3.4"}]},
                "conditions": [{"type": "Ready"}, {"type": "Synced"}]
            })
        );
    }

    #[test]
    fn select_with_no_patterns_is_everything_and_no_match_is_empty() {
        let status = json!({"a": 1});
        assert_eq!(select(&status, &[]), status);
        assert_eq!(select(&status, &patterns(&["/b"])), json!({}));
    }

    #[test]
    fn select_all_intersects_selections_made_on_the_same_document() {
        let v = json!({"addresses": [{"host": "a"}, {"ip": "192.0.2.2", "port": 1}], "phase": "x"});
        // Indices mean positions in `v`, whichever list names them.
        assert_eq!(
            select_all(
                &v,
                &[
                    &patterns(&["/addresses/*/ip"]),
                    &patterns(&["/addresses/1"])
                ]
            ),
            json!({"addresses": [{"ip": "192.0.2.2"}]})
        );
        assert_eq!(
            select_all(&v, &[&patterns(&["/addresses"]), &patterns(&["/phase"])]),
            json!({})
        );
        assert_eq!(
            select_all(&v, &[&[], &patterns(&["/phase"])]),
            json!({"phase": "x"})
        );
        assert_eq!(select_all(&v, &[]), v);
        let list = json!({"list": [{}, 3]});
        assert_eq!(
            select_all(&list, &[&patterns(&["/list/1"]), &patterns(&["/list/1"])]),
            json!({"list": [3]})
        );
    }

    /// One step of a path into a document.
    #[derive(Debug, Clone)]
    enum Step {
        Key(String),
        Index(usize),
    }

    /// Every scalar of `value` with its path, in document order.
    fn leaves(value: &Value, path: &mut Vec<Step>, out: &mut Vec<(Vec<Step>, Value)>) {
        match value {
            Value::Object(map) => {
                for (key, child) in map {
                    path.push(Step::Key(key.clone()));
                    leaves(child, path, out);
                    path.pop();
                }
            }
            Value::Array(items) => {
                for (i, child) in items.iter().enumerate() {
                    path.push(Step::Index(i));
                    leaves(child, path, out);
                    path.pop();
                }
            }
            _ => out.push((path.clone(), value.clone())),
        }
    }

    fn scalars(value: &Value) -> Vec<Value> {
        let mut out = Vec::new();
        leaves(value, &mut Vec::new(), &mut out);
        out.into_iter().map(|(_, v)| v).collect()
    }

    /// Whether `pattern` names `path` or one of its ancestors, by the text of RFC 6901: an
    /// index is the decimal number as written.
    fn names(pattern: &FieldPattern, path: &[Step]) -> bool {
        pattern.tokens.len() <= path.len()
            && pattern.tokens.iter().zip(path).all(|(t, s)| match (t, s) {
                (Token::Any, _) => true,
                (Token::Key(k), Step::Key(key)) => k == key,
                (Token::Key(k), Step::Index(i)) => *k == i.to_string(),
            })
    }

    /// Patterns for `document`: the pointer of every place in it, each with one or all of its
    /// tokens made `*`, and pointers that name nothing or are not indices.
    fn patterns_for(document: &Value) -> Vec<FieldPattern> {
        fn places(value: &Value, path: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
            if !path.is_empty() {
                out.push(path.clone());
            }
            let children: Vec<(String, &Value)> = match value {
                Value::Object(map) => map.iter().map(|(k, v)| (k.clone(), v)).collect(),
                Value::Array(items) => items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| (i.to_string(), v))
                    .collect(),
                _ => Vec::new(),
            };
            for (token, child) in children {
                path.push(token);
                places(child, path, out);
                path.pop();
            }
        }
        let mut paths = Vec::new();
        places(document, &mut Vec::new(), &mut paths);
        let mut out: Vec<String> = Vec::new();
        for path in &paths {
            out.push(format!("/{}", path.join("/")));
            for i in 0..path.len() {
                let mut wild = path.clone();
                wild[i] = "*".into();
                out.push(format!("/{}", wild.join("/")));
            }
            out.push(format!("/{}", vec!["*"; path.len()].join("/")));
        }
        for extra in [
            "/a/9", "/a/+1", "/a/01", "/b/0", "/d", "/c/x", "/a/*/x/y", "/*/1",
        ] {
            out.push(extra.into());
        }
        out.sort();
        out.dedup();
        out.iter().map(|p| p.parse().unwrap()).collect()
    }

    /// Against an oracle that reads every pattern on its own: whatever the selections and
    /// exclusions, exactly the scalars every selection names and no exclusion names are kept,
    /// in their order; and a record narrowed again by the same patterns stays whole.
    #[test]
    fn keep_keeps_exactly_what_every_selection_names_and_no_exclusion_names() {
        let document = json!({
            "a": [{"x": "v0", "y": "v1"}, {"x": "v2"}, "v3", ["v4", "v5"]],
            "b": {"x": "v6", "1": "v7", "y": {"z": "v8"}},
            "c": "v9",
        });
        let mut all = Vec::new();
        leaves(&document, &mut Vec::new(), &mut all);
        let candidates = patterns_for(&document);
        // A fixed pseudo-random walk through combinations, the same on every run.
        let mut seed: u64 = 0x5eed;
        let mut next = |n: usize| {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (seed >> 33) as usize % n
        };
        for _ in 0..4_000 {
            let mut lists: Vec<Vec<FieldPattern>> = Vec::new();
            for _ in 0..next(3) {
                let len = 1 + next(2);
                lists.push(
                    (0..len)
                        .map(|_| candidates[next(candidates.len())].clone())
                        .collect(),
                );
            }
            let len = next(4);
            let exclusions: Vec<FieldPattern> = (0..len)
                .map(|_| candidates[next(candidates.len())].clone())
                .collect();
            let lists_ref: Vec<&[FieldPattern]> = lists.iter().map(Vec::as_slice).collect();

            let kept = keep(&document, &lists_ref, &exclusions);
            let want: Vec<Value> = all
                .iter()
                .filter(|(path, _)| {
                    lists.iter().all(|l| l.iter().any(|p| names(p, path)))
                        && !exclusions.iter().any(|p| names(p, path))
                })
                .map(|(_, v)| v.clone())
                .collect();
            let case = format!("selections {lists:?}, exclusions {exclusions:?}");
            assert_eq!(scalars(&kept), want, "{case}: kept {kept}");
            assert_eq!(
                keep_kept(&kept, &lists_ref, &exclusions),
                kept,
                "{case}: the record narrowed again"
            );
            if lists.is_empty() {
                let mut excluded = document.clone();
                exclude(&mut excluded, &exclusions);
                assert_eq!(excluded, kept, "{case}: exclude");
            }
            if exclusions.is_empty() {
                assert_eq!(
                    select_all(&document, &lists_ref),
                    kept,
                    "{case}: select_all"
                );
            }
        }
    }

    /// In a record, an index in a selection stands for any element and an index in an
    /// exclusion for none; a key, or a number not written as an index, names no element.
    #[test]
    fn in_a_record_only_indices_and_wildcards_reach_into_arrays() {
        let record = json!({"a": [{"x": 1}, {"x": 2}], "m": {"1": 3, "01": 4}});
        let cases = [
            // (selection, exclusion, kept)
            ("/a/5/x", "", json!({"a": [{"x": 1}, {"x": 2}]})),
            ("/a/*/x", "/a/0/x", json!({"a": [{"x": 1}, {"x": 2}]})),
            ("/a/*", "/a/*/x", json!({"a": [{}, {}]})),
            ("/a/x", "", json!({})),
            ("/a/+1", "", json!({})),
            ("/a/01", "", json!({})),
            ("/a/-1", "", json!({})),
            ("/a/", "", json!({})),
            ("", "/a/x,/a/+1,/a/01", record.clone()),
            // In an object, numbers are keys as ever.
            ("/m/1", "", json!({"m": {"1": 3}})),
            ("/m/01", "/m/1", json!({"m": {"01": 4}})),
        ];
        for (selection, exclusion, want) in cases {
            let selection: FieldPatterns = selection.parse().unwrap();
            let exclusion: FieldPatterns = exclusion.parse().unwrap();
            assert_eq!(
                keep_kept(&record, &[&selection.0], &exclusion.0),
                want,
                "selecting {selection:?}, excluding {exclusion:?}"
            );
        }
    }

    #[test]
    fn numeric_tokens_match_object_keys_too() {
        let v = json!({"0": "zero", "list": ["a", "b"]});
        assert_eq!(
            select(&v, &patterns(&["/0", "/list/0"])),
            json!({"0": "zero", "list": ["a"]})
        );
    }
}
