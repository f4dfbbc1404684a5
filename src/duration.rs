//! Human durations as operators write them: `100ms`, `60s`, `15m`, `720h`, `90d`, `1h30m`.
//!
//! Used by flags and, later, by the `restatus.io/retention` annotation, so the same spelling
//! works everywhere.

use std::time::Duration;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseDurationError {
    #[error("empty duration")]
    Empty,
    #[error("duration {input:?} has a number without a unit (use ms, s, m, h or d)")]
    MissingUnit { input: String },
    #[error("duration {input:?} has unknown unit {unit:?} (use ms, s, m, h or d)")]
    UnknownUnit { input: String, unit: String },
    #[error("duration {input:?} is not of the form <number><unit>[<number><unit>...]")]
    Malformed { input: String },
    #[error("duration {input:?} is too large")]
    Overflow { input: String },
}

/// Parses a duration such as `90d`, `720h`, `1h30m` or `100ms`.
pub fn parse(input: &str) -> Result<Duration, ParseDurationError> {
    let s = input.trim();
    if s.is_empty() {
        return Err(ParseDurationError::Empty);
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(ParseDurationError::Malformed {
                input: input.to_owned(),
            });
        }
        let (number, tail) = rest.split_at(digits);
        let unit_len = tail.bytes().take_while(u8::is_ascii_alphabetic).count();
        if unit_len == 0 {
            return Err(ParseDurationError::MissingUnit {
                input: input.to_owned(),
            });
        }
        let (unit, tail) = tail.split_at(unit_len);
        let overflow = || ParseDurationError::Overflow {
            input: input.to_owned(),
        };
        let n: u64 = number.parse().map_err(|_| overflow())?;
        let millis_per_unit: u64 = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            other => {
                return Err(ParseDurationError::UnknownUnit {
                    input: input.to_owned(),
                    unit: other.to_owned(),
                });
            }
        };
        let millis = n.checked_mul(millis_per_unit).ok_or_else(overflow)?;
        total = total
            .checked_add(Duration::from_millis(millis))
            .ok_or_else(overflow)?;
        rest = tail;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_single_units() {
        assert_eq!(parse("100ms"), Ok(Duration::from_millis(100)));
        assert_eq!(parse("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(parse("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse("720h"), Ok(Duration::from_secs(720 * 3600)));
        assert_eq!(parse("90d"), Ok(Duration::from_secs(90 * 86_400)));
    }

    #[test]
    fn parses_compound_and_trims() {
        assert_eq!(parse(" 1h30m "), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("1s500ms"), Ok(Duration::from_millis(1500)));
    }

    #[test]
    fn rejects_bad_input_with_a_reason() {
        let input = |s: &str| s.to_owned();
        let cases = [
            ("", ParseDurationError::Empty),
            ("30", ParseDurationError::MissingUnit { input: input("30") }),
            ("h3", ParseDurationError::Malformed { input: input("h3") }),
            (
                "-1s",
                ParseDurationError::Malformed {
                    input: input("-1s"),
                },
            ),
            (
                "3w",
                ParseDurationError::UnknownUnit {
                    input: input("3w"),
                    unit: input("w"),
                },
            ),
            (
                "99999999999999999999d",
                ParseDurationError::Overflow {
                    input: input("99999999999999999999d"),
                },
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(parse(text), Err(expected), "{text:?}");
        }
        let msg = parse("3w").unwrap_err().to_string();
        assert!(msg.contains("\"w\""), "{msg}");
    }
}
