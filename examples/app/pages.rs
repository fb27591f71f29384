//! The user's pages: sign-in, account, devices, password change, sign-out.

use std::fmt::Write as _;

use axum::extract::{Form, Query, State};
use axum::response::{Html, IntoResponse, Redirect, Response};
use http::StatusCode;
use serde::Deserialize;
use tower_hmac_session::{
    ActiveSession, CarryData, LoginOptions, RevokeOutcome, Session, SessionError, SessionId,
};

use crate::html::{Flash, Nav, csrf_field, datetime, device_name, esc, page, when};
use crate::users::{DEMO_USERS, User};
use crate::{App, AppError, csrf};

/// The session data key of a one-time message for the next page.
const FLASH: &str = "flash";

pub(crate) fn set_flash(session: &Session, kind: &str, text: &str) -> Result<(), SessionError> {
    session.insert(FLASH, (kind, text))
}

/// Renders a signed-in page: the navigation, the message left by the last
/// action (read once), then `body`.
pub(crate) fn render(
    app: &App,
    session: &ActiveSession,
    active: &str,
    title: &str,
    body: &str,
) -> Result<Html<String>, AppError> {
    let user = current_user(app, session)?;
    let token = csrf::token(session.session())?;
    let flash: Option<(String, String)> = session.session().remove(FLASH).ok().flatten();
    let flash = match &flash {
        Some((kind, text)) if kind == "ok" => Flash::Ok(text),
        Some((kind, text)) if kind == "warn" => Flash::Warn(text),
        Some((_, text)) => Flash::Error(text),
        None => Flash::None,
    };
    let nav = Nav {
        display_name: &user.display_name,
        admin: user.admin,
        csrf: &token,
        active,
    };
    Ok(page(title, Some(nav), flash, body))
}

pub(crate) fn current_user(app: &App, session: &ActiveSession) -> Result<User, AppError> {
    app.users
        .get(session.subject())
        .ok_or(AppError::Forbidden("This account no longer exists."))
}

pub(crate) async fn not_found() -> Response {
    let body = "<div class=card><h1>Not found</h1><p class=lead>There is no such page.</p>\
                <a class=btn href=\"/\">Back to the app</a></div>";
    (
        StatusCode::NOT_FOUND,
        page("Not found", None, Flash::None, body),
    )
        .into_response()
}

// ----- sign-in and sign-out -------------------------------------------------

#[derive(Deserialize)]
pub(crate) struct LoginQuery {
    m: Option<String>,
}

#[derive(Deserialize)]
pub(crate) struct LoginForm {
    user: String,
    password: String,
    /// A checkbox: present when ticked.
    remember: Option<String>,
}

pub(crate) async fn login_page(session: Session, Query(query): Query<LoginQuery>) -> Response {
    if session.subject().is_some() {
        return Redirect::to("/").into_response();
    }
    // Fixed messages chosen by a code: nothing from the URL is echoed.
    let flash = match query.m.as_deref() {
        Some("signed-out") => Flash::Ok("You have signed out."),
        Some("ended") => Flash::Warn(
            "Your session has ended: it was signed out from another device, or it expired. \
             Please sign in again.",
        ),
        _ => Flash::None,
    };
    login_form(&session, flash, "", StatusCode::OK)
}

fn login_form(session: &Session, flash: Flash<'_>, user: &str, status: StatusCode) -> Response {
    // The token lives in a session before login, created here on first visit.
    let token = match csrf::token(session) {
        Ok(token) => token,
        // The cookie named a session this request may not use (it was just
        // revoked as reuse, say): the layer clears it; a reload starts over.
        Err(_) => {
            let body = "<div class=card><h1>Sign in</h1><p class=lead>Your previous session \
                        could not be used. <a href=\"/login\">Reload the page</a> to sign in.\
                        </p></div>";
            return page("Sign in", None, flash, body).into_response();
        }
    };
    let mut users = String::new();
    for (name, display_name, admin, password) in DEMO_USERS {
        let _ = write!(
            users,
            "<tr><td><code>{}</code></td><td><code>{}</code></td><td>{}{}</td></tr>",
            esc(name),
            esc(password),
            esc(display_name),
            if admin {
                " <span class=\"badge accent\">admin</span>"
            } else {
                ""
            }
        );
    }
    let body = format!(
        "<div class=login><div class=card><h1>Sign in</h1>\
         <p class=lead>to the tower-hmac-session demo</p>\
         <form method=post action=\"/login\">{csrf}\
         <label for=user>User name</label>\
         <input type=text id=user name=user autocomplete=username value=\"{user}\" required autofocus>\
         <label for=password>Password</label>\
         <input type=password id=password name=password autocomplete=current-password required>\
         <label class=check><input type=checkbox name=remember value=1 id=remember> \
         Remember me on this device</label>\
         <button class=btn id=sign-in>Sign in</button></form></div>\
         <div><div class=card><h2>Demo users</h2><table class=users><tr><th>user</th>\
         <th>password</th><th></th></tr>{users}</table></div>\
         <div class=card><h2>What this shows</h2><p class=sub>The form's CSRF token is kept in \
         a <b>session before login</b>; signing in starts a new session with a new secret \
         (no fixation). <b>Remember me</b> gives a cookie with <code>Max-Age</code> to the \
         session's hard expiry; without it the cookie ends with the browser. Either way it is \
         <code>HttpOnly</code> and <code>SameSite=Lax</code>, and the database holds only an \
         HMAC of the secret.</p></div></div></div>",
        csrf = csrf_field(&token),
        user = esc(user),
    );
    (status, page("Sign in", None, flash, &body)).into_response()
}

