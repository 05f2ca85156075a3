//! A private `mariadbd` on a free port, for tests that crash or pause the
//! database (the shared server on 3306 must never be touched). Its data
//! directory survives `kill` + `start`, as a real server's would. Started
//! by the same code as `herald demo`'s (`herald::bench::mariadb_server`).

#![allow(dead_code)]

use std::process::{Child, Command};
use std::time::Duration;

use herald::bench::mariadb_server;

use crate::redis_procs::free_port;

pub struct MariaDbProc {
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl MariaDbProc {
    /// Initialises a data directory and starts the server.
    pub fn start() -> MariaDbProc {
        let dir = tempfile::tempdir().unwrap();
        mariadb_server::install(dir.path()).expect("mariadb-install-db (package mariadb-server)");
        let mut p = MariaDbProc {
            port: free_port(),
            child: None,
            dir,
        };
        p.spawn();
        p
    }

    pub fn url(&self, database: &str) -> String {
        format!("{}/{database}", mariadb_server::url(self.port))
    }

    /// The server's process id and directory, for a caller that keeps the
    /// server past this value (see `helpers`).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    fn spawn(&mut self) {
        let child = mariadb_server::spawn(self.dir.path(), self.port, Duration::from_secs(30))
            .expect("mariadbd must be installed and start");
        self.child = Some(child);
    }

    /// SIGKILL: a crash; committed transactions survive, as InnoDB promises.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGSTOP: the server keeps its sockets open but answers nothing.
    pub fn pause(&self) {
        self.signal("STOP");
    }

    pub fn resume(&self) {
        self.signal("CONT");
    }

    fn signal(&self, sig: &str) {
        if let Some(c) = &self.child {
            let ok = Command::new("kill")
                .arg(format!("-{sig}"))
                .arg(c.id().to_string())
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "kill -{sig} mariadbd failed");
        }
    }

    /// Starts again on the same port and data directory (crash recovery).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for MariaDbProc {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.resume();
        }
        self.kill();
    }
}
