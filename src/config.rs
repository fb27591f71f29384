//! [`SessionConfig`]: lifetimes, the cookie, and what to do when the store fails.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use axum_core::response::Response;

use crate::store::StoreError;

/// The longest any configured lifetime may be: keeps every timestamp
/// arithmetic far from overflow.
const MAX_LIFETIME: Duration = Duration::from_secs(100 * 366 * 24 * 3600);

/// The `SameSite` attribute of the session cookie.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SameSite {
    /// Sent only with same-site requests.
    Strict,
    /// Sent with same-site requests and top-level cross-site navigations (default).
    Lax,
    /// Sent with every request; requires `Secure`.
    None,
}

/// What the layer does when the store fails while resolving a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum StoreErrorPolicy {
    /// Answer `503 Service Unavailable` (or the custom response) and change
    /// no cookie: nothing is lost, the client retries (default).
    #[default]
    FailClosed,
    /// Serve the request as anonymous, still without touching the cookie.
    ContinueAnonymous,
}

/// Builds the response for a store failure; see
/// [`SessionConfigBuilder::store_error_response`].
pub type StoreErrorResponse = Arc<dyn Fn(&StoreError) -> Response + Send + Sync>;

/// Finds the client's address in a request's extensions (where a server
/// puts connection information); see [`SessionConfigBuilder::client_ip_from`].
pub type ClientIpFrom = Arc<dyn Fn(&http::Extensions) -> Option<std::net::IpAddr> + Send + Sync>;

/// Builds the response when [`ActiveSession`](crate::ActiveSession) finds no
/// logged-in session, from the request's URI; see
/// [`SessionConfigBuilder::unauthenticated_response`].
pub type UnauthenticatedResponse = Arc<dyn Fn(&http::Uri) -> Response + Send + Sync>;

/// The session cookie's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CookieConfig {
    pub(crate) name: String,
    pub(crate) secure: bool,
    pub(crate) http_only: bool,
    pub(crate) same_site: SameSite,
    pub(crate) path: String,
    pub(crate) domain: Option<String>,
    /// `; Path=…; Secure; HttpOnly; SameSite=…`, rendered once by
    /// [`SessionConfigBuilder::build`] so a `Set-Cookie` is one `format!`.
    pub(crate) attributes: String,
}

impl Default for CookieConfig {
    fn default() -> Self {
        let mut cookie = Self {
            name: "__Host-session".to_owned(),
            secure: true,
            http_only: true,
            same_site: SameSite::Lax,
            path: "/".to_owned(),
            domain: None,
            attributes: String::new(),
        };
        cookie.render_attributes();
        cookie
    }
}

impl CookieConfig {
    /// The cookie's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The `Set-Cookie` value that gives the client `value` for
    /// `max_age_secs`, or for the browser session when `None`.
    pub(crate) fn set_cookie(&self, value: &str, max_age_secs: Option<i64>) -> String {
        match max_age_secs {
            Some(max_age) => format!(
                "{}={value}; Max-Age={max_age}{}",
                self.name, self.attributes
            ),
            None => format!("{}={value}{}", self.name, self.attributes),
        }
    }

    /// The `Set-Cookie` value that removes the cookie.
    pub(crate) fn removal(&self) -> String {
        format!(
            "{}=; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT{}",
            self.name, self.attributes
        )
    }

    fn render_attributes(&mut self) {
        use std::fmt::Write as _;
        let mut out = format!("; Path={}", self.path);
        if let Some(domain) = &self.domain {
            let _ = write!(out, "; Domain={domain}");
        }
        if self.secure {
            out.push_str("; Secure");
        }
        if self.http_only {
            out.push_str("; HttpOnly");
        }
        out.push_str(match self.same_site {
            SameSite::Strict => "; SameSite=Strict",
            SameSite::Lax => "; SameSite=Lax",
            SameSite::None => "; SameSite=None",
        });
        self.attributes = out;
    }

