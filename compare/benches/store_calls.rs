//! Store calls without HTTP: what this crate's Redis store and
//! tower-sessions' (`tower-sessions-redis-store`, on fred) cost the app per
//! call, side by side, with the plain clients' `GET` beside them (redis-rs,
//! which this crate uses, and fred, which theirs uses).
//!
//! 64 tasks share one store (4 connections each side, as in the loopback
//! benchmark; the plain `GET`s: one redis-rs `ConnectionManager`, fred's
//! `Pool` of 4) and call it in a loop; each row gives calls per second, this
//! process's CPU time per call (user + system: the client, its connection
//! tasks and the kernel's loopback work for what it sends) and Redis's, the
//! median of alternating rounds. Writes change one value of a session: ours
//! a `replace` with the next generation (its data-write script), theirs a
//! `save`; each session's writes are one at a time, so none is refused.
//!
//! ```sh
//! cargo bench -p tower-hmac-session-compare --bench store_calls
//! ```
#![allow(missing_docs)]

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use time::OffsetDateTime;
use tower_hmac_session::SessionStore;

#[path = "common/cpu.rs"]
mod cpu;
#[path = "../../tests/common/records.rs"]
mod records;
use tower_sessions::session::{Id, Record};
use tower_sessions_redis_store::fred::prelude::*;

const TASKS: usize = 64;
const CONNECTIONS: usize = 4;
const SESSIONS: usize = 1_000;

