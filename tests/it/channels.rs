//! The channel config file (`HERALD_CONFIG`): the example parses, bad files
//! stop `herald worker` with exit 2 naming the file, the channel and the key
//! (never a secret).

use std::collections::HashMap;
use std::time::Duration;

use herald::config::channels_file::{self, ChannelsFile};
use herald::policy::{BreakerPolicy, RateLimit};
use herald::transport::{ChannelKind, TransportSettings};

use crate::helpers::*;

const SECRET_A: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn example_path() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/herald.toml")
}

fn parse(text: &str) -> Result<ChannelsFile, String> {
    channels_file::parse("herald.toml", text).map_err(|e| e.to_string())
}

#[test]
fn the_example_file_parses_and_merges_with_the_environment() {
    let file = channels_file::load(&example_path()).unwrap();
    let names: Vec<&str> = file.channels.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["audit", "dev", "internal", "sms"]);
    let mut transport = TransportSettings::default();
    let policies = file.apply(&mut transport).unwrap();

    let sms = policies.get("sms");
    assert_eq!(sms.send_timeout, Some(Duration::from_secs(3)));
    assert_eq!(sms.retry.as_ref().unwrap().max_attempts(), 21);
    assert_eq!(
        sms.rate_limit,
        Some(RateLimit {
            per_second: 100.0,
            burst: 20
        })
    );
    assert_eq!(sms.max_in_flight, Some(20));
    assert_eq!(sms.breaker.unwrap().failures, 5);
    // [defaults] fills what a channel leaves out, and covers other channels.
    let internal = policies.get("internal");
    assert_eq!(internal.send_timeout, Some(Duration::from_secs(5)));
    assert_eq!(internal.rate_limit.unwrap().per_second, 10.0);
    assert_eq!(internal.rate_limit.unwrap().burst, 10);
    assert_eq!(internal.breaker.unwrap().failures, 10);
    assert_eq!(policies.get("audit").breaker, Some(BreakerPolicy::OFF));
    assert_eq!(
        policies.get("webhook").retry.as_ref().unwrap().to_string(),
        "30s,2m,10m,30m,2h,8h,16h"
    );
    assert_eq!(transport.send_timeout, Duration::from_secs(5));

    let kinds: HashMap<&str, &ChannelKind> = transport
        .channels
        .iter()
        .map(|c| (c.name.as_str(), &c.kind))
        .collect();
    assert!(matches!(
        kinds["sms"],
        ChannelKind::Webhook { url: Some(_) }
    ));
    assert!(matches!(kinds["dev"], ChannelKind::Log));
    let sms_opts = &transport.channel_options["sms"];
    assert_eq!(sms_opts.secrets.as_ref().unwrap().len(), 2);
    assert_eq!(sms_opts.send_timeout, Some(Duration::from_secs(3)));
    assert!(transport.channel_options["internal"].secrets.is_none());
    // Neither the parsed file nor the settings show a secret.
    assert!(!format!("{file:?}{transport:?}").contains("MfKQ9r8"));
}

#[test]
fn file_errors_name_the_file_the_channel_and_the_key() {
    let cases: &[(&str, &str)] = &[
        (
            "[channels.sms]\ntransport = \"webhook\"\nurl = \"http://h/x\"\nrate_limit = \"100/x\"\n",
            r#"herald.toml: channels.sms.rate_limit: "100/x": unknown unit (expected /s, /min, /h)"#,
        ),
        (
            "[channels.sms]\ntransport = \"webhook\"\nurl = \"http://h/x\"\nrate_limt = \"100/s\"\n",
            "herald.toml: channels.sms.rate_limt: unknown key (expected one of transport, url",
        ),
        ("[chanels.sms]\ntransport = \"log\"\n", "herald.toml: chanels: unknown key"),
        ("[defaults]\nurl = \"http://h/x\"\n", "herald.toml: defaults.url: unknown key"),
        (
            "[channels.sms]\ntransport = \"pigeon\"\n",
            r#"herald.toml: channels.sms.transport: unknown transport "pigeon" (expected webhook, log, file)"#,
        ),
        ("[channels.sms]\nurl = \"http://h/x\"\n", "herald.toml: channels.sms.transport: missing"),
        (
            "[channels.sms]\ntransport = \"log\"\nsend_timeout = \"3 parsecs\"\n",
            "herald.toml: channels.sms.send_timeout: \"3 parsecs\" is not a duration",
        ),
        (
            "[channels.sms]\ntransport = \"log\"\nretry_schedule = \"10s,2x\"\n",
            "herald.toml: channels.sms.retry_schedule: element 2 (\"2x\")",
        ),
        (
            "[channels.sms]\ntransport = \"log\"\nmax_in_flight = 0\n",
            "herald.toml: channels.sms.max_in_flight: 0 is out of range 1..=10000",
        ),
        (
            "[channels.sms]\ntransport = \"log\"\nmax_in_flight = \"many\"\n",
            "herald.toml: channels.sms.max_in_flight: invalid type: string \"many\"",
        ),
        (
            "[channels.sms]\ntransport = \"log\"\nbreaker = { failure = 5, cool_down = \"30s\" }\n",
            "herald.toml: channels.sms.breaker.failure: unknown key",
        ),
        (
            "[channels.sms]\ntransport = \"log\"\nbreaker = \"on\"\n",
            "herald.toml: channels.sms.breaker: \"on\": expected \"off\"",
        ),
        (
            "[channels.sms]\ntransport = \"log\"\nurl = \"http://h/x\"\n",
            "herald.toml: channels.sms.url: only webhook channels take this key",
        ),
        (
            "[channels.\"s m s\"]\ntransport = \"log\"\n",
            "herald.toml: channels.s m s: the channel name contains ' '",
        ),
        (
            "[channels.sms]\ntransport = \"webhook\"\nurl = \"ftp://h/x\"\n",
            "herald.toml: channels.sms.url: URL scheme must be http or https",
        ),
        (
            "[channels.sms]\ntransport = \"log\"\n\n[channels.sms\n",
            "herald.toml: line 4, column",
        ),
    ];
    for (text, want) in cases {
        let e = parse(text).expect_err(text);
        assert!(e.contains(want), "{text}\nwanted: {want}\ngot:    {e}");
        assert!(e.contains("HERALD_CONFIG"), "{e}");
    }
}

