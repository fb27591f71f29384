//! Hand-written HTML: one escaping function, one page layout, small helpers.
//! Every value that a user, a browser or the store controls goes through
//! [`esc`]; fixed markup does not.

use std::fmt::Write as _;

use axum::response::{Html, Response};
use http::HeaderValue;
use http::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, X_FRAME_OPTIONS};
use time::OffsetDateTime;

/// Escapes text for HTML element content and double-quoted attributes.
pub(crate) fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
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

/// Who the navigation bar shows; `None` on the login page.
pub(crate) struct Nav<'a> {
    pub(crate) display_name: &'a str,
    pub(crate) admin: bool,
    pub(crate) csrf: &'a str,
    pub(crate) active: &'a str,
}

pub(crate) enum Flash<'a> {
    None,
    Ok(&'a str),
    Warn(&'a str),
    Error(&'a str),
}

/// The whole page: head, styles, navigation, the development-config banner,
/// an optional message, then `body` (already HTML).
pub(crate) fn page(
    title: &str,
    nav: Option<Nav<'_>>,
    flash: Flash<'_>,
    body: &str,
) -> Html<String> {
    let mut out = String::with_capacity(8 * 1024 + body.len());
    let _ = write!(
        out,
        "<!doctype html><html lang=en><head><meta charset=utf-8>\
         <meta name=viewport content=\"width=device-width, initial-scale=1\">\
         <title>{} · tower-hmac-session</title><style>{CSS}</style></head><body>\
         <header class=top><div class=wrap><a class=brand href=\"/\">\
         <span class=logo>◆</span> tower-hmac-session <span class=muted>example app</span></a>",
        esc(title)
    );
    if let Some(nav) = &nav {
        let link = |href: &str, label: &str, key: &str| {
            let class = if nav.active == key { " class=on" } else { "" };
            format!("<a href=\"{href}\"{class}>{label}</a>")
        };
        let _ = write!(
            out,
            "<nav>{}{}{}{}<form method=post action=\"/logout\" class=inline>\
             <input type=hidden name=csrf value=\"{}\">\
             <button class=\"btn ghost small\" id=logout>Sign out</button></form>\
             <span class=who>{}</span></nav>",
            link("/", "Account", "home"),
            link("/devices", "Your devices", "devices"),
            link("/password", "Password", "password"),
            if nav.admin {
                link("/admin", "Admin", "admin")
            } else {
                String::new()
            },
            esc(nav.csrf),
            esc(nav.display_name),
        );
    }
    out.push_str(
        "</div></header><div class=devbar><div class=wrap>\
         <b>Development configuration.</b> <code>SessionConfig::development_builder()</code>: \
         cookie <code>dev-session</code> without <code>Secure</code> and without the \
         <code>__Host-</code> prefix, so it works on plain HTTP. Never ship it; the default \
         config is for HTTPS.</div></div><main class=wrap>",
    );
    match flash {
        Flash::None => {}
        Flash::Ok(text) => {
            let _ = write!(out, "<p class=\"flash ok\" role=status>{}</p>", esc(text));
        }
        Flash::Warn(text) => {
            let _ = write!(out, "<p class=\"flash warn\" role=status>{}</p>", esc(text));
        }
        Flash::Error(text) => {
            let _ = write!(out, "<p class=\"flash error\" role=alert>{}</p>", esc(text));
        }
    }
    out.push_str(body);
    out.push_str(
        "</main><footer class=wrap>Sessions stored in SQLite; the cookie holds only a random \
         secret, the store only its HMAC. <a href=\"https://docs.rs/tower-hmac-session\">Docs</a>\
         </footer></body></html>",
    );
    Html(out)
}

/// Set on every response (a `map_response` layer outside everything else, so
/// redirects and error pages get them too): pages carry account details and
/// CSRF tokens, so no cache keeps them (a shared computer's back button, a
/// proxy), and no other site may frame them (clickjacking a "sign out
/// everywhere" or "rotate keys" button). `X-Frame-Options` for browsers
/// without CSP `frame-ancestors`.
pub(crate) async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("frame-ancestors 'none'"),
    );
    response
}

