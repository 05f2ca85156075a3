//! Settings of the operator commands: `herald show`, `list`, `retry`,
//! `cancel`. The filters become a [`SelectionSpec`], validated by the same
//! rules (and with the same messages) as the admin API's.

use clap::Args;

use crate::store::ops::spec::SelectionSpec;

/// Filters shared by `list`, `retry` and `cancel`.
#[derive(Debug, Clone, Args)]
pub struct FilterArgs {
    /// Only rows with these statuses (comma-separated: pending, sending, sent, failed, expired, cancelled).
    #[arg(long)]
    pub status: Option<String>,
    /// Only rows of this channel.
    #[arg(long)]
    pub channel: Option<String>,
    /// Only rows for this user id.
    #[arg(long, value_name = "USER_ID")]
    pub user: Option<u64>,
    /// Only rows of this region (`--region` is the global setting of the regions served).
    #[arg(long, value_name = "REGION")]
    pub in_region: Option<String>,
    /// Only the row with this dedupe key.
    #[arg(long)]
    pub dedupe_key: Option<String>,
    /// Only rows scheduled (send_at) at or after this: RFC 3339, or a duration ago (30m, 12h, 7d).
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Only rows scheduled (send_at) before this: RFC 3339, or a duration ago.
    #[arg(long, value_name = "TIME")]
    pub until: Option<String>,
    /// Oldest (lowest id) first instead of newest first.
    #[arg(long)]
    pub oldest_first: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

impl FilterArgs {
    pub fn spec(&self, ids: &[u64], limit: Option<u64>, all: bool) -> SelectionSpec {
        SelectionSpec {
            ids: ids.to_vec(),
            dedupe_key: self.dedupe_key.clone(),
            status: self.status.clone(),
            channel: self.channel.clone(),
            user_id: self.user,
            region: self.in_region.clone(),
            since: self.since.clone(),
            until: self.until.clone(),
            limit,
            order: self.oldest_first.then(|| "oldest_first".to_owned()),
            all,
        }
    }
}

/// The command-line flag of a [`SelectionSpec`] field, for error messages.
pub fn flag_of(field: &str) -> &'static str {
    match field {
        "ids" => "IDS",
        "dedupe_key" => "--dedupe-key",
        "status" => "--status",
        "channel" => "--channel",
        "user_id" => "--user",
        "region" => "--in-region",
        "since" => "--since",
        "until" => "--until",
        "limit" => "--limit",
        "order" => "--oldest-first",
        _ => "the selection",
    }
}

/// `herald show`.
#[derive(Debug, Clone, Args)]
pub struct ShowArgs {
    /// The notification's id.
    #[arg(required_unless_present = "dedupe_key", conflicts_with = "dedupe_key")]
    pub id: Option<u64>,
    /// Show the row with this dedupe key instead.
    #[arg(long)]
    pub dedupe_key: Option<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `herald list`.
#[derive(Debug, Clone, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Rows per page (1-1000).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub limit: u64,
    /// Continue after this cursor (the `next_cursor` of the previous page).
    #[arg(long)]
    pub cursor: Option<u64>,
}

/// `herald retry` and `herald cancel`.
#[derive(Debug, Clone, Args)]
pub struct ChangeArgs {
    /// Notification ids (alone or with filters, which then narrow them).
    pub ids: Vec<u64>,
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Visit at most this many rows of the selection.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub limit: Option<u64>,
    /// Allow a selection without ids or filters (every row).
    #[arg(long)]
    pub all: bool,
    /// Change nothing; report what would change.
    #[arg(long)]
    pub dry_run: bool,
}

/// `herald cancel`.
#[derive(Debug, Clone, Args)]
pub struct CancelArgs {
    #[command(flatten)]
    pub change: ChangeArgs,
    /// Longest wait, in seconds, for rows being sent to reach their outcome.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(0..=3600))]
    pub wait_s: u64,
}
