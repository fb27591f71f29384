//! CSRF tokens kept in the session's data (before login too), and a
//! middleware that refuses every POST whose form does not carry the token.

use axum::body::{Body, to_bytes};
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::{Method, StatusCode, header};
use rand::RngCore as _;
use tower_hmac_session::{Session, SessionError};

use crate::AppError;

/// The session data key.
pub(crate) const KEY: &str = "csrf";

/// Forms here are small; anything bigger is not one of ours.
const MAX_FORM_BYTES: usize = 16 * 1024;

/// 32 random bytes, base64url: nothing to escape or percent-encode.
pub(crate) fn new_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The session's token, made and stored if it has none. Without a session
/// this starts a session before login (one insert when the response leaves),
/// which is what keeps the login form's token server-side.
pub(crate) fn token(session: &Session) -> Result<String, SessionError> {
    if let Some(token) = session.get::<String>(KEY)? {
        return Ok(token);
    }
    let token = new_token();
    session.insert(KEY, &token)?;
    Ok(token)
}

/// Every POST must be a urlencoded form whose `csrf` field equals the
/// session's token; otherwise 403 before any handler runs. The body is read
/// here and handed on unchanged.
pub(crate) async fn guard(request: Request, next: Next) -> Response {
    if request.method() != Method::POST {
        return next.run(request).await;
    }
    let expected = request
        .extensions()
        .get::<Session>()
        .and_then(|s| s.get::<String>(KEY).ok().flatten());
    let is_form = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    let (parts, body) = request.into_parts();
    let Ok(bytes) = to_bytes(body, MAX_FORM_BYTES).await else {
        return StatusCode::PAYLOAD_TOO_LARGE.into_response();
    };
    let presented = form_field(&bytes, KEY);
    let valid = match (is_form, expected, presented) {
        (true, Some(expected), Some(presented)) => {
            constant_time_eq(expected.as_bytes(), presented.as_bytes())
        }
        _ => false,
    };
    if !valid {
        tracing::warn!(path = %parts.uri.path(), "POST refused: missing or wrong CSRF token");
        return AppError::Forbidden(
            "This form has expired or did not come from this site (CSRF check failed). \
             Go back, reload the page and try again.",
        )
        .into_response();
    }
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

/// The raw value of the first `name=` field of a urlencoded body. Not
/// percent-decoded: our tokens are base64url, which browsers send as is, so
/// an encoded spelling is simply a wrong token.
fn form_field<'a>(body: &'a [u8], name: &str) -> Option<&'a str> {
    std::str::from_utf8(body)
        .ok()?
        .split('&')
        .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
}

/// Compares without stopping at the first difference, so response time says
/// nothing about how much of a guessed token was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