pub(crate) async fn login(
    State(app): State<App>,
    session: Session,
    Form(form): Form<LoginForm>,
) -> Result<Response, AppError> {
    let name = form.user.trim();
    let Some(user) = app.users.verify(name, form.password).await else {
        tracing::info!("sign-in refused: wrong user name or password");
        return Ok(login_form(
            &session,
            Flash::Error("Wrong user name or password."),
            name,
            StatusCode::UNAUTHORIZED,
        ));
    };
    // A fresh CSRF token for the signed-in session, and nothing carried over
    // from before login: the cookie has no `__Host-` prefix here, so its
    // pre-login data could have been planted by a sibling subdomain.
    let options = LoginOptions::new()
        .remember_me(form.remember.is_some())
        .carry_data(CarryData::None)
        .insert(csrf::KEY, csrf::new_token())
        .map_err(|e| AppError::Internal(e.to_string()))?;
    session.login_with(user.name.clone(), options).await?;
    Ok(Redirect::to("/").into_response())
}

pub(crate) async fn logout(session: Session) -> Result<Redirect, AppError> {
    session.logout().await?;
    Ok(Redirect::to("/login?m=signed-out"))
}

// ----- account ----------------------------------------------------------------

pub(crate) async fn home(
    State(app): State<App>,
    session: ActiveSession,
) -> Result<Html<String>, AppError> {
    let user = current_user(&app, &session)?;
    let now = app.manager.now();
    let cookie = if session.persistent {
        format!(
            "<span class=\"badge ok\">remember me</span> kept until {}",
            esc(&datetime(session.absolute_expires_at))
        )
    } else {
        "<span class=badge>browser session</span> gone when the browser closes".to_owned()
    };
    let authenticated = session
        .authenticated_at
        .map_or_else(|| "—".to_owned(), |at| when(at, now));
    let body = format!(
        "<h1>Hello, {name}</h1><p class=lead>You are signed in as <code id=subject>{subject}</code>\
         {admin}.</p>\
         <div class=grid><div class=card><h2>This session</h2><dl class=facts>\
         <dt>Signed in</dt><dd>{authenticated}</dd>\
         <dt>Started</dt><dd>{created}</dd>\
         <dt>Cookie</dt><dd>{cookie}</dd>\
         <dt>Idle expiry</dt><dd>{idle} <span class=sub>(slides with use)</span></dd>\
         <dt>Hard expiry</dt><dd>{absolute}</dd>\
         <dt>Key version</dt><dd id=key-version>{version}</dd>\
         <dt>Session id</dt><dd><code id=session-id>{id}</code></dd></dl></div>\
         <div class=card><h2>Try it</h2><ul>\
         <li><a href=\"/devices\">Your devices</a>: sign in from another browser, then sign it \
         out from here.</li>\
         <li><a href=\"/password\">Change your password</a>: asks for it again when your \
         sign-in is older than {window}, then signs out your other devices.</li>\
         {admin_link}\
         <li>Restart the app: you stay signed in (sessions live in SQLite).</li></ul></div></div>",
        name = esc(&user.display_name),
        subject = esc(session.subject()),
        admin = if user.admin {
            " <span class=\"badge accent\">admin</span>"
        } else {
            ""
        },
        created = when(session.created_at, now),
        idle = when(session.expires_at, now),
        absolute = when(session.absolute_expires_at, now),
        version = session.key_version,
        id = esc(&session.id.to_string()),
        window = esc(&duration_text(app.settings.reauth_window)),
        admin_link = if user.admin {
            "<li><a href=\"/admin\">Admin</a>: rotate the HMAC keys without signing anyone out.</li>"
        } else {
            ""
        },
    );
    render(&app, &session, "home", "Account", &body)
}

