//! Real faults under concurrent load, through the Router: PostgreSQL
//! backends terminated (`pg_terminate_backend` on this test's own pool,
//! found by its `application_name`), Redis connections killed (`CLIENT
//! KILL USER` on an ACL user only this test uses), and a Redis server of
//! this test's own restarted, with and without its data.
//!
//! What holds throughout: every request ends within what its store calls
//! may take under the store timeout; answers are 200 or 503 for live
//! sessions and never clear a cookie; everything recovers without a
//! restart of the app; no session is lost, revived or served as another.
//!
//! When a store loses its data (a Redis restarted without persistence), the
//! design's rule for a well-formed secret that resolves to nothing applies:
//! the request is anonymous and the cookie is left alone. Sessions are
//! lost, which is expected; none is revived or served wrongly. Losing only
//! *some* writes is different: a restart from a snapshot older than a
//! revocation brings the revoked session back (the store cannot tell), so
//! a Redis holding sessions needs `appendonly yes` with
//! `appendfsync always` for revocations to survive a crash; see
//! `a_restart_from_an_older_snapshot_undoes_a_revocation`.

#![cfg(any(feature = "postgres", feature = "redis"))]

mod common;

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::faults::harness_on;
use common::{Harness, TestStore, ring, unique};
use http::StatusCode;
use tokio::time::Instant;
use tower_hmac_session::{SessionConfig, SessionId, SessionStore};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Live,
    Revoked,
    Stranger,
}

struct Client {
    kind: Kind,
    subject: String,
    id: Option<SessionId>,
    jar: Mutex<String>,
    acked: Mutex<Vec<String>>,
    /// Seen unknown after a store lost its data: never served as itself again.
    lost: AtomicBool,
}

impl Client {
    fn secret(&self) -> String {
        self.jar.lock().unwrap().clone()
    }
}

fn config(timeout: Duration) -> SessionConfig {
    SessionConfig::builder()
        .access_ttl(Some(Duration::from_secs(900)))
        .rotation_grace(Duration::from_secs(60))
        .touch_interval(Duration::from_secs(60))
        .store_timeout(Some(timeout))
        .build()
        .unwrap()
}

async fn population(h: &Harness, live: usize) -> Vec<Arc<Client>> {
    let mut clients = Vec::new();
    for i in 0..live + 3 {
        let user = format!("user{i}");
        let res = h.call("POST", &format!("/login?user={user}"), None).await;
        assert_eq!(res.status, StatusCode::OK, "{}", res.body);
        let secret = res.new_secret().unwrap();
        let kind = if i < live { Kind::Live } else { Kind::Revoked };
        if kind == Kind::Revoked {
            assert!(
                h.call("POST", "/logout", Some(&secret))
                    .await
                    .clears_cookie()
            );
        }
        clients.push(Arc::new(Client {
            kind,
            subject: user,
            id: Some(res.body.parse().unwrap()),
            jar: Mutex::new(secret),
            acked: Mutex::new(Vec::new()),
            lost: AtomicBool::new(false),
        }));
    }
    for i in 0..2 {
        clients.push(Arc::new(Client {
            kind: Kind::Stranger,
            subject: format!("stranger{i}"),
            id: None,
            jar: Mutex::new(common::stranger()),
            acked: Mutex::new(Vec::new()),
            lost: AtomicBool::new(false),
        }));
    }
    clients
}

#[derive(Debug, Default)]
struct Seen {
    requests: AtomicUsize,
    unavailable: AtomicUsize,
    slowest_ms: AtomicUsize,
}

/// Every client loops on read, write, read until `stop`; every answer is
/// checked. `bound` is the longest a request may take; `may_lose`: the
/// store may lose its data, so a live session may become unknown (but
/// never come back).
async fn load(
    h: &Harness,
    clients: &[Arc<Client>],
    stop: Arc<AtomicBool>,
    bound: Duration,
    may_lose: bool,
) -> Arc<Seen> {
    load_into(h, clients, stop, bound, may_lose, Arc::default()).await
}

