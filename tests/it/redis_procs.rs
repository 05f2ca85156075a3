//! Real `redis-server` processes for tests, on free ports, killed on drop.
//! Started by the same code as the benchmark's (`herald::bench::redis_servers`).

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command};
use std::time::Duration;

use herald::bench::redis_servers;

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
    redis_servers::free_port().unwrap()
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
        let child = redis_servers::spawn(self.port, self.dir.path(), &self.extra)
            .expect("redis-server must be installed and start");
        self.child = Some(child);
        self.paused = false;
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The server's process id and directory, for a caller that keeps the
    /// server past this value (see `helpers`).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("running").id();
        redis_servers::signal(pid, sig).unwrap();
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
