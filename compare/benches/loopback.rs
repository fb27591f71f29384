//! Side by side over loopback HTTP: the same handlers served with
//! tower-hmac-session and with tower-sessions 0.14 (the release the published
//! stores `tower-sessions-sqlx-store` 0.15 and `tower-sessions-redis-store`
//! 0.16 require), on the same PostgreSQL and Redis, with the same pool sizes.
//!
//! `wrk` (Debian's `wrk` package) drives 64 keep-alive connections; each
//! request carries the cookie of one of 1,000 sessions, round-robin from a
//! random start per connection. Scenarios:
//!
//! - *read*: the handler reads one value; nothing changes, nothing is written.
//! - *write*: the handler sets one value; one store write per request.
//!
//! Every (store, scenario) pair runs both crates in alternating rounds so
//! they see the same machine load; the table gives medians and two ratios
//! (this crate ÷ tower-sessions, throughput) from one run: of the medians,
//! and the median of the rounds' own ratios.
//!
//! ```sh
//! apt-get install wrk
//! cargo bench -p tower-hmac-session-compare
//! ```
//!
//! `cargo bench -p tower-hmac-session-compare -- memory` runs the same pair
//! on both crates' in-memory stores instead: what each layer costs around
//! its store, with no network in between.
//!
//! URLs come from `TOWER_HMAC_SESSION_POSTGRES_URL` and
//! `TOWER_HMAC_SESSION_REDIS_URL` (defaults: the local servers). Everything
//! the run creates lives in its own schemas and key prefix, removed at the end.
#![allow(missing_docs)]

use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

#[path = "common/cpu.rs"]
mod cpu;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use axum::routing::{get, post};
use tower::ServiceExt as _;