    /// Checks the RFC 6265 grammar and the `__Host-` / `__Secure-` prefix rules.
    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |reason| Err(ConfigError::Cookie(reason));
        let is_token_char = |b: u8| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b);
        if self.name.is_empty() || !self.name.bytes().all(is_token_char) {
            return invalid("the cookie name must be a non-empty RFC 6265 token");
        }
        let is_attr_char = |b: u8| b.is_ascii_graphic() && b != b';' || b == b' ';
        if !self.path.starts_with('/') || !self.path.bytes().all(is_attr_char) {
            return invalid(
                "the cookie path must start with `/` and hold no `;` or control characters",
            );
        }
        if let Some(domain) = &self.domain
            && (domain.is_empty() || !domain.bytes().all(|b| is_attr_char(b) && b != b' '))
        {
            return invalid("the cookie domain must be a non-empty host name");
        }
        let lower = self.name.to_ascii_lowercase();
        if lower.starts_with("__host-") {
            if !self.secure {
                return invalid("a `__Host-` cookie must be `Secure`");
            }
            if self.path != "/" {
                return invalid("a `__Host-` cookie must have `Path=/`");
            }
            if self.domain.is_some() {
                return invalid("a `__Host-` cookie must not have a `Domain`");
            }
        }
        if lower.starts_with("__secure-") && !self.secure {
            return invalid("a `__Secure-` cookie must be `Secure`");
        }
        if self.same_site == SameSite::None && !self.secure {
            return invalid("`SameSite=None` requires `Secure`");
        }
        Ok(())
    }
}

/// A configuration that would break the session's rules; returned by
/// [`SessionConfigBuilder::build`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The cookie settings break RFC 6265 or a cookie-prefix rule.
    #[error("invalid session cookie: {0}")]
    Cookie(&'static str),
    /// The lifetimes contradict each other.
    #[error("invalid session lifetimes: {0}")]
    Lifetime(&'static str),
}

/// How sessions live, how their cookie looks, and how failures are answered.
///
/// | setting | default | why |
/// |---|---|---|
/// | `idle_timeout` | 7 days | a session unused for a week ends; used daily it lives on, like the "keep me signed in" of most web apps |
/// | `absolute_lifetime` | 30 days | a hard cap: even a session in daily use signs in again monthly, bounding what one stolen session is worth |
/// | `access_ttl` | 15 minutes | a cookie secret is a short-lived access token: a copied cookie is useful for minutes, and its replay after rotation revokes the session |
/// | `rotation_grace` | 60 seconds | requests already in flight with the old secret (parallel tabs, slow uploads, retries) are still served once the new secret is confirmed; must be shorter than `access_ttl` |
/// | `touch_interval` | 5 minutes | at most one sliding-expiry write per session per 5 minutes: idle expiry is precise to 5 minutes of 7 days, at a fraction of the writes |
/// | `store_timeout` | 5 seconds | a hung store answers 503 rather than holding connections open |
/// | store errors | [`StoreErrorPolicy::FailClosed`] | a store outage never logs anyone out or loses a change |
/// | `pre_login_idle_timeout` / `pre_login_absolute_lifetime` | 30 minutes / 24 hours | data kept before login (OAuth state, CSRF token, cart) is short-lived; such sessions get a browser-session cookie and no rotation |
/// | `max_sessions_per_subject` | 10 | a login beyond it ends the subject's least recently used session, so stolen or forgotten sessions cannot pile up |
/// | reuse detection | on | a rotated-away secret presented after its grace (once its successor was confirmed), or a superseded one, revokes the whole session |
/// | cookie | `__Host-session`, `Secure; HttpOnly; SameSite=Lax; Path=/`, no `Domain` | the `__Host-` prefix pins the cookie to this origin over HTTPS |
///
/// ```
/// use std::time::Duration;
/// use tower_hmac_session::SessionConfig;
///
/// let config = SessionConfig::builder()
///     .idle_timeout(Duration::from_secs(24 * 3600))
///     .access_ttl(Some(Duration::from_secs(600)))
///     .build()
///     .unwrap();
/// assert_eq!(config.idle_timeout(), Duration::from_secs(24 * 3600));
///
/// // A `__Host-` cookie must be `Secure`: rejected when built, not sent.
/// assert!(SessionConfig::builder().cookie_secure(false).build().is_err());
/// ```
#[derive(Clone)]
pub struct SessionConfig {
    pub(crate) idle_timeout: Duration,
    pub(crate) absolute_lifetime: Duration,
    pub(crate) access_ttl: Option<Duration>,
    pub(crate) rotation_grace: Duration,
    pub(crate) touch_interval: Duration,
    pub(crate) store_timeout: Option<Duration>,
    pub(crate) store_error_policy: StoreErrorPolicy,
    pub(crate) store_error_response: Option<StoreErrorResponse>,
    pub(crate) unauthenticated_response: Option<UnauthenticatedResponse>,
    pub(crate) revoke_on_reuse: bool,
    pub(crate) max_sessions_per_subject: Option<u32>,
    pub(crate) pre_login_idle_timeout: Duration,
    pub(crate) pre_login_absolute_lifetime: Duration,
    pub(crate) client_ip_from: Option<ClientIpFrom>,
    pub(crate) trusted_proxy: Option<(http::HeaderName, usize)>,
    pub(crate) cookie: CookieConfig,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(7 * 24 * 3600),
            absolute_lifetime: Duration::from_secs(30 * 24 * 3600),
            access_ttl: Some(Duration::from_secs(15 * 60)),
            rotation_grace: Duration::from_secs(60),
            touch_interval: Duration::from_secs(5 * 60),
            store_timeout: Some(Duration::from_secs(5)),
            store_error_policy: StoreErrorPolicy::FailClosed,
            store_error_response: None,
            unauthenticated_response: None,
            revoke_on_reuse: true,
            max_sessions_per_subject: Some(10),
            pre_login_idle_timeout: Duration::from_secs(30 * 60),
            pre_login_absolute_lifetime: Duration::from_secs(24 * 3600),
            client_ip_from: None,
            trusted_proxy: None,
            cookie: CookieConfig::default(),
        }
    }
}

