//! A throwaway local `mariadbd` on a free port, for the demo and the tests
//! (and the fault tests, which crash and pause it): a data directory made
//! by `mariadb-install-db` in a directory of the caller's, root without a
//! password over TCP on 127.0.0.1 only, no binary log.

use std::io;
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::programs;

/// Creates the data directory `dir/data` (and `dir/tmp`).
///
/// Each server gets its own TMPDIR: concurrent bootstraps sharing /tmp
/// remove each other's temporary tables ("Unknown table
/// 'mysql.tmp_user_sys'").
pub fn install(dir: &Path) -> io::Result<()> {
    let tmp = dir.join("tmp");
    std::fs::create_dir_all(&tmp)?;
    let install = programs::require("mariadb-install-db")?;
    let mut cmd = Command::new(install);
    cmd.env("TMPDIR", &tmp).args([
        "--no-defaults",
        "--auth-root-authentication-method=normal",
        "--skip-test-db",
    ]);
    if is_root() {
        cmd.arg("--user=root");
    }
    let out = cmd
        .arg(format!("--datadir={}", dir.join("data").display()))
        .output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "mariadb-install-db failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Starts `mariadbd` on `port` over the data directory [`install`] made in
/// `dir`, and waits (up to `limit`) until it accepts connections.
pub fn spawn(dir: &Path, port: u16, limit: Duration) -> io::Result<Child> {
    let mut cmd = Command::new(programs::require("mariadbd")?);
    cmd.env("TMPDIR", dir.join("tmp"))
        .arg("--no-defaults")
        .arg(format!("--datadir={}", dir.join("data").display()))
        .arg(format!("--socket={}", dir.join("sock").display()))
        .arg(format!("--pid-file={}", dir.join("pid").display()))
        .arg(format!("--port={port}"))
        .args([
            "--bind-address=127.0.0.1",
            "--skip-log-bin",
            "--innodb-buffer-pool-size=64M",
        ]);
    if is_root() {
        // mariadbd refuses to run as root without being told to.
        cmd.arg("--user=root");
    }
    let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn()?;
    let deadline = Instant::now() + limit;
    // The port opens once the server is ready for connections.
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some(status) = child.try_wait()? {
            return Err(io::Error::other(format!(
                "mariadbd exited at start ({status}); its log is in {}",
                dir.join("data").display()
            )));
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("mariadbd on port {port} did not start within {limit:?}"),
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(child)
}

/// The server URL (no database) of a server [`spawn`]ed on `port`.
pub fn url(port: u16) -> String {
    format!("mysql://root@127.0.0.1:{port}")
}

/// Whether this process runs as root (mariadbd then needs `--user=root`).
/// Read from /proc where there is one; elsewhere (macOS) from `id -u`.
fn is_root() -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if let Ok(m) = std::fs::metadata("/proc/self") {
            return m.uid() == 0;
        }
    }
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}