/// [`load`], counting into `seen`, which the fault injector may watch.
async fn load_into(
    h: &Harness,
    clients: &[Arc<Client>],
    stop: Arc<AtomicBool>,
    bound: Duration,
    may_lose: bool,
    seen: Arc<Seen>,
) -> Arc<Seen> {
    let mut tasks = Vec::new();
    for client in clients {
        let (h, client, stop, seen) = (
            Harness {
                store: h.store.clone(),
                manager: h.manager.clone(),
                clock: h.clock.clone(),
                router: h.router.clone(),
            },
            client.clone(),
            stop.clone(),
            seen.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut n = 0u32;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                for (method, uri) in [
                    ("GET", "/me".to_owned()),
                    ("POST", format!("/attr?key=k{n}&value={n}")),
                    ("GET", "/maybe".to_owned()),
                ] {
                    if client.kind != Kind::Live && method == "POST" {
                        continue;
                    }
                    let started = Instant::now();
                    let res = h.call(method, &uri, Some(&client.secret())).await;
                    let took = started.elapsed();
                    let what = format!(
                        "{} {method} {uri}: {} {}",
                        client.subject, res.status, res.body
                    );
                    seen.requests.fetch_add(1, Ordering::SeqCst);
                    seen.slowest_ms
                        .fetch_max(took.as_millis() as usize, Ordering::SeqCst);
                    assert!(took <= bound, "{what}: took {took:?}");
                    assert!(!res.clears_cookie(), "{what}: cookie cleared");
                    if res.status == StatusCode::SERVICE_UNAVAILABLE {
                        seen.unavailable.fetch_add(1, Ordering::SeqCst);
                        assert!(res.raw_set_cookies.is_empty(), "{what}");
                        continue;
                    }
                    let unknown = res.status == StatusCode::UNAUTHORIZED
                        || (method == "GET" && res.body != client.subject);
                    if client.kind == Kind::Live && may_lose && unknown {
                        client.lost.store(true, Ordering::SeqCst);
                    }
                    if client.lost.load(Ordering::SeqCst) {
                        // Lost with the store's data: never served as itself.
                        assert!(
                            method != "GET" || res.body != client.subject,
                            "{what}: a lost session revived"
                        );
                        if let Some(new) = res.new_secret() {
                            // A session before login, started by the write.
                            *client.jar.lock().unwrap() = new;
                        }
                        continue;
                    }
                    match client.kind {
                        Kind::Live => {
                            assert_eq!(res.status, StatusCode::OK, "{what}");
                            if method == "GET" {
                                assert_eq!(res.body, client.subject, "{what}");
                            }
                            if method == "POST" {
                                client.acked.lock().unwrap().push(format!("k{n}"));
                            }
                            if let Some(new) = res.new_secret() {
                                *client.jar.lock().unwrap() = new;
                            }
                        }
                        _ => {
                            assert!(res.raw_set_cookies.is_empty(), "{what}");
                            assert!(
                                res.status == StatusCode::UNAUTHORIZED || res.body == "anonymous",
                                "{what}"
                            );
                        }
                    }
                }
                // Let the faults land between rounds.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    seen
}

/// Until every live client is served again (bounded): then each reads back
/// every value it was told was saved; the others stay out.
async fn assert_recovered(h: &Harness, clients: &[Arc<Client>], data_kept: bool) {
    for client in clients {
        let mut last = None;
        for _ in 0..100 {
            let res = h.call("GET", "/me", Some(&client.secret())).await;
            assert!(!res.clears_cookie());
            if res.status != StatusCode::SERVICE_UNAVAILABLE {
                last = Some(res);
                break;
            }
            // A real server reconnecting: nothing to inject a clock into.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let res = last.expect("the store never recovered");
        if let Some(new) = res.new_secret() {
            *client.jar.lock().unwrap() = new;
        }
        if client.kind == Kind::Live && data_kept {
            assert_eq!(
                (res.status, res.body.as_str()),
                (StatusCode::OK, client.subject.as_str())
            );
            let acked = client.acked.lock().unwrap().clone();
            assert!(!acked.is_empty(), "{}: no write succeeded", client.subject);
            for key in &acked {
                let read = h
                    .call("GET", &format!("/attr?key={key}"), Some(&client.secret()))
                    .await;
                assert_eq!(read.body, key[1..], "{}: {key} lost", client.subject);
            }
        } else {
            // Revoked, unknown, or lost with the store's data (or replaced
            // by a session before login that a write started): not served,
            // and the cookie is left alone.
            assert_eq!(res.status, StatusCode::UNAUTHORIZED, "{}", client.subject);
            assert!(res.raw_set_cookies.is_empty());
        }
    }
}

/// The store's view: every live session active, every revoked one not.
async fn assert_store_state(
    store: &dyn SessionStore,
    clients: &[Arc<Client>],
    now: time::OffsetDateTime,
) {
    for client in clients {
        let Some(id) = client.id else { continue };
        let found = store.get_active(&id, now).await.unwrap();
        assert_eq!(
            found.is_some(),
            client.kind == Kind::Live,
            "{}: {:?}",
            client.subject,
            client.kind
        );
        if let Some(record) = found {
            assert_eq!(record.subject.as_deref(), Some(client.subject.as_str()));
        }
    }
}

// ---------------------------------------------------------------- Postgres

#[cfg(feature = "postgres")]
mod postgres {
    use super::*;
    use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
    use std::str::FromStr;
    use tower_hmac_session::store::PostgresStore;

    fn url() -> String {
        std::env::var("TOWER_HMAC_SESSION_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
    }

    async fn pool(application_name: &str) -> Option<PgPool> {
        let options = PgConnectOptions::from_str(&url())
            .unwrap()
            .application_name(application_name);
        match PgPoolOptions::new()
            .max_connections(5)
            .acquire_timeout(Duration::from_secs(2))
            .test_before_acquire(false)
            .connect_with(options)
            .await
        {
            Ok(pool) => Some(pool),
            Err(error) => {
                common::unreachable("PostgreSQL", &url(), &error);
                None
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn terminated_backends_under_load_lose_and_revive_nothing() {
        let name = unique("ths-faults-pg");
        let Some(store_pool) = pool(&name).await else {
            return;
        };
        let Some(admin) = pool("ths-faults-pg-admin").await else {
            return;
        };
        let schema = unique("ths_faults");
        let store = PostgresStore::in_schema(store_pool.clone(), &schema).unwrap();
        store.migrate().await.unwrap();
        let timeout = Duration::from_secs(2);
        let h = harness_on(
            Arc::new(TestStore::wrap(store.clone())),
            config(timeout),
            ring(1, &[1]),
        );
        let clients = population(&h, 12).await;
        h.advance(901); // rotations due while backends die
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Seen::default());
        let killer = {
            let (admin, name, stop, seen) =
                (admin.clone(), name.clone(), stop.clone(), seen.clone());
            tokio::spawn(async move {
                let mut killed = 0;
                // Eight rounds; on a busy machine the requests may all sit
                // between statements through them, so go on (up to 200
                // rounds) until some request has met a terminated backend.
                for round in 0..200 {
                    if round >= 8 && seen.unavailable.load(Ordering::SeqCst) > 0 {
                        break;
                    }
                    let k: Vec<bool> = sqlx::query_scalar(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                         WHERE application_name = $1",
                    )
                    .bind(&name)
                    .fetch_all(&admin)
                    .await
                    .unwrap();
                    killed += k.iter().filter(|k| **k).count();
                    tokio::time::sleep(Duration::from_millis(60)).await;
                }
                stop.store(true, Ordering::SeqCst);
                killed
            })
        };
        // Lookup, write and read-back may each run into the timeout.
        let seen = load_into(
            &h,
            &clients,
            stop,
            3 * timeout + Duration::from_secs(1),
            false,
            seen,
        )
        .await;
        let killed = killer.await.unwrap();
        eprintln!("postgres: {killed} backends terminated; {seen:?}");
        assert!(killed > 0, "no backend of the store's pool was terminated");
        assert!(seen.requests.load(Ordering::SeqCst) > 0);
        // The kills were felt: a terminated backend fails the statement it
        // was running or the next one on its connection, and a lookup that
        // fails answers 503 (fail closed). Recovery is checked below.
        assert!(
            seen.unavailable.load(Ordering::SeqCst) > 0,
            "no request saw a terminated backend fail: {seen:?}"
        );
        assert_recovered(&h, &clients, true).await;
        assert_store_state(&store, &clients, h.manager.now()).await;
        sqlx::raw_sql(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
            .execute(&admin)
            .await
            .unwrap();
    }
}

// ------------------------------------------------------------------- Redis

#[cfg(feature = "redis")]
mod redis_faults {
    use super::*;
    use tower_hmac_session::store::RedisStore;

    fn url() -> String {
        std::env::var("TOWER_HMAC_SESSION_REDIS_URL")
            .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
    }

    async fn admin(url: &str) -> Option<redis::aio::MultiplexedConnection> {
        let connect = async {
            redis::Client::open(url)?
                .get_multiplexed_async_connection()
                .await
        };
        match tokio::time::timeout(Duration::from_secs(3), connect).await {
            Ok(Ok(c)) => Some(c),
            Ok(Err(e)) => {
                common::unreachable("Redis", url, &e);
                None
            }
            Err(e) => {
                common::unreachable("Redis", url, &e);
                None
            }
        }
    }

    async fn cmd<T: redis::FromRedisValue>(
        admin: &mut redis::aio::MultiplexedConnection,
        args: &[&str],
    ) -> T {
        redis::cmd(args[0])
            .arg(&args[1..])
            .query_async(admin)
            .await
            .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn killed_client_connections_under_load_lose_and_revive_nothing() {
        let url = url();
        let Some(mut admin) = admin(&url).await else {
            return;
        };
        // An ACL user of this test's own: `CLIENT KILL USER` reaches this
        // store's connections and nobody else's.
        let prefix = unique("ths-faults") + ":";
        let (user, password) = common::redis_acl_user(&mut admin, &prefix).await;
        let store = RedisStore::builder(&url)
            .prefix(&prefix)
            .username(&user)
            .password(&password)
            .connections(3)
            .timeout(Duration::from_millis(500))
            .connect()
            .await
            .unwrap();
        let timeout = Duration::from_secs(1);
        let h = harness_on(
            Arc::new(TestStore::wrap(store.clone())),
            config(timeout),
            ring(1, &[1]),
        );
        let clients = population(&h, 12).await;
        h.advance(901);
        let stop = Arc::new(AtomicBool::new(false));
        let killer = {
            let (mut admin, user, stop) = (admin.clone(), user.clone(), stop.clone());
            tokio::spawn(async move {
                let mut killed = 0i64;
                for _ in 0..8 {
                    killed += cmd::<i64>(&mut admin, &["CLIENT", "KILL", "USER", &user]).await;
                    tokio::time::sleep(Duration::from_millis(60)).await;
                }
                stop.store(true, Ordering::SeqCst);
                killed
            })
        };
        let seen = load(
            &h,
            &clients,
            stop,
            3 * timeout + Duration::from_secs(1),
            false,
        )
        .await;
        let killed = killer.await.unwrap();
        eprintln!("redis: {killed} connections killed; {seen:?}");
        assert!(killed > 0);
        // Only commands in flight at a kill fail (RESP3: the managers
        // replace a closed connection in the background), so how many
        // requests answered 503 depends on timing; `load` has checked each
        // was a 200 or a 503, and what follows checks nothing was lost.
        assert_recovered(&h, &clients, true).await;
        assert_store_state(&store, &clients, h.manager.now()).await;
        common::redis_delete_prefix(&mut admin, &prefix).await;
        let _: i64 = cmd(&mut admin, &["ACL", "DELUSER", &user]).await;
    }

    /// A `redis-server` of this test's own on a free loopback port, in a
    /// directory of its own; killed on drop.
    struct PrivateRedis {
        child: Option<Child>,
        dir: std::path::PathBuf,
        port: u16,
        args: Vec<String>,
    }

    impl PrivateRedis {
        fn start(args: &[&str]) -> Result<Self, String> {
            let dir = std::env::temp_dir().join(unique("ths-restart"));
            std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map_err(|e| e.to_string())?
                .port();
            let mut server = Self {
                child: None,
                dir,
                port,
                args: args.iter().map(|s| s.to_string()).collect(),
            };
            server.spawn()?;
            Ok(server)
        }

        fn url(&self) -> String {
            format!("redis://127.0.0.1:{}", self.port)
        }

        fn spawn(&mut self) -> Result<(), String> {
            let child = Command::new("redis-server")
                .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
                .args(["--dir", self.dir.to_str().unwrap()])
                .args(&self.args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| format!("redis-server: {e}"))?;
            self.child = Some(child);
            for _ in 0..100 {
                if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                    return Ok(());
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            Err("redis-server did not start listening".into())
        }

        /// A crash: SIGKILL, no shutdown save.
        fn kill(&mut self) {
            if let Some(mut child) = self.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    impl Drop for PrivateRedis {
        fn drop(&mut self) {
            self.kill();
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    /// Crash and restart the server while the load runs; `data_kept` says
    /// whether its persistence keeps every acknowledged write.
    async fn restart_under_load(args: &[&str], data_kept: bool) {
        let mut server = match PrivateRedis::start(args) {
            Ok(s) => s,
            Err(e) => return common::unreachable("a private redis-server", "127.0.0.1", &e),
        };
        // Short timeouts, for the restarts under load; the first connection
        // to a server that just started (on a busy machine) may need
        // several tries, which the test is not about.
        let mut attempts = 0;
        let store = loop {
            let connected = RedisStore::builder(server.url())
                .prefix("ths:")
                .connections(2)
                .timeout(Duration::from_millis(300))
                .connect_timeout(Duration::from_millis(300))
                .connect()
                .await;
            attempts += 1;
            match connected {
                Ok(store) => break store,
                Err(error) if attempts < 20 => eprintln!("connect, try {attempts}: {error}"),
                Err(error) => panic!("a private Redis that never answered: {error}"),
            }
        };
        let timeout = Duration::from_millis(600);
        let h = harness_on(
            Arc::new(TestStore::wrap(store.clone())),
            config(timeout),
            ring(1, &[1]),
        );
        let clients = population(&h, 8).await;
        h.advance(901);
        let stop = Arc::new(AtomicBool::new(false));
        let load = {
            let (h, clients, stop) = (
                Harness {
                    store: h.store.clone(),
                    manager: h.manager.clone(),
                    clock: h.clock.clone(),
                    router: h.router.clone(),
                },
                clients.clone(),
                stop.clone(),
            );
            tokio::spawn(async move {
                let bound = 3 * timeout + Duration::from_secs(1);
                load(&h, &clients, stop, bound, !data_kept).await
            })
        };
        tokio::time::sleep(Duration::from_millis(150)).await;
        server.kill();
        // Down for a while: requests answer 503 within the timeout.
        tokio::time::sleep(Duration::from_millis(400)).await;
        server.spawn().unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        stop.store(true, Ordering::SeqCst);
        let seen = load.await.unwrap();
        eprintln!("redis restart (data kept: {data_kept}): {seen:?}");
        assert!(
            seen.unavailable.load(Ordering::SeqCst) > 0,
            "the outage was felt"
        );
        assert_recovered(&h, &clients, data_kept).await;
        if data_kept {
            assert_store_state(&store, &clients, h.manager.now()).await;
        } else {
            // Lost, not revived: nothing is found, and a new login works.
            for client in &clients {
                if let Some(id) = client.id {
                    assert!(
                        store
                            .get_active(&id, h.manager.now())
                            .await
                            .unwrap()
                            .is_none()
                    );
                }
            }
            let res = h.call("POST", "/login?user=user0", None).await;
            let secret = res.new_secret().unwrap();
            assert_eq!(h.call("GET", "/me", Some(&secret)).await.body, "user0");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_redis_crash_with_an_fsynced_append_only_file_keeps_every_session() {
        restart_under_load(
            &[
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ],
            true,
        )
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_redis_restart_without_persistence_loses_sessions_but_revives_none() {
        restart_under_load(&["--save", "", "--appendonly", "no"], false).await;
    }

    /// Documents a deployment requirement rather than a crate rule: the
    /// store cannot know it was rolled back. A revocation after the last
    /// snapshot is undone by a crash: the logged-out cookie works again.
    #[tokio::test]
    async fn a_restart_from_an_older_snapshot_undoes_a_revocation() {
        let mut server = match PrivateRedis::start(&["--save", "", "--appendonly", "no"]) {
            Ok(s) => s,
            Err(e) => return common::unreachable("a private redis-server", "127.0.0.1", &e),
        };
        let store = RedisStore::builder(server.url())
            .prefix("ths:")
            .connect()
            .await
            .unwrap();
        let h = harness_on(
            Arc::new(TestStore::wrap(store.clone())),
            config(Duration::from_secs(1)),
            ring(1, &[1]),
        );
        let secret = h.login("alice").await;
        let mut admin = admin(&server.url()).await.unwrap();
        let _: String = cmd(&mut admin, &["SAVE"]).await;
        assert!(
            h.call("POST", "/logout", Some(&secret))
                .await
                .clears_cookie()
        );
        assert_eq!(
            h.call("GET", "/me", Some(&secret)).await.status,
            StatusCode::UNAUTHORIZED
        );
        server.kill();
        server.spawn().unwrap();
        let mut res = h.call("GET", "/me", Some(&secret)).await;
        for _ in 0..40 {
            if res.status != StatusCode::SERVICE_UNAVAILABLE {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            res = h.call("GET", "/me", Some(&secret)).await;
        }
        assert_eq!(
            (res.status, res.body.as_str()),
            (StatusCode::OK, "alice"),
            "the snapshot predates the logout: the session is back"
        );
    }
}
