//! [`RedisStoreBuilder`]: the URL, credentials, TLS, timeouts and
//! connection count of a [`RedisStore`].

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::time::Duration;

use redis::IntoConnectionInfo;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::RedisStore;
use super::scripts::Scripts;
use super::store::Connection;
use crate::store::StoreError;

/// The default number of connections; see [`RedisStoreBuilder::connections`].
pub const DEFAULT_CONNECTIONS: usize = 4;

/// Builds a [`RedisStore`]; see [`RedisStore::builder`].
#[derive(Clone)]
pub struct RedisStoreBuilder {
    url: String,
    prefix: String,
    username: Option<String>,
    password: Option<String>,
    timeout: Duration,
    connect_timeout: Duration,
    connections: usize,
    root_certificate: Option<Vec<u8>>,
    allow_eviction: bool,
}

impl fmt::Debug for RedisStoreBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The URL may carry a password: not shown.
        f.debug_struct("RedisStoreBuilder")
            .field("prefix", &self.prefix)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("timeout", &self.timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("connections", &self.connections)
            .field("root_certificate", &self.root_certificate.is_some())
            .field("allow_eviction", &self.allow_eviction)
            .finish_non_exhaustive()
    }
}

impl RedisStoreBuilder {
    pub(super) fn new(url: String) -> Self {
        Self {
            url,
            prefix: "ths:".to_owned(),
            username: None,
            password: None,
            timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(2),
            connections: DEFAULT_CONNECTIONS,
            root_certificate: None,
            allow_eviction: false,
        }
    }

    /// Trusts the certificate authority in `pem` (and only it) for a
    /// `rediss://` URL: for a server whose certificate a private CA signed.
    /// Without it, the system's and the webpki roots are trusted.
    #[cfg(feature = "redis-tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis-tls")))]
    pub fn root_certificate_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.root_certificate = Some(pem.into());
        self
    }

    /// The prefix of every key (default `ths:`). App instances that share
    /// sessions use the same prefix; different applications on one Redis
    /// use different ones.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The ACL user name (overrides one in the URL).
    pub fn username(mut self, username: impl Into<String>) -> Self {
        self.username = Some(username.into());
        self
    }

    /// The password (overrides one in the URL).
    pub fn password(mut self, password: impl Into<String>) -> Self {
        self.password = Some(password.into());
        self
    }

    /// The limit on each operation (default 2 s): past it the operation
    /// fails with [`StoreError::Timeout`], and its connection is passed over
    /// for a while (see [`connections`](Self::connections)). Keep it below
    /// [`SessionConfig`](crate::SessionConfig)'s store timeout (5 s by
    /// default), so that this one fires first.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The limit on each (re)connection attempt (default 2 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How many multiplexed connections to open (default
    /// [`DEFAULT_CONNECTIONS`]; at least 1). Each reconnects by itself
    /// after a failure.
    ///
    /// Commands fill one connection first: it takes every command while
    /// fewer than 64 of its own are in flight, so concurrent requests share
    /// its writes and reads (one system call on each side for many commands,
    /// which halves the server's CPU time per lookup under load). Past that,
    /// the next connection takes the overflow, so a busy app instance uses
    /// more than one socket and reader task. The connection tried first
    /// changes every 256 commands, so each sound one keeps being used. One
    /// whose last command timed out is passed over for 5 seconds while
    /// another is sound (a connection that hangs without being closed is
    /// never reconnected), then gets a command again.
    ///
    /// Connections speak RESP3 (`HELLO 3`) unless the URL sets a protocol:
    /// a connection the server closes is replaced in the background as soon
    /// as it closes. For an endpoint that refuses `HELLO 3` (some proxies
    /// and Redis-compatible servers), add `?protocol=resp2` to the URL; a
    /// closed connection then fails its next command before it reconnects.
    pub fn connections(mut self, connections: usize) -> Self {
        self.connections = connections.max(1);
        self
    }

    /// Connects even to a server whose `maxmemory-policy` is not
    /// `noeviction` (default `false`: refused). Every key the store writes
    /// has a time-to-live, so any other policy may evict one of a session's
    /// keys when memory runs short: an evicted `s:` key leaves the session
    /// resolving by its cookie while revocation by id, "log out everywhere"
    /// and the per-subject cap no longer find it (until its next rotation,
    /// which writes the key again); an evicted value under its current
    /// lookup key ends the session at its next write. Only for a server you
    /// know never reaches its `maxmemory`; the store then logs a warning
    /// when it connects.
    pub fn allow_eviction(mut self, allow: bool) -> Self {
        self.allow_eviction = allow;
        self
    }

    /// Connects every connection, then checks the server's
    /// `maxmemory-policy` (see [`allow_eviction`](Self::allow_eviction)).
    ///
    /// # Errors
    ///
    /// A malformed URL, `rediss://` without the `redis-tls` feature, a
    /// server that cannot be reached or refuses the credentials, or one that
    /// may evict keys (unless allowed). Errors never include the password.
    pub async fn connect(self) -> Result<RedisStore, StoreError> {
        let err = |e| StoreError::backend("connect", e);
        let mut info = self.url.as_str().into_connection_info().map_err(err)?;
        let mut settings = info.redis_settings().clone();
        if let Some(username) = &self.username {
            settings = settings.set_username(username);
        }
        if let Some(password) = &self.password {
            settings = settings.set_password(password);
        }
        // RESP3 unless the URL asks for a protocol: a connection the server
        // closes then tells its manager at once, which replaces it in the
        // background (over RESP2 the next command on it fails first).
        if !asks_for_protocol(&self.url) {
            settings = settings.set_protocol(redis::ProtocolVersion::RESP3);
        }
        info = info.set_redis_settings(settings);
        let client = match self.root_certificate {
            #[cfg(feature = "redis-tls")]
            Some(pem) => {
                // rustls needs a process-wide crypto provider; keep one the
                // application installed, else install ring (ours).
                let _ = rustls::crypto::ring::default_provider().install_default();
                let certificates = redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem),
                };
                redis::Client::build_with_tls(info, certificates).map_err(err)?
            }
            _ => {
                #[cfg(feature = "redis-tls")]
                let _ = rustls::crypto::ring::default_provider().install_default();
                redis::Client::open(info).map_err(err)?
            }
        };
        // No response timeout in redis-rs: every call already runs under
        // the store's own `timeout` (`RedisStore::run`), and a second timer
        // per command costs more than it adds.
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(None)
            .set_connection_timeout(Some(self.connect_timeout))
            .set_number_of_retries(3)
            .set_max_delay(Duration::from_secs(1));
        let mut connections = Vec::with_capacity(self.connections);
        for _ in 0..self.connections {
            let connection = tokio::time::timeout(
                self.connect_timeout,
                ConnectionManager::new_with_config(client.clone(), config.clone()),
            )
            .await
            .map_err(|_| StoreError::Timeout {
                operation: "connect",
                timeout: self.connect_timeout,
            })?
            .map_err(err)?;
            connections.push(connection);
        }
        if let Some(connection) = connections.first_mut() {
            check_eviction_policy(connection, self.timeout, self.allow_eviction).await?;
        }
        Ok(RedisStore {
            connections: connections
                .into_iter()
                .map(|manager| Connection {
                    manager,
                    in_flight: AtomicUsize::new(0),
                    stalled_until: AtomicU64::new(0),
                })
                .collect(),
            next: Arc::new(AtomicUsize::new(0)),
            epoch: std::time::Instant::now(),
            prefix: self.prefix.into(),
            timeout: self.timeout,
            scripts: Arc::new(Scripts::new()),
        })
    }
}

