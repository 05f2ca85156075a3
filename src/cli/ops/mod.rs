//! The operator commands: `herald show`, `list`, `retry`, `cancel`. Each
//! prints a readable table by default and one JSON document with `--json`;
//! a bad filter exits 2 naming its flag.

pub mod cancel;
pub mod list;
pub mod retry;
pub mod show;
mod table;

use std::process::ExitCode;

use crate::config::ops::flag_of;
use crate::config::Settings;
use crate::store::ops::spec::{SelectionSpec, SpecError};
use crate::store::ops::Selection;
use crate::store::Store;

/// Connects for one command (two connections are plenty).
async fn connect(settings: &Settings) -> anyhow::Result<Store> {
    Store::connect(&settings.database_url, 2).await
}

/// Validates a spec, or says which flag is wrong (exit 2).
fn selection(spec: &SelectionSpec, require_filter: bool) -> Result<Selection, ExitCode> {
    spec.build(require_filter).map_err(|e| usage(&e))
}

fn usage(e: &SpecError) -> ExitCode {
    eprintln!("herald: {}: {}", flag_of(e.field), e.reason);
    ExitCode::from(2)
}