const SESSIONS: usize = 1_000;
const CONNECTIONS: u32 = 64;
/// Alternating rounds per scenario; `ROUNDS=5` runs more (the median is
/// steadier on a noisy machine).
fn rounds() -> usize {
    std::env::var("ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(3)
}
/// Seconds per wrk run; `SECONDS=30` makes longer runs, e.g. to profile.
fn seconds() -> u32 {
    std::env::var("SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(6)
}
/// The same pool size for both crates: PostgreSQL connections.
const PG_POOL: u32 = 16;
/// The same pool size for both crates: Redis connections.
const REDIS_POOL: usize = 4;

static COUNTER: AtomicU64 = AtomicU64::new(0);

fn postgres_url() -> String {
    std::env::var("TOWER_HMAC_SESSION_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

fn redis_url() -> String {
    std::env::var("TOWER_HMAC_SESSION_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// tower-hmac-session: the handlers.
mod ours {
    use super::*;
    use tower_hmac_session::{
        KeyRing, Session, SessionConfig, SessionError, SessionLayer, SessionManager, SessionStore,
    };

    pub fn app(store: impl SessionStore) -> Router {
        // One key version, as a new deployment has (a second, during a key
        // rotation, adds one HMAC and one key to each lookup).
        let keys = KeyRing::builder()
            .key(1, [1u8; 32])
            .current(1)
            .build()
            .unwrap();
        // Defaults, except that a run creates 1,000 sessions per store and
        // should not keep them for a week: the same idle timeout as
        // tower-sessions' records get below.
        let config = SessionConfig::builder()
            .idle_timeout(Duration::from_secs(3600))
            .build()
            .unwrap();
        let manager = SessionManager::new(store, keys, config);
        Router::new()
            .route(
                "/login",
                post(|s: Session| async move {
                    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
                    s.login(format!("user-{n}")).await.map(|_| "ok")
                }),
            )
            .route(
                "/read",
                get(|s: Session| async move {
                    let v: Option<u64> = s.get("n")?;
                    Ok::<_, SessionError>(format!("{v:?}"))
                }),
            )
            .route(
                "/write",
                get(|s: Session| async move {
                    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
                    s.insert("n", n)?;
                    Ok::<_, SessionError>("ok")
                }),
            )
            .layer(SessionLayer::new(manager))
    }
}

/// tower-sessions 0.14: the same handlers.
mod theirs {
    use super::*;
    use tower_sessions::{Expiry, Session, SessionManagerLayer, SessionStore};

    pub fn app(store: impl SessionStore + Clone) -> Router {
        // Records expire after the same hour of inactivity as ours.
        let layer = SessionManagerLayer::new(store)
            .with_expiry(Expiry::OnInactivity(time::Duration::hours(1)));
        Router::new()
            .route(
                "/login",
                post(|s: Session| async move {
                    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
                    s.insert("user", format!("user-{n}")).await.unwrap();
                    "ok"
                }),
            )
            .route(
                "/read",
                get(|s: Session| async move {
                    let v: Option<u64> = s.get("n").await.unwrap();
                    format!("{v:?}")
                }),
            )
            .route(
                "/write",
                get(|s: Session| async move {
                    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
                    s.insert("n", n).await.unwrap();
                    "ok"
                }),
            )
            .layer(layer)
    }
}

/// Logs in `SESSIONS` times through the router; the `name=value` cookies.
async fn sessions(app: &Router) -> Vec<String> {
    let mut cookies = Vec::with_capacity(SESSIONS);
    for _ in 0..SESSIONS {
        let req = Request::post("/login").body(Body::empty()).unwrap();
        let res = app.clone().oneshot(req).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        let set = res.headers()[header::SET_COOKIE].to_str().unwrap();
        cookies.push(set.split(';').next().unwrap().to_string());
    }
    cookies
}

async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// wrk's request generator: one of the sessions' cookies per request,
/// round-robin from a random start per connection thread.
const SCRIPT: &str = r#"
local cookies = {}
for line in io.lines(os.getenv("COOKIES")) do cookies[#cookies + 1] = line end
local i = math.random(#cookies)
request = function()
  i = i % #cookies + 1
  return wrk.format("GET", nil, { ["Cookie"] = cookies[i] })
end
"#;

/// One server under test: its address and its sessions' cookie file.
struct Target {
    store: &'static str,
    addr: SocketAddr,
    cookies: std::path::PathBuf,
}

/// CPU time the store's server processes have used: every process named
/// `postgres` (the backends persist: the pools keep their connections) or
/// `redis-server`.
fn store_cpu_time(store: &str) -> Duration {
    cpu::of_processes(if store == "Redis" {
        "redis-server"
    } else {
        "postgres"
    })
}

/// One wrk run: requests per second, and the CPU time per request in
/// microseconds of this process (the servers) and of the store's server.
struct Run {
    rate: f64,
    cpu_per_request: f64,
    store_cpu_per_request: f64,
}

/// Requests per second `wrk` reports; every response must be 2xx.
fn wrk(target: &Target, path: &str, script: &std::path::Path) -> Run {
    let before = cpu::own();
    let store_before = store_cpu_time(target.store);
    let out = Command::new("wrk")
        .args([
            "-t2",
            &format!("-c{CONNECTIONS}"),
            &format!("-d{}s", seconds()),
        ])
        .arg("-s")
        .arg(script)
        .arg(format!("http://{}{path}", target.addr))
        .env("COOKIES", &target.cookies)
        .output()
        .expect("wrk is installed (apt-get install wrk)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "wrk failed:\n{text}");
    assert!(!text.contains("Non-2xx"), "some responses failed:\n{text}");
    let rate: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no throughput in wrk's output:\n{text}"));
    let per_request = |cpu: Duration| cpu.as_secs_f64() * 1e6 / (rate * f64::from(seconds()));
    Run {
        rate,
        cpu_per_request: per_request(cpu::own().saturating_sub(before)),
        store_cpu_per_request: per_request(
            store_cpu_time(target.store).saturating_sub(store_before),
        ),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n.is_multiple_of(2) {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    } else {
        v[n / 2]
    }
}

async fn target(store: &'static str, app: Router, dir: &std::path::Path, name: &str) -> Target {
    let cookies = sessions(&app).await;
    let path = dir.join(format!("{name}.cookies"));
    std::fs::write(&path, cookies.join("\n") + "\n").unwrap();
    Target {
        store,
        addr: serve(app).await,
        cookies: path,
    }
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument selects stores.
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let wanted = |name: &str| filter.as_deref().is_none_or(|f| name.contains(f));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = std::env::temp_dir().join(format!("ths-compare-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join("cookies.lua");
    std::fs::write(&script, SCRIPT).unwrap();
    let tag = format!("bench_compare_{}", std::process::id());

    let mut pairs: Vec<(&str, Target, Target)> = Vec::new();
    if wanted("postgres") {
        pairs.push(rt.block_on(postgres(&dir, &tag)));
    }
    if wanted("redis") {
        pairs.push(rt.block_on(redis(&dir, &tag)));
    }
    if filter.as_deref().is_some_and(|f| "memory".contains(f)) {
        pairs.push(rt.block_on(memory(&dir)));
    }

    // `PROFILE=ours:/read` (or `theirs:/write`, …): one long wrk run against
    // one side only, to profile it (e.g. under `perf record -a`).
    if let Ok(spec) = std::env::var("PROFILE") {
        let (side, path) = spec.split_once(':').expect("PROFILE=ours|theirs:/path");
        for (store, ours, theirs) in &pairs {
            let target = if side == "ours" { ours } else { theirs };
            let run = wrk(target, path, &script);
            println!(
                "{store} {spec}: {:.0} req/s, CPU per request: {:.1} µs app, {:.1} µs {store}",
                run.rate, run.cpu_per_request, run.store_cpu_per_request
            );
        }
        if std::env::var_os("KEEP").is_none() {
            rt.block_on(cleanup(&tag));
        } else {
            println!("kept schema {tag} and Redis prefix {tag}:");
        }
        return;
    }
    println!(
        "## Loopback, tower-hmac-session ÷ tower-sessions 0.14: wrk -t2 -c{CONNECTIONS}, \
         {SESSIONS} sessions, {} s × {} alternating rounds (median)\n",
        seconds(),
        rounds()
    );
    // Two ratios: of the two sides' medians, and the median of each
    // round's ratio. A round's two runs are adjacent in time, so they share
    // the machine's load; on a machine whose speed drifts between rounds the
    // paired ratio is the steadier of the two (the ratio of medians can pair
    // one side's fast round with the other's slow one).
    println!(
        "| store | scenario | tower-hmac-session req/s | tower-sessions req/s | ratio of medians | median of round ratios (min–max) | app CPU µs/request (ours / theirs) | store server CPU µs/request (ours / theirs) |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|");
    for (store, ours, theirs) in &pairs {
        for path in ["/read", "/write"] {
            let (mut a, mut b, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
            let (mut cpu_a, mut cpu_b) = (Vec::new(), Vec::new());
            let (mut store_a, mut store_b) = (Vec::new(), Vec::new());
            for round in 0..rounds() {
                // Alternate who goes first, so neither always runs warm.
                let (x, y) = if round % 2 == 0 {
                    let x = wrk(ours, path, &script);
                    (x, wrk(theirs, path, &script))
                } else {
                    let y = wrk(theirs, path, &script);
                    (wrk(ours, path, &script), y)
                };
                eprintln!(
                    "{store} {path} round {}: {:.0} vs {:.0} req/s, {:.1} vs {:.1} µs CPU",
                    round + 1,
                    x.rate,
                    y.rate,
                    x.cpu_per_request,
                    y.cpu_per_request
                );
                a.push(x.rate);
                b.push(y.rate);
                ratios.push(x.rate / y.rate);
                cpu_a.push(x.cpu_per_request);
                cpu_b.push(y.cpu_per_request);
                store_a.push(x.store_cpu_per_request);
                store_b.push(y.store_cpu_per_request);
            }
            let (lo, hi) = (
                ratios.iter().copied().fold(f64::MAX, f64::min),
                ratios.iter().copied().fold(0.0, f64::max),
            );
            let (ma, mb) = (median(a), median(b));
            println!(
                "| {store} | {} | {ma:.0} | {mb:.0} | {:.2} | {:.2} ({lo:.2}–{hi:.2}) | {:.1} / {:.1} | {:.1} / {:.1} |",
                &path[1..],
                ma / mb,
                median(ratios),
                median(cpu_a),
                median(cpu_b),
                median(store_a),
                median(store_b)
            );
        }
    }
    rt.block_on(cleanup(&tag));
    let _ = std::fs::remove_dir_all(&dir);
}

async fn postgres(dir: &std::path::Path, tag: &str) -> (&'static str, Target, Target) {
    use tower_hmac_session::store::sqlx::postgres::PgPoolOptions;
    let url = postgres_url();
    let pool = || async {
        PgPoolOptions::new()
            .max_connections(PG_POOL)
            .connect(&url)
            .await
            .expect("PostgreSQL is reachable")
    };
    // Each side's pool is its own, so ours keeps every connection between
    // statements (as `PostgresStore::connect` does): sqlx's pool tests a
    // connection with a round trip each time it goes back, and (by default,
    // as here for both) each time it comes out.
    let store = tower_hmac_session::store::PostgresStore::in_schema(pool().await, tag)
        .unwrap()
        .keep_connections(
            PG_POOL as usize,
            tower_hmac_session::store::PostgresStore::DEFAULT_HOLD,
        );
    store.migrate().await.unwrap();
    // `PG_FILLFACTOR=70` (say): our table's fillfactor for this run, before
    // its rows are written, to compare with the one `migrate` sets.
    if let Some(ff) = std::env::var("PG_FILLFACTOR").ok().map(|v| {
        v.parse::<u32>()
            .expect("PG_FILLFACTOR: an integer from 10 to 100")
    }) {
        let sql =
            format!("ALTER TABLE \"{tag}\".tower_hmac_session_records SET (fillfactor = {ff})");
        tower_hmac_session::store::sqlx::query(&sql)
            .execute(&pool().await)
            .await
            .unwrap();
    }
    let ours = target("PostgreSQL", ours::app(store), dir, "pg-ours").await;
    let store = tower_sessions_sqlx_store::PostgresStore::new(pool().await)
        .with_schema_name(format!("{tag}_ts"))
        .unwrap();
    store.migrate().await.unwrap();
    let theirs = target("PostgreSQL", theirs::app(store), dir, "pg-theirs").await;
    ("PostgreSQL", ours, theirs)
}

async fn redis(dir: &std::path::Path, tag: &str) -> (&'static str, Target, Target) {
    use tower_sessions_redis_store::fred::prelude::*;
    let store = tower_hmac_session::store::RedisStore::builder(redis_url())
        .prefix(format!("{tag}:"))
        .connections(REDIS_POOL)
        .connect()
        .await
        .expect("Redis is reachable");
    let ours = target("Redis", ours::app(store), dir, "redis-ours").await;
    let config = Config::from_url(&redis_url()).unwrap();
    let pool = Pool::new(config, None, None, None, REDIS_POOL).unwrap();
    pool.init().await.expect("Redis is reachable");
    let theirs = target(
        "Redis",
        theirs::app(tower_sessions_redis_store::RedisStore::new(pool)),
        dir,
        "redis-theirs",
    )
    .await;
    ("Redis", ours, theirs)
}

/// Both crates' in-process stores: what each layer costs around its store.
/// Only on request (`cargo bench -p tower-hmac-session-compare -- memory`).
async fn memory(dir: &std::path::Path) -> (&'static str, Target, Target) {
    let ours = target(
        "memory",
        ours::app(tower_hmac_session::MemoryStore::new()),
        dir,
        "memory-ours",
    )
    .await;
    let theirs = target(
        "memory",
        theirs::app(tower_sessions::MemoryStore::default()),
        dir,
        "memory-theirs",
    )
    .await;
    ("memory", ours, theirs)
}

/// Drops the run's schemas and Redis keys (tower-sessions' Redis keys are
/// bare session ids: they expire after their hour of inactivity).
async fn cleanup(tag: &str) {
    use tower_hmac_session::store::sqlx::{self, postgres::PgPoolOptions};
    if let Ok(pool) = PgPoolOptions::new()
        .max_connections(1)
        .connect(&postgres_url())
        .await
    {
        for schema in [tag.to_string(), format!("{tag}_ts")] {
            let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                .execute(&pool)
                .await;
        }
    }
    let _ = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "redis-cli -u \"$URL\" --scan --pattern '{tag}:*' | xargs -r -n 500 redis-cli -u \"$URL\" del >/dev/null"
        ))
        .env("URL", redis_url())
        .status();
}
