//! The sender loop (issue 4).
use std::process::ExitCode;

use crate::config::{BenchArgs, CleanupCmdArgs, Settings, WorkerArgs, WorkerConfig};

pub async fn run_process(
    _s: Settings,
    _c: WorkerConfig,
    _a: WorkerArgs,
) -> anyhow::Result<ExitCode> {
    anyhow::bail!("the worker is not built yet")
}
pub async fn cleanup_once(_s: Settings, _a: CleanupCmdArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("cleanup is not built yet")
}
pub async fn bench(_s: Settings, _a: BenchArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("bench is not built yet")
}
