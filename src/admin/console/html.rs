//! HTML building blocks: escaping (everything from the database goes
//! through [`esc`]), the page layout with its stylesheet, and the small
//! SVG bar chart. No templates, no JavaScript, no build step.

use std::fmt::Write;

/// Escapes text for HTML content and attribute values.
pub(crate) fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Escapes a query-string value.
pub(crate) fn url_value(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

const CSS: &str = r#"
:root{--bg:#f6f7f9;--card:#fff;--ink:#1d2330;--mute:#6b7385;--line:#e3e6ec;--accent:#3559e0;
--ok:#1f9d55;--bad:#d64545;--warn:#c98a0b;--info:#3b82c4}
*{box-sizing:border-box}body{margin:0;font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;background:var(--bg);color:var(--ink)}
header{background:#151a26;color:#fff;padding:12px 28px;display:flex;align-items:center;gap:24px}
header a{color:#fff;text-decoration:none;font-weight:600;font-size:17px}header nav a{font-weight:400;font-size:14px;opacity:.85;margin-right:16px}
header form{margin-left:auto;display:flex;gap:6px}
main{max-width:1180px;margin:24px auto;padding:0 24px}
h1{font-size:20px;margin:0 0 16px}h2{font-size:15px;margin:0 0 10px;color:var(--mute);font-weight:600;text-transform:uppercase;letter-spacing:.04em}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(120px,1fr));gap:12px;margin-bottom:20px}
.card{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:14px 16px;margin-bottom:20px}
.grid .card{margin:0;padding:12px 14px}.num{font-size:26px;font-weight:650}.lbl{color:var(--mute);font-size:11px;white-space:nowrap;text-transform:uppercase;letter-spacing:.04em}
table{width:100%;border-collapse:collapse}th,td{text-align:left;padding:7px 8px;border-bottom:1px solid var(--line);vertical-align:top}
th{color:var(--mute);font-weight:600;font-size:12px;text-transform:uppercase}td.err{color:#7a2e2e;max-width:520px;overflow-wrap:anywhere}
a{color:var(--accent)}.pill{display:inline-block;padding:1px 9px;border-radius:99px;font-size:12px;font-weight:600;background:#eef0f4}
.s-sent{background:#e3f5ea;color:var(--ok)}.s-failed{background:#fbe7e7;color:var(--bad)}.s-pending{background:#eaf2fb;color:var(--info)}
.s-sending{background:#fdf3dd;color:var(--warn)}.s-cancelled,.s-expired{background:#eeeff2;color:var(--mute)}
input,select{font:inherit;padding:6px 9px;border:1px solid var(--line);border-radius:7px;background:#fff}
button{font:inherit;padding:6px 14px;border:0;border-radius:7px;background:var(--accent);color:#fff;cursor:pointer}
button.danger{background:var(--bad)}.actions{display:flex;gap:8px;margin:8px 0 0}
pre{background:#10141f;color:#e6e9ef;padding:12px;border-radius:8px;overflow:auto;white-space:pre-wrap;overflow-wrap:anywhere}
dl{display:grid;grid-template-columns:170px 1fr;gap:6px 12px;margin:0}dt{color:var(--mute)}dd{margin:0;overflow-wrap:anywhere}
.flash{background:#e3f5ea;border:1px solid #bfe6cd;padding:10px 14px;border-radius:8px;margin-bottom:16px}
.mute{color:var(--mute)}svg .bar{fill:var(--accent)}svg .axis{stroke:var(--line)}
"#;

/// A whole page. `title` and `body` are already HTML (escape their parts).
pub(crate) fn page(title: &str, body: &str, logged_in: bool) -> String {
    let search = if logged_in {
        r#"<form action="/console/search" method="get"><select name="by" aria-label="search by">
<option value="id">id</option><option value="dedupe">dedupe key</option><option value="user">user</option></select>
<input name="q" placeholder="search" aria-label="search"><button type="submit">Go</button></form>"#
    } else {
        ""
    };
    let nav = if logged_in {
        r#"<nav><a href="/console">Dashboard</a><a href="/console/notifications?status=failed">Failed</a><a href="/console/notifications?status=pending">Pending</a><a href="/console/notifications">All</a></nav>"#
    } else {
        ""
    };
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>{title} · Herald</title><style>{CSS}</style></head><body>\
         <header><a href=\"/console\">Herald</a>{nav}{search}</header><main>{body}</main></body></html>"
    )
}

pub(crate) fn status_pill(status: &str) -> String {
    format!(
        "<span class=\"pill s-{}\">{}</span>",
        esc(status),
        esc(status)
    )
}

/// Bars for `values` (oldest first), with the largest value on the scale.
pub(crate) fn bar_chart(values: &[u64]) -> String {
    let (w, h, gap) = (900.0_f64, 120.0_f64, 2.0_f64);
    let max = values.iter().copied().max().unwrap_or(0).max(1) as f64;
    let bw = w / values.len().max(1) as f64 - gap;
    let mut svg = format!(
        "<svg viewBox=\"0 0 {w} {}\" width=\"100%\" role=\"img\" aria-label=\"deliveries per minute, last hour\">",
        h + 18.0
    );
    for (i, v) in values.iter().enumerate() {
        let bh = (*v as f64 / max * h).max(if *v > 0 { 1.0 } else { 0.0 });
        let x = i as f64 * (bw + gap);
        let _ = write!(
            svg,
            "<rect class=\"bar\" x=\"{x:.1}\" y=\"{:.1}\" width=\"{bw:.1}\" height=\"{bh:.1}\" rx=\"1.5\"><title>{} min ago: {v}</title></rect>",
            h - bh,
            values.len() - 1 - i
        );
    }
    let _ = write!(
        svg,
        "<line class=\"axis\" x1=\"0\" y1=\"{h}\" x2=\"{w}\" y2=\"{h}\"/>\
         <text x=\"0\" y=\"{}\" font-size=\"11\" fill=\"#6b7385\">60 min ago</text>\
         <text x=\"{w}\" y=\"{}\" font-size=\"11\" fill=\"#6b7385\" text-anchor=\"end\">now · peak {max}/min</text></svg>",
        h + 14.0,
        h + 14.0
    );
    svg
}

#[cfg(test)]
mod tests {
    #[test]
    fn escapes_markup() {
        assert_eq!(
            super::esc(r#"<script>alert("x")&'</script>"#),
            "&lt;script&gt;alert(&quot;x&quot;)&amp;&#39;&lt;/script&gt;"
        );
    }
}
