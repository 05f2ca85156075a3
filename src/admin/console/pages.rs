//! The console's pages as HTML strings: dashboard, list, one notification,
//! login. Every value from the database passes through [`esc`].

use std::fmt::Write;

use super::html::{bar_chart, esc, page, status_pill, url_value};
use crate::store::ops::counts::Overview;
use crate::store::ops::list::Page;
use crate::store::ops::show::Detail;

fn time(t: Option<chrono::DateTime<chrono::Utc>>) -> String {
    t.map_or_else(
        || "—".to_owned(),
        |t| t.format("%Y-%m-%d %H:%M:%S").to_string(),
    )
}

pub(crate) fn dashboard(o: &Overview, breakers: &[(String, String)]) -> String {
    let mut b = String::from("<h1>Dashboard</h1><div class=\"grid\">");
    for (status, n) in &o.status.counts {
        let _ = write!(
            b,
            "<a class=\"card\" style=\"text-decoration:none;color:inherit\" href=\"/console/notifications?status={}\">\
             <div class=\"lbl\">{}</div><div class=\"num\">{n}</div></a>",
            url_value(status),
            esc(status)
        );
    }
    let lag = o
        .status
        .oldest_due_lag_s
        .map_or_else(|| "—".to_owned(), |l| format!("{l:.1} s"));
    let _ = write!(
        b,
        "<div class=\"card\"><div class=\"lbl\">due backlog</div><div class=\"num\">{}</div></div>\
         <div class=\"card\"><div class=\"lbl\">oldest due lag</div><div class=\"num\">{lag}</div></div></div>",
        o.status.due_backlog
    );
    let total: u64 = o.sent_per_minute.iter().sum();
    let _ = write!(
        b,
        "<div class=\"card\"><h2>Deliveries per minute · last hour ({total} sent)</h2>{}</div>",
        bar_chart(&o.sent_per_minute)
    );
    b.push_str("<div class=\"card\"><h2>Circuit breakers</h2>");
    if breakers.is_empty() {
        b.push_str("<p class=\"mute\">— (no breaker state known to this process)</p>");
    } else {
        b.push_str("<table><tr><th>channel</th><th>state</th></tr>");
        for (c, s) in breakers {
            let _ = write!(b, "<tr><td>{}</td><td>{}</td></tr>", esc(c), esc(s));
        }
        b.push_str("</table>");
    }
    b.push_str("</div><div class=\"card\"><h2>Latest failures</h2>");
    if o.latest_failures.is_empty() {
        b.push_str("<p class=\"mute\">No failures in the last 7 days.</p>");
    } else {
        b.push_str("<table><tr><th>id</th><th>channel</th><th>user</th><th>failed at (UTC)</th><th>reason</th></tr>");
        for f in &o.latest_failures {
            let _ = write!(
                b,
                "<tr><td><a href=\"/console/notifications/{id}\">{id}</a></td><td>{}</td><td>{}</td><td>{}</td><td class=\"err\">{}</td></tr>",
                esc(&f.channel),
                f.user_id,
                time(f.finished_at),
                esc(f.last_error.as_deref().unwrap_or("")),
                id = f.id
            );
        }
        b.push_str("</table>");
    }
    b.push_str("</div>");
    page("Dashboard", &b, true)
}

/// A list page; `query` is the current filter as a query string (for the
/// next-page link).
pub(crate) fn list(title: &str, p: &Page, query: &str) -> String {
    let mut b = format!("<h1>{}</h1><div class=\"card\">", esc(title));
    if p.rows.is_empty() {
        b.push_str("<p class=\"mute\">No notifications match.</p>");
    } else {
        b.push_str("<table><tr><th>id</th><th>status</th><th>channel</th><th>user</th><th>attempts</th><th>send at</th><th>last error</th></tr>");
        for r in &p.rows {
            let _ = write!(
                b,
                "<tr><td><a href=\"/console/notifications/{id}\">{id}</a></td><td>{}</td><td>{}</td><td><a href=\"/console/notifications?user_id={u}\">{u}</a></td><td>{}</td><td>{}</td><td class=\"err\">{}</td></tr>",
                status_pill(&r.status),
                esc(&r.channel),
                r.attempts,
                time(r.send_at),
                esc(r.last_error.as_deref().unwrap_or("")),
                id = r.id,
                u = r.user_id,
            );
        }
        b.push_str("</table>");
    }
    if let Some(c) = p.next_cursor {
        let _ = write!(
            b,
            "<p><a href=\"/console/notifications?{}&amp;cursor={c}\">Next page →</a></p>",
            esc(query)
        );
    }
    b.push_str("</div>");
    page(title, &b, true)
}

