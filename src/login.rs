//! [`LoginOptions`]: what one login decides (cookie lifetime, session
//! lifetimes, initial data, device metadata), and the device metadata a
//! request carries.

use std::net::IpAddr;
use std::time::Duration;

use http::HeaderValue;

use crate::config::SessionConfig;
use crate::record::{Data, MAX_USER_AGENT_LEN};

/// Which data a login carries over from the session before login.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum CarryData {
    /// Every key (the default).
    #[default]
    All,
    /// Only these keys.
    Keys(Vec<String>),
    /// Nothing.
    None,
}

/// Options of one login; see [`Session::login_with`](crate::Session::login_with).
///
/// Data carried from a cookie without the `__Host-` prefix may have been
/// planted by a sibling subdomain (cookie tossing): with such a cookie name,
/// carry only keys you verify (an OAuth `state` you compare, say).
///
/// ```
/// use std::time::Duration;
/// use tower_hmac_session::{CarryData, LoginOptions};
///
/// let options = LoginOptions::new()
///     .remember_me(false) // a browser-session cookie
///     .idle_timeout(Duration::from_secs(3600))
///     .carry_data(CarryData::Keys(vec!["cart".into()]))
///     .insert("theme", "dark")
///     .unwrap();
/// # let _ = options;
/// ```
#[derive(Clone, Debug)]
pub struct LoginOptions {
    pub(crate) remember_me: bool,
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) absolute_lifetime: Option<Duration>,
    pub(crate) data: Data,
    pub(crate) carry: CarryData,
    pub(crate) user_agent: Option<String>,
    pub(crate) client_ip: Option<IpAddr>,
}

impl Default for LoginOptions {
    fn default() -> Self {
        Self {
            remember_me: true,
            idle_timeout: None,
            absolute_lifetime: None,
            data: Data::new(),
            carry: CarryData::All,
            user_agent: None,
            client_ip: None,
        }
    }
}

impl LoginOptions {
    /// The defaults: a persistent cookie, the config's lifetimes, the
    /// request's device metadata, every pre-login key carried over.
    pub fn new() -> Self {
        Self::default()
    }

    /// `true` (default): the cookie carries `Max-Age` to the session's
    /// absolute expiry and survives a browser restart; `false`: a
    /// browser-session cookie, gone when the browser closes.
    pub fn remember_me(mut self, value: bool) -> Self {
        self.remember_me = value;
        self
    }

    /// This session's idle timeout (whole seconds; default: the config's).
    pub fn idle_timeout(mut self, value: Duration) -> Self {
        self.idle_timeout = Some(value);
        self
    }

    /// This session's absolute lifetime (default: the config's).
    pub fn absolute_lifetime(mut self, value: Duration) -> Self {
        self.absolute_lifetime = Some(value);
        self
    }

    /// Initial data (on top of what is carried over).
    pub fn data(mut self, data: Data) -> Self {
        self.data = data;
        self
    }

    /// Adds one initial data value.
    ///
    /// # Errors
    ///
    /// The value does not serialize.
    pub fn insert(
        mut self,
        key: impl Into<String>,
        value: impl serde::Serialize,
    ) -> Result<Self, serde_json::Error> {
        self.data.insert(key.into(), serde_json::to_value(value)?);
        Ok(self)
    }

    /// Which pre-login data to carry over (default: all of it).
    pub fn carry_data(mut self, carry: CarryData) -> Self {
        self.carry = carry;
        self
    }

    /// The device's user agent, instead of the request's `User-Agent`
    /// (truncated to 256 bytes, control characters removed).
    pub fn user_agent(mut self, value: impl Into<String>) -> Self {
        self.user_agent = Some(value.into());
        self
    }

    /// The device's address, instead of the one the config finds.
    pub fn client_ip(mut self, value: IpAddr) -> Self {
        self.client_ip = Some(value);
        self
    }

    /// Checks the per-login lifetimes like the config's.
    pub(crate) fn lifetimes(
        &self,
        config: &SessionConfig,
    ) -> Result<(Duration, Duration), &'static str> {
        let idle = self.idle_timeout.unwrap_or(config.idle_timeout());
        let absolute = self.absolute_lifetime.unwrap_or(config.absolute_lifetime());
        if idle.as_secs() == 0 || absolute.is_zero() {
            return Err(
                "a login's idle timeout (at least a second) and absolute lifetime must be positive",
            );
        }
        if absolute < idle {
            return Err("a login's absolute lifetime must be at least its idle timeout");
        }
        const CENTURY: Duration = Duration::from_secs(100 * 366 * 24 * 3600);
        if idle > CENTURY || absolute > CENTURY {
            return Err("no lifetime may exceed 100 years");
        }
        Ok((Duration::from_secs(idle.as_secs()), absolute))
    }
}

/// What the layer noted of a request for a login's device metadata: the
/// `User-Agent` (a header clone, a reference count; turned into text only
/// when a login needs it) and the client's address (parsed from the trusted
/// proxy header only when one is configured).
#[derive(Clone, Debug, Default)]
pub(crate) struct RequestInfo {
    pub(crate) user_agent: Option<HeaderValue>,
    pub(crate) client_ip: Option<IpAddr>,
}