fn rounds() -> usize {
    std::env::var("ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5)
}

fn calls() -> usize {
    std::env::var("CALLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000)
}

fn redis_url() -> String {
    std::env::var("TOWER_HMAC_SESSION_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// One store call, given the call's number.
type Call = Arc<dyn Fn(usize) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// What a run measured: calls/s, and CPU µs per call here and in Redis.
struct Run {
    rate: f64,
    cpu: f64,
    redis_cpu: f64,
}

/// Runs `call` `calls()` times from `TASKS` tasks.
async fn run(call: Call) -> Run {
    let total = calls();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (cpu, redis_cpu, start) = (
        cpu::own(),
        cpu::of_processes("redis-server"),
        Instant::now(),
    );
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            let (call, next) = (call.clone(), next.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= total {
                        break;
                    }
                    call(i).await;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let elapsed = start.elapsed();
    let per_call = |d: Duration| d.as_secs_f64() * 1e6 / total as f64;
    Run {
        rate: total as f64 / elapsed.as_secs_f64(),
        cpu: per_call(cpu::own().saturating_sub(cpu)),
        redis_cpu: per_call(cpu::of_processes("redis-server").saturating_sub(redis_cpu)),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let tag = format!("bench_calls_{}", std::process::id());
        // Ours: records inserted directly, looked up by their current key.
        let store = tower_hmac_session::store::RedisStore::builder(redis_url())
            .prefix(format!("{tag}:"))
            .connections(CONNECTIONS)
            .connect()
            .await
            .expect("Redis is reachable");
        let now = OffsetDateTime::now_utc();
        let mut records = Vec::new();
        for i in 0..SESSIONS {
            let record = records::record(Some(&format!("user-{i}")), now);
            store.insert(&record).await.unwrap();
            records.push(record);
        }
        let writable: Arc<Vec<_>> = Arc::new(
            records
                .iter()
                .cloned()
                .map(tokio::sync::Mutex::new)
                .collect(),
        );
        let records = Arc::new(records);
        let store = Arc::new(store);

        // Theirs: the same number of records, saved through their store.
        let config = Config::from_url(&redis_url()).unwrap();
        let pool = Pool::new(config, None, None, None, CONNECTIONS).unwrap();
        pool.init().await.expect("Redis is reachable");
        let theirs = tower_sessions_redis_store::RedisStore::new(pool.clone());
        let (mut ids, mut saved) = (Vec::new(), Vec::new());
        for i in 0..SESSIONS {
            let mut record = Record {
                id: Id::default(),
                data: Default::default(),
                expiry_date: time::OffsetDateTime::now_utc() + time::Duration::hours(1),
            };
            record
                .data
                .insert("user".into(), serde_json::json!(format!("user-{i}")));
            tower_sessions::SessionStore::create(&theirs, &mut record)
                .await
                .unwrap();
            ids.push(record.id);
            saved.push(tokio::sync::Mutex::new(record));
        }
        let (ids, saved) = (Arc::new(ids), Arc::new(saved));
        let theirs = Arc::new(theirs);

        // Plain clients.
        let rs = redis::Client::open(redis_url())
            .unwrap()
            .get_connection_manager()
            .await
            .unwrap();
        let key = format!("{tag}:plain");
        let value = vec![b'x'; 260];
        let mut setup = rs.clone();
        redis::cmd("SET")
            .arg(&key)
            .arg(&value)
            .arg("EX")
            .arg(3600)
            .query_async::<()>(&mut setup)
            .await
            .unwrap();

        let mut pairs: Vec<(&str, Call, Call)> = Vec::new();
        pairs.push((
            "plain GET (redis-rs: one ConnectionManager / fred: Pool of 4)",
            {
                let (rs, key) = (rs.clone(), key.clone());
                Arc::new(move |_| {
                    let (mut rs, key) = (rs.clone(), key.clone());
                    Box::pin(async move {
                        let _: Vec<u8> = redis::cmd("GET").arg(&key).query_async(&mut rs).await.unwrap();
                    })
                })
            },
            {
                let (pool, key) = (pool.clone(), key.clone());
                Arc::new(move |_| {
                    let (pool, key) = (pool.clone(), key.clone());
                    Box::pin(async move {
                        let _: Vec<u8> = pool.get(&key).await.unwrap();
                    })
                })
            },
        ));
        pairs.push((
            "session read (find_active / load)",
            {
                let (store, records) = (store.clone(), records.clone());
                Arc::new(move |i| {
                    let (store, records) = (store.clone(), records.clone());
                    Box::pin(async move {
                        let r = &records[i % SESSIONS];
                        let candidates = [records::candidate(r.current, 0)];
                        let found = store
                            .find_active(&candidates, OffsetDateTime::now_utc())
                            .await
                            .unwrap();
                        assert_eq!(found.len(), 1);
                    })
                })
            },
            {
                let (theirs, ids) = (theirs.clone(), ids.clone());
                Arc::new(move |i| {
                    let (theirs, ids) = (theirs.clone(), ids.clone());
                    Box::pin(async move {
                        let found = tower_sessions::SessionStore::load(&*theirs, &ids[i % SESSIONS])
                            .await
                            .unwrap();
                        assert!(found.is_some());
                    })
                })
            },
        ));

        pairs.push((
            "session write, one value (replace / save)",
            {
                let (store, writable) = (store.clone(), writable.clone());
                Arc::new(move |i| {
                    let (store, writable) = (store.clone(), writable.clone());
                    Box::pin(async move {
                        let mut current = writable[i % SESSIONS].lock().await;
                        let next = records::successor(&current, |next| {
                            next.data.insert("n".into(), serde_json::json!(i));
                        });
                        let now = OffsetDateTime::now_utc();
                        assert!(store.replace(&current, &next, now).await.unwrap());
                        *current = next;
                    })
                })
            },
            {
                let (theirs, saved) = (theirs.clone(), saved.clone());
                Arc::new(move |i| {
                    let (theirs, saved) = (theirs.clone(), saved.clone());
                    Box::pin(async move {
                        let mut record = saved[i % SESSIONS].lock().await;
                        record.data.insert("n".into(), serde_json::json!(i));
                        tower_sessions::SessionStore::save(&*theirs, &record)
                            .await
                            .unwrap();
                    })
                })
            },
        ));

        // `ONLY=ours:<n>` (or `theirs:<n>`): pair n's one side, once, e.g.
        // to count its system calls (`perf stat`).
        let only = std::env::var("ONLY").ok();
        if only.is_none() {
            println!(
                "## Store calls, {TASKS} tasks, {CONNECTIONS} connections, {} calls × {} alternating rounds (median)\n",
                calls(),
                rounds()
            );
            println!(
                "| call | ours calls/s | theirs calls/s | ratio | app CPU µs/call (ours / theirs) | Redis CPU µs/call (ours / theirs) |"
            );
            println!("|---|---:|---:|---:|---:|---:|");
        }
        if let Some(spec) = only {
            let (side, n) = spec.split_once(':').expect("ONLY=ours|theirs:<pair>");
            let (name, ours, theirs) = &pairs[n.parse::<usize>().unwrap()];
            let run = run(if side == "ours" { ours.clone() } else { theirs.clone() }).await;
            println!(
                "{name}, {side}: {:.0} calls/s, {:.2} µs CPU per call, {:.2} µs Redis",
                run.rate, run.cpu, run.redis_cpu
            );
            pairs.clear();
        }
        for (name, ours, theirs) in &pairs {
            let (mut a, mut b) = (vec![], vec![]);
            for round in 0..rounds() {
                let (x, y) = if round % 2 == 0 {
                    let x = run(ours.clone()).await;
                    (x, run(theirs.clone()).await)
                } else {
                    let y = run(theirs.clone()).await;
                    (run(ours.clone()).await, y)
                };
                eprintln!(
                    "{name} round {}: {:.0} vs {:.0}/s, {:.2} vs {:.2} µs CPU, {:.2} vs {:.2} µs Redis",
                    round + 1,
                    x.rate,
                    y.rate,
                    x.cpu,
                    y.cpu,
                    x.redis_cpu,
                    y.redis_cpu
                );
                a.push(x);
                b.push(y);
            }
            let m = |runs: &[Run], f: fn(&Run) -> f64| median(runs.iter().map(f).collect());
            let (ma, mb) = (m(&a, |r| r.rate), m(&b, |r| r.rate));
            println!(
                "| {name} | {ma:.0} | {mb:.0} | {:.2} | {:.2} / {:.2} | {:.2} / {:.2} |",
                ma / mb,
                m(&a, |r| r.cpu),
                m(&b, |r| r.cpu),
                m(&a, |r| r.redis_cpu),
                m(&b, |r| r.redis_cpu)
            );
        }
        // tower-sessions' records are under their bare ids.
        let names: Vec<String> = ids.iter().map(ToString::to_string).collect();
        let mut admin = rs.clone();
        let _: redis::RedisResult<()> = redis::cmd("DEL").arg(&names).query_async(&mut admin).await;
        let _ = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "redis-cli -u \"$URL\" --scan --pattern '{tag}:*' | xargs -r -n 500 redis-cli -u \"$URL\" del >/dev/null"
            ))
            .env("URL", redis_url())
            .status();
    });
}
