//! Parsing `HERALD_CHANNELS` (format documented in the [module docs](super)).

use std::fmt;
use std::path::PathBuf;

use super::TransportConfigError;

/// One `name=kind[:arg]` entry of `HERALD_CHANNELS`.
#[derive(Clone, PartialEq, Eq)]
pub struct ChannelSpec {
    pub name: String,
    pub kind: ChannelKind,
}

/// Which transport a channel uses. A missing argument means "use the global
/// setting" (`HERALD_WEBHOOK_URL`, `HERALD_FILE_PATH`), checked when the
/// registry is built so the error can say which setting is missing.
#[derive(Clone, PartialEq, Eq)]
pub enum ChannelKind {
    Webhook { url: Option<url::Url> },
    Log,
    File { path: Option<PathBuf> },
}

impl ChannelKind {
    pub fn kind_name(&self) -> &'static str {
        match self {
            ChannelKind::Webhook { .. } => "webhook",
            ChannelKind::Log => "log",
            ChannelKind::File { .. } => "file",
        }
    }
}

// Debug is hand-written so a webhook URL's password never reaches logs.
impl fmt::Debug for ChannelKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChannelKind::Webhook { url } => f
                .debug_struct("Webhook")
                .field("url", &url.as_ref().map(crate::secret::redact_url))
                .finish(),
            ChannelKind::Log => f.write_str("Log"),
            ChannelKind::File { path } => f.debug_struct("File").field("path", path).finish(),
        }
    }
}

impl fmt::Debug for ChannelSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={:?}", self.name, self.kind)
    }
}

/// Parses `HERALD_CHANNELS`. Blank entries (a trailing comma, an empty value)
/// are skipped; entry numbers in errors count from 1 over the raw split so
/// they match what the operator sees.
pub fn parse_channels(s: &str) -> Result<Vec<ChannelSpec>, TransportConfigError> {
    // Computed over the whole value: a password holding a comma spreads
    // over two entries, and both halves must stay hidden.
    let secrets = crate::secret::secret_spans(s);
    let mut out: Vec<ChannelSpec> = Vec::new();
    let mut offset = 0;
    for (i, raw) in s.split(',').enumerate() {
        let start = offset + (raw.len() - raw.trim_start().len());
        offset += raw.len() + 1;
        let entry = raw.trim();
        if entry.is_empty() {
            continue;
        }
        let fail = |problem: String| TransportConfigError::Channels {
            entry: i + 1,
            text: crate::secret::mask(entry, start, &secrets),
            problem: hide_fragments(&problem, entry, start, &secrets),
        };
        let spec = parse_entry(entry).map_err(fail)?;
        if out.iter().any(|c| c.name == spec.name) {
            return Err(fail(format!("channel \"{}\" is defined twice", spec.name)));
        }
        out.push(spec);
    }
    Ok(out)
}

/// A problem may quote part of its entry (a name, a kind); any quoted part
/// that lies inside a secret span is replaced too.
fn hide_fragments(
    problem: &str,
    entry: &str,
    start: usize,
    secrets: &[std::ops::Range<usize>],
) -> String {
    let mut shown = problem.to_owned();
    for span in secrets {
        let from = span.start.max(start);
        let to = span.end.min(start + entry.len());
        if from < to {
            if let Some(fragment) = entry.get(from - start..to - start) {
                shown = shown.replace(fragment, "***");
            }
        }
    }
    shown
}

fn parse_entry(entry: &str) -> Result<ChannelSpec, String> {
    let (name, rest) = entry
        .split_once('=')
        .ok_or_else(|| "expected name=kind or name=kind:arg".to_owned())?;
    let name = name.trim();
    if name.is_empty() {
        return Err("the channel name is empty".into());
    }
    if let Some(c) = crate::name::first_bad_char(name) {
        return Err(format!(
            "channel name contains {c:?} (allowed: letters, digits, _ - .)"
        ));
    }
    let rest = rest.trim();
    let (kind, arg) = match rest.split_once(':') {
        Some((k, a)) => (k.trim(), Some(a.trim())),
        None => (rest, None),
    };
    let kind = match kind {
        "webhook" => ChannelKind::Webhook {
            url: arg.map(parse_webhook_url).transpose()?,
        },
        "log" => {
            if arg.is_some() {
                return Err("the log transport takes no argument".into());
            }
            ChannelKind::Log
        }
        "file" => ChannelKind::File {
            path: match arg {
                Some("") => return Err("the file path is empty".into()),
                Some(p) => Some(PathBuf::from(p)),
                None => None,
            },
        },
        other => {
            return Err(format!(
                "unknown transport \"{other}\" (expected webhook, log, file)"
            ))
        }
    };
    Ok(ChannelSpec {
        name: name.to_owned(),
        kind,
    })
}

/// Accepts only absolute http(s) URLs: anything else would fail on every
/// delivery, and failing at start-up is far easier to notice.
pub fn parse_webhook_url(s: &str) -> Result<url::Url, String> {
    let url = url::Url::parse(s).map_err(|e| format!("not a valid URL ({e})"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "URL scheme must be http or https, not \"{}\"",
            url.scheme()
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("the URL has no host".into());
    }
    Ok(url)
}
