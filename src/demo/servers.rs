//! The demo's MariaDB and Redis: the configured ones when they answer
//! (`HERALD_DATABASE_URL`'s server, with a throwaway database of its own,
//! and `HERALD_REDIS_URLS` under a key prefix of its own), otherwise a
//! private `mariadbd` and three `redis-server` masters on free ports in a
//! temporary directory, all removed when the demo ends.

use std::process::Child;
use std::time::Duration;

use anyhow::Context;

use crate::bench::{mariadb_server, programs, redis_servers};
use crate::config::Settings;
use crate::secret::SecretUrl;

/// Where the demo runs. Private servers are killed and their directory
/// removed on drop.
#[derive(Debug)]
pub struct Servers {
    /// The demo's own database (created by the migration).
    pub database_url: SecretUrl,
    pub redis_urls: Vec<String>,
    /// One line per server, for the header.
    pub notes: Vec<String>,
    /// Whether the database lives on a server the demo did not start (it
    /// must then be dropped at the end).
    pub shared_database: bool,
    children: Vec<Child>,
    dir: Option<tempfile::TempDir>,
}

impl Drop for Servers {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        // The directory goes after its servers (field order would do it
        // too; this says so).
        drop(self.dir.take());
    }
}

impl Servers {
    /// Uses the configured servers where they answer and starts private ones
    /// for the rest. `db_name` is the demo's database.
    pub async fn prepare(settings: &Settings, db_name: &str) -> anyhow::Result<Servers> {
        let mut s = Servers {
            database_url: settings.database_url.clone(),
            redis_urls: Vec::new(),
            notes: Vec::new(),
            shared_database: false,
            children: Vec::new(),
            dir: None,
        };
        let mut configured = settings.database_url.url().clone();
        configured.set_path(&format!("/{db_name}"));
        let configured = SecretUrl::parse(configured.as_str()).map_err(anyhow::Error::msg)?;
        match try_database(&configured).await {
            Ok(()) => {
                s.notes.push(format!(
                    "database: {} (HERALD_DATABASE_URL's server)",
                    configured.redacted()
                ));
                s.database_url = configured;
                s.shared_database = true;
            }
            Err(why) => {
                let port = s.start(
                    |dir, port| {
                        mariadb_server::install(dir)?;
                        mariadb_server::spawn(dir, port, Duration::from_secs(60))
                    },
                    "mariadb",
                )?;
                s.database_url =
                    SecretUrl::parse(&format!("{}/{db_name}", mariadb_server::url(port)))
                        .map_err(anyhow::Error::msg)?;
                crate::store::migrate::migrate(&s.database_url)
                    .await
                    .context("migrating the private database")?;
                s.notes.push(format!(
                    "database: private mariadbd on 127.0.0.1:{port} ({} did not answer: {why})",
                    settings.database_url.redacted()
                ));
            }
        }
        let answering = futures::future::join_all(
            settings
                .redis_urls
                .iter()
                .map(|u| redis_answers(u.expose())),
        )
        .await;
        if answering.iter().all(|ok| *ok) {
            s.redis_urls = settings
                .redis_urls
                .iter()
                .map(|u| u.expose().to_owned())
                .collect();
            let shown: Vec<String> = settings.redis_urls.iter().map(|u| u.redacted()).collect();
            s.notes
                .push(format!("redis: {} (HERALD_REDIS_URLS)", shown.join(", ")));
        } else {
            let mut ports = Vec::new();
            for i in 0..3 {
                let port = s.start(
                    |dir, port| redis_servers::spawn(port, dir, &[]),
                    &format!("redis-{i}"),
                )?;
                ports.push(port);
                s.redis_urls.push(format!("redis://127.0.0.1:{port}"));
            }
            s.notes.push(format!(
                "redis: three private redis-server masters on ports {ports:?} (HERALD_REDIS_URLS did not answer)"
            ));
        }
        if let Some(dir) = &s.dir {
            s.notes.push(format!(
                "private servers live in {} (removed at exit)",
                dir.path().display()
            ));
        }
        Ok(s)
    }

    /// Starts one private server in a subdirectory `name` on a free port.
    fn start(
        &mut self,
        spawn: impl FnOnce(&std::path::Path, u16) -> std::io::Result<Child>,
        name: &str,
    ) -> anyhow::Result<u16> {
        if self.dir.is_none() {
            self.dir = Some(
                tempfile::Builder::new()
                    .prefix("herald-demo-")
                    .tempdir()
                    .context("creating a temporary directory")?,
            );
        }
        let dir = self
            .dir
            .as_ref()
            .map(|d| d.path().join(name))
            .unwrap_or_default();
        std::fs::create_dir_all(&dir)?;
        let port = redis_servers::free_port()?;
        let child = spawn(&dir, port).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                anyhow::anyhow!("{e}")
            } else {
                anyhow::anyhow!(
                    "starting a private {name} server: {e}; {}",
                    programs::HOW_TO_INSTALL
                )
            }
        })?;
        self.children.push(child);
        Ok(port)
    }
}

/// Creates and migrates the demo database on the configured server; the
/// error says why that server cannot be used.
async fn try_database(url: &SecretUrl) -> Result<(), String> {
    match tokio::time::timeout(Duration::from_secs(5), crate::store::migrate::migrate(url)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(crate::cause::chain(&e)),
        Err(_) => Err("no answer within 5 s".into()),
    }
}

async fn redis_answers(url: &str) -> bool {
    let Ok(client) = redis::Client::open(url) else {
        return false;
    };
    let ping = async {
        let mut c = client.get_multiplexed_async_connection().await?;
        redis::cmd("PING").query_async::<String>(&mut c).await
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), ping).await,
        Ok(Ok(_))
    )
}