pub(crate) fn duration_text(d: std::time::Duration) -> String {
    match d.as_secs() {
        1 => "1 second".to_owned(),
        s if s < 120 => format!("{s} seconds"),
        s if s < 7200 => format!("{} minutes", s / 60),
        s => format!("{} hours", s / 3600),
    }
}

// ----- devices ----------------------------------------------------------------

#[derive(Deserialize)]
pub(crate) struct DeviceForm {
    id: String,
}

pub(crate) async fn devices(
    State(app): State<App>,
    session: ActiveSession,
) -> Result<Html<String>, AppError> {
    let now = app.manager.now();
    let token = csrf::token(session.session())?;
    let devices = session.session().devices().await?;
    let mut rows = String::new();
    for device in &devices {
        let this = device.id == session.id;
        let _ = write!(
            rows,
            "<tr class=\"device-row{this_class}\" data-session=\"{id}\">\
             <td><div class=device>{name}{this_badge}</div>\
             <div class=sub title=\"{ua}\">{kind}</div></td>\
             <td>{ip}</td><td>{created}</td><td>{seen}</td>\
             <td class=num><form method=post action=\"/devices/revoke\" class=inline>{csrf}\
             <input type=hidden name=id value=\"{id}\">\
             <button class=\"btn danger small\">Sign out</button></form></td></tr>",
            this_class = if this { " this" } else { "" },
            id = esc(&device.id.to_string()),
            name = esc(&device_name(device.user_agent.as_deref())),
            this_badge = if this {
                " <span class=\"badge accent\">this device</span>"
            } else {
                ""
            },
            ua = esc(device.user_agent.as_deref().unwrap_or("no user agent")),
            kind = if device.persistent {
                "remembered"
            } else {
                "browser session"
            },
            ip = device
                .client_ip
                .map_or_else(|| "—".to_owned(), |ip| esc(&ip.to_string())),
            created = when(device.created_at, now),
            seen = when(device.last_seen_at, now),
            csrf = csrf_field(&token),
        );
    }
    let others = devices.len().saturating_sub(1);
    let body = format!(
        "<h1>Your devices</h1><p class=lead>Every browser signed in to your account, newest \
         first. Signing one out ends its session at once, wherever it is.</p>\
         <div class=card><table><thead><tr><th>Device</th><th>Address</th><th>Signed in</th>\
         <th>Last seen</th><th></th></tr></thead><tbody>{rows}</tbody></table>\
         <div class=actions><form method=post action=\"/devices/revoke-others\" class=inline>\
         {csrf}<button class=\"btn\" id=revoke-others{disabled}>Sign out everywhere else</button>\
         </form><span class=sub>{others} other {plural}. \"Last seen\" is updated at most every \
         few minutes.</span></div></div>",
        csrf = csrf_field(&token),
        disabled = if others == 0 { " disabled" } else { "" },
        plural = if others == 1 { "device" } else { "devices" },
    );
    render(&app, &session, "devices", "Your devices", &body)
}

pub(crate) async fn revoke_device(
    session: ActiveSession,
    Form(form): Form<DeviceForm>,
) -> Result<Redirect, AppError> {
    let id: SessionId = form
        .id
        .parse()
        .map_err(|_| AppError::Forbidden("That is not a session id."))?;
    // `revoke_device` only ends a session of this user (the store checks),
    // so an id from a tampered form cannot reach anyone else's.
    let outcome = session.session().revoke_device(&id).await?;
    if id == session.id {
        return Ok(Redirect::to("/login?m=signed-out"));
    }
    let text = match outcome {
        RevokeOutcome::Revoked => "That device is signed out.",
        RevokeOutcome::AlreadyRevoked => "That device was already signed out.",
        RevokeOutcome::NotFound => "No such device.",
    };
    set_flash(session.session(), "ok", text)?;
    Ok(Redirect::to("/devices"))
}

pub(crate) async fn revoke_others(session: ActiveSession) -> Result<Redirect, AppError> {
    // Renews this session's secret first (a copy of this very cookie stops
    // working too), then revokes the others.
    let count = session.session().logout_other_devices().await?;
    let text = match count {
        0 => "There were no other devices to sign out.".to_owned(),
        1 => "Signed out 1 other device.".to_owned(),
        n => format!("Signed out {n} other devices."),
    };
    set_flash(session.session(), "ok", &text)?;
    Ok(Redirect::to("/devices"))
}

// ----- password change behind recent authentication ---------------------------

#[derive(Deserialize)]
pub(crate) struct ReauthForm {
    password: String,
}

#[derive(Deserialize)]
pub(crate) struct PasswordForm {
    new_password: String,
    confirm: String,
}

