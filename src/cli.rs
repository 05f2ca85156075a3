//! The `herald` commands. `main.rs` parses arguments and calls [`main`];
//! everything a command does lives here or deeper in the library, so the
//! tests drive the same code paths the binary does.
//!
//! Exit codes: 0 success, 1 the command ran but something failed (rejected
//! enqueue lines, a runtime error), 2 invalid configuration or usage.

use std::io::{BufRead, Write};
use std::process::ExitCode;

use anyhow::Context;
use chrono::Utc;

use crate::config::{Cli, Command, ConfigError, EnqueueArgs, Settings};
use crate::notification::{Limits, NewNotification};
use crate::store::enqueue::{enqueue_batch, Inserted, INSERT_CHUNK};
use crate::store::{self, Store};

/// Parses the process arguments; value errors also name the environment
/// variable, since most deployments set `HERALD_*` rather than flags.
pub fn parse_args() -> Cli {
    use clap::{CommandFactory, FromArgMatches};
    let mut cmd = Cli::command();
    let matches = cmd.try_get_matches_from_mut(std::env::args_os());
    let result = matches.and_then(|m| Cli::from_arg_matches(&m));
    match result {
        Ok(cli) => cli,
        Err(err) => {
            if let Some(clap::error::ContextValue::String(arg)) =
                err.get(clap::error::ContextKind::InvalidArg)
            {
                if let Some(env) = env_of(&cmd, arg) {
                    eprintln!("herald: setting {env} / {arg}");
                }
            }
            err.exit()
        }
    }
}

fn env_of(cmd: &clap::Command, shown: &str) -> Option<String> {
    let long = shown.split_whitespace().next()?.trim_start_matches("--");
    let found = cmd
        .get_arguments()
        .find(|a| a.get_long() == Some(long))
        .and_then(|a| a.get_env().map(|e| e.to_string_lossy().into_owned()));
    found.or_else(|| cmd.get_subcommands().find_map(|sub| env_of(sub, shown)))
}

/// Runs a parsed command on a fresh tokio runtime and maps the outcome to an
/// exit code.
pub fn main(cli: Cli) -> ExitCode {
    let settings = match cli.global.validate() {
        Ok(s) => s,
        Err(e) => return config_error(&e),
    };
    crate::telemetry::init(&settings.log, settings.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("herald: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(cli.command, settings));
    match result {
        Ok(code) => code,
        Err(err) => {
            if let Some(cfg) = err.downcast_ref::<ConfigError>() {
                return config_error(cfg);
            }
            eprintln!("herald: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn config_error(e: &ConfigError) -> ExitCode {
    eprintln!("herald: {e}");
    ExitCode::from(2)
}

async fn run(command: Command, settings: Settings) -> anyhow::Result<ExitCode> {
    match command {
        Command::Migrate => {
            let report = store::migrate::migrate(&settings.database_url).await?;
            println!("{report}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Enqueue(args) => enqueue(&settings, &args).await,
        Command::Status { json } => {
            let store = Store::connect(&settings.database_url, 2).await?;
            let report = store::status::report(store.pool())
                .await
                .context("reading status (has `herald migrate` been run?)")?;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                for (status, n) in &report.counts {
                    println!("{status:<10} {n}");
                }
                println!("due backlog {}", report.due_backlog);
                match report.oldest_due_lag_s {
                    Some(lag) => println!("oldest due lag {lag:.3}s"),
                    None => println!("oldest due lag -"),
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Worker(args) => {
            let config = args.validate()?;
            crate::worker::run_process(settings, config, *args).await
        }
        Command::Cleanup(args) => crate::worker::cleanup_once(settings, args).await,
        Command::Bench(args) => crate::worker::bench(settings, args).await,
    }
}

/// Summary of an enqueue run.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct EnqueueSummary {
    pub inserted: usize,
    pub duplicates: usize,
    pub rejected: usize,
}

/// Reads JSON lines, inserts the valid ones in batches, and reports each bad
/// line on `errors` as `line N: <field>: <reason>`. A bad line never stops
/// the good ones around it.
pub async fn enqueue_lines(
    store: &Store,
    input: impl BufRead,
    limits: &Limits,
    errors: &mut impl Write,
) -> anyhow::Result<EnqueueSummary> {
    let mut summary = EnqueueSummary::default();
    let mut pending: Vec<(usize, NewNotification)> = Vec::with_capacity(INSERT_CHUNK);
    for (index, line) in input.lines().enumerate() {
        let number = index + 1;
        let line = match line {
            Ok(l) => l,
            Err(e) => {
                // Invalid UTF-8 on one line; keep reading the rest.
                writeln!(errors, "line {number}: (line): cannot read: {e}")?;
                summary.rejected += 1;
                continue;
            }
        };
        if line.trim().is_empty() {
            continue;
        }
        match NewNotification::from_json_line(&line, limits, Utc::now()) {
            Ok(n) => pending.push((number, n)),
            Err(e) => {
                writeln!(errors, "line {number}: {e}")?;
                summary.rejected += 1;
            }
        }
        if pending.len() >= INSERT_CHUNK {
            flush(store, &mut pending, &mut summary, errors).await?;
        }
    }
    flush(store, &mut pending, &mut summary, errors).await?;
    Ok(summary)
}

async fn flush(
    store: &Store,
    pending: &mut Vec<(usize, NewNotification)>,
    summary: &mut EnqueueSummary,
    errors: &mut impl Write,
) -> anyhow::Result<()> {
    if pending.is_empty() {
        return Ok(());
    }
    let items: Vec<NewNotification> = pending.iter().map(|(_, n)| n.clone()).collect();
    let mut conn = store
        .pool()
        .acquire()
        .await
        .context("connecting to MySQL")?;
    let results = enqueue_batch(&mut conn, &items)
        .await
        .context("inserting notifications (has `herald migrate` been run?)")?;
    for ((number, n), result) in pending.iter().zip(results) {
        match result {
            Inserted::New => summary.inserted += 1,
            Inserted::Duplicate { existing_id } => {
                summary.duplicates += 1;
                let key = n.dedupe_key.as_deref().unwrap_or_default();
                match existing_id {
                    Some(id) => writeln!(
                        errors,
                        "line {number}: duplicate dedupe_key {key:?} (already enqueued as id {id})"
                    )?,
                    None => writeln!(
                        errors,
                        "line {number}: duplicate dedupe_key {key:?} (repeated in this input)"
                    )?,
                }
            }
        }
    }
    pending.clear();
    Ok(())
}

async fn enqueue(settings: &Settings, args: &EnqueueArgs) -> anyhow::Result<ExitCode> {
    if args.max_payload_bytes == 0 {
        return Err(ConfigError::new(
            "HERALD_MAX_PAYLOAD_BYTES",
            "--max-payload-bytes",
            "must be positive",
        )
        .into());
    }
    let limits = Limits {
        max_payload_bytes: args.max_payload_bytes,
        default_region: settings.regions[0].clone(),
    };
    let store = Store::connect(&settings.database_url, 2).await?;
    let mut stderr = std::io::stderr().lock();
    let summary = match &args.file {
        Some(path) => {
            let file =
                std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
            enqueue_lines(&store, std::io::BufReader::new(file), &limits, &mut stderr).await?
        }
        None => enqueue_lines(&store, std::io::stdin().lock(), &limits, &mut stderr).await?,
    };
    writeln!(
        stderr,
        "enqueued {}, duplicates {}, rejected {}",
        summary.inserted, summary.duplicates, summary.rejected
    )?;
    Ok(if summary.rejected > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
