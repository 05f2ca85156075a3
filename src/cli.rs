//! The `herald` commands. `main.rs` parses arguments and calls [`main`];
//! everything a command does lives here or deeper in the library, so the
//! tests drive the same code paths the binary does.
//!
//! Exit codes: 0 success, 1 the command ran but something failed (rejected
//! enqueue lines, a runtime error), 2 invalid configuration or usage.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;

use crate::config::{Cli, Command, ConfigError, EnqueueArgs, Settings};
use crate::intake::enqueue_lines;
use crate::notification::Limits;
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
                if report.invalid_due_at > 0 {
                    println!(
                        "invalid due_at {} (zero or invalid dates, counted as due)",
                        report.invalid_due_at
                    );
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
            let input = std::io::BufReader::new(file);
            enqueue_lines(&store, input, &limits, args.skip_lines, &mut stderr).await?
        }
        None => {
            let input = std::io::stdin().lock();
            enqueue_lines(&store, input, &limits, args.skip_lines, &mut stderr).await?
        }
    };
    if let Some(why) = &summary.stopped {
        writeln!(stderr, "herald: error: {why}")?;
        writeln!(stderr, "{}", crate::intake::resume_hint(&summary))?;
    }
    writeln!(
        stderr,
        "enqueued {}, duplicates {}, rejected {}",
        summary.inserted, summary.duplicates, summary.rejected
    )?;
    Ok(if summary.rejected > 0 || summary.stopped.is_some() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
