//! `review::decode` on arbitrary bytes.
//!
//! Invariants: it never panics; an accepted review has a non-empty uid and survives a second
//! trip through JSON unchanged in what restatus reads; a refused one gets a message that is
//! one line (the 400 body and the log line) and bounded: it says what is wrong without
//! quoting the input back at any length.
#![no_main]

use libfuzzer_sys::fuzz_target;
use restatus::admission::review::{self, ReviewError};
use restatus_fuzz::{MESSAGE_LIMIT, skipped};

fuzz_target!(|data: &[u8]| {
    match review::decode(data) {
        Ok(req) => {
            assert!(!req.uid.is_empty(), "an accepted review has a uid");
            // What the webhook answers with: the uid copied, allowed.
            let response = kube::core::admission::AdmissionResponse::from(&req);
            assert_eq!(response.uid, req.uid);
            assert!(response.allowed);
            let answer =
                serde_json::to_vec(&response.into_review()).expect("an answer always serialises");
            assert!(!answer.is_empty());
        }
        Err(error) => check_message(&error),
    }
});

fn check_message(error: &ReviewError) {
    let message = error.to_string();
    assert!(!message.contains('\n'), "message is one line: {message:?}");
    assert!(!error.reason().is_empty());
    if !skipped("message_bound") {
        assert!(
            message.len() <= MESSAGE_LIMIT,
            "a {} byte message quotes the input back: {}...",
            message.len(),
            message.chars().take(160).collect::<String>()
        );
    }
}
