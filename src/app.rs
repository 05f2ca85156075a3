//! The application as the binary runs it: the one place that assembles the
//! store, the lock, the transports and metrics from validated settings, and
//! then runs the worker and its companion tasks (cleanup, stats, HTTP) until
//! shutdown. Only the CLI (and benchmarks) sit above it.

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::config::worker::transport_config_error;
use crate::config::{Settings, WorkerConfig};
use crate::lock::Redlock;
use crate::metrics::Metrics;
use crate::services::Deps;
use crate::store::Store;
use crate::transport::Transports;
use crate::worker::{Totals, Worker, WorkerHandle};

/// Everything a worker process runs with.
#[derive(Debug, Clone)]
pub struct App {
    pub settings: Settings,
    pub config: WorkerConfig,
    pub deps: Deps,
}

/// Connects the lock layer. Masters may be down at start: connections are
/// made lazily and the breaker copes with dead ones.
pub async fn redlock(settings: &Settings) -> anyhow::Result<Redlock> {
    Redlock::new(settings.lock_config())
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
        self.run_with(shutdown, |_| {}).await
    }

    /// [`App::run`], handing the worker's handle to `on_start` first (the
    /// signal glue needs it to cut a drain short).
    pub async fn run_with(
        self,
        shutdown: CancellationToken,
        on_start: impl FnOnce(WorkerHandle),
    ) -> anyhow::Result<Totals> {
        // One line per channel with the policy it runs under (the values
        // in force, defaults resolved; never a secret, only their number).
        for (channel, kind) in self.deps.transports.describe() {
            let p = self.config.channel_policies.get(channel);
            let send_timeout = p.send_timeout.unwrap_or(self.config.send_timeout);
            let retry = p.retry.as_ref().unwrap_or(&self.config.retry.schedule);
            let rate_limit = p.rate_limit.map_or("none".to_owned(), |r| {
                format!("{}/s burst {}", r.per_second, r.burst)
            });
            let breaker = match p.breaker {
                None => "default".to_owned(),
                Some(b) if b.is_off() => "off".to_owned(),
                Some(b) => format!(
                    "{} failures, cool-down {}",
                    b.failures,
                    humantime::format_duration(b.cool_down)
                ),
            };
            tracing::info!(
                channel,
                kind,
                send_timeout = %humantime::format_duration(send_timeout),
                retry_schedule = %retry,
                rate_limit = %rate_limit,
                max_in_flight = %p.max_in_flight.map_or("none".to_owned(), |n| n.to_string()),
                breaker = %breaker,
                signing_secrets = self.deps.transports.signing_keys(channel),
                "channel configured"
            );
        }
        if self.deps.transports.for_channel("webhook").is_none() {
            tracing::warn!(
                "HERALD_WEBHOOK_URL is not set: rows on channel \"webhook\" will be marked failed with that reason"
            );
        }
        if self.deps.transports.has_unsigned_webhooks() {
            tracing::warn!("HERALD_WEBHOOK_SECRET is not set: webhooks go out unsigned");
        }
        let masters: Vec<String> = self
            .settings
            .redis_urls
            .iter()
            .map(|u| u.redacted())
            .collect();
        let channels: Vec<String> = self
            .deps
            .transports
            .describe()
            .into_iter()
            .map(|(channel, kind)| format!("{channel}={kind}"))
            .collect();
        // Values, not Debug dumps, and every URL through the one redaction:
        // this line is what an operator reads to see what a worker talks to.
        tracing::info!(
            worker_id = %self.config.worker_id,
            database = %self.settings.database_url,
            redis_masters = %masters.join(","),
            channels = %channels.join(","),
            regions = %self.settings.regions.join(","),
            concurrency = self.config.concurrency,
            batch_size = self.config.batch_size,
            lock_scope = %self.config.lock_scope.as_str(),
            retry_schedule = %self
                .config
                .channel_policies
                .default_policy()
                .retry
                .as_ref()
                .unwrap_or(&self.config.retry.schedule),
            record_attempts = %self.config.record_attempts.as_str(),
            "worker starting"
        );
        let worker = Worker::new(
            self.deps.clone(),
            self.config.clone(),
            self.settings.regions.clone(),
        );
        let handle = worker.handle();
        on_start(handle.clone());
        let companions = crate::companions::spawn(
            &self.deps,
            &self.config,
            &self.settings.regions,
            handle,
            shutdown.clone(),
        )
        .await
        .context("starting the HTTP server, cleanup and stats tasks")?;
        let totals = worker.run(shutdown).await;
        companions.stop().await;
        self.deps.store.close().await;
        Ok(totals)
    }
}
