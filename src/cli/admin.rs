//! `herald admin`: the admin API and console without a worker, for
//! operators who want them apart from the senders (or before any run).

use std::process::ExitCode;

use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

use crate::admin::{self, AdminState};
use crate::config::admin::AdminArgs;
use crate::config::{ConfigError, Settings};
use crate::store::Store;

pub async fn run(settings: &Settings, args: &AdminArgs) -> anyhow::Result<ExitCode> {
    let Some(config) = args.validate()? else {
        return Err(ConfigError::new(
            "HERALD_ADMIN_ADDR",
            "--admin-addr",
            "required by `herald admin` (e.g. 127.0.0.1:8080)",
        )
        .into());
    };
    let store = Store::connect(&settings.database_url, settings.db_pool_size).await?;
    crate::store::migrate::check_applied(store.pool()).await?;
    let listener = admin::bind(&config).await?;
    let mut state = AdminState::new(store.clone(), config, &settings.regions[0]);
    // The console shows the fleet's breakers; without Redis it says
    // "unknown" and everything else still works.
    match crate::app::redlock(settings).await {
        Ok(redlock) => state.breakers = Some(crate::gate::Gate::new(redlock)),
        Err(e) => tracing::warn!(error = %format!("{e:#}"), "breaker states unavailable"),
    }
    let stop = CancellationToken::new();
    let trigger = stop.clone();
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        trigger.cancel();
    });
    admin::serve(listener, state, stop).await;
    store.close().await;
    Ok(ExitCode::SUCCESS)
}
