//! The `herald` command line: `main.rs` calls [`parse_args`] and [`main`];
//! each command is one thin function in its own module that validates its
//! settings and calls into the library (the process itself is assembled by
//! [`crate::app`]), so the tests drive the same code paths the binary does.
//!
//! * [`migrate`], [`enqueue`], [`status`], [`worker`], [`cleanup`],
//!   [`demo`], [`bench`](mod@bench) — one module per command;
//! * [`admin`](mod@admin) — `herald admin`: the admin API and console alone;
//! * [`ops`] — `show`, `list`, `retry`, `cancel`: what operators do to rows;
//! * [`env`](mod@env) — the warning about `HERALD_*` variables no flag reads.
//!
//! Exit codes: 0 success, 1 the command ran but something failed (rejected
//! enqueue lines, a runtime error), 2 invalid configuration or usage.

pub mod admin;
pub mod bench;
pub mod cleanup;
pub mod demo;
pub mod enqueue;
pub mod env;
pub mod migrate;
pub mod ops;
pub mod status;
pub mod worker;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::bench::BenchArgs;
use crate::cleanup::config::CleanupCmdArgs;
use crate::config::ops::{CancelArgs, ChangeArgs, ListArgs, ShowArgs};
use crate::config::{ConfigError, EnqueueArgs, GlobalArgs, Settings, WorkerArgs};

#[derive(Debug, Parser)]
#[command(
    name = "herald",
    version,
    about = "Sends scheduled notifications from a MySQL table; run as many workers as you like."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create the database if missing and apply the migrations (idempotent).
    Migrate,
    /// Run a worker: poll, lock, claim, send, finish; plus cleanup, stats and HTTP.
    Worker(Box<WorkerArgs>),
    /// Insert notifications from JSON lines (stdin or --file).
    Enqueue(EnqueueArgs),
    /// Counts by status, due backlog and the oldest due lag.
    Status {
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Run one cleanup pass now and exit (operators).
    Cleanup(CleanupCmdArgs),
    /// Benchmarks: a summary per run, or one JSON line per run with --json.
    Bench(BenchArgs),
    /// Serve the admin API (/api/v1) and console (/console) without a worker.
    Admin(crate::config::admin::AdminArgs),
    /// One notification and its attempt history.
    Show(ShowArgs),
    /// Notifications matching filters, a page at a time.
    List(ListArgs),
    /// Make failed, expired, cancelled or backing-off notifications due now, with fresh attempts.
    Retry(ChangeArgs),
    /// Cancel pending notifications; ask workers to cancel those being sent, and report each outcome.
    Cancel(CancelArgs),
    /// See Herald work end to end in under 30 s: private servers if none answer, three workers, one killed.
    Demo(demo::DemoArgs),
}

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
    {
        use clap::CommandFactory;
        env::warn_unknown(&Cli::command());
    }
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
            eprintln!("herald: error: {}", crate::cause::chain(&err));
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
        Command::Migrate => migrate::run(&settings).await,
        Command::Enqueue(args) => enqueue::run(&settings, &args).await,
        Command::Status { json } => status::run(&settings, json).await,
        Command::Worker(args) => worker::run(settings, &args).await,
        Command::Cleanup(args) => cleanup::run(&settings, &args).await,
        Command::Bench(args) => bench::run(settings, args).await,
        Command::Admin(args) => admin::run(&settings, &args).await,
        Command::Show(args) => ops::show::run(&settings, &args).await,
        Command::List(args) => ops::list::run(&settings, &args).await,
        Command::Retry(args) => ops::retry::run(&settings, &args).await,
        Command::Cancel(args) => ops::cancel::run(&settings, &args).await,
        Command::Demo(args) => demo::run(&settings, &args).await,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
