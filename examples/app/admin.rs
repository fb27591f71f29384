//! The admin page: sessions per key version, key rotation at run time, and
//! the crate's recent events.

use std::fmt::Write as _;

use axum::extract::{Form, State};
use axum::response::{Html, Redirect};
use serde::Deserialize;
use tower_hmac_session::{ActiveSession, KeyVersion};

use crate::events::Kind;
use crate::html::{csrf_field, esc, when};
use crate::keys::KeySource;
use crate::pages::{current_user, duration_text, render, set_flash};
use crate::{App, AppError, csrf};

fn require_admin(app: &App, session: &ActiveSession) -> Result<(), AppError> {
    match current_user(app, session)?.admin {
        true => Ok(()),
        false => Err(AppError::Forbidden("Only an admin can see this page.")),
    }
}

pub(crate) async fn page(
    State(app): State<App>,
    session: ActiveSession,
) -> Result<Html<String>, AppError> {
    require_admin(&app, &session)?;
    let token = csrf::token(session.session())?;
    let ring = app.manager.key_ring();
    let current = ring.current();
    let counts = app
        .manager
        .count_by_key_version(app.settings.recent_window)
        .await?;

    let mut rows = String::new();
    for version in ring.versions() {
        let count = counts.get(&version).copied().unwrap_or_default();
        let action = if version == current {
            "<span class=\"badge ok\">current</span>".to_owned()
        } else {
            format!(
                "<form method=post action=\"/admin/keys/retire\" class=inline>{csrf}\
                 <input type=hidden name=version value=\"{v}\">\
                 <button class=\"btn danger small\" id=retire-{v}>Retire v{v}: ends {n} \
                 {sessions}</button></form>",
                csrf = csrf_field(&token),
                v = version.0,
                n = count.total(),
                sessions = if count.total() == 1 {
                    "session"
                } else {
                    "sessions"
                },
            )
        };
        let _ = write!(
            rows,
            "<tr data-version=\"{v}\"><td><b>v{v}</b></td><td class=num>{recent}</td>\
             <td class=num>{dormant}</td><td class=num>{total}</td><td class=num>{action}</td></tr>",
            v = version.0,
            recent = count.recent,
            dormant = count.dormant,
            total = count.total(),
        );
    }
    // Versions no longer in the ring whose sessions have not been purged yet
    // would show here too; they cannot be used, so they are left out.

    let source = match &app.keys.source {
        KeySource::Env(name) => format!(
            "<p class=\"flash warn\">Keys come from <code>{}</code>: a rotation here lasts until \
             the app restarts. Put the new list in the variable to keep it.</p>",
            esc(name)
        ),
        KeySource::File { path, generated } => format!(
            "<p class=sub>Keys are read from and written to <code>{}</code>{}. Production \
             apps take them from a secret store (<code>SESSION_KEYS</code>).</p>",
            esc(&path.display().to_string()),
            if *generated {
                ", a development key file this app generated"
            } else {
                ""
            }
        ),
    };

    let mut events = String::new();
    for (kind, event) in app.events.interesting(12) {
        let badge = match kind {
            Kind::Reuse => "<span class=\"badge err\">reuse detected</span>",
            Kind::Ended => "<span class=\"badge warn\">session ended</span>",
            Kind::Keys => "<span class=\"badge accent\">keys</span>",
            Kind::SignIn => "<span class=\"badge ok\">sign-in</span>",
        };
        let fields: Vec<String> = event
            .fields
            .iter()
            .map(|(k, v)| format!("{}={}", esc(k), esc(v)))
            .collect();
        let _ = write!(
            events,
            "<li>{badge}<span class=msg>{msg}<br><span class=kv>{fields}</span></span>{at}</li>",
            msg = esc(&event.message),
            fields = fields.join(" "),
            // Stamped by the wall clock, not the manager's (which the
            // browser test moves forward): compared with the same.
            at = when(event.at, time::OffsetDateTime::now_utc()),
        );
    }
    if events.is_empty() {
        events.push_str("<li class=empty>Nothing yet.</li>");
    }

    let body = format!(
        "<h1>Admin</h1><p class=lead>Key rotation without signing anyone out, and what the \
         session layer has been doing.</p>\
         <div class=card><h2>Sessions per key version</h2>{source}\
         <table id=versions><thead><tr><th>Key</th><th class=num>Recently used</th>\
         <th class=num>Dormant</th><th class=num>Total</th><th></th></tr></thead>\
         <tbody>{rows}</tbody></table>\
         <div class=actions><form method=post action=\"/admin/keys/rotate\" class=inline>{csrf}\
         <button class=btn id=rotate>Add and promote a new key</button></form>\
         <span class=sub>\"Recently used\": seen within {recent}; each is re-keyed to the \
         current version on its next request. A dormant session can only be re-keyed when its \
         own browser comes back, so retiring a key ends its sessions.</span></div></div>\
         <div class=card><h2>Recent events</h2><p class=sub>From the crate's <code>tracing</code> \
         log (target <code>tower_hmac_session</code>), kept in memory: sessions ended, old \
         secrets presented again, key changes, sign-ins. Sessions are named by id, never by \
         secret.</p><ul class=events id=events>{events}</ul></div>",
        csrf = csrf_field(&token),
        recent = esc(&duration_text(app.settings.recent_window)),
    );
    render(&app, &session, "admin", "Admin", &body)
}

pub(crate) async fn rotate(
    State(app): State<App>,
    session: ActiveSession,
) -> Result<Redirect, AppError> {
    require_admin(&app, &session)?;
    let text = match app.keys.add_and_promote(&app.manager) {
        Ok(version) => format!(
            "Key {version} added and made current{}. Sessions under older keys stay signed in \
             and move to {version} on their next request.",
            if app.keys.persistent() {
                " (saved to the key file)"
            } else {
                " (until restart)"
            },
            version = show(version),
        ),
        Err(error) => {
            set_flash(session.session(), "error", &error)?;
            return Ok(Redirect::to("/admin"));
        }
    };
    set_flash(session.session(), "ok", &text)?;
    Ok(Redirect::to("/admin"))
}

#[derive(Deserialize)]
pub(crate) struct RetireForm {
    version: u32,
}

pub(crate) async fn retire(
    State(app): State<App>,
    session: ActiveSession,
    Form(form): Form<RetireForm>,
) -> Result<Redirect, AppError> {
    require_admin(&app, &session)?;
    // Counted just before: a session re-keyed in between survives, so this
    // is an upper bound.
    let count = app
        .manager
        .count_by_key_version(app.settings.recent_window)
        .await?
        .get(&KeyVersion(form.version))
        .copied()
        .unwrap_or_default();
    let (kind, text) = match app.keys.retire(&app.manager, form.version) {
        Ok(()) => (
            "ok",
            format!(
                "Key v{} retired. That ended {} {} still under it, sessions before login \
                 included ({} dormant, {} recently used but not back since the rotation).",
                form.version,
                count.total(),
                if count.total() == 1 {
                    "session"
                } else {
                    "sessions"
                },
                count.dormant,
                count.recent,
            ),
        ),
        Err(error) => ("error", error),
    };
    set_flash(session.session(), kind, &text)?;
    Ok(Redirect::to("/admin"))
}

fn show(version: KeyVersion) -> String {
    format!("v{}", version.0)
}