pub(crate) async fn password_page(
    State(app): State<App>,
    session: ActiveSession,
) -> Result<Response, AppError> {
    if session
        .session()
        .authenticated_within(app.settings.reauth_window)
    {
        password_form(&app, &session, None, StatusCode::OK)
    } else {
        confirm_form(&app, &session, None, StatusCode::OK)
    }
}

fn password_form(
    app: &App,
    session: &ActiveSession,
    error: Option<&str>,
    status: StatusCode,
) -> Result<Response, AppError> {
    let token = csrf::token(session.session())?;
    let body = format!(
        "<h1>Change your password</h1><p class=lead>You signed in recently enough. Changing the \
         password signs out every other device.</p>{error}\
         <div class=card style=\"max-width:440px\"><form method=post action=\"/password\">{csrf}\
         <label for=new_password>New password</label>\
         <input type=password id=new_password name=new_password autocomplete=new-password \
         minlength=8 required>\
         <label for=confirm>Repeat it</label>\
         <input type=password id=confirm name=confirm autocomplete=new-password required>\
         <button class=btn id=change-password>Change password</button></form></div>",
        error = error.map_or_else(String::new, |e| format!(
            "<p class=\"flash error\" role=alert>{}</p>",
            esc(e)
        )),
        csrf = csrf_field(&token),
    );
    Ok((status, render(app, session, "password", "Password", &body)?).into_response())
}

fn confirm_form(
    app: &App,
    session: &ActiveSession,
    error: Option<&str>,
    status: StatusCode,
) -> Result<Response, AppError> {
    let token = csrf::token(session.session())?;
    let body = format!(
        "<h1>Confirm it's you</h1><p class=lead>Changing your password needs a sign-in from the \
         last {window}; yours was {at}. Enter your password again to continue.</p>{error}\
         <div class=card style=\"max-width:440px\"><form method=post action=\"/reauth\">{csrf}\
         <label for=password>Current password</label>\
         <input type=password id=password name=password autocomplete=current-password required \
         autofocus><button class=btn id=confirm-password>Confirm</button></form></div>",
        window = esc(&duration_text(app.settings.reauth_window)),
        at = session
            .authenticated_at
            .map_or_else(|| "unknown".to_owned(), |at| when(at, app.manager.now())),
        error = error.map_or_else(String::new, |e| format!(
            "<p class=\"flash error\" role=alert>{}</p>",
            esc(e)
        )),
        csrf = csrf_field(&token),
    );
    Ok((
        status,
        render(app, session, "password", "Confirm it's you", &body)?,
    )
        .into_response())
}

pub(crate) async fn reauthenticate(
    State(app): State<App>,
    session: ActiveSession,
    Form(form): Form<ReauthForm>,
) -> Result<Response, AppError> {
    if app
        .users
        .verify(session.subject(), form.password)
        .await
        .is_none()
    {
        return confirm_form(
            &app,
            &session,
            Some("That is not your password."),
            StatusCode::UNAUTHORIZED,
        );
    }
    // Moves `authenticated_at` to now and renews the cookie's secret.
    session.session().reauthenticate().await?;
    Ok(Redirect::to("/password").into_response())
}

pub(crate) async fn change_password(
    State(app): State<App>,
    session: ActiveSession,
    Form(form): Form<PasswordForm>,
) -> Result<Response, AppError> {
    // Checked again here, not only when the form was shown: the form may
    // have been open longer than the window.
    match session
        .session()
        .require_authenticated_within(app.settings.reauth_window)
    {
        Ok(()) => {}
        Err(SessionError::ReauthenticationRequired) => {
            return confirm_form(
                &app,
                &session,
                Some("Your sign-in is no longer recent enough: confirm your password first."),
                StatusCode::FORBIDDEN,
            );
        }
        Err(error) => return Err(error.into()),
    }
    let problem = if form.new_password != form.confirm {
        Some("The two passwords differ.")
    } else if form.new_password.chars().count() < 8 {
        Some("Use at least 8 characters.")
    } else if form.new_password.len() > 256 {
        Some("Use at most 256 bytes.")
    } else {
        None
    };
    if let Some(problem) = problem {
        return password_form(
            &app,
            &session,
            Some(problem),
            StatusCode::UNPROCESSABLE_ENTITY,
        );
    }
    app.users
        .set_password(session.subject(), form.new_password)
        .await;
    // Whoever else holds a session of this account (the reason to change a
    // password, often) is out now.
    let count = session.session().logout_other_devices().await?;
    let text = format!(
        "Password changed. {} The new password lasts until the demo restarts.",
        match count {
            0 => "No other device was signed in.".to_owned(),
            1 => "Signed out 1 other device.".to_owned(),
            n => format!("Signed out {n} other devices."),
        }
    );
    set_flash(session.session(), "ok", &text)?;
    Ok(Redirect::to("/").into_response())
}