impl RequestInfo {
    pub(crate) fn of<B>(request: &http::Request<B>, config: &SessionConfig) -> Self {
        let client_ip = match &config.trusted_proxy {
            Some((header, hops)) => from_proxy_header(request.headers(), header, *hops),
            None => config
                .client_ip_from
                .as_ref()
                .and_then(|find| find(request.extensions())),
        };
        Self {
            user_agent: request.headers().get(http::header::USER_AGENT).cloned(),
            client_ip,
        }
    }

    /// The user agent as stored: lossy UTF-8, control characters removed,
    /// at most [`MAX_USER_AGENT_LEN`] bytes cut at a character boundary.
    pub(crate) fn user_agent(&self) -> Option<String> {
        let value = self.user_agent.as_ref()?;
        Some(clean_user_agent(&String::from_utf8_lossy(value.as_bytes())))
    }
}

pub(crate) fn clean_user_agent(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len().min(MAX_USER_AGENT_LEN));
    for c in raw.chars().filter(|c| !c.is_control()) {
        if out.len() + c.len_utf8() > MAX_USER_AGENT_LEN {
            break;
        }
        out.push(c);
    }
    out
}

/// The entry `hops` places from the right of every `header` value joined,
/// parsed as an address (a port, or IPv6 brackets, allowed). Never the
/// leftmost by default: the client writes that one itself when it sends
/// its own header, and only the entries the trusted proxies appended count.
fn from_proxy_header(
    headers: &http::HeaderMap,
    header: &http::HeaderName,
    hops: usize,
) -> Option<IpAddr> {
    // A line that is not text makes the whole header untrustworthy: no
    // address rather than a wrong one.
    let lines: Vec<&str> = headers
        .get_all(header)
        .iter()
        .map(|v| v.to_str().ok())
        .collect::<Option<_>>()?;
    let entries: Vec<&str> = lines
        .iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    let entry = entries.get(entries.len().checked_sub(hops)?)?;
    entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<std::net::SocketAddr>().ok().map(|a| a.ip()))
        .or_else(|| {
            entry
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse()
                .ok()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_login_lifetimes_are_checked_like_the_configs() {
        let config = SessionConfig::default(); // touch interval 5 min
        let check = |idle: u64, absolute: u64| {
            LoginOptions::new()
                .idle_timeout(Duration::from_secs(idle))
                .absolute_lifetime(Duration::from_secs(absolute))
                .lifetimes(&config)
        };
        // An idle timeout under the touch interval is fine: the session is
        // touched at half its idle timeout then (`effective_touch_interval`).
        assert_eq!(
            check(60, 3600),
            Ok((Duration::from_secs(60), Duration::from_secs(3600)))
        );
        assert!(check(3600, 600).is_err());
        assert!(check(0, 600).is_err());
        assert!(check(1, 1).is_ok());
        // Whole seconds: a fraction is dropped, under one is refused.
        let fraction = LoginOptions::new()
            .idle_timeout(Duration::from_millis(1500))
            .lifetimes(&config);
        assert_eq!(fraction.unwrap().0, Duration::from_secs(1));
        let sub_second = LoginOptions::new()
            .idle_timeout(Duration::from_millis(999))
            .lifetimes(&config);
        assert!(sub_second.is_err());
        // The config's own lifetimes pass.
        assert!(LoginOptions::new().lifetimes(&config).is_ok());
    }

    #[test]
    fn proxy_headers_are_read_from_the_right() {
        let name = http::HeaderName::from_static("x-forwarded-for");
        let mut headers = http::HeaderMap::new();
        headers.append(&name, HeaderValue::from_static("6.6.6.6, 198.51.100.7"));
        headers.append(&name, HeaderValue::from_static("10.0.0.2:443"));
        assert_eq!(
            from_proxy_header(&headers, &name, 1),
            Some("10.0.0.2".parse().unwrap())
        );
        assert_eq!(
            from_proxy_header(&headers, &name, 2),
            Some("198.51.100.7".parse().unwrap())
        );
        assert_eq!(
            from_proxy_header(&headers, &name, 4),
            None,
            "fewer entries than hops"
        );
        assert_eq!(from_proxy_header(&http::HeaderMap::new(), &name, 1), None);
        let mut v6 = http::HeaderMap::new();
        v6.append(&name, HeaderValue::from_static("[2001:db8::1]"));
        assert_eq!(
            from_proxy_header(&v6, &name, 1),
            Some("2001:db8::1".parse().unwrap())
        );
    }

    #[test]
    fn user_agents_are_bounded_and_clean() {
        assert_eq!(clean_user_agent("curl/8\u{7}"), "curl/8");
        let long = "é".repeat(200);
        let cleaned = clean_user_agent(&long);
        assert!(cleaned.len() <= MAX_USER_AGENT_LEN);
        assert_eq!(cleaned.len(), 256);
        assert!(cleaned.chars().all(|c| c == 'é'));
    }
}
