//! `herald migrate`.

use std::process::ExitCode;

use crate::config::Settings;

pub async fn run(settings: &Settings) -> anyhow::Result<ExitCode> {
    let report = crate::store::migrate::migrate(&settings.database_url).await?;
    println!("{report}");
    Ok(ExitCode::SUCCESS)
}