/// A hidden CSRF field for a form.
pub(crate) fn csrf_field(token: &str) -> String {
    format!("<input type=hidden name=csrf value=\"{}\">", esc(token))
}

/// `2025-01-31 14:05 UTC`.
pub(crate) fn datetime(at: OffsetDateTime) -> String {
    let at = at.to_offset(time::UtcOffset::UTC);
    at.format(time::macros::format_description!(
        "[year]-[month]-[day] [hour]:[minute]:[second] UTC"
    ))
    .unwrap_or_else(|_| at.to_string())
}

/// "just now", "5 min ago", "3 h ago", "in 29 days".
pub(crate) fn relative(at: OffsetDateTime, now: OffsetDateTime) -> String {
    let seconds = (at - now).whole_seconds();
    let (ahead, s) = (seconds > 0, seconds.unsigned_abs());
    let amount = match s {
        0..=59 => {
            return if ahead {
                "in a moment".into()
            } else {
                "just now".into()
            };
        }
        // Rounded to the nearest unit: an idle timeout of 7 days just
        // renewed reads "in 7 days", not "in 6 days".
        60..=3599 => format!("{} min", (s + 30) / 60),
        3600..=86_399 => format!("{} h", (s + 1800) / 3600),
        _ => match (s + 43_200) / 86_400 {
            1 => "1 day".to_owned(),
            days => format!("{days} days"),
        },
    };
    if ahead {
        format!("in {amount}")
    } else {
        format!("{amount} ago")
    }
}

/// A time with its relative form, the exact one in a tooltip.
pub(crate) fn when(at: OffsetDateTime, now: OffsetDateTime) -> String {
    format!(
        "<time datetime=\"{}\" title=\"{}\">{}</time>",
        esc(&datetime(at)),
        esc(&datetime(at)),
        esc(&relative(at, now))
    )
}

/// A short name for a user agent: browser and system, by the usual tokens.
pub(crate) fn device_name(user_agent: Option<&str>) -> String {
    let Some(ua) = user_agent.filter(|ua| !ua.is_empty()) else {
        return "Unknown device".into();
    };
    let browser = [
        ("HeadlessChrome/", "Headless Chrome"),
        ("Edg/", "Edge"),
        ("Firefox/", "Firefox"),
        ("Chrome/", "Chrome"),
        ("Safari/", "Safari"),
        ("curl/", "curl"),
    ]
    .iter()
    .find(|(token, _)| ua.contains(token))
    .map_or("Browser", |(_, name)| name);
    let system = [
        ("iPhone", "iPhone"),
        ("iPad", "iPad"),
        ("Android", "Android"),
        ("Windows", "Windows"),
        ("Mac OS X", "macOS"),
        ("Linux", "Linux"),
    ]
    .iter()
    .find(|(token, _)| ua.contains(token))
    .map(|(_, name)| *name);
    match system {
        Some(system) => format!("{browser} on {system}"),
        None => browser.to_owned(),
    }
}

