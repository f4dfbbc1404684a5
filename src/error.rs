//! Error helpers every module may use: the leaf of the module graph.

/// An error and its sources on one line: `could not read x: No such file or directory`.
///
/// A source whose text the message already ends with is not repeated, so errors that quote
/// their source (`#[error("... {0}")]`) still read once.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let text = e.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = e.source();
    }
    out
}

/// The HTTP status code of an error the API server answered, if it is one.
pub fn api_status_code(error: &kube::Error) -> Option<u16> {
    match error {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("outer: inner")]
    struct Quoting(#[source] std::io::Error);

    #[test]
    fn error_chain_joins_sources_on_one_line() {
        let e = Outer(std::io::Error::other("inner"));
        assert_eq!(error_chain(&e), "outer: inner");
    }

    #[test]
    fn error_chain_does_not_repeat_a_quoted_source() {
        let e = Quoting(std::io::Error::other("inner"));
        assert_eq!(error_chain(&e), "outer: inner");
    }

    #[test]
    fn api_status_code_only_for_api_errors() {
        let api = kube::Error::Api(Box::new(kube::core::Status {
            code: 409,
            ..Default::default()
        }));
        assert_eq!(api_status_code(&api), Some(409));
        let other = kube::Error::LinesCodecMaxLineLengthExceeded;
        assert_eq!(api_status_code(&other), None);
    }
}
