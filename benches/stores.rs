//! The real stores, counted and timed:
//!
//! - store calls per request on the read path (a counting wrapper), and what
//!   reaches the wire: SQL statements as sqlx reports them, Redis commands as
//!   the server counts them (`INFO stats`);
//! - writes per session per touch interval, with requests every 3 seconds;
//! - latency per request through each store (criterion), `MemoryStore` for
//!   reference.
//!
//! Needs the servers of the tests (same environment variables):
//!
//! ```sh
//! cargo bench --bench stores --all-features
//! ```
#![allow(missing_docs)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::{Counts, Harness, TestStore, ring, unique};
use criterion::Criterion;
use tower_hmac_session::store::{PostgresStore, RedisStore, SqliteStore};
use tower_hmac_session::{MemoryStore, SessionConfig, SessionStore};
use tracing_subscriber::layer::SubscriberExt as _;

fn pg_url() -> String {
    std::env::var("TOWER_HMAC_SESSION_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

fn redis_url() -> String {
    std::env::var("TOWER_HMAC_SESSION_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// Counts the statements sqlx executes (one `sqlx::query` event each).
#[derive(Clone, Default)]
struct SqlStatements(Arc<AtomicU64>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for SqlStatements {
    // Everything else stays disabled, so timing is not skewed by tracing.
    fn register_callsite(
        &self,
        metadata: &'static tracing::Metadata<'static>,
    ) -> tracing::subscriber::Interest {
        if metadata.target() == "sqlx::query" {
            tracing::subscriber::Interest::always()
        } else {
            tracing::subscriber::Interest::never()
        }
    }

    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        if event.metadata().target() == "sqlx::query" {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// The commands the store sends: `MGET` / `GET` for reads (no script runs
/// on a read, so none of these comes from inside one), `EVALSHA` / `EVAL`
/// for writes.
async fn redis_script_calls() -> u64 {
    let mut admin = redis::Client::open(redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut admin)
        .await
        .unwrap();
    info.lines()
        .filter(|l| {
            [
                "cmdstat_evalsha:",
                "cmdstat_eval:",
                "cmdstat_mget:",
                "cmdstat_get:",
            ]
            .iter()
            .any(|p| l.starts_with(p))
        })
        .filter_map(|l| {
            l.split("calls=")
                .nth(1)?
                .split(',')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

struct Backend {
    name: &'static str,
    store: Arc<dyn SessionStore>,
}

async fn backends() -> Vec<Backend> {
    let sqlite_path = std::env::temp_dir().join(format!("{}.db", unique("ths-bench")));
    let pg = PostgresStore::in_schema(
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(4)
            .test_before_acquire(false)
            .connect(&pg_url())
            .await
            .expect("PostgreSQL"),
        &unique("ths_bench"),
    )
    .unwrap();
    pg.migrate().await.unwrap();
    vec![
        Backend {
            name: "memory",
            store: Arc::new(MemoryStore::new()),
        },
        Backend {
            name: "sqlite",
            store: Arc::new(SqliteStore::open(&sqlite_path).await.unwrap()),
        },
        Backend {
            name: "postgres",
            store: Arc::new(pg),
        },
        Backend {
            name: "redis",
            store: Arc::new(
                RedisStore::builder(redis_url())
                    .prefix(unique("ths-bench") + ":")
                    .connect()
                    .await
                    .expect("Redis"),
            ),
        },
    ]
}

fn touching() -> SessionConfig {
    SessionConfig::builder()
        .touch_interval(Duration::from_secs(300))
        .access_ttl(None)
        .build()
        .unwrap()
}

async fn counts(backends: &[Backend], statements: &SqlStatements) {
    println!("## Store calls and round trips per request\n");
    println!(
        "| store | store calls per read request | round trips per read request (SQL statements; Redis MGET/GET/EVALSHA) | writes per session per touch interval |"
    );
    println!("|---|---:|---:|---:|");
    const N: u64 = 500;
    for backend in backends {
        let h = Harness::on(
            Arc::new(TestStore::wrap(backend.store.clone())),
            touching(),
            ring(2, &[1, 2]),
        );
        let secret = h.login("alice").await;
        // Warm up (prepared statements, script cache), then count.
        for _ in 0..10 {
            h.call("GET", "/me", Some(&secret)).await;
        }
        h.store.reset_counts();
        let sql_before = statements.0.load(Ordering::SeqCst);
        let redis_before = redis_script_calls().await;
        for _ in 0..N {
            assert_eq!(h.call("GET", "/me", Some(&secret)).await.body, "alice");
        }
        let redis_after = redis_script_calls().await;
        let calls = h.store.counts.total() as f64 / N as f64;
        let wire = match backend.name {
            "sqlite" | "postgres" => {
                format!(
                    "{:.2}",
                    (statements.0.load(Ordering::SeqCst) - sql_before) as f64 / N as f64
                )
            }
            "redis" => format!("{:.2}", (redis_after - redis_before) as f64 / N as f64),
            _ => "—".to_owned(),
        };

        // Requests every 3 s for 10 touch intervals of 300 s.
        h.store.reset_counts();
        for _ in 0..1000 {
            h.advance(3);
            h.call("GET", "/me", Some(&secret)).await;
        }
        let writes = h.store.counts.writes() as f64 / 10.0;
        assert_eq!(Counts::get(&h.store.counts.touch_applied), 10);
        println!("| {} | {calls:.2} | {wire} | {writes:.2} |", backend.name);
    }
    println!();
}

fn latency(c: &mut Criterion, rt: &tokio::runtime::Runtime, backends: &[Backend]) {
    let mut group = c.benchmark_group("stores");
    for backend in backends {
        let h = Harness::on(
            Arc::new(TestStore::wrap(backend.store.clone())),
            SessionConfig::default(),
            ring(2, &[1, 2]),
        );
        let secret = rt.block_on(h.login("alice"));
        group.bench_function(format!("read/{}", backend.name), |b| {
            b.to_async(rt).iter(|| async {
                let res = h.call("GET", "/me", Some(&secret)).await;
                assert_eq!(res.status, http::StatusCode::OK);
            })
        });
        let touch = Harness::on(
            Arc::new(TestStore::wrap(backend.store.clone())),
            SessionConfig::builder()
                .touch_interval(Duration::from_secs(1))
                .idle_timeout(Duration::from_secs(3600))
                .absolute_lifetime(Duration::from_secs(99 * 365 * 24 * 3600))
                .access_ttl(None)
                .build()
                .unwrap(),
            ring(2, &[1, 2]),
        );
        let secret = rt.block_on(touch.login("bob"));
        group.bench_function(format!("touch/{}", backend.name), |b| {
            b.to_async(rt).iter(|| {
                touch.advance(1);
                async {
                    let res = touch.call("GET", "/me", Some(&secret)).await;
                    assert!(res.session_cookie().is_some());
                }
            })
        });
    }
    group.finish();
}

fn main() {
    let statements = SqlStatements::default();
    let subscriber = tracing_subscriber::registry().with(statements.clone());
    tracing::subscriber::set_global_default(subscriber).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let backends = rt.block_on(backends());
    rt.block_on(counts(&backends, &statements));
    let mut c = Criterion::default()
        .configure_from_args()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(40);
    latency(&mut c, &rt, &backends);
    c.final_summary();
}
