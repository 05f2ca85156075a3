//! Local `redis-server` processes on free ports, for the lock benchmark and
//! the integration tests (one starter, so both start servers the same way:
//! no persistence, so a restart comes back empty like a crashed master).

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A port nobody listens on right now.
pub fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Starts `redis-server` on `port` (127.0.0.1 only, nothing saved, working
/// directory `dir`) with `extra` arguments, and waits until it answers.
pub fn spawn(port: u16, dir: &Path, extra: &[String]) -> io::Result<Child> {
    let mut child = Command::new(super::programs::require("redis-server")?)
        .args(["--port", &port.to_string()])
        .args(["--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| io::Error::new(e.kind(), format!("starting redis-server: {e}")))?;
    if let Err(e) = wait_ready(port, Duration::from_secs(10)) {
        let _ = child.kill();
        let _ = child.wait();
        return Err(e);
    }
    Ok(child)
}

/// Waits until the server on `port` answers PING (an ACL-protected server
/// answers NOAUTH, which also means "up").
pub fn wait_ready(port: u16, limit: Duration) -> io::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
            let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
            let mut buf = [0u8; 64];
            if s.write_all(b"PING\r\n").is_ok() && s.read(&mut buf).is_ok_and(|n| n > 0) {
                return Ok(());
            }
        }
        if Instant::now() >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("redis-server on port {port} did not start"),
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Sends `sig` (e.g. `-STOP`, `-CONT`) to process `pid`.
pub fn signal(pid: u32, sig: &str) -> io::Result<()> {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()?
        .success();
    if ok {
        Ok(())
    } else {
        Err(io::Error::other(format!("kill {sig} {pid} failed")))
    }
}

/// A local master for the benchmark, killed on drop.
#[derive(Debug)]
pub struct LocalRedis {
    pub port: u16,
    child: Child,
}

impl LocalRedis {
    pub fn start() -> io::Result<Self> {
        let port = free_port()?;
        let child = spawn(port, &std::env::temp_dir(), &[])?;
        Ok(Self { port, child })
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// SIGSTOP: the port stays open, nothing answers (a hung master).
    pub fn pause(&self) -> io::Result<()> {
        signal(self.child.id(), "-STOP")
    }

    pub fn resume(&self) -> io::Result<()> {
        signal(self.child.id(), "-CONT")
    }
}

impl Drop for LocalRedis {
    fn drop(&mut self) {
        let _ = self.resume();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
