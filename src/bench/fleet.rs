//! W real `herald worker` child processes (this same executable).

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::process::{Child, Command};

use crate::config::Settings;

/// Running workers; every one still alive is killed (SIGKILL) on drop.
#[derive(Debug)]
pub struct Fleet {
    children: Vec<Child>,
}

/// What the workers of one run are told, beyond the global settings.
#[derive(Debug, Clone, Default)]
pub struct FleetEnv {
    /// The `herald` executable the workers run (`--worker-exe`); this one
    /// when `None`.
    pub exe: Option<std::path::PathBuf>,
    pub database_url: String,
    pub key_prefix: String,
    pub concurrency: usize,
    pub file_path: Option<std::path::PathBuf>,
    pub file_latency_ms: u64,
    pub webhook_url: Option<String>,
    /// `HERALD_CLEANUP*`/`HERALD_RETENTION*` settings; cleanup is off when empty.
    pub cleanup: Vec<(&'static str, String)>,
    /// Any other worker settings of the scenario (channels, timeouts).
    pub extra: Vec<(&'static str, String)>,
}

impl Fleet {
    /// Starts `w` workers. The process environment is inherited (so any
    /// other `HERALD_*` worker setting, e.g. `HERALD_BATCH_SIZE`, applies),
    /// then the global settings of this invocation and `env` override it.
    pub fn start(settings: &Settings, w: usize, env: &FleetEnv) -> anyhow::Result<Fleet> {
        Self::spawn(settings, w, env, &[])
    }

    /// Starts `w` workers as [`Fleet::start`] does, each with its HTTP
    /// endpoints on a free local port, and waits until every one answers
    /// `/readyz` (its database and Redis answer): the point where a peer's
    /// worker prints `READY`. Returns how long that took, the fleet's
    /// start-up, which the drains report apart from their timing as the
    /// peer harness does.
    pub async fn start_ready(
        settings: &Settings,
        w: usize,
        env: &FleetEnv,
        within: Duration,
    ) -> anyhow::Result<(Fleet, Duration)> {
        let started = Instant::now();
        let mut addrs = Vec::with_capacity(w);
        for _ in 0..w {
            // The port is free now; a worker that loses it to another
            // process exits with the bind error, and check_alive says so.
            let probe =
                std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
            addrs.push(probe.local_addr()?);
        }
        let mut fleet = Self::spawn(settings, w, env, &addrs)?;
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()?;
        for addr in &addrs {
            let url = format!("http://{addr}/readyz");
            loop {
                fleet.check_alive()?;
                if let Ok(r) = client.get(&url).send().await {
                    if r.status().is_success() {
                        break;
                    }
                }
                if started.elapsed() > within {
                    bail!("worker at {addr} not ready within {within:?}");
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        Ok((fleet, started.elapsed()))
    }

    fn spawn(
        settings: &Settings,
        w: usize,
        env: &FleetEnv,
        http: &[std::net::SocketAddr],
    ) -> anyhow::Result<Fleet> {
        let exe = match &env.exe {
            Some(exe) => exe.clone(),
            None => std::env::current_exe().context("locating the herald executable")?,
        };
        let redis: Vec<&str> = settings.redis_urls.iter().map(|u| u.expose()).collect();
        let mut fleet = Fleet {
            children: Vec::with_capacity(w),
        };
        for i in 0..w {
            let mut cmd = Command::new(&exe);
            cmd.arg("worker")
                .env("HERALD_DATABASE_URL", &env.database_url)
                .env("HERALD_REDIS_URLS", redis.join(","))
                .env("HERALD_KEY_PREFIX", &env.key_prefix)
                .env("HERALD_REGION", settings.regions.join(","))
                .env("HERALD_DB_POOL_SIZE", settings.db_pool_size.to_string())
                .env(
                    "HERALD_LOCK_MASTER_TIMEOUT_MS",
                    settings.lock_master_timeout.as_millis().to_string(),
                )
                .env("HERALD_CONCURRENCY", env.concurrency.to_string())
                .env("HERALD_FILE_LATENCY_MS", env.file_latency_ms.to_string())
                .env(
                    "HERALD_HTTP_ADDR",
                    http.get(i).map(|a| a.to_string()).unwrap_or_default(),
                )
                .env("HERALD_STATS_INTERVAL_S", "0")
                .env("HERALD_LOG", "warn")
                .env(
                    "HERALD_WORKER_ID",
                    format!("bench-{i}-{}", std::process::id()),
                )
                .env("HERALD_CLEANUP", (!env.cleanup.is_empty()).to_string());
            if let Some(path) = &env.file_path {
                cmd.env("HERALD_FILE_PATH", path);
            }
            if let Some(url) = &env.webhook_url {
                cmd.env("HERALD_WEBHOOK_URL", url);
            }
            for (k, v) in env.cleanup.iter().chain(&env.extra) {
                cmd.env(k, v);
            }
            let child = cmd
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .spawn()
                .with_context(|| format!("starting {} worker", exe.display()))?;
            fleet.children.push(child);
        }
        Ok(fleet)
    }

    /// Fails when a worker has exited (its own error is on stderr).
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        for (i, c) in self.children.iter_mut().enumerate() {
            if let Some(status) = c.try_wait()? {
                bail!("worker {i} exited early ({status}); see its messages above");
            }
        }
        Ok(())
    }

    /// Largest peak resident set (VmHWM) over the workers, in MiB.
    pub fn peak_rss_mib(&self) -> f64 {
        self.status_kib("VmHWM:").into_iter().fold(0.0, f64::max) / 1024.0
    }

    /// Each worker's resident set (VmRSS) now, in MiB.
    pub fn rss_mib(&self) -> Vec<f64> {
        self.status_kib("VmRSS:")
            .into_iter()
            .map(|k| k / 1024.0)
            .collect()
    }

    /// CPU time (user + system) the workers have used so far, summed.
    pub fn cpu(&self) -> Duration {
        self.children
            .iter()
            .filter_map(|c| c.id())
            .filter_map(|pid| {
                super::counters::process_cpu(&std::path::Path::new("/proc").join(pid.to_string()))
            })
            .sum()
    }

    /// One `/proc/<pid>/status` field (in kB) of every live worker.
    fn status_kib(&self, field: &str) -> Vec<f64> {
        self.children
            .iter()
            .filter_map(|c| c.id())
            .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
            .filter_map(|status| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(field))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            })
            .collect()
    }

    /// CPU time (user + system) the workers have used so far, in seconds: a
    /// counter the shared machine's noise does not move the way it moves
    /// wall-clock rates.
    pub fn cpu_seconds(&self) -> f64 {
        // Linux reports utime and stime (fields 14 and 15) in clock ticks,
        // 100 per second on every platform Herald runs on.
        const TICKS: f64 = 100.0;
        self.children
            .iter()
            .filter_map(|c| c.id())
            .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
            .filter_map(|stat| {
                // The command name (field 2) may hold spaces: count fields
                // after its closing parenthesis.
                let rest = stat.rsplit_once(')')?.1;
                let f: Vec<&str> = rest.split_whitespace().collect();
                let utime: f64 = f.get(11)?.parse().ok()?;
                let stime: f64 = f.get(12)?.parse().ok()?;
                Some((utime + stime) / TICKS)
            })
            .sum()
    }

    /// SIGTERM to every worker, then waits up to `grace` for them to drain
    /// and exit; stragglers are killed.
    pub async fn stop(mut self, grace: Duration) -> anyhow::Result<()> {
        for c in &self.children {
            if let Some(pid) = c.id() {
                let _ = std::process::Command::new("kill")
                    .args(["-TERM", &pid.to_string()])
                    .status();
            }
        }
        let deadline = Instant::now() + grace;
        for (i, c) in self.children.iter_mut().enumerate() {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, c.wait()).await {
                Ok(Ok(status)) if status.success() => {}
                Ok(Ok(status)) => eprintln!("bench: worker {i} exited with {status}"),
                Ok(Err(e)) => eprintln!("bench: waiting for worker {i}: {e}"),
                Err(_) => {
                    eprintln!("bench: worker {i} did not exit within {grace:?}; killing it");
                    let _ = c.kill().await;
                }
            }
        }
        Ok(())
    }
}