impl fmt::Debug for SessionConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionConfig")
            .field("idle_timeout", &self.idle_timeout)
            .field("absolute_lifetime", &self.absolute_lifetime)
            .field("access_ttl", &self.access_ttl)
            .field("rotation_grace", &self.rotation_grace)
            .field("touch_interval", &self.touch_interval)
            .field("store_timeout", &self.store_timeout)
            .field("store_error_policy", &self.store_error_policy)
            .field(
                "store_error_response",
                &self.store_error_response.as_ref().map(|_| "custom"),
            )
            .field(
                "unauthenticated_response",
                &self.unauthenticated_response.as_ref().map(|_| "custom"),
            )
            .field("revoke_on_reuse", &self.revoke_on_reuse)
            .field("max_sessions_per_subject", &self.max_sessions_per_subject)
            .field("pre_login_idle_timeout", &self.pre_login_idle_timeout)
            .field(
                "pre_login_absolute_lifetime",
                &self.pre_login_absolute_lifetime,
            )
            .field(
                "client_ip_from",
                &self.client_ip_from.as_ref().map(|_| "custom"),
            )
            .field("trusted_proxy", &self.trusted_proxy)
            .field("cookie", &self.cookie)
            .finish()
    }
}

impl SessionConfig {
    /// Starts from the defaults.
    pub fn builder() -> SessionConfigBuilder {
        SessionConfigBuilder {
            config: Self::default(),
        }
    }

    /// The preset for plain-HTTP local development: the cookie is named
    /// `dev-session`, without the `__Host-` prefix and without `Secure`, so
    /// a browser sends it to `http://127.0.0.1`. **Never ship it:** without
    /// `Secure` the secret travels in clear text, and without the prefix a
    /// sibling subdomain can toss a cookie of the same name.
    ///
    /// ```
    /// use tower_hmac_session::SessionConfig;
    ///
    /// let config = SessionConfig::development();
    /// assert_eq!(config.cookie().name(), "dev-session");
    /// ```
    pub fn development() -> Self {
        Self::development_builder()
            .build()
            .expect("the development preset is a valid configuration")
    }

    /// A builder starting from [`development`](Self::development), to change
    /// lifetimes while keeping the plain-HTTP cookie.
    pub fn development_builder() -> SessionConfigBuilder {
        Self::builder()
            .cookie_name("dev-session")
            .cookie_secure(false)
    }

    /// Idle expiry: a session unused this long ends.
    pub fn idle_timeout(&self) -> Duration {
        self.idle_timeout
    }

    /// Hard cap on a session's life.
    pub fn absolute_lifetime(&self) -> Duration {
        self.absolute_lifetime
    }

    /// How long one cookie secret is used before rotation; `None`: never rotated.
    pub fn access_ttl(&self) -> Option<Duration> {
        self.access_ttl
    }

