//! One line per error, each cause once.
//!
//! `{:#}` prints an error and every source below it, but many errors
//! already repeat their source in their own message (sqlx's `Io` says
//! "error communicating with database: Connection refused (os error 111)"
//! and then yields that same io error as its source), so the cause came out
//! twice. Logs and the CLI print errors through [`chain`], which skips a
//! source whose text the line already holds.

use std::error::Error;

/// `err` and its sources joined with `": "`, leaving out any source whose
/// text is already part of the line.
pub fn chain(err: &anyhow::Error) -> String {
    join(err.chain())
}

fn join<'a>(causes: impl Iterator<Item = &'a (dyn Error + 'static)>) -> String {
    let mut line = String::new();
    for cause in causes {
        let text = cause.to_string();
        if text.is_empty() || line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

#[cfg(test)]
mod tests {
    use anyhow::Context;

    #[test]
    fn a_source_repeated_in_its_parent_is_printed_once() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused (os 111)");
        let sqlx_like = sqlx::Error::Io(io);
        let err = Err::<(), _>(sqlx_like)
            .context("reading status")
            .unwrap_err();
        let line = super::chain(&err);
        assert_eq!(line.matches("refused (os 111)").count(), 1, "{line}");
        assert!(line.starts_with("reading status: "), "{line}");
        assert_eq!(format!("{err:#}").matches("refused (os 111)").count(), 2);
    }
}
