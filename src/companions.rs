//! Tasks that run beside the sender in every worker process: the HTTP
//! server (`/livez`, `/readyz`, `/metrics`), the admin API and console
//! (when `HERALD_ADMIN_ADDR` is set), cleanup and fleet statistics.
//! Each can be switched off by configuration.
//!
//! Cleanup and stats stop as soon as shutdown begins, so they hold no
//! database connection the draining senders might need. The HTTP server
//! stays up until the worker has drained ([`Companions::stop`]): metrics and
//! liveness are most interesting exactly then.

use std::time::Duration;

use anyhow::Context;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::cleanup::Cleanup;
use crate::config::WorkerConfig;
use crate::http::{self, HttpState};
use crate::services::Deps;
use crate::worker::WorkerHandle;

/// How long [`Companions::stop`] waits for a task (an HTTP client holding a
/// connection open, a DELETE in flight) before aborting it.
const STOP_WAIT: Duration = Duration::from_secs(5);

/// The running companion tasks of one worker.
#[derive(Debug)]
pub struct Companions {
    tasks: Vec<(&'static str, JoinHandle<()>)>,
    stop: CancellationToken,
    http_stop: CancellationToken,
}

/// Starts the companions `config` asks for, on the services in `deps`;
/// cleanup's backlog gate counts only `regions`, the ones this worker serves.
/// Fails only if the HTTP address cannot be bound, so a port clash stops
/// the process at start-up instead of leaving it running without health
/// checks.
pub async fn spawn(
    deps: &Deps,
    config: &WorkerConfig,
    regions: &[String],
    worker: WorkerHandle,
    shutdown: CancellationToken,
) -> anyhow::Result<Companions> {
    let stop = shutdown.child_token();
    let http_stop = CancellationToken::new();
    let mut tasks = Vec::new();
    if let Some(addr) = config.http_addr {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("HERALD_HTTP_ADDR {addr}: cannot listen"))?;
        let local = listener.local_addr()?;
        tracing::info!(addr = %local, "HTTP endpoints /livez /readyz /metrics listening");
        let state = HttpState {
            deps: deps.clone(),
            worker,
            health_timeout: config.health_timeout,
            stale_after: http::stale_after(config.poll_interval),
            shutdown: shutdown.clone(),
        };
        tasks.push((
            "http",
            tokio::spawn(http::serve(listener, state, http_stop.clone())),
        ));
    }
    if let Some(admin) = &config.admin {
        let listener = crate::admin::bind(admin).await?;
        let region = regions.first().map_or("default", String::as_str);
        let mut state = crate::admin::AdminState::new(deps.store.clone(), admin.clone(), region);
        state.breakers = Some(crate::gate::Gate::new(deps.redlock.clone()));
        tasks.push((
            "admin",
            tokio::spawn(crate::admin::serve(listener, state, http_stop.clone())),
        ));
    }
    if let Some(cfg) = &config.cleanup {
        let cleanup = Cleanup::new(
            deps.store.clone(),
            deps.redlock.clone(),
            deps.metrics.clone(),
            cfg.clone(),
            regions.to_vec(),
        );
        tasks.push(("cleanup", tokio::spawn(cleanup.run(stop.clone()))));
    }
    if let Some(window) = config.stats_interval {
        tasks.push((
            "stats",
            tokio::spawn(crate::stats::run(
                deps.store.clone(),
                deps.redlock.clone(),
                deps.metrics.clone(),
                window,
                stop.clone(),
            )),
        ));
    }
    Ok(Companions {
        tasks,
        stop,
        http_stop,
    })
}

impl Companions {
    /// Stops every companion and waits for them.
    pub async fn stop(self) {
        self.stop.cancel();
        self.http_stop.cancel();
        for (name, mut task) in self.tasks {
            if tokio::time::timeout(STOP_WAIT, &mut task).await.is_err() {
                tracing::warn!(task = name, "companion did not stop in time; aborting it");
                task.abort();
            }
        }
    }
}
