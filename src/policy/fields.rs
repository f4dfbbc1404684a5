//! JSON pointer patterns into `.status`: `/loadBalancer/ingress`, `/conditions/*/observedGeneration`.
//!
//! A pattern is an RFC 6901 pointer whose tokens may be `*`, matching any object key or array
//! index. Patterns select what a restore brings back (`fields`) and what it never brings back
//! (`exclude-fields`).

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
            Token::Key(k) => k.parse::<usize>().is_ok_and(|i| i == index) && !k.starts_with('+'),
        }
    }
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
    select_all(value, &[patterns])
}

/// Keeps only the parts of `value` that every list of patterns selects: the intersection of
/// the selections, each made on `value` itself (so an array index in one list means the
/// same element as in the others). An empty list selects everything.
pub fn select_all(value: &Value, lists: &[&[FieldPattern]]) -> Value {
    let lists: Vec<Vec<&[Token]>> = lists
        .iter()
        .filter(|l| !l.is_empty())
        .map(|l| l.iter().map(|p| p.tokens.as_slice()).collect())
        .collect();
    if lists.is_empty() {
        return value.clone();
    }
    select_in(value, &lists).unwrap_or_else(|| Value::Object(Default::default()))
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
                .filter(|p| matches(&p[0]))
                .map(|p| &p[1..])
                .collect();
            (!rest.is_empty()).then_some(rest)
        })
        .collect()
}

fn select_in(value: &Value, lists: &[Vec<&[Token]>]) -> Option<Value> {
    // A list with a path that ends here selects this whole subtree: it constrains no more.
    let active: Vec<Vec<&[Token]>> = lists
        .iter()
        .filter(|paths| !paths.iter().any(|p| p.is_empty()))
        .cloned()
        .collect();
    if active.is_empty() {
        return Some(value.clone());
    }
    match value {
        Value::Object(map) => {
            let mut out = serde_json::Map::new();
            for (key, child) in map {
                if let Some(rest) = descend(&active, |t| t.matches_key(key))
                    && let Some(selected) = select_in(child, &rest)
                {
                    out.insert(key.clone(), selected);
                }
            }
            (!out.is_empty()).then_some(Value::Object(out))
        }
        Value::Array(items) => {
            let out: Vec<Value> = items
                .iter()
                .enumerate()
                .filter_map(|(i, child)| {
                    let rest = descend(&active, |t| t.matches_index(i))?;
                    select_in(child, &rest)
                })
                .collect();
            (!out.is_empty()).then_some(Value::Array(out))
        }
        _ => None,
    }
}

/// Removes every location some pattern matches.
pub fn exclude(value: &mut Value, patterns: &[FieldPattern]) {
    for pattern in patterns {
        remove_in(value, &pattern.tokens);
    }
}

fn remove_in(value: &mut Value, path: &[Token]) {
    let Some((first, rest)) = path.split_first() else {
        return;
    };
    match value {
        Value::Object(map) => {
            if rest.is_empty() {
                map.retain(|k, _| !first.matches_key(k));
            } else {
                for (k, child) in map.iter_mut() {
                    if first.matches_key(k) {
                        remove_in(child, rest);
                    }
                }
            }
        }
        Value::Array(items) => {
            if rest.is_empty() {
                let mut index = 0;
                items.retain(|_| {
                    let keep = !first.matches_index(index);
                    index += 1;
                    keep
                });
            } else {
                for (i, child) in items.iter_mut().enumerate() {
                    if first.matches_index(i) {
                        remove_in(child, rest);
                    }
                }
            }
        }
        _ => {}
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

    #[test]
    fn numeric_tokens_match_object_keys_too() {
        let v = json!({"0": "zero", "list": ["a", "b"]});
        assert_eq!(
            select(&v, &patterns(&["/0", "/list/0"])),
            json!({"0": "zero", "list": ["a"]})
        );
    }
}
