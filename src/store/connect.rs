//! Opening connections, and saying in one line why one could not be opened.
//!
//! sqlx's pool retries a failing connect until its acquire timeout and then
//! reports only "pool timed out while waiting for an open connection", and
//! its I/O errors print their cause twice through the error chain. An
//! operator needs the opposite: the real cause, at once, with the step that
//! fixes it. So [`probe`] opens one connection by hand first and
//! [`ConnectError`] names what went wrong.

use std::time::Duration;

use sqlx::mysql::{MySqlConnectOptions, MySqlDatabaseError};
use sqlx::{Connection, MySqlConnection};

use crate::secret::SecretUrl;

/// How long one connect may take (TCP, TLS and the handshake together).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// MySQL error numbers the hints are about.
const ER_ACCESS_DENIED: u16 = 1045;
const ER_BAD_DB: u16 = 1049;
const ER_NO_SUCH_TABLE: u16 = 1146;

/// Why no connection could be opened. The message carries the cause once;
/// there is deliberately no `source`, so `{:#}` does not repeat it.
#[derive(Debug, thiserror::Error)]
#[error("cannot connect to MySQL at {url}: {cause}")]
pub struct ConnectError {
    /// The redacted URL.
    pub url: String,
    pub cause: Cause,
}

/// The cause of a [`ConnectError`], for callers that branch on it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Cause {
    #[error("connection refused (is the server running, and are host and port in HERALD_DATABASE_URL right?)")]
    Refused,
    #[error("no answer within {0:?} (is the host reachable, or a firewall dropping packets?)")]
    TimedOut(Duration),
    #[error("access denied: {0} (check the user and password in HERALD_DATABASE_URL)")]
    AccessDenied(String),
    #[error("{0} (run `herald migrate` to create the database and its tables)")]
    UnknownDatabase(String),
    #[error("{0}")]
    Other(String),
}

/// Opens one connection within [`CONNECT_TIMEOUT`].
pub async fn probe(
    url: &SecretUrl,
    options: &MySqlConnectOptions,
) -> Result<MySqlConnection, ConnectError> {
    let fail = |cause| ConnectError {
        url: url.redacted(),
        cause,
    };
    match tokio::time::timeout(CONNECT_TIMEOUT, MySqlConnection::connect_with(options)).await {
        Err(_) => Err(fail(Cause::TimedOut(CONNECT_TIMEOUT))),
        Ok(Err(e)) => Err(fail(classify(&e, url))),
        Ok(Ok(conn)) => Ok(conn),
    }
}

/// Maps a sqlx error met while connecting to its cause, with the URL's
/// password removed from any text the driver quoted.
pub fn classify(e: &sqlx::Error, url: &SecretUrl) -> Cause {
    let text = |s: String| super::redact_error(&s, url);
    match e {
        sqlx::Error::Io(io) => match io.kind() {
            std::io::ErrorKind::ConnectionRefused => Cause::Refused,
            std::io::ErrorKind::TimedOut => Cause::TimedOut(CONNECT_TIMEOUT),
            _ => Cause::Other(text(io.to_string())),
        },
        sqlx::Error::Database(db) => {
            let number = db
                .try_downcast_ref::<MySqlDatabaseError>()
                .map(MySqlDatabaseError::number);
            let message = text(db.message().to_owned());
            match number {
                Some(ER_ACCESS_DENIED) => Cause::AccessDenied(message),
                Some(ER_BAD_DB) => Cause::UnknownDatabase(message),
                _ => Cause::Other(message),
            }
        }
        sqlx::Error::Tls(t) => Cause::Other(text(format!("TLS: {t}"))),
        other => Cause::Other(text(other.to_string())),
    }
}

/// True for "table doesn't exist": on a database that was never migrated,
/// that is the expected answer, not a failure.
pub fn is_missing_table(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .and_then(|db| db.try_downcast_ref::<MySqlDatabaseError>())
        .is_some_and(|db| db.number() == ER_NO_SUCH_TABLE)
}
