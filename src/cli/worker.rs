//! `herald worker`: signals in, exit code out. The process itself is
//! assembled by [`App`]; this module only owns what belongs to a process
//! rather than to a worker (signal handling, the exit code).

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::config::{Settings, WorkerArgs};
use crate::worker::WorkerHandle;

/// How long a second signal waits for the claims to be handed back before
/// exiting anyway.
const ABORT_WAIT: Duration = Duration::from_secs(2);

/// Runs a worker until SIGTERM or SIGINT, drains, and exits 0. A second
/// signal cuts the drain short (code 130): the operator asked twice, but
/// rows left `sending` would wait for their lease to end, so in-flight
/// sends are cut off and the claims handed back first, within
/// `ABORT_WAIT`.
pub async fn run(settings: Settings, args: &WorkerArgs) -> anyhow::Result<ExitCode> {
    let config = args.validate()?;
    let app = App::build(settings, config).await?;
    let shutdown = CancellationToken::new();
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let trigger = shutdown.clone();
    let (handle_tx, handle_rx) = tokio::sync::oneshot::channel::<WorkerHandle>();
    let aborted = Arc::new(AtomicBool::new(false));
    let aborting = aborted.clone();
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
        tracing::warn!(
            signal = second,
            "second signal: cutting sends off, handing claims back, exiting"
        );
        aborting.store(true, Ordering::SeqCst);
        if let Ok(handle) = handle_rx.await {
            if tokio::time::timeout(ABORT_WAIT, handle.abort_now())
                .await
                .is_err()
            {
                tracing::warn!(
                    in_flight = handle.in_flight(),
                    "claims not all handed back in time; they return when their lease expires"
                );
            }
        }
        std::process::exit(130);
    });
    let totals = app
        .run_with(shutdown, move |h| {
            handle_tx.send(h).ok();
        })
        .await?;
    tracing::info!(
        sent = totals.outcomes[crate::outcome::Outcome::Sent],
        claimed = totals.claimed,
        "exiting"
    );
    // The hand-back after a second signal can finish the run before the
    // signal task gets to exit: the exit code still says "cut short".
    if aborted.load(Ordering::SeqCst) {
        return Ok(ExitCode::from(130));
    }
    Ok(ExitCode::SUCCESS)
}
