//! `herald worker`: signals in, exit code out. The process itself is
//! assembled by [`App`]; this module only owns what belongs to a process
//! rather than to a worker (signal handling, the exit code).

use std::process::ExitCode;

use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::config::{Settings, WorkerArgs};

/// Runs a worker until SIGTERM or SIGINT, drains, and exits 0. A second
/// signal exits at once (code 130): the operator asked twice, and whatever
/// is still claimed comes back when its lease expires.
pub async fn run(settings: Settings, args: &WorkerArgs) -> anyhow::Result<ExitCode> {
    let config = args.validate()?;
    let app = App::build(settings, config).await?;
    let shutdown = CancellationToken::new();
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let trigger = shutdown.clone();
    tokio::spawn(async move {
        let first = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!(
            signal = first,
            "shutting down (send it again to exit at once)"
        );
        trigger.cancel();
        let second = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::warn!(signal = second, "second signal: exiting now");
        std::process::exit(130);
    });
    let totals = app.run(shutdown).await?;
    tracing::info!(sent = totals.sent, claimed = totals.claimed, "exiting");
    Ok(ExitCode::SUCCESS)
}