const CSS: &str = r#"
:root{--bg:#f5f6fa;--card:#fff;--ink:#1d2433;--muted:#667085;--line:#e4e7ee;--accent:#4f46e5;
--accent-ink:#fff;--ok:#067647;--ok-bg:#ecfdf3;--warn:#93370d;--warn-bg:#fffaeb;--err:#b42318;--err-bg:#fef3f2}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--ink);font:15px/1.55 system-ui,-apple-system,"Segoe UI",Roboto,
"Helvetica Neue",Arial,sans-serif}
.wrap{max-width:980px;margin:0 auto;padding:0 24px}
a{color:var(--accent);text-decoration:none}a:hover{text-decoration:underline}
code{font:13px/1.4 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;background:#eef0f6;padding:1px 5px;border-radius:4px}
header.top{background:#111827;color:#fff}
header.top .wrap{display:flex;align-items:center;gap:24px;height:56px}
.brand{color:#fff;font-weight:650;letter-spacing:.2px}.brand:hover{text-decoration:none}
.brand .muted{color:#9ca3af;font-weight:400}.logo{color:#818cf8}
nav{display:flex;align-items:center;gap:4px;margin-left:auto}
nav a{color:#d1d5db;padding:6px 10px;border-radius:6px}nav a:hover{background:#1f2937;text-decoration:none}
nav a.on{color:#fff;background:#374151}
nav .who{color:#9ca3af;font-size:13px;margin-left:8px;order:9}
.devbar{background:var(--warn-bg);border-bottom:1px solid #fedf89;color:var(--warn);font-size:13px}
.devbar .wrap{padding-top:8px;padding-bottom:8px}
.devbar code{background:#fef0c7}
main.wrap{padding-top:28px;padding-bottom:24px}
footer{color:var(--muted);font-size:13px;padding-bottom:32px}
h1{font-size:26px;margin:0 0 4px;letter-spacing:-.3px}
h2{font-size:17px;margin:0 0 12px}
.lead{color:var(--muted);margin:0 0 22px}
.card{background:var(--card);border:1px solid var(--line);border-radius:12px;padding:22px 24px;margin-bottom:20px;
box-shadow:0 1px 2px rgba(16,24,40,.04)}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(260px,1fr));gap:20px}
dl.facts{display:grid;grid-template-columns:auto 1fr;gap:8px 18px;margin:0}
dl.facts dt{color:var(--muted)}dl.facts dd{margin:0}
table{width:100%;border-collapse:collapse}
th{text-align:left;font-size:12px;text-transform:uppercase;letter-spacing:.5px;color:var(--muted);font-weight:600;
padding:0 12px 10px}
td{padding:12px;border-top:1px solid var(--line);vertical-align:middle}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
tr.this td{background:#f5f3ff}
.device{font-weight:600}.sub{color:var(--muted);font-size:13px}
.badge{display:inline-block;font-size:12px;font-weight:600;padding:2px 8px;border-radius:999px;background:#eef0f6;
color:#344054;vertical-align:1px}
.badge.accent{background:#e0e7ff;color:#3730a3}.badge.ok{background:var(--ok-bg);color:var(--ok)}
.badge.warn{background:var(--warn-bg);color:var(--warn)}.badge.err{background:var(--err-bg);color:var(--err)}
.btn{display:inline-block;font:inherit;font-weight:600;border:1px solid var(--accent);background:var(--accent);
color:var(--accent-ink);padding:9px 16px;border-radius:8px;cursor:pointer}
.btn:hover{filter:brightness(1.08);text-decoration:none}
.btn.ghost{background:transparent;color:inherit;border-color:#4b5563}
.btn.danger{background:#fff;color:var(--err);border-color:#fda29b}.btn.danger:hover{background:var(--err-bg)}
.btn.small{padding:4px 10px;font-size:13px}
form.inline{display:inline;margin:0}
label{display:block;font-weight:600;margin:0 0 6px}
input[type=text],input[type=password]{width:100%;font:inherit;padding:10px 12px;border:1px solid #d0d5dd;
border-radius:8px;margin:0 0 16px;background:#fff}
input:focus{outline:2px solid #c7d2fe;border-color:var(--accent)}
.check{display:flex;align-items:center;gap:8px;font-weight:400;margin-bottom:18px}
.login{display:grid;grid-template-columns:minmax(300px,400px) 1fr;gap:24px;align-items:start}
@media (max-width:760px){.login{grid-template-columns:1fr}}
.users td{padding:8px 12px}.users code{font-size:12px}
.flash{padding:12px 16px;border-radius:10px;margin:0 0 20px;border:1px solid}
.flash.ok{background:var(--ok-bg);color:var(--ok);border-color:#abefc6}
.flash.warn{background:var(--warn-bg);color:var(--warn);border-color:#fedf89}
.flash.error{background:var(--err-bg);color:var(--err);border-color:#fecdca}
.actions{display:flex;gap:12px;align-items:center;flex-wrap:wrap;margin-top:16px}
ul.events{list-style:none;margin:0;padding:0}
ul.events li{display:flex;gap:12px;align-items:baseline;padding:9px 0;border-top:1px solid var(--line)}
ul.events li:first-child{border-top:0}
ul.events .msg{flex:1}ul.events time{color:var(--muted);font-size:13px;white-space:nowrap}
.kv{color:var(--muted);font-size:12px;font-family:ui-monospace,Menlo,Consolas,monospace}
.empty{color:var(--muted)}
"#;
