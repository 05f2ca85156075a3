//! `herald bench`; see [`crate::bench`].

use std::process::ExitCode;

use crate::bench::BenchArgs;
use crate::config::Settings;

pub async fn run(settings: Settings, args: BenchArgs) -> anyhow::Result<ExitCode> {
    crate::bench::run(settings, args).await
}