    /// How long a rotated-away secret stays valid once its successor is
    /// confirmed, and how long after a rotation the previous secret is
    /// still a request in flight.
    pub fn rotation_grace(&self) -> Duration {
        self.rotation_grace
    }

    /// Least time between two sliding-expiry writes for one session.
    pub fn touch_interval(&self) -> Duration {
        self.touch_interval
    }

    /// The touch interval in force for a session with `idle_timeout`:
    /// `min(touch_interval, idle_timeout / 2)`, so a session used steadily
    /// never expires between two writes.
    pub fn effective_touch_interval(&self, idle_timeout: Duration) -> Duration {
        self.touch_interval.min(idle_timeout / 2)
    }

    /// Limit on each store operation; `None`: no limit.
    pub fn store_timeout(&self) -> Option<Duration> {
        self.store_timeout
    }

    /// What the layer does when the store fails while resolving.
    pub fn store_error_policy(&self) -> StoreErrorPolicy {
        self.store_error_policy
    }

    /// Whether a replayed rotated-away secret revokes the session.
    pub fn revoke_on_reuse(&self) -> bool {
        self.revoke_on_reuse
    }

    /// The most live sessions one subject may have; `None`: no limit.
    pub fn max_sessions_per_subject(&self) -> Option<u32> {
        self.max_sessions_per_subject
    }

    /// Idle timeout of a session before login.
    pub fn pre_login_idle_timeout(&self) -> Duration {
        self.pre_login_idle_timeout
    }

    /// Absolute lifetime of a session before login.
    pub fn pre_login_absolute_lifetime(&self) -> Duration {
        self.pre_login_absolute_lifetime
    }

    /// The cookie settings.
    pub fn cookie(&self) -> &CookieConfig {
        &self.cookie
    }
}

/// Builds a [`SessionConfig`]; see [`SessionConfig::builder`].
#[derive(Debug, Clone)]
pub struct SessionConfigBuilder {
    config: SessionConfig,
}

impl SessionConfigBuilder {
    /// Idle expiry (default 7 days), at least a second (records keep it in
    /// whole seconds). Must exceed `touch_interval`.
    pub fn idle_timeout(mut self, value: Duration) -> Self {
        self.config.idle_timeout = value;
        self
    }

    /// Hard cap on a session's life (default 30 days).
    pub fn absolute_lifetime(mut self, value: Duration) -> Self {
        self.config.absolute_lifetime = value;
        self
    }

    /// How long one secret is used before rotation (default 15 minutes);
    /// `None` disables rotation.
    pub fn access_ttl(mut self, value: Option<Duration>) -> Self {
        self.config.access_ttl = value;
        self
    }

    /// How long the previous secret stays valid after a rotation (default 60 s).
    pub fn rotation_grace(mut self, value: Duration) -> Self {
        self.config.rotation_grace = value;
        self
    }

    /// Least time between two sliding-expiry writes (default 5 minutes).
    pub fn touch_interval(mut self, value: Duration) -> Self {
        self.config.touch_interval = value;
        self
    }

    /// Limit on each store operation (default 5 s); `None`: no limit.
    pub fn store_timeout(mut self, value: Option<Duration>) -> Self {
        self.config.store_timeout = value;
        self
    }

    /// What to do when the store fails while resolving (default: 503).
    pub fn store_error_policy(mut self, value: StoreErrorPolicy) -> Self {
        self.config.store_error_policy = value;
        self
    }

    /// Builds the response for store failures instead of the plain 503.
    ///
    /// ```
    /// use axum_core::response::IntoResponse;
    /// use http::StatusCode;
    /// use tower_hmac_session::SessionConfig;
    ///
    /// let config = SessionConfig::builder()
    ///     .store_error_response(|_err| {
    ///         (StatusCode::SERVICE_UNAVAILABLE, "sessions are down, retry soon").into_response()
    ///     })
    ///     .build()
    ///     .unwrap();
    /// # let _ = config;
    /// ```
    pub fn store_error_response(
        mut self,
        make: impl Fn(&StoreError) -> Response + Send + Sync + 'static,
    ) -> Self {
        self.config.store_error_response = Some(Arc::new(make));
        self
    }

