//! Misspelled settings: a `HERALD_*` variable no flag reads is otherwise
//! ignored without a word (`HERALD_CONCURENCY=4` runs with the default), so
//! each gets one warning at start naming the closest known variable.

/// Variables the test suite reads (`HERALD_TEST_DATABASE_URL`,
/// `HERALD_FAULTS`, …): a developer may well export them in the shell that
/// also runs `herald`.
const TEST_ONLY: &[&str] = &["HERALD_TEST_", "HERALD_FAULTS"];

/// Every `HERALD_*` variable some flag of `cmd` (or its subcommands) reads.
pub fn known(cmd: &clap::Command) -> Vec<String> {
    let mut out: Vec<String> = cmd
        .get_arguments()
        .filter_map(|a| a.get_env())
        .map(|e| e.to_string_lossy().into_owned())
        .collect();
    for sub in cmd.get_subcommands() {
        out.extend(known(sub));
    }
    out.sort();
    out.dedup();
    out
}

/// `(unknown, closest known)` for each `HERALD_*` name in `present` that no
/// flag reads.
pub fn unknown(
    present: impl IntoIterator<Item = String>,
    known: &[String],
) -> Vec<(String, Option<&str>)> {
    let mut out: Vec<(String, Option<&str>)> = present
        .into_iter()
        .filter(|name| name.starts_with("HERALD_") && !known.contains(name))
        .filter(|name| !TEST_ONLY.iter().any(|p| name.starts_with(p)))
        .map(|name| {
            let closest = known
                .iter()
                .map(|k| (distance(&name, k), k.as_str()))
                .min()
                // Far-off names are not typos of a known one.
                .filter(|(d, _)| *d <= 3.max(name.len() / 4))
                .map(|(_, k)| k);
            (name, closest)
        })
        .collect();
    out.sort();
    out
}

/// Logs one warning per unknown variable of the process environment.
pub fn warn_unknown(cmd: &clap::Command) {
    let known = known(cmd);
    let present = std::env::vars_os().filter_map(|(k, _)| k.into_string().ok());
    for (name, closest) in unknown(present, &known) {
        match closest {
            Some(k) => {
                tracing::warn!("{name} is not a Herald setting and is ignored; did you mean {k}?")
            }
            None => tracing::warn!("{name} is not a Herald setting and is ignored"),
        }
    }
}

/// Levenshtein distance over bytes (the names are ASCII).
fn distance(a: &str, b: &str) -> usize {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, &ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, &cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closest_known_name() {
        let known = vec![
            "HERALD_CONCURRENCY".to_owned(),
            "HERALD_DATABASE_URL".to_owned(),
        ];
        let got = unknown(
            [
                "HERALD_CONCURENCY".to_owned(),
                "HERALD_DATABASE_URL".to_owned(),
                "HERALD_SOMETHING_ELSE_ENTIRELY".to_owned(),
                "HERALD_TEST_DATABASE_URL".to_owned(),
                "PATH".to_owned(),
            ],
            &known,
        );
        assert_eq!(
            got,
            vec![
                ("HERALD_CONCURENCY".to_owned(), Some("HERALD_CONCURRENCY")),
                ("HERALD_SOMETHING_ELSE_ENTIRELY".to_owned(), None),
            ]
        );
    }
}
