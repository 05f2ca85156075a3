//! Disk full for the `file` channel: the deliveries file lives on a small
//! private tmpfs that the test fills to the last byte mid-drain, then frees.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::json;

use super::*;
use crate::redis_procs::Masters;

/// A tmpfs mounted for one test, unmounted (lazily, so a still-open file
/// cannot keep it) when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(bytes: u64) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={bytes}"))
            .arg("tmpfs")
            .arg(dir.path())
            .output()
            .expect("running mount");
        assert!(
            out.status.success(),
            "the disk-full scenario mounts a small tmpfs and needs root (CAP_SYS_ADMIN): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Writes zeros until the filesystem refuses: afterwards not even one more
/// byte fits, so every delivery fails whole or (at a page's tail) short.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("ballast");
    let mut f = std::fs::File::create(&path).unwrap();
    let chunk = vec![0u8; 4096];
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(28) => break,
            Err(e) => panic!("filling the tmpfs: {e}"),
        }
    }
    // Byte by byte into the last partial page.
    while matches!(f.write(&[0u8]), Ok(1)) {}
    path
}

/// Rows waiting for a retry whose last attempt failed for want of space.
async fn enospc_rows(rig: &Rig) -> i64 {
    sqlx::query_scalar(
        "SELECT COUNT(*) FROM notifications WHERE status = 'pending' \
         AND attempts > 0 AND last_error LIKE '%No space left on device%'",
    )
    .fetch_one(rig.store.pool())
    .await
    .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_disk_full_for_the_file_channel() {
    let size = size();
    // Room for every delivery (about 200 bytes each) twice over.
    let fs = Tmpfs::mount(size.rows * 400 + (1 << 20));
    let masters = Masters::start(3);
    let mut rig = Rig::shared_in(size, fs.path()).await;
    let url = rig.url.clone();
    let mut workers = vec![
        rig.spawn("a", &url, &masters.urls(), &[]),
        rig.spawn("b", &url, &masters.urls(), &[]),
    ];
    rig.wait_sent(rig.strike_at()).await;

    let start = db_now();
    let ballast = fill(fs.path());
    // The reason reaches the rows while the disk is full.
    wait_until(
        "rows failing with 'No space left on device'",
        Duration::from_secs(60),
        || async { enospc_rows(&rig).await > 0 },
    )
    .await;
    let sent_at_full = rig.sent().await;
    tokio::time::sleep(size.fault).await;
    let peak = enospc_rows(&rig).await;
    let sent_during = rig.sent().await - sent_at_full;
    std::fs::remove_file(&ballast).unwrap();
    let window = window_since(start);
    let failed: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM notifications WHERE status = 'failed'")
            .fetch_one(rig.store.pool())
            .await
            .unwrap();
    assert_eq!(
        failed, 0,
        "a full disk is transient: nothing may fail for good"
    );
    settle_and_report(
        &rig,
        "disk_full_file_channel",
        "tmpfs holding the deliveries file filled to the last byte mid-drain, freed after the fault length",
        window,
        &mut workers,
        None,
        json!({
            "rows_retrying_with_enospc": peak,
            "sent_while_full": sent_during,
        }),
    )
    .await;
}
