//! Tracing set-up: human text for terminals, JSON lines for log shippers.
//! Logs go to stderr so stdout stays free for command output (`status
//! --json`, `bench`, the `log` transport).
//!
//! A filter is checked for one easy mistake: `HERALD_LOG=hrald=debug` is
//! valid syntax, but names no target of Herald's own logs and sets no
//! default level, so every Herald line (errors included) would be hidden
//! and the worker would look dead. Such a filter gets the default level
//! `info` added and one warning saying so.

use tracing_subscriber::EnvFilter;

/// `HERALD_LOG_FORMAT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// The target prefix of every log line Herald itself writes.
const OWN_TARGET: &str = "herald";

/// Installs the global subscriber. A second call (tests building several
/// apps in one process) is a no-op.
pub fn init(filter: &str, format: LogFormat) {
    let (spec, warning) = effective_filter(filter);
    let filter = EnvFilter::try_new(&spec).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a terminal, never into log files or pipes.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(true);
    let installed = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    if let (Some(w), Ok(())) = (warning, installed) {
        tracing::warn!("{w}");
    }
}

/// The filter to install for `spec`, and the warning to log when it had to
/// be changed: a filter that reaches none of Herald's own logs gets the
/// default level `info` appended, so info-level output still appears.
pub fn effective_filter(spec: &str) -> (String, Option<String>) {
    if reaches_own_logs(spec) {
        return (spec.to_owned(), None);
    }
    let fixed = if spec.trim().is_empty() {
        "info".to_owned()
    } else {
        format!("{spec},info")
    };
    let warning = format!(
        "HERALD_LOG={spec:?} names no target of Herald's own logs (they start with \
         {OWN_TARGET:?}) and sets no default level, so it would hide every Herald log line; \
         using {fixed:?} instead"
    );
    (fixed, Some(warning))
}

/// Whether some directive of `spec` enables Herald's own targets: a bare
/// level (`debug`, the default for every target), or a target that is a
/// prefix of Herald's (`herald`, `herald::worker`; `herald=off` counts too,
/// as a deliberate choice).
fn reaches_own_logs(spec: &str) -> bool {
    spec.split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .any(|directive| {
            // `target[span{field=value}]=level`: the target ends at the
            // first `[` or `=`.
            let end = directive.find(['[', '=']).unwrap_or(directive.len());
            let target = &directive[..end];
            let is_level = !directive.contains('=')
                && target
                    .parse::<tracing_subscriber::filter::LevelFilter>()
                    .is_ok();
            is_level
                || target.is_empty()
                || target == OWN_TARGET
                || target.starts_with(&format!("{OWN_TARGET}::"))
        })
}

#[cfg(test)]
mod tests {
    use super::effective_filter;

    #[test]
    fn filters_reaching_herald_are_kept() {
        for spec in [
            "info",
            "debug",
            "herald=debug",
            "herald::worker=trace,sqlx=warn",
            "sqlx=warn,warn",
            "herald=off",
            "[poll]=debug",
            "herald",
        ] {
            assert_eq!(effective_filter(spec), (spec.to_owned(), None), "{spec}");
        }
    }

    #[test]
    fn filters_hiding_every_herald_line_get_info_added() {
        for (spec, fixed) in [
            ("hrald=debug", "hrald=debug,info"),
            ("sqlx=debug", "sqlx=debug,info"),
            ("heraldx=debug", "heraldx=debug,info"),
            ("", "info"),
        ] {
            let (got, warning) = effective_filter(spec);
            assert_eq!(got, fixed, "{spec}");
            let warning = warning.expect("a warning");
            assert!(warning.contains("HERALD_LOG"), "{warning}");
        }
    }
}
