//! Real `redis-server` processes for tests, on free ports, killed on drop.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One redis-server process. Pause/resume use SIGSTOP/SIGCONT, so a paused
/// server still accepts TCP connections but never answers: a hung master.
pub struct RedisProc {
    pub port: u16,
    child: Option<Child>,
    paused: bool,
    extra: Vec<String>,
    dir: tempfile::TempDir,
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl RedisProc {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// `extra` are additional redis-server arguments (e.g. an ACL user).
    pub fn start_with(extra: &[&str]) -> Self {
        let mut p = RedisProc {
            port: free_port(),
            child: None,
            paused: false,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            dir: tempfile::tempdir().unwrap(),
        };
        p.spawn();
        p
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed");
        self.child = Some(child);
        self.paused = false;
        self.wait_ready(Duration::from_secs(10));
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn pid(&self) -> String {
        self.child.as_ref().expect("running").id().to_string()
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.pid()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig} failed");
    }

    /// SIGSTOP: the port stays open, nothing answers.
    pub fn pause(&mut self) {
        self.signal("-STOP");
        self.paused = true;
    }

    pub fn resume(&mut self) {
        self.signal("-CONT");
        self.paused = false;
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            if self.paused {
                let _ = Command::new("kill")
                    .args(["-CONT", &c.id().to_string()])
                    .status();
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        self.paused = false;
    }

    /// Starts again on the same port, with an empty dataset.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Sends one inline command and returns the raw reply (blocking).
    pub fn raw(&self, cmd: &str) -> String {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(format!("{cmd}\r\n").as_bytes()).unwrap();
        let mut buf = [0u8; 65536];
        let n = s.read(&mut buf).unwrap_or(0);
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    fn wait_ready(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) {
                let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
                let mut buf = [0u8; 64];
                // An ACL-protected server answers NOAUTH, which also means "up".
                if s.write_all(b"PING\r\n").is_ok() {
                    if let Ok(n) = s.read(&mut buf) {
                        if n > 0 {
                            return;
                        }
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "redis-server on {} did not start",
                self.port
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for RedisProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// N independent masters.
pub struct Masters(pub Vec<RedisProc>);

impl Masters {
    pub fn start(n: usize) -> Self {
        Masters((0..n).map(|_| RedisProc::start()).collect())
    }

    pub fn urls(&self) -> Vec<String> {
        self.0.iter().map(RedisProc::url).collect()
    }
}

impl std::ops::Index<usize> for Masters {
    type Output = RedisProc;
    fn index(&self, i: usize) -> &RedisProc {
        &self.0[i]
    }
}

impl std::ops::IndexMut<usize> for Masters {
    fn index_mut(&mut self, i: usize) -> &mut RedisProc {
        &mut self.0[i]
    }
}