    /// Builds the response when [`ActiveSession`](crate::ActiveSession) finds
    /// no logged-in session, instead of a plain 401: a redirect to the login
    /// page that comes back to the original path, say.
    ///
    /// ```
    /// use axum_core::response::IntoResponse;
    /// use http::{StatusCode, header};
    /// use tower_hmac_session::SessionConfig;
    ///
    /// let config = SessionConfig::builder()
    ///     .unauthenticated_response(|uri| {
    ///         let back = uri.path_and_query().map_or("/", |p| p.as_str());
    ///         // A real app would percent-encode `back`.
    ///         let login = format!("/login?next={back}");
    ///         (StatusCode::SEE_OTHER, [(header::LOCATION, login)]).into_response()
    ///     })
    ///     .build()
    ///     .unwrap();
    /// # let _ = config;
    /// ```
    pub fn unauthenticated_response(
        mut self,
        make: impl Fn(&http::Uri) -> Response + Send + Sync + 'static,
    ) -> Self {
        self.config.unauthenticated_response = Some(Arc::new(make));
        self
    }

    /// Whether a rotated-away secret presented after its grace revokes the
    /// whole session (default `true`). When `false` it is merely unknown.
    pub fn revoke_on_reuse(mut self, value: bool) -> Self {
        self.config.revoke_on_reuse = value;
        self
    }

    /// The most live sessions one subject may have (default 10): a login
    /// beyond it revokes the subject's least recently used session
    /// (`session_limit`), atomically with the insert. `None` removes the
    /// limit. Must be at least 1.
    pub fn max_sessions_per_subject(mut self, value: Option<u32>) -> Self {
        self.config.max_sessions_per_subject = value;
        self
    }

    /// Idle timeout of a session before login (default 30 minutes): what a
    /// `Session::insert` without a login keeps (OAuth state, a CSRF token, a
    /// flash message, a cart) lives this long unused.
    pub fn pre_login_idle_timeout(mut self, value: Duration) -> Self {
        self.config.pre_login_idle_timeout = value;
        self
    }

    /// Absolute lifetime of a session before login (default 24 hours).
    pub fn pre_login_absolute_lifetime(mut self, value: Duration) -> Self {
        self.config.pre_login_absolute_lifetime = value;
        self
    }

    /// Where the client's address for a login's device metadata comes from
    /// when no trusted proxy header is configured: a function of the
    /// request's extensions. With axum:
    /// `.client_ip_from(|ext| ext.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip()))`
    /// (and `into_make_service_with_connect_info::<SocketAddr>()`).
    pub fn client_ip_from(
        mut self,
        find: impl Fn(&http::Extensions) -> Option<std::net::IpAddr> + Send + Sync + 'static,
    ) -> Self {
        self.config.client_ip_from = Some(Arc::new(find));
        self
    }

    /// Behind reverse proxies: take the client's address from `header`
    /// (`X-Forwarded-For`, say), the entry `hops` places from the right
    /// (1: the address your nearest proxy saw), never the leftmost, which
    /// the client writes itself. Only set it when every request passes
    /// through that many proxies you run.
    pub fn trusted_proxy_header(mut self, header: http::HeaderName, hops: usize) -> Self {
        self.config.trusted_proxy = Some((header, hops));
        self
    }

    /// The cookie's name (default `__Host-session`). A name without the
    /// `__Host-` prefix can be set by a sibling subdomain (cookie tossing):
    /// keep the prefix unless you cannot.
    pub fn cookie_name(mut self, value: impl Into<String>) -> Self {
        self.config.cookie.name = value.into();
        self
    }

    /// The `Secure` attribute (default `true`). Plain-HTTP development needs
    /// `false` together with a name without the `__Host-` prefix.
    pub fn cookie_secure(mut self, value: bool) -> Self {
        self.config.cookie.secure = value;
        self
    }

    /// The `HttpOnly` attribute (default `true`).
    pub fn cookie_http_only(mut self, value: bool) -> Self {
        self.config.cookie.http_only = value;
        self
    }

    /// The `SameSite` attribute (default `Lax`).
    pub fn cookie_same_site(mut self, value: SameSite) -> Self {
        self.config.cookie.same_site = value;
        self
    }

    /// The `Path` attribute (default `/`).
    pub fn cookie_path(mut self, value: impl Into<String>) -> Self {
        self.config.cookie.path = value.into();
        self
    }