#[test]
fn file_errors_never_show_a_secret() {
    for (text, want) in [
        (
            format!("[channels.sms]\ntransport = \"webhook\"\nurl = \"http://h/x\"\nsecrets = \"{SECRET_A}\"\n"),
            "herald.toml: channels.sms.secrets: must be a list of strings",
        ),
        (
            format!("[channels.sms]\ntransport = \"webhook\"\nurl = \"http://h/x\"\nsecrets = [\"{SECRET_A}\", 7]\n"),
            "herald.toml: channels.sms.secrets",
        ),
        (
            "[channels.sms]\ntransport = \"webhook\"\nurl = \"http://h/x\"\nsecrets = [\"whsec_S3cr3t!!\"]\n".to_owned(),
            "herald.toml: channels.sms.secrets[1]: the part after \"whsec_\" is not valid base64",
        ),
        (
            format!("[channels.sms]\ntransport = \"log\"\nsecrets = [\"{SECRET_A}\"]\n"),
            "herald.toml: channels.sms.secrets: only webhook channels take this key",
        ),
        (
            "[channels.sms]\ntransport = \"webhook\"\nurl = \"http://u:hunter2@/x\"\n".to_owned(),
            "herald.toml: channels.sms.url:",
        ),
        (
            format!("[channels.sms]\nsecrets = [\"{SECRET_A}\"]\ntransport = \"webhook\"\nurl = \"http://h/x\" x\n"),
            "herald.toml: line 4",
        ),
    ] {
        let e = parse(&text).expect_err(&text);
        assert!(e.contains(want), "{text}\nwanted: {want}\ngot:    {e}");
        for secret in ["MfKQ9r8", "S3cr3t", "hunter2"] {
            assert!(!e.contains(secret), "{secret} shown in: {e}");
        }
    }
}

/// Runs `herald worker` with these variables; it must stop before touching
/// a database (settings are checked first). Returns (exit code, stderr).
fn worker_start(envs: &[(&str, String)]) -> (Option<i32>, String) {
    let mut cmd = herald(None);
    cmd.arg("worker").env("HERALD_HTTP_ADDR", "");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (out.status.code(), text(&out.stderr))
}

#[test]
fn a_bad_file_stops_the_worker_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("herald.toml");
    let shown = file.display().to_string();
    // (file content, extra variables, what stderr must say)
    type Case = (String, Vec<(&'static str, String)>, Vec<String>);
    let cases: Vec<Case> = vec![
        (
            format!("[channels.sms]\ntransport = \"webhook\"\nurl = \"http://127.0.0.1:9/x\"\nsecrets = [\"{SECRET_A}\"]\nrate_limit = \"100/x\"\n"),
            vec![],
            vec![format!("{shown}: channels.sms.rate_limit: \"100/x\": unknown unit")],
        ),
        (
            format!("[channels.sms]\ntransport = \"webhook\"\nsecrets = [\"{SECRET_A}\"]\nurl = \"http://127.0.0.1:9/x\"\nmax_inflight = 3\n"),
            vec![],
            vec![format!("{shown}: channels.sms.max_inflight: unknown key")],
        ),
        (
            "[channels.sms]\ntransport = \"carrier-pigeon\"\n".into(),
            vec![],
            vec![format!("{shown}: channels.sms.transport: unknown transport \"carrier-pigeon\"")],
        ),
        (
            "[channels.sms]\ntransport = \"log\"\n".into(),
            vec![("HERALD_CHANNELS", "sms=log".to_owned())],
            vec![format!("{shown}: channels.sms: also defined in HERALD_CHANNELS")],
        ),
        (
            "[channels.sms]\ntransport = \"webhook\"\n".into(),
            vec![],
            vec![format!("{shown}: channels.sms.url: missing, and HERALD_WEBHOOK_URL")],
        ),
        (
            "[channels.sms]\ntransport = \"log\"\nsend_timeout = \"20s\"\n".into(),
            vec![("HERALD_LOCK_TTL_MS", "30000".to_owned())],
            vec![format!("{shown}: channels.sms.send_timeout: 20s is too long for HERALD_LOCK_TTL_MS (30000 ms)")],
        ),
    ];
    for (content, extra, wants) in cases {
        std::fs::write(&file, &content).unwrap();
        let mut envs = vec![("HERALD_CONFIG", shown.clone())];
        envs.extend(extra);
        let (code, err) = worker_start(&envs);
        assert_eq!(code, Some(2), "{content}\n{err}");
        for want in wants {
            assert!(err.contains(&want), "{content}\nwanted: {want}\ngot: {err}");
        }
        assert!(err.contains("HERALD_CONFIG (--config)"), "{err}");
        assert!(!err.contains("MfKQ9r8"), "secret shown: {err}");
    }
    let missing = dir.path().join("nope.toml");
    let (code, err) = worker_start(&[("HERALD_CONFIG", missing.display().to_string())]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains(&format!("{}: cannot read the file", missing.display())),
        "{err}"
    );
}
