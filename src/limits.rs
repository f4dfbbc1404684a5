//! Limits on a status before it is parsed: how many values it may hold and how deep it may
//! nest. A status from a review is counted in its raw text before anything is built, so the
//! memory a review takes is bounded by its body and these limits; one already parsed (listed
//! from the API server) is counted the same way.

use serde_json::{Value, value::RawValue};

use crate::text::clip;

/// Limits on a status before it is parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusLimits {
    /// Values (scalars, arrays and objects, each counted once) in one status.
    pub max_values: usize,
    /// Nesting of arrays and objects in one status.
    pub max_depth: usize,
}

impl Default for StatusLimits {
    fn default() -> Self {
        Self {
            max_values: 100_000,
            max_depth: 100,
        }
    }
}

/// Why a status was not parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StatusError {
    #[error("the status holds more than {max} values (--max-status-values)")]
    TooManyValues { max: usize },
    #[error("the status nests deeper than {max} levels")]
    TooDeep { max: usize },
    #[error("the status is not JSON: {0}")]
    Invalid(String),
}

impl StatusError {
    pub fn label(&self) -> &'static str {
        match self {
            StatusError::TooManyValues { .. } => "too_many_values",
            StatusError::TooDeep { .. } => "too_deep",
            StatusError::Invalid(_) => "invalid",
        }
    }
}

/// Checks raw JSON text against the limits.
fn check_size(text: &str, limits: StatusLimits) -> Result<(), StatusError> {
    count(text, limits).map(|_| ())
}

/// Counts the values of raw JSON text and its nesting, stopping as soon as a limit is passed.
/// The text is already known to be valid JSON (the review decoded), so only strings, commas
/// and brackets need telling apart.
fn count(text: &str, limits: StatusLimits) -> Result<usize, StatusError> {
    let mut values = 0usize;
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    // Whether a value has started since the last `[`, `{`, `,` or `:` (one value per item).
    let mut in_value = false;
    let tally = |values: &mut usize| {
        *values += 1;
        if *values > limits.max_values {
            Err(StatusError::TooManyValues {
                max: limits.max_values,
            })
        } else {
            Ok(())
        }
    };
    for b in text.bytes() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'[' | b'{' => {
                tally(&mut values)?;
                depth += 1;
                if depth > limits.max_depth {
                    return Err(StatusError::TooDeep {
                        max: limits.max_depth,
                    });
                }
                in_value = false;
            }
            b']' | b'}' => {
                depth = depth.saturating_sub(1);
                in_value = true;
            }
            b',' | b':' => in_value = false,
            b'"' => {
                in_string = true;
                if !in_value {
                    tally(&mut values)?;
                    in_value = true;
                }
            }
            b' ' | b'\n' | b'\r' | b'\t' => {}
            _ => {
                if !in_value {
                    tally(&mut values)?;
                    in_value = true;
                }
            }
        }
    }
    Ok(values)
}

/// Checks a status already parsed (one listed from the API server) against the limits,
/// counting as [`parse_status`] does: every value once, and every object key.
pub fn check_parsed(status: &Value, limits: StatusLimits) -> Result<(), StatusError> {
    let too_many = StatusError::TooManyValues {
        max: limits.max_values,
    };
    let mut values = 0usize;
    let mut stack = vec![(status, 1usize)];
    while let Some((value, depth)) = stack.pop() {
        values += 1;
        let nested = match value {
            Value::Array(items) => Some(items.len()),
            Value::Object(map) => {
                values += map.len();
                Some(map.len())
            }
            _ => None,
        };
        if values > limits.max_values {
            return Err(too_many);
        }
        if nested.is_some() && depth > limits.max_depth {
            return Err(StatusError::TooDeep {
                max: limits.max_depth,
            });
        }
        match value {
            Value::Array(items) => stack.extend(items.iter().map(|v| (v, depth + 1))),
            Value::Object(map) => stack.extend(map.values().map(|v| (v, depth + 1))),
            _ => {}
        }
    }
    Ok(())
}

/// How many values a raw status holds, `None` when it is beyond `limits` (and will not be
/// parsed).
pub fn values(raw: &RawValue, limits: StatusLimits) -> Option<usize> {
    count(raw.get(), limits).ok()
}

