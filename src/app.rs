//! The application as the binary runs it, built the same way by the tests:
//! connections, transports and metrics from validated settings, then the
//! worker and its companion tasks (cleanup, stats, HTTP) until shutdown.

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::config::{transport_config_error, Settings, WorkerConfig};
use crate::lock::{LockConfig, Redlock};
use crate::metrics::Metrics;
use crate::store::Store;
use crate::transport::Transports;
use crate::worker::{Deps, Totals, Worker};

/// Everything a worker process runs with.
#[derive(Debug, Clone)]
pub struct App {
    pub settings: Settings,
    pub config: WorkerConfig,
    pub deps: Deps,
}

/// Lock settings shared by every part of Herald that locks.
pub fn lock_config(settings: &Settings) -> LockConfig {
    LockConfig {
        masters: settings.redis_urls.clone(),
        key_prefix: settings.key_prefix.clone(),
        master_timeout: settings.lock_master_timeout,
        ..LockConfig::default()
    }
}

/// Connects the lock layer. Masters may be down at start: connections are
/// made lazily and the breaker copes with dead ones.
pub async fn redlock(settings: &Settings) -> anyhow::Result<Redlock> {
    Redlock::new(lock_config(settings))
        .await
        .context("setting up the Redis lock masters (HERALD_REDIS_URLS)")
}

impl App {
    pub async fn build(settings: Settings, config: WorkerConfig) -> anyhow::Result<App> {
        let transports =
            Transports::from_settings(&config.transport).map_err(transport_config_error)?;
        let store = Store::connect(&settings.database_url, settings.db_pool_size).await?;
        crate::store::migrate::check_applied(store.pool()).await?;
        let redlock = redlock(&settings).await?;
        // Dial the masters before the first poll: otherwise the first
        // batched locks pay for connecting and, on a busy machine, can time
        // out and open a master's breaker.
        let answered = redlock.warm_up(std::time::Duration::from_secs(3)).await;
        if answered < redlock.quorum() {
            tracing::warn!(
                answered,
                masters = redlock.masters(),
                "fewer Redis masters than a quorum answered at start-up; polls will fail until they do"
            );
        }
        // One server under two names would vote twice: a settings error.
        if let Err(e) = redlock
            .check_distinct(std::time::Duration::from_secs(1))
            .await
        {
            return Err(crate::config::ConfigError::new(
                "HERALD_REDIS_URLS",
                "--redis-urls",
                e.to_string(),
            )
            .into());
        }
        let metrics = Metrics::with_redlock(&redlock);
        Ok(App {
            deps: Deps {
                store,
                redlock,
                transports,
                metrics,
            },
            settings,
            config,
        })
    }

    /// Runs until `shutdown` is cancelled and everything has drained.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<Totals> {
        for (channel, kind) in self.deps.transports.describe() {
            tracing::info!(channel, kind, "channel configured");
        }
        if self.deps.transports.for_channel("webhook").is_none() {
            tracing::warn!(
                "HERALD_WEBHOOK_URL is not set: rows on channel \"webhook\" will be marked failed with that reason"
            );
        }
        if self.deps.transports.has_unsigned_webhooks() {
            tracing::warn!("HERALD_WEBHOOK_SECRET is not set: webhooks go out unsigned");
        }
        tracing::info!(
            worker_id = %self.config.worker_id,
            regions = ?self.settings.regions,
            concurrency = self.config.concurrency,
            batch_size = self.config.batch_size,
            lock_scope = ?self.config.lock_scope,
            masters = self.deps.redlock.masters(),
            "worker starting"
        );
        let worker = Worker::new(
            self.deps.clone(),
            self.config.clone(),
            self.settings.regions.clone(),
        );
        let handle = worker.handle();
        let companions = crate::companions::spawn(&self, handle, shutdown.clone())
            .await
            .context("starting the HTTP server, cleanup and stats tasks")?;
        let totals = worker.run(shutdown).await;
        companions.stop().await;
        self.deps.store.close().await;
        Ok(totals)
    }
}
