//! `herald migrate`: create the database if needed, then apply the embedded
//! migrations. Safe to run from every instance at start-up and repeatedly:
//! sqlx records applied versions and takes a database-level lock while
//! applying, so concurrent runs serialise instead of racing.

use anyhow::Context;
use sqlx::migrate::{Migrate, Migrator};
use sqlx::Connection;

use crate::secret::SecretUrl;

/// The migrations in `migrations/`, embedded at compile time so the binary
/// alone is enough to set up a database.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// What a migrate run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigrateReport {
    pub database_created: bool,
    /// `version description` of each migration applied by this run.
    pub applied: Vec<String>,
    pub already_applied: usize,
}

impl std::fmt::Display for MigrateReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.database_created {
            writeln!(f, "created database")?;
        }
        for m in &self.applied {
            writeln!(f, "applied {m}")?;
        }
        if self.applied.is_empty() {
            write!(
                f,
                "up to date ({} migrations already applied)",
                self.already_applied
            )
        } else {
            write!(
                f,
                "{} applied, {} already applied",
                self.applied.len(),
                self.already_applied
            )
        }
    }
}

/// Creates the database named in `url` if missing, then applies pending
/// migrations.
pub async fn migrate(url: &SecretUrl) -> anyhow::Result<MigrateReport> {
    let database_created = create_database_if_missing(url).await?;
    let options = super::connect_options(url)?;
    let mut conn = super::connect::probe(url, &options).await?;

    conn.ensure_migrations_table()
        .await
        .context("creating the _sqlx_migrations table")?;
    let before: Vec<i64> = conn
        .list_applied_migrations()
        .await
        .context("listing applied migrations")?
        .into_iter()
        .map(|m| m.version)
        .collect();
    MIGRATOR
        .run(&mut conn)
        .await
        .context("applying migrations")?;
    let applied = MIGRATOR
        .iter()
        .filter(|m| !m.migration_type.is_down_migration() && !before.contains(&m.version))
        .map(|m| format!("{} {}", m.version, m.description))
        .collect();
    conn.close().await.ok();
    Ok(MigrateReport {
        database_created,
        applied,
        already_applied: before.len(),
    })
}

/// Returns whether the database had to be created.
async fn create_database_if_missing(url: &SecretUrl) -> anyhow::Result<bool> {
    let name = database_name(url)?;
    let mut server = url.url().clone();
    server.set_path("");
    let server = SecretUrl::parse(server.as_str()).map_err(anyhow::Error::msg)?;
    let options = super::connect_options(&server)?;
    let mut conn = super::connect::probe(&server, &options).await?;
    let exists: Option<String> = sqlx::query_scalar(
        "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = ?",
    )
    .bind(&name)
    .fetch_optional(&mut conn)
    .await
    .context("looking up the database")?;
    if exists.is_some() {
        return Ok(false);
    }
    sqlx::query(&format!(
        "CREATE DATABASE IF NOT EXISTS `{name}` CHARACTER SET utf8mb4"
    ))
    .execute(&mut conn)
    .await
    .with_context(|| format!("creating database {name}"))?;
    conn.close().await.ok();
    Ok(true)
}

/// The database name from the URL path, checked so it can be quoted safely.
pub fn database_name(url: &SecretUrl) -> anyhow::Result<String> {
    let name = url.url().path().trim_start_matches('/').to_owned();
    if name.is_empty() {
        anyhow::bail!("HERALD_DATABASE_URL {url}: no database name in the path (e.g. mysql://host:3306/herald)");
    }
    if name.len() > 64
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$' || c == '-')
    {
        anyhow::bail!("HERALD_DATABASE_URL {url}: database name {name:?} must be 1-64 letters, digits, '_', '$' or '-'");
    }
    Ok(name)
}

/// Fails unless every embedded migration has been applied, so a worker
/// started against a new or outdated database says what to do instead of
/// failing every poll.
pub async fn check_applied(pool: &sqlx::MySqlPool) -> anyhow::Result<()> {
    let applied: Vec<i64> =
        match sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success = 1")
            .fetch_all(pool)
            .await
        {
            Ok(applied) => applied,
            // Never migrated: every migration is missing, said below.
            Err(e) if super::connect::is_missing_table(&e) => Vec::new(),
            Err(e) => return Err(e).context("reading the applied migrations"),
        };
    let missing: Vec<String> = MIGRATOR
        .iter()
        .filter(|m| !m.migration_type.is_down_migration() && !applied.contains(&m.version))
        .map(|m| format!("{} {}", m.version, m.description))
        .collect();
    if !missing.is_empty() {
        anyhow::bail!(
            "the database schema is not up to date (missing: {}); run `herald migrate` first",
            missing.join(", ")
        );
    }
    Ok(())
}