/// Parses a raw status within `limits`. Object keys count as values too, so a map of many
/// small entries is bounded like a list of them.
pub fn parse_status(raw: &RawValue, limits: StatusLimits) -> Result<Value, StatusError> {
    check_size(raw.get(), limits)?;
    serde_json::from_str(raw.get()).map_err(|e| StatusError::Invalid(clip(&e.to_string(), 128)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn raw(text: &str) -> Box<RawValue> {
        RawValue::from_string(text.to_owned()).unwrap()
    }

    #[test]
    fn a_parsed_status_is_held_to_the_limits_as_its_text_is() {
        let samples = [
            r#"{"a": [1, "x,]", {"b": null}], "c": true}"#,
            r#""a\"b,c""#,
            "[]",
            "{}",
            "[0,0]",
            "[[[[]]]]",
            r#"{"k": {"k": {"k": [1, 2, {"z": "\u005d"}]}}}"#,
            r#"[{"a": 1}, {"b": [true, false, null]}, "s"]"#,
        ];
        for text in samples {
            let parsed: Value = serde_json::from_str(text).unwrap();
            for max_values in 0..14 {
                for max_depth in 0..6 {
                    let limits = StatusLimits {
                        max_values,
                        max_depth,
                    };
                    assert_eq!(
                        check_parsed(&parsed, limits).is_ok(),
                        check_size(text, limits).is_ok(),
                        "{text} within {max_values} values, {max_depth} deep"
                    );
                }
            }
        }
        let limits = StatusLimits {
            max_values: 10,
            max_depth: 3,
        };
        let parsed = json!({"a": [1, "x,]", {"b": null}], "c": true});
        assert_eq!(check_parsed(&parsed, limits), Ok(()));
        assert_eq!(
            check_parsed(
                &parsed,
                StatusLimits {
                    max_values: 9,
                    ..limits
                }
            ),
            Err(StatusError::TooManyValues { max: 9 })
        );
        assert_eq!(
            check_parsed(
                &parsed,
                StatusLimits {
                    max_depth: 2,
                    ..limits
                }
            ),
            Err(StatusError::TooDeep { max: 2 })
        );
    }

    #[test]
    fn values_and_depth_are_counted_before_parsing() {
        let limits = |max_values, max_depth| StatusLimits {
            max_values,
            max_depth,
        };
        // {"a":[1,"x,]",{"b":null}],"c":true}: the object, a, its array, 1, "x,]", the inner
        // object, b, null, c, true.
        let text = r#"{"a": [1, "x,]", {"b": null}], "c": true}"#;
        assert_eq!(check_size(text, limits(10, 3)), Ok(()));
        assert_eq!(
            values(&raw(text), limits(10, 3)),
            Some(10),
            "the object, a, its list, 1, \"x,]\", the inner object, b, null, c, true"
        );
        assert_eq!(values(&raw(text), limits(9, 3)), None);
        assert_eq!(
            check_size(text, limits(9, 3)),
            Err(StatusError::TooManyValues { max: 9 })
        );
        assert_eq!(
            check_size(text, limits(10, 2)),
            Err(StatusError::TooDeep { max: 2 })
        );
        assert_eq!(check_size(r#""a\"b,c""#, limits(1, 0)), Ok(()));
        assert_eq!(check_size("[]", limits(1, 1)), Ok(()));
        assert_eq!(
            check_size("[0,0]", limits(2, 1)),
            Err(StatusError::TooManyValues { max: 2 })
        );
        assert_eq!(
            parse_status(&raw("[0,0,0]"), limits(3, 1)),
            Err(StatusError::TooManyValues { max: 3 })
        );
        assert_eq!(
            parse_status(&raw(r#"{"k": [1]}"#), limits(4, 2)),
            Ok(json!({"k": [1]}))
        );
        let deep = format!("{}{}", "[".repeat(101), "]".repeat(101));
        assert_eq!(
            parse_status(&raw(&deep), StatusLimits::default()),
            Err(StatusError::TooDeep { max: 100 })
        );
    }
}