    /// The `Domain` attribute (default none: host-only).
    pub fn cookie_domain(mut self, value: Option<String>) -> Self {
        self.config.cookie.domain = value;
        self
    }

    /// Validates and builds.
    ///
    /// # Errors
    ///
    /// A cookie that breaks RFC 6265 or the `__Host-`/`__Secure-` rules, a
    /// zero or over-long lifetime, an idle timeout under a second or not
    /// above the touch interval, or an absolute lifetime below the idle
    /// timeout.
    pub fn build(mut self) -> Result<SessionConfig, ConfigError> {
        self.config.cookie.render_attributes();
        let c = &self.config;
        c.cookie.validate()?;
        let lifetime = |reason| Err(ConfigError::Lifetime(reason));
        let all = [
            Some(c.idle_timeout),
            Some(c.absolute_lifetime),
            c.access_ttl,
            Some(c.rotation_grace),
            Some(c.touch_interval),
        ];
        if all.iter().flatten().any(|d| *d > MAX_LIFETIME) {
            return lifetime("no lifetime may exceed 100 years");
        }
        if c.idle_timeout.is_zero() || c.absolute_lifetime.is_zero() {
            return lifetime("idle_timeout and absolute_lifetime must be positive");
        }
        // Records keep a login's idle timeout in whole seconds, and a login
        // refuses one under a second: such a config would fail every login.
        if c.idle_timeout < Duration::from_secs(1) {
            return lifetime("idle_timeout must be at least a second");
        }
        if c.access_ttl.is_some_and(|d| d.is_zero()) {
            return lifetime("access_ttl must be positive (or None to disable rotation)");
        }
        if c.touch_interval >= c.idle_timeout {
            return lifetime("touch_interval must be shorter than idle_timeout");
        }
        if c.access_ttl.is_some_and(|ttl| c.rotation_grace >= ttl) {
            return lifetime("rotation_grace must be shorter than access_ttl");
        }
        if c.absolute_lifetime < c.idle_timeout {
            return lifetime("absolute_lifetime must be at least idle_timeout");
        }
        if c.pre_login_idle_timeout.is_zero() || c.pre_login_absolute_lifetime.is_zero() {
            return lifetime("the pre-login lifetimes must be positive");
        }
        if c.pre_login_absolute_lifetime < c.pre_login_idle_timeout {
            return lifetime("pre_login_absolute_lifetime must be at least pre_login_idle_timeout");
        }
        if c.pre_login_idle_timeout > MAX_LIFETIME || c.pre_login_absolute_lifetime > MAX_LIFETIME {
            return lifetime("no lifetime may exceed 100 years");
        }
        if c.trusted_proxy.as_ref().is_some_and(|(_, hops)| *hops == 0) {
            return lifetime("a trusted proxy header needs at least one hop");
        }
        if c.max_sessions_per_subject == Some(0) {
            return lifetime("max_sessions_per_subject must be at least 1 (or None)");
        }
        if c.store_timeout.is_some_and(|d| d.is_zero()) {
            return lifetime("store_timeout must be positive (or None)");
        }
        Ok(self.config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let built = SessionConfig::builder().build().unwrap();
        assert_eq!(built.cookie().name(), "__Host-session");
        assert!(built.cookie.secure && built.cookie.http_only);
        assert_eq!(built.cookie.same_site, SameSite::Lax);
    }

    #[test]
    fn host_prefix_rules_are_enforced() {
        let b = SessionConfig::builder;
        assert!(b().cookie_secure(false).build().is_err());
        assert!(b().cookie_path("/app").build().is_err());
        assert!(
            b().cookie_domain(Some("example.com".into()))
                .build()
                .is_err()
        );
        assert!(
            b().cookie_name("__host-x")
                .cookie_secure(false)
                .build()
                .is_err()
        );
        assert!(
            b().cookie_name("__Secure-s")
                .cookie_secure(false)
                .build()
                .is_err()
        );
        assert!(
            b().cookie_name("sid")
                .cookie_secure(false)
                .cookie_path("/app")
                .cookie_domain(Some("example.com".into()))
                .build()
                .is_ok()
        );
    }

    #[test]
    fn cookie_grammar_is_enforced() {
        let b = || SessionConfig::builder().cookie_name("sid");
        assert!(b().cookie_name("").build().is_err());
        assert!(b().cookie_name("a b").build().is_err());
        assert!(b().cookie_name("a=b").build().is_err());
        assert!(b().cookie_name("a;b").build().is_err());
        assert!(b().cookie_path("/a;b").cookie_secure(true).build().is_err());
        assert!(b().cookie_path("relative").build().is_err());
        assert!(
            b().cookie_same_site(SameSite::None)
                .cookie_secure(false)
                .build()
                .is_err()
        );
    }

    #[test]
    fn set_cookie_values_render_every_attribute() {
        let default = SessionConfig::default();
        assert_eq!(
            default.cookie.set_cookie("abc", Some(60)),
            "__Host-session=abc; Max-Age=60; Path=/; Secure; HttpOnly; SameSite=Lax"
        );
        assert_eq!(
            default.cookie.removal(),
            "__Host-session=; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT; \
             Path=/; Secure; HttpOnly; SameSite=Lax"
        );
        assert_eq!(
            default.cookie.set_cookie("abc", None),
            "__Host-session=abc; Path=/; Secure; HttpOnly; SameSite=Lax"
        );
        let custom = SessionConfig::builder()
            .cookie_name("sid")
            .cookie_path("/app")
            .cookie_domain(Some("example.com".into()))
            .cookie_http_only(false)
            .cookie_same_site(SameSite::Strict)
            .build()
            .unwrap();
        assert_eq!(
            custom.cookie.set_cookie("v", Some(5)),
            "sid=v; Max-Age=5; Path=/app; Domain=example.com; Secure; SameSite=Strict"
        );
        let dev = SessionConfig::builder()
            .cookie_name("dev")
            .cookie_secure(false)
            .build()
            .unwrap();
        assert_eq!(
            dev.cookie.set_cookie("v", Some(1)),
            "dev=v; Max-Age=1; Path=/; HttpOnly; SameSite=Lax"
        );
    }

    #[test]
    fn contradictory_lifetimes_are_rejected() {
        let b = SessionConfig::builder;
        assert!(b().idle_timeout(Duration::ZERO).build().is_err());
        assert!(
            b().touch_interval(Duration::from_secs(7 * 24 * 3600))
                .build()
                .is_err()
        );
        assert!(
            b().absolute_lifetime(Duration::from_secs(3600))
                .build()
                .is_err()
        );
        assert!(b().access_ttl(Some(Duration::ZERO)).build().is_err());
        for grace in [60, 61] {
            assert_eq!(
                b().access_ttl(Some(Duration::from_secs(60)))
                    .rotation_grace(Duration::from_secs(grace))
                    .build()
                    .unwrap_err(),
                ConfigError::Lifetime("rotation_grace must be shorter than access_ttl")
            );
        }
        assert!(
            b().access_ttl(Some(Duration::from_secs(60)))
                .rotation_grace(Duration::from_secs(59))
                .build()
                .is_ok()
        );
        let dev = SessionConfig::development();
        assert!(!dev.cookie.secure);
        assert_eq!(
            dev.cookie.set_cookie("v", Some(1)),
            "dev-session=v; Max-Age=1; Path=/; HttpOnly; SameSite=Lax"
        );
        assert!(b().access_ttl(None).build().is_ok());
        // A login's idle timeout is kept in whole seconds: under one is
        // refused (rather than every login failing later), one is fine.
        let short = ConfigError::Lifetime("idle_timeout must be at least a second");
        let sub_second = b()
            .idle_timeout(Duration::from_millis(900))
            .touch_interval(Duration::from_millis(100))
            .access_ttl(None);
        assert_eq!(sub_second.build().unwrap_err(), short);
        // A session before login's is rounded up to a second instead.
        let pre_login = b().pre_login_idle_timeout(Duration::from_millis(999));
        assert!(pre_login.build().is_ok());
        assert!(
            b().idle_timeout(Duration::from_secs(1))
                .touch_interval(Duration::from_millis(500))
                .access_ttl(None)
                .pre_login_idle_timeout(Duration::from_secs(1))
                .pre_login_absolute_lifetime(Duration::from_secs(1))
                .build()
                .is_ok()
        );
        assert!(
            b().absolute_lifetime(Duration::from_secs(200 * 366 * 24 * 3600))
                .build()
                .is_err()
        );
    }
}
