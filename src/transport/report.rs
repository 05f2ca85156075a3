//! What one delivery attempt looked like from the transport's side: the
//! outcome, and what the receiver said (HTTP status, the start of its body)
//! and how long it took, for the attempt history.
//!
//! Kept apart from [`SendOutcome`] so that code deciding on retries matches
//! on the outcome alone, while the history gets the facts an operator asks
//! for ("what did the receiver say on attempt 2?").

use std::time::Duration;

use super::SendOutcome;

/// Most bytes of a response body kept for the history (the column is
/// `VARCHAR(1024)`; 1 KiB is enough to see which error page came back).
pub const BODY_SNIPPET_BYTES: usize = 1024;

/// One attempt as the transport saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptReport {
    pub outcome: SendOutcome,
    /// `None` when no HTTP answer came (timeout, connection error) or the
    /// transport does not speak HTTP.
    pub http_status: Option<u16>,
    /// The first <= [`BODY_SNIPPET_BYTES`] of the response body as lossy
    /// UTF-8 (see [`body_snippet`]); `None` when there was no body.
    pub response_body: Option<String>,
    /// From the start of the request to the outcome.
    pub duration: Duration,
}

impl AttemptReport {
    /// A report with only an outcome and a duration (transports that have
    /// no status or body to tell).
    pub fn new(outcome: SendOutcome, duration: Duration) -> Self {
        AttemptReport {
            outcome,
            http_status: None,
            response_body: None,
            duration,
        }
    }
}

/// The start of a body, as text that fits the history column: at most
/// [`BODY_SNIPPET_BYTES`] bytes of valid UTF-8. Invalid sequences become
/// U+FFFD, except one cut off at the end of `body` (the cap fell inside a
/// character), which is dropped; the result is then cut on a character
/// boundary, since replacement characters take more bytes than what they
/// replace. `None` for an empty body.
pub fn body_snippet(body: &[u8]) -> Option<String> {
    let mut body = &body[..body.len().min(BODY_SNIPPET_BYTES)];
    if body.is_empty() {
        return None;
    }
    // A multi-byte character the cap (or the end of what was read) cut in
    // two is not the receiver's fault: drop its start rather than show
    // a replacement character.
    if let Err(e) = std::str::from_utf8(body) {
        if e.error_len().is_none() {
            body = &body[..e.valid_up_to()];
        }
    }
    let text = String::from_utf8_lossy(body);
    let mut end = text.len().min(BODY_SNIPPET_BYTES);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Some(text[..end].to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snippets_are_capped_valid_utf8() {
        assert_eq!(body_snippet(b""), None);
        assert_eq!(body_snippet(b"down\n").as_deref(), Some("down\n"));
        let long = "é".repeat(700); // 1,400 bytes
        let s = body_snippet(long.as_bytes()).unwrap();
        // 1,024 bytes hold 512 two-byte characters exactly.
        assert_eq!(s.len(), 1024);
        assert_eq!(s.chars().count(), 512);
        // The cap falls inside a three-byte character: it is dropped.
        let mut odd = "a".to_owned();
        odd.push_str(&"€".repeat(400));
        let s = body_snippet(odd.as_bytes()).unwrap();
        assert!(s.len() <= 1024 && s.ends_with('€'), "{}", s.len());
        assert_eq!(s.len(), 1 + 341 * 3);
        // Invalid bytes become U+FFFD; the result still fits.
        let bad = vec![0xffu8; 2000];
        let s = body_snippet(&bad).unwrap();
        assert!(s.len() <= 1024);
        assert!(s.chars().all(|c| c == '\u{fffd}'));
    }
}
