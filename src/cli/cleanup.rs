//! `herald cleanup [--dry-run]`: one pass under the same lock and gate as
//! the workers' ticks, or with `--dry-run` a count of what a pass would
//! delete. Prints one line. (`--once` is accepted and ignored: one pass has
//! always been the only mode.)

use std::process::ExitCode;

use tokio_util::sync::CancellationToken;

use crate::cleanup::config::CleanupCmdArgs;
use crate::cleanup::{Cleanup, Outcome};
use crate::config::Settings;
use crate::metrics::Metrics;
use crate::store::Store;

pub async fn run(settings: &Settings, args: &CleanupCmdArgs) -> anyhow::Result<ExitCode> {
    let cfg = args.cleanup.validate()?;
    let store = Store::connect(&settings.database_url, 2).await?;
    // An empty database would otherwise fail with a bare error 1146.
    crate::store::migrate::check_applied(store.pool()).await?;
    if args.dry_run {
        let line = crate::cleanup::dry_run(&store, &cfg, &settings.regions).await;
        store.close().await;
        println!("{}", line?);
        return Ok(ExitCode::SUCCESS);
    }
    let redlock = crate::app::redlock(settings).await?;
    let regions = settings.regions.clone();
    let cleanup = Cleanup::new(store.clone(), redlock, Metrics::new(), cfg, regions);
    let shutdown = CancellationToken::new();
    let on_signal = shutdown.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            on_signal.cancel();
        }
    });
    let outcome = cleanup.tick(&shutdown).await;
    store.close().await;
    let outcome = outcome?;
    println!("{outcome}");
    Ok(match outcome {
        Outcome::Ran { .. } | Outcome::Skipped { .. } => ExitCode::SUCCESS,
        Outcome::LockHeld | Outcome::LockUnavailable(_) => ExitCode::FAILURE,
    })
}
