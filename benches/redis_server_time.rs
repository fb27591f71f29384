//! Redis server time per store operation, from `INFO commandstats`: what
//! one shared Redis spends on each lookup and write of `RedisStore`, beside a
//! plain `GET` of a value of the same size and two baseline scripts.
//!
//! Run alone (it resets the server's statistics):
//! `cargo bench --features redis --bench redis_server_time`. Needs Redis at
//! `TOWER_HMAC_SESSION_REDIS_URL` (default `redis://127.0.0.1:6379`).

use std::time::Duration;

use redis::AsyncCommands as _;
use time::OffsetDateTime;
use time::macros::datetime;
use tower_hmac_session::store::{RedisStore, SubjectCap};
use tower_hmac_session::{Revocation, RevocationReason, SessionId, SessionRecord, SessionStore};

#[path = "../tests/common/records.rs"]
mod records;

use records::{candidate, credential, record, rotated, secs, successor};

const T0: OffsetDateTime = datetime!(2030-01-01 00:00 UTC);

fn unique(prefix: &str) -> String {
    format!("{prefix}_{}", SessionId::generate())
}

type Admin = redis::aio::MultiplexedConnection;

fn url() -> String {
    std::env::var("TOWER_HMAC_SESSION_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// A plain connection for inspecting and damaging keys, or `None` (a skip)
/// when the server is unreachable outside CI.
async fn admin() -> Option<Admin> {
    let connect = async {
        redis::Client::open(url())?
            .get_multiplexed_async_connection()
            .await
    };
    match tokio::time::timeout(Duration::from_secs(5), connect).await {
        Ok(Ok(connection)) => Some(connection),
        Ok(Err(error)) => {
            eprintln!("Redis at {} is unreachable: {error}", url());
            None
        }
        Err(error) => {
            eprintln!("Redis at {} is unreachable: {error}", url());
            None
        }
    }
}

async fn keys(admin: &mut Admin, prefix: &str) -> Vec<String> {
    let mut keys: Vec<String> = admin.keys(format!("{prefix}*")).await.unwrap();
    keys.sort();
    keys
}

async fn cleanup(admin: &mut Admin, prefix: &str) {
    let keys = keys(admin, prefix).await;
    if !keys.is_empty() {
        let _: () = admin.del(keys).await.unwrap();
    }
}

/// `INFO commandstats` for the commands named: calls and microseconds per
/// call, as Redis measured them.
async fn command_stats(admin: &mut Admin, names: &[&str]) -> Vec<(String, u64, f64)> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(admin)
        .await
        .unwrap();
    let mut stats = Vec::new();
    for line in info.lines() {
        let Some((name, fields)) = line
            .strip_prefix("cmdstat_")
            .and_then(|l| l.split_once(':'))
        else {
            continue;
        };
        if !names.contains(&name) {
            continue;
        }
        let field = |key: &str| {
            fields
                .split(',')
                .find_map(|f| f.strip_prefix(&format!("{key}=")))
                .unwrap()
                .to_owned()
        };
        stats.push((
            name.to_owned(),
            field("calls").parse().unwrap(),
            field("usec_per_call").parse().unwrap(),
        ));
    }
    stats
}

/// Reports the statistics of `names` since the last phase under `label`,
/// then resets them.
async fn phase(admin: &mut Admin, label: &str, names: &[&str], report: &mut Vec<String>) {
    for (name, calls, per_call) in command_stats(admin, names).await {
        report.push(format!(
            "{label:<40} {name:<8} {calls:>6} calls {per_call:>6.2} µs/call"
        ));
    }
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(admin)
        .await
        .unwrap();
}

async fn measure_server_time_per_operation() {
    let Some(mut admin) = admin().await else {
        return;
    };
    let prefix = unique("ths-measure") + ":";
    let store = RedisStore::builder(url())
        .prefix(&prefix)
        .connections(1)
        .connect()
        .await
        .unwrap();
    const N: usize = 2000;
    let records: Vec<SessionRecord> = (0..N).map(|_| record(Some("alice"), T0)).collect();
    let plain_key = format!("{prefix}plain");
    let _: () = admin.set(&plain_key, "x".repeat(400)).await.unwrap();
    let mut report = Vec::new();
    phase(&mut admin, "(reset)", &[], &mut report).await;

    for r in &records {
        store.insert(r).await.unwrap();
    }
    phase(
        &mut admin,
        "insert (script)",
        &["evalsha", "eval"],
        &mut report,
    )
    .await;

    for r in &records {
        assert!(store.get_active(&r.id, T0).await.unwrap().is_some());
    }
    phase(
        &mut admin,
        "get_active (script: two GETs)",
        &["evalsha"],
        &mut report,
    )
    .await;

    // The baseline for a lookup: plain GETs of the same values, under keys
    // of their own that expire too.
    let mut size = 0;
    for (i, r) in records.iter().enumerate() {
        let key = format!("{prefix}k:{}", hex::encode(r.current.lookup_key.as_bytes()));
        let value: Vec<u8> = admin.get(key).await.unwrap();
        size = value.len();
        let _: () = admin
            .pset_ex(format!("{prefix}plain:{i}"), value, 86_400_000)
            .await
            .unwrap();
    }
    phase(&mut admin, "(setup)", &[], &mut report).await;
    for i in 0..N {
        let _: Vec<u8> = admin.get(format!("{prefix}plain:{i}")).await.unwrap();
    }
    phase(
        &mut admin,
        &format!("plain GET, same {size}-byte values"),
        &["get"],
        &mut report,
    )
    .await;

    // What any script costs on this server, for scale.
    let empty = redis::Script::new("return 1");
    for _ in 0..N {
        let _: i64 = empty.invoke_async(&mut admin).await.unwrap();
    }
    phase(
        &mut admin,
        "baseline: script `return 1`",
        &["evalsha"],
        &mut report,
    )
    .await;
    let set_get =
        redis::Script::new("redis.call('SET', KEYS[1], ARGV[1]) return redis.call('GET', KEYS[1])");
    for _ in 0..N {
        let _: Vec<u8> = set_get
            .key(&plain_key)
            .arg("x".repeat(400))
            .invoke_async(&mut admin)
            .await
            .unwrap();
    }
    phase(
        &mut admin,
        "baseline: script SET + GET",
        &["evalsha"],
        &mut report,
    )
    .await;

    for r in &records {
        let found = store
            .find_active(&[candidate(r.current, 0)], T0)
            .await
            .unwrap();
        assert_eq!(found.len(), 1);
    }
    phase(
        &mut admin,
        "find_active, 1 candidate (GET)",
        &["get"],
        &mut report,
    )
    .await;

    for r in &records {
        let candidates = [candidate(r.current, 0), candidate(credential(2), 0)];
        assert_eq!(store.find_active(&candidates, T0).await.unwrap().len(), 1);
    }
    phase(
        &mut admin,
        "find_active, 2 candidates (MGET)",
        &["mget"],
        &mut report,
    )
    .await;

    let mut touched = Vec::with_capacity(N);
    for r in &records {
        let next = successor(r, |n| n.last_seen_at = T0 + secs(60));
        assert!(store.replace(r, &next, T0 + secs(60)).await.unwrap());
        touched.push(next);
    }
    phase(
        &mut admin,
        "replace: touch (script)",
        &["evalsha"],
        &mut report,
    )
    .await;

    for r in &touched {
        let next = rotated(r, credential(1), T0 + secs(60));
        assert!(store.replace(r, &next, T0 + secs(60)).await.unwrap());
    }
    phase(
        &mut admin,
        "replace: rotate (script)",
        &["evalsha"],
        &mut report,
    )
    .await;

    let revocation = Revocation::new(RevocationReason::Logout);
    for r in &records {
        store.revoke(&r.id, None, T0, &revocation).await.unwrap();
    }
    phase(&mut admin, "revoke (script)", &["evalsha"], &mut report).await;

    // 100 subjects with 10 sessions each.
    const SUBJECTS: usize = 100;
    let subjects: Vec<SessionRecord> = (0..SUBJECTS * 10)
        .map(|i| record(Some(&format!("user{}", i / 10)), T0))
        .collect();
    for r in &subjects {
        store.insert(r).await.unwrap();
    }
    phase(&mut admin, "(setup)", &[], &mut report).await;
    for i in 0..SUBJECTS {
        store
            .list_for_subject(&format!("user{i}"), T0)
            .await
            .unwrap();
    }
    phase(
        &mut admin,
        "list_for_subject, 10 sessions (script)",
        &["evalsha"],
        &mut report,
    )
    .await;
    // Logins at the cap (10): each revokes the least recently used one.
    let cap = SubjectCap {
        max_sessions: 10,
        except: None,
        revocation: Revocation::new(RevocationReason::SessionLimit),
    };
    for round in 0..10 {
        for i in 0..SUBJECTS {
            let login = record(Some(&format!("user{i}")), T0 + secs(round + 1));
            let evicted = store
                .insert_capped(&login, T0 + secs(round + 1), &cap)
                .await
                .unwrap();
            assert_eq!(evicted.len(), 1);
        }
    }
    phase(
        &mut admin,
        "insert_capped, cap 10, evicts 1 (script)",
        &["evalsha"],
        &mut report,
    )
    .await;
    for i in 0..SUBJECTS {
        store
            .revoke_all_for_subject(&format!("user{i}"), T0, &revocation, None)
            .await
            .unwrap();
    }
    phase(
        &mut admin,
        "revoke_all_for_subject, 10 (script)",
        &["evalsha"],
        &mut report,
    )
    .await;

    // One subject with a long history: 3,000 sessions ended idly. The first
    // calls drop 1,000 dead entries each, the last lists 10.
    let history: Vec<SessionRecord> = (0..3000)
        .map(|_| SessionRecord {
            expires_at: T0 + secs(60),
            ..record(Some("history"), T0)
        })
        .chain((0..10).map(|_| record(Some("history"), T0)))
        .collect();
    for r in &history {
        store.insert(r).await.unwrap();
    }
    phase(&mut admin, "(setup)", &[], &mut report).await;
    for _ in 0..4 {
        let listed = store
            .list_for_subject("history", T0 + secs(120))
            .await
            .unwrap();
        assert_eq!(listed.len(), 10);
    }
    phase(
        &mut admin,
        "list_for_subject, 3,000 ended + 10 (4 calls)",
        &["evalsha", "zremrangebyrank", "get"],
        &mut report,
    )
    .await;

    println!("\nRedis server time per call (INFO commandstats), {N} operations each:");
    for line in report {
        println!("{line}");
    }
    cleanup(&mut admin, &prefix).await;
}

fn main() {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(measure_server_time_per_operation());
}