/// Whether `url`'s query sets `protocol` (`?protocol=resp2` for an endpoint
/// that refuses `HELLO 3`).
fn asks_for_protocol(url: &str) -> bool {
    url.split_once('?')
        .is_some_and(|(_, query)| query.split('&').any(|pair| pair.starts_with("protocol=")))
}

/// Refuses a server that may evict keys (see the module docs), or only
/// logs a warning with `allow_eviction`. Best effort when the policy cannot
/// be read: a user without the right to read the configuration (`CONFIG` is
/// an admin command, often unavailable on managed Redis) is warned, not
/// refused a store.
async fn check_eviction_policy(
    connection: &mut ConnectionManager,
    timeout: Duration,
    allow_eviction: bool,
) -> Result<(), StoreError> {
    let mut command = redis::cmd("CONFIG");
    command.arg("GET").arg("maxmemory-policy");
    // A map over RESP3 (a flat list of pairs over RESP2): both read as one.
    let query = command.query_async::<std::collections::HashMap<String, String>>(connection);
    let unknown = |reason: &dyn fmt::Display| {
        tracing::warn!(
            %reason,
            "could not read the Redis eviction policy; make sure the server runs \
             with `maxmemory-policy noeviction`, or session keys may be evicted"
        );
    };
    match tokio::time::timeout(timeout, query).await {
        Ok(Ok(reply)) => match reply.get("maxmemory-policy").map(String::as_str) {
            Some("noeviction") => {}
            Some(policy) if allow_eviction => tracing::warn!(
                maxmemory_policy = policy,
                "the Redis server may evict session keys under memory pressure \
                 (allowed by `allow_eviction`); run it with `maxmemory-policy noeviction`"
            ),
            Some(policy) => {
                return Err(StoreError::backend(
                    "connect",
                    format!(
                        "the Redis server's maxmemory-policy is `{policy}`: it may evict \
                         session keys, leaving sessions that cannot be revoked; run it with \
                         `maxmemory-policy noeviction` (or see `RedisStoreBuilder::allow_eviction`)"
                    ),
                ));
            }
            None => unknown(&"CONFIG GET answered no policy"),
        },
        Ok(Err(error)) => unknown(&error),
        Err(_) => unknown(&"CONFIG GET timed out"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::asks_for_protocol;

    #[test]
    fn only_a_protocol_in_the_query_keeps_the_urls_protocol() {
        assert!(!asks_for_protocol("redis://127.0.0.1:6379"));
        assert!(!asks_for_protocol("redis://u:p@host/0?db=1"));
        assert!(!asks_for_protocol("redis://host/0?xprotocol=2"));
        assert!(asks_for_protocol("redis://host/0?protocol=resp2"));
        assert!(asks_for_protocol("rediss://host:6380/0?db=1&protocol=2"));
    }
}
