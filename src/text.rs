//! Small text helpers every module may use: cutting quoted input short, base64.

use base64::{
    Engine, alphabet,
    engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig},
};

/// The most characters of a review's uid, resource, namespace or name put in a log line: the
/// API server's are far shorter, a forged review's need not be.
pub const LOG_FIELD_CHARS: usize = 256;

/// `text` cut to at most `max_chars` characters, with `…` where it was cut: for messages
/// that quote what a client sent, which must not echo hostile input back at length.
pub fn clip(text: &str, max_chars: usize) -> String {
    let mut chars = text.chars();
    let mut out: String = chars.by_ref().take(max_chars).collect();
    if chars.next().is_some() {
        out.push('…');
    }
    out
}

/// Standard base64 that decodes with or without padding.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Standard base64 (RFC 4648) with padding.
pub fn base64_encode(bytes: &[u8]) -> String {
    BASE64.encode(bytes)
}

/// Decodes standard base64, padding optional; `None` on anything else.
pub fn base64_decode(text: &str) -> Option<Vec<u8>> {
    BASE64.decode(text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_cuts_long_text_on_a_character_boundary() {
        assert_eq!(clip("short", 10), "short");
        assert_eq!(clip("exactly", 7), "exactly");
        assert_eq!(clip("ééééé", 3), "ééé…");
        assert_eq!(clip("", 0), "");
    }

    #[test]
    fn base64_round_trips_and_rejects_garbage() {
        for bytes in [&b""[..], b"a", b"ab", b"abc", b"abcd", &[0, 255, 128, 7, 9]] {
            assert_eq!(base64_decode(&base64_encode(bytes)).as_deref(), Some(bytes));
        }
        assert_eq!(base64_encode(b"abc"), "YWJj");
        assert_eq!(base64_encode(b"ab"), "YWI=");
        assert!(base64_decode("YW*j").is_none());
        assert_eq!(
            base64_decode("YWI").as_deref(),
            Some(&b"ab"[..]),
            "padding optional"
        );
        // A lone character, or bits beyond the last byte: not base64.
        assert!(base64_decode("A").is_none());
        assert!(base64_decode("YWJ=").is_none());
    }
}