pub(crate) fn detail(d: &Detail, csrf: &str, flash: Option<&str>) -> String {
    let r = &d.row;
    let mut b = String::new();
    if let Some(f) = flash {
        let _ = write!(b, "<div class=\"flash\" role=\"status\">{}</div>", esc(f));
    }
    let _ = write!(
        b,
        "<h1>Notification {} {}</h1><div class=\"card\"><dl>",
        r.id,
        status_pill(&r.status)
    );
    let opt = |v: Option<String>| v.unwrap_or_else(|| "—".into());
    let fields = [
        ("user", r.user_id.to_string()),
        ("channel", r.channel.clone()),
        ("region", r.region.clone()),
        ("dedupe key", opt(r.dedupe_key.clone())),
        ("attempts", r.attempts.to_string()),
        ("send at", time(r.send_at)),
        ("due at", time(r.due_at)),
        ("expires at", time(d.expires_at)),
        ("finished at", time(r.finished_at)),
        ("claimed by", opt(d.claimed_by.clone())),
        ("cancel requested", time(r.cancel_requested_at)),
        (
            "last HTTP status",
            opt(d.last_http_status.map(|s| s.to_string())),
        ),
        ("last error", opt(r.last_error.clone())),
    ];
    for (k, v) in fields {
        let _ = write!(b, "<dt>{k}</dt><dd>{}</dd>", esc(&v));
    }
    b.push_str("</dl><div class=\"actions\">");
    for (action, label, class) in [("retry", "Retry now", ""), ("cancel", "Cancel", "danger")] {
        let _ = write!(
            b,
            "<form method=\"post\" action=\"/console/notifications/{}/{action}\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{}\">\
             <button type=\"submit\" id=\"{action}\" class=\"{class}\">{label}</button></form>",
            r.id,
            esc(csrf)
        );
    }
    let _ = write!(
        b,
        "</div></div><div class=\"card\"><h2>Payload</h2><pre id=\"payload\">{}</pre></div>",
        esc(&d.payload)
    );
    b.push_str("<div class=\"card\"><h2>Attempts</h2>");
    if d.attempt_history.is_empty() {
        b.push_str("<p class=\"mute\">No attempts recorded.</p>");
    } else {
        b.push_str("<table><tr><th>#</th><th>started</th><th>took</th><th>outcome</th><th>HTTP</th><th>worker</th><th>error / response</th></tr>");
        for a in &d.attempt_history {
            let _ = write!(
                b,
                "<tr><td>{}</td><td>{}</td><td>{} ms</td><td>{}</td><td>{}</td><td>{}</td><td class=\"err\">{}<br><span class=\"mute\">{}</span></td></tr>",
                a.attempt,
                time(a.started_at),
                a.duration_ms,
                esc(&a.outcome),
                a.http_status.map_or_else(|| "—".into(), |s| s.to_string()),
                esc(&a.worker_id),
                esc(a.error.as_deref().unwrap_or("")),
                esc(a.response_body.as_deref().unwrap_or("")),
            );
        }
        b.push_str("</table>");
    }
    b.push_str("</div>");
    page(&format!("Notification {}", r.id), &b, true)
}

pub(crate) fn login(failed: bool) -> String {
    let msg = if failed {
        "<p class=\"err\">That is not the admin token.</p>"
    } else {
        ""
    };
    let body = format!(
        "<div class=\"card\" style=\"max-width:420px;margin:60px auto\"><h1>Sign in</h1>{msg}\
         <form method=\"post\" action=\"/console/login\"><p><input type=\"password\" name=\"token\" \
         placeholder=\"HERALD_ADMIN_TOKEN\" aria-label=\"admin token\" style=\"width:100%\" autofocus></p>\
         <button type=\"submit\">Sign in</button></form></div>"
    );
    page("Sign in", &body, false)
}
