//! Finding the server programs the benchmarks, the demo and the tests start.
//!
//! Debian installs `mariadbd` in /usr/sbin, which is not on a normal user's
//! PATH, so a plain `Command::new("mariadbd")` fails there for no good
//! reason; Homebrew puts everything under its own prefix.

use std::path::PathBuf;

/// Directories searched after PATH.
const EXTRA_DIRS: &[&str] = &[
    "/usr/sbin",
    "/usr/local/sbin",
    "/sbin",
    "/usr/local/bin",
    "/opt/homebrew/bin",
    "/opt/homebrew/sbin",
];

/// The path of `name` on PATH or in the usual server directories.
pub fn find(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(EXTRA_DIRS.iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// How to install the servers, for messages about a missing program.
pub const HOW_TO_INSTALL: &str = "install them with `sudo apt-get install -y mariadb-server redis-server` \
(Debian/Ubuntu) or `brew install mariadb redis` (macOS), or run them with `docker compose up -d mysql \
redis-1 redis-2 redis-3` and set HERALD_DATABASE_URL and HERALD_REDIS_URLS (see README)";

/// [`find`], or an error naming the program and how to get it.
pub fn require(name: &str) -> std::io::Result<PathBuf> {
    find(name).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{name} is not installed (not on PATH nor in /usr/sbin); {HOW_TO_INSTALL}"),
        )
    })
}
