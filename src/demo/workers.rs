//! The demo's three `herald worker` processes (this same executable, as a
//! deployment would run them), tuned so a short demo shows the whole
//! protocol: a fast retry schedule, and a 2 s lock TTL so the claims of a
//! killed worker come back to the others within seconds instead of 30 s.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use tokio::process::{Child, Command};

/// One worker: its id (`claimed_by`) and process; killed on drop.
#[derive(Debug)]
pub struct Worker {
    pub id: String,
    child: Child,
    pub killed: bool,
}

/// What every worker is told.
#[derive(Debug)]
pub struct WorkerEnv<'a> {
    pub database_url: &'a str,
    pub redis_urls: &'a [String],
    pub key_prefix: &'a str,
    pub webhook_url: &'a str,
    pub webhook_secret: &'a str,
    pub concurrency: usize,
    /// Each worker's log (stderr) goes to `<log_dir>/<id>.log`.
    pub log_dir: &'a Path,
}

/// Starts `n` workers named `worker-1` … `worker-n`.
pub fn start(n: usize, env: &WorkerEnv<'_>) -> anyhow::Result<Vec<Worker>> {
    let exe = std::env::current_exe().context("locating the herald executable")?;
    let mut out = Vec::with_capacity(n);
    for i in 1..=n {
        let id = format!("worker-{i}");
        let log = std::fs::File::create(env.log_dir.join(format!("{id}.log")))?;
        let mut cmd = Command::new(&exe);
        // Only what is set here: the user's own HERALD_* must not turn the
        // demo's workers into something else.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("HERALD_") {
                cmd.env_remove(k);
            }
        }
        let child = cmd
            .arg("worker")
            .env("HERALD_DATABASE_URL", env.database_url)
            .env("HERALD_REDIS_URLS", env.redis_urls.join(","))
            .env("HERALD_KEY_PREFIX", env.key_prefix)
            .env("HERALD_WORKER_ID", &id)
            .env("HERALD_WEBHOOK_URL", env.webhook_url)
            .env("HERALD_WEBHOOK_SECRET", env.webhook_secret)
            .env("HERALD_CONCURRENCY", env.concurrency.to_string())
            .env("HERALD_RETRY_SCHEDULE", "200ms,500ms,1s,2s,4s")
            .env("HERALD_RETRY_THROTTLE_FLOOR", "1s")
            .env("HERALD_LOCK_TTL_MS", "2000")
            .env("HERALD_SEND_TIMEOUT_MS", "1000")
            // The receiver is down for its first moments: the breaker opens
            // after 10 failures; a short cool-down lets it probe and close
            // within the demo instead of holding the rows for 30 s.
            .env("HERALD_BREAKER_COOL_DOWN", "1s")
            .env("HERALD_POLL_INTERVAL_MS", "100")
            .env("HERALD_HTTP_ADDR", "")
            .env("HERALD_CLEANUP", "false")
            .env("HERALD_STATS_INTERVAL_S", "0")
            .env("HERALD_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", exe.display()))?;
        out.push(Worker {
            id,
            child,
            killed: false,
        });
    }
    Ok(out)
}

impl Worker {
    /// SIGKILL: no goodbye, its claims stay until their lease runs out.
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
        self.killed = true;
    }

    /// Whether the process has exited on its own (an error at start-up).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        if self.killed {
            return None;
        }
        self.child.try_wait().ok().flatten()
    }

    /// SIGTERM and a wait of up to `grace`, as a deployment stops it.
    pub async fn stop(&mut self, grace: Duration) {
        if self.killed {
            return;
        }
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        if tokio::time::timeout(grace, self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}
