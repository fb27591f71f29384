//! `RedisStore` against a real server: the conformance suite, the store's
//! rules operation by operation, two app instances on one Redis, damaged
//! values, expiry under a clock far from the server's, what a lookup sends,
//! the connections, ACL credentials and the health check, the per-subject
//! cap through the router, and a subject index with a long history.
//!
//! `TOWER_HMAC_SESSION_REDIS_URL` (default `redis://127.0.0.1:6379`) names
//! the server; under `CI=true` an unreachable server fails the run. Each
//! test works under a key prefix of its own, so tests run in parallel.
//!
//! Redis's own per-command timings (`INFO commandstats`) for a lookup, a
//! plain `GET` and each script are a bench: `cargo bench --features redis
//! --bench redis_server_time` (it resets the server's statistics, so run it
//! alone).
#![cfg(all(feature = "redis", feature = "memory"))]

mod common;
#[path = "common/records.rs"]
mod records;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Harness, T0, ring, unique};
use http::StatusCode;
use records::{candidate, credential, record, rotated, secs, successor};
use redis::AsyncCommands as _;
use time::OffsetDateTime;
use time::macros::datetime;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tower_hmac_session::store::RedisStore;
use tower_hmac_session::{
    Credential, KeyVersion, Revocation, RevocationReason, RevokeOutcome, SessionConfig, SessionId,
    SessionRecord, SessionStore, Slot, StoreError, VersionCount,
};

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
            common::unreachable("Redis", &url(), &error);
            None
        }
        Err(error) => {
            common::unreachable("Redis", &url(), &error);
            None
        }
    }
}

async fn store(prefix: &str) -> RedisStore {
    RedisStore::builder(url())
        .prefix(prefix)
        .connect()
        .await
        .unwrap()
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

async fn found(store: &RedisStore, credential: Credential, now: OffsetDateTime) -> Vec<Slot> {
    store
        .find_active(&[candidate(credential, 0)], now)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.slot)
        .collect()
}

#[cfg(feature = "conformance")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_store_passes_the_conformance_suite() {
    let Some(mut admin) = admin().await else {
        return;
    };
    let prefixes = Arc::new(Mutex::new(Vec::new()));
    let made = prefixes.clone();
    tower_hmac_session::conformance::run(move || {
        let prefix = unique("ths-conformance") + ":";
        made.lock().unwrap().push(prefix.clone());
        async move { store(&prefix).await }
    })
    .await;
    let prefixes = prefixes.lock().unwrap().clone();
    for prefix in prefixes {
        cleanup(&mut admin, &prefix).await;
    }
}

#[tokio::test]
async fn inserts_lookups_and_compare_and_swap_follow_the_trait() {
    let Some(mut admin) = admin().await else {
        return;
    };
    let prefix = unique("ths-rules") + ":";
    let store = store(&prefix).await;
    let now = T0;
    let a = record(Some("alice"), now);
    store.insert(&a).await.unwrap();
    assert_eq!(
        store.get_active(&a.id, now).await.unwrap().as_deref(),
        Some(&a)
    );
    assert_eq!(found(&store, a.current, now).await, [Slot::Current]);
    // The lookup key under another key version is no match.
    let other_version = Credential {
        key_version: KeyVersion(9),
        ..a.current
    };
    assert!(found(&store, other_version, now).await.is_empty());

    // Conflicts: the same id, or a lookup key another record holds.
    let mut same_id = record(Some("alice"), now);
    same_id.id = a.id;
    assert!(matches!(
        store.insert(&same_id).await,
        Err(StoreError::Conflict)
    ));
    let mut same_key = record(None, now);
    same_key.current = a.current;
    assert!(matches!(
        store.insert(&same_key).await,
        Err(StoreError::Conflict)
    ));
    let mut invalid = record(Some("alice"), now);
    invalid.expires_at = invalid.absolute_expires_at + secs(1);
    assert!(matches!(
        store.insert(&invalid).await,
        Err(StoreError::Invalid(_))
    ));

    // Rotate: the old key resolves as the previous slot.
    let new = credential(1);
    let b = rotated(&a, new, now + secs(10));
    assert!(store.replace(&a, &b, now + secs(10)).await.unwrap());
    assert_eq!(found(&store, new, now).await, [Slot::Current]);
    assert_eq!(found(&store, a.current, now).await, [Slot::Previous]);
    // A lost compare-and-swap: the generation moved on.
    assert!(!store.replace(&a, &b, now + secs(10)).await.unwrap());

    // Re-rotate: the unconfirmed current is superseded.
    let newer = credential(1);
    let c = successor(&b, |next| {
        next.superseded = Some(new);
        next.current = newer;
    });
    assert!(store.replace(&b, &c, now + secs(20)).await.unwrap());
    assert_eq!(found(&store, new, now).await, [Slot::Superseded]);

    // Renew: every old key stops resolving, at once.
    let renewed = credential(2);
    let d = successor(&c, |next| {
        next.current = renewed;
        next.previous = None;
        next.superseded = None;
    });
    assert!(store.replace(&c, &d, now + secs(30)).await.unwrap());
    for old in [a.current, new, newer] {
        assert!(found(&store, old, now).await.is_empty());
        let key = format!("{prefix}k:{}", hex::encode(old.lookup_key.as_bytes()));
        assert!(!admin.exists::<_, bool>(key).await.unwrap());
    }
    assert_eq!(found(&store, renewed, now).await, [Slot::Current]);

    // A new key another record holds is a conflict, and nothing changes.
    let other = record(Some("bob"), now);
    store.insert(&other).await.unwrap();
    let stealing = successor(&d, |next| next.current = other.current);
    assert!(matches!(
        store.replace(&d, &stealing, now).await,
        Err(StoreError::Conflict)
    ));
    assert_eq!(found(&store, renewed, now).await, [Slot::Current]);
    // Not a successor: refused before any write.
    let skipping = successor(&d, |next| next.generation += 1);
    assert!(matches!(
        store.replace(&d, &skipping, now).await,
        Err(StoreError::Invalid(_))
    ));

    // The condition is checked at the write's time: past the idle expiry
    // nothing is written back.
    let late = d.expires_at;
    let touched = successor(&d, |next| next.last_seen_at = late);
    assert!(!store.replace(&d, &touched, late).await.unwrap());
    assert!(store.get_active(&d.id, late).await.unwrap().is_none());
    assert_eq!(
        store.get_active(&d.id, now).await.unwrap().as_deref(),
        Some(&d)
    );

    // Revoked: never found, never replaced.
    let logout = Revocation::new(RevocationReason::Logout);
    assert_eq!(
        store.revoke(&d.id, None, now, &logout).await.unwrap(),
        RevokeOutcome::Revoked
    );
    assert!(found(&store, renewed, now).await.is_empty());
    assert!(store.get_active(&d.id, now).await.unwrap().is_none());
    let revived = successor(&d, |_| {});
    assert!(!store.replace(&d, &revived, now).await.unwrap());
    cleanup(&mut admin, &prefix).await;
}

#[tokio::test]
async fn several_cookie_values_are_matched_in_one_lookup() {
    let Some(mut admin) = admin().await else {
        return;
    };
    let prefix = unique("ths-values") + ":";
    let store = store(&prefix).await;
    let a = record(Some("alice"), T0);
    let b = record(Some("bob"), T0);
    store.insert(&a).await.unwrap();
    store.insert(&b).await.unwrap();
    let new = credential(2);
    let a2 = rotated(&a, new, T0);
    assert!(store.replace(&a, &a2, T0).await.unwrap());
    let candidates = [
        candidate(credential(1), 0),
        candidate(a.current, 1),
        candidate(new, 1),
        candidate(new, 2),
        candidate(b.current, 3),
    ];
    let mut matches: Vec<_> = store
        .find_active(&candidates, T0)
        .await
        .unwrap()
        .into_iter()
        .map(|m| (m.value_index, m.record.id, m.slot, m.key_version))
        .collect();
    matches.sort();
    let mut expected = vec![
        (1, a.id, Slot::Previous, KeyVersion(1)),
        (1, a.id, Slot::Current, KeyVersion(2)),
        (2, a.id, Slot::Current, KeyVersion(2)),
        (3, b.id, Slot::Current, KeyVersion(1)),
    ];
    expected.sort();
    assert_eq!(matches, expected);
    assert!(store.find_active(&[], T0).await.unwrap().is_empty());
    cleanup(&mut admin, &prefix).await;
}

#[tokio::test]
async fn subjects_lists_and_revocations() {
    let Some(mut admin) = admin().await else {
        return;
    };
    let prefix = unique("ths-subjects") + ":";
    let store = store(&prefix).await;
    let mut alice = Vec::new();
    for i in 0..4 {
        let r = record(Some("alice smith|x"), T0 + secs(i));
        store.insert(&r).await.unwrap();
        alice.push(r);
    }
    let anonymous = record(None, T0);
    store.insert(&anonymous).await.unwrap();
    let list = store
        .list_for_subject("alice smith|x", T0 + secs(10))
        .await
        .unwrap();
    let ids: Vec<_> = list.iter().map(|r| r.id).collect();
    let newest_first: Vec<_> = alice.iter().rev().map(|r| r.id).collect();
    assert_eq!(ids, newest_first);
    assert_eq!(list[0].key_version, KeyVersion(1));
    assert_eq!(list[0].client_ip, alice[3].client_ip);

    // The subject filter: someone else's session, or one without a
    // subject, is not found; the right subject revokes it.
    let admin_revocation = Revocation::new(RevocationReason::Admin).by("ops");
    for (id, subject) in [
        (alice[0].id, "bob"),
        (alice[0].id, "alice smith"),
        (anonymous.id, "alice smith|x"),
        (SessionId::generate(), "alice smith|x"),
    ] {
        assert_eq!(
            store
                .revoke(&id, Some(subject), T0, &admin_revocation)
                .await
                .unwrap(),
            RevokeOutcome::NotFound
        );
    }
    assert_eq!(
        store
            .revoke(&alice[0].id, Some("alice smith|x"), T0, &admin_revocation)
            .await
            .unwrap(),
        RevokeOutcome::Revoked
    );
    assert_eq!(
        store
            .revoke(&alice[0].id, None, T0, &admin_revocation)
            .await
            .unwrap(),
        RevokeOutcome::AlreadyRevoked
    );
    // The revocation is stamped on the record, as given.
    let value = stored_value(&mut admin, &prefix, alice[0].id)
        .await
        .unwrap();
    assert!(value.contains(&format!(
        "|{},admin,{}|",
        T0.unix_timestamp() * 1_000_000,
        hex::encode("ops")
    )));

    // Everything but the caller's session, atomically; dead ids leave the
    // index as they are met.
    let _: () = admin
        .del(format!("{prefix}s:{}", alice[1].id))
        .await
        .unwrap();
    let logout = Revocation::new(RevocationReason::LogoutOtherDevices);
    assert_eq!(
        store
            .revoke_all_for_subject("alice smith|x", T0, &logout, Some(&alice[3].id))
            .await
            .unwrap(),
        1
    );
    let remaining: Vec<String> = admin
        .zrange(format!("{prefix}u:alice smith|x"), 0, -1)
        .await
        .unwrap();
    assert_eq!(remaining, [alice[3].id.to_string()]);
    let list = store.list_for_subject("alice smith|x", T0).await.unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].id, alice[3].id);
    assert_eq!(
        store
            .revoke_all_for_subject("alice smith|x", T0, &logout, None)
            .await
            .unwrap(),
        1
    );
    assert!(
        store
            .list_for_subject("alice smith|x", T0)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .list_for_subject("nobody", T0)
            .await
            .unwrap()
            .is_empty()
    );
    cleanup(&mut admin, &prefix).await;
}

#[tokio::test]
async fn counts_and_purges_scan_in_bounded_batches() {
    let Some(mut admin) = admin().await else {
        return;
    };
    let prefix = unique("ths-scan") + ":";
    let store = store(&prefix).await;
    // More records than one scan step reads.
    let mut records = Vec::new();
    for i in 0..1200 {
        let mut r = record(Some(&format!("user{}", i % 7)), T0);
        if i % 3 == 0 {
            r.last_seen_at = T0 + secs(100);
        }
        store.insert(&r).await.unwrap();
        records.push(r);
    }
    // One record mid-rotation from version 1 to 2, one revoked, and one
    // expired by the time of the count.
    let rotating = rotated(&records[1], credential(2), T0);
    assert!(store.replace(&records[1], &rotating, T0).await.unwrap());
    let revocation = Revocation::new(RevocationReason::Logout);
    store
        .revoke(&records[2].id, None, T0, &revocation)
        .await
        .unwrap();
    let short = record(Some("short"), T0);
    let short = SessionRecord {
        expires_at: T0 + secs(10),
        ..short
    };
    store.insert(&short).await.unwrap();

    let now = T0 + secs(60);
    let counts = store
        .count_by_key_version(now, T0 + secs(50))
        .await
        .unwrap();
    let recent = records.iter().filter(|r| r.last_seen_at > T0).count() as u64;
    let mut expected = BTreeMap::new();
    // records[1] (dormant) moved to version 2 and, its successor
    // unconfirmed, still counts under 1; records[2] (dormant) is revoked.
    expected.insert(
        KeyVersion(1),
        VersionCount {
            recent,
            dormant: 1200 - recent - 1,
        },
    );
    expected.insert(
        KeyVersion(2),
        VersionCount {
            recent: 0,
            dormant: 1,
        },
    );
    assert_eq!(counts, expected);

    assert_eq!(store.purge_expired(now).await.unwrap(), 2);
    assert!(
        !admin
            .exists::<_, bool>(format!("{prefix}s:{}", short.id))
            .await
            .unwrap()
    );
    let short_key = format!(
        "{prefix}k:{}",
        hex::encode(short.current.lookup_key.as_bytes())
    );
    assert!(!admin.exists::<_, bool>(short_key).await.unwrap());
    // Past everyone's absolute expiry, everything goes, indexes included.
    assert_eq!(store.purge_expired(T0 + secs(86_400)).await.unwrap(), 1199);
    assert!(keys(&mut admin, &prefix).await.is_empty());
    cleanup(&mut admin, &prefix).await;
}

#[tokio::test]
async fn a_clock_years_from_the_servers_does_not_make_sessions_vanish() {
    let Some(mut admin) = admin().await else {
        return;
    };
    for start in [
        datetime!(2001-02-03 04:05 UTC),
        datetime!(2093-01-01 00:00 UTC),
    ] {
        let prefix = unique("ths-clock") + ":";
        let h = Harness::with_store(
            store(&prefix).await,
            SessionConfig::default(),
            ring(1, &[1]),
        );
        h.clock.set(start);
        let secret = h.login("alice").await;
        let keys = keys(&mut admin, &prefix).await;
        assert_eq!(keys.len(), 3, "{keys:?}");
        // Each key lives for the session's absolute lifetime (30 days by
        // default) from now, whatever Redis's own clock says; the id's key
        // an hour longer.
        for key in &keys {
            let ttl: i64 = admin.pttl(key).await.unwrap();
            let margin = if key.contains(":s:") { 3600 * 1000 } else { 0 };
            let lifetime = 30 * 24 * 3600 * 1000 + margin;
            assert!(
                (lifetime - 60_000..=lifetime).contains(&ttl),
                "{start}: {key} {ttl}"
            );
        }
        h.advance(3600);
        let res = h.call("GET", "/me", Some(&secret)).await;
        assert_eq!((res.status, res.body.as_str()), (StatusCode::OK, "alice"));
        cleanup(&mut admin, &prefix).await;
    }
}

/// A TCP proxy in front of Redis that records every command clients send
/// through it, by connection: what the store puts on the wire, without
/// `MONITOR` and without other tests' traffic.
struct Proxy {
    url: String,
    commands: Arc<Mutex<Vec<(usize, String)>>>,
    connections: Arc<AtomicUsize>,
    /// The connections (bit `i` for the `i`-th accepted) whose commands are
    /// logged but not passed on while set: they stay in flight.
    hold: tokio::sync::watch::Sender<u32>,
}

impl Proxy {
    async fn start() -> Proxy {
        let url = url();
        let rest = url.strip_prefix("redis://").expect("a redis:// URL");
        let (user_info, rest) = match rest.rsplit_once('@') {
            Some((user_info, rest)) => (format!("{user_info}@"), rest),
            None => (String::new(), rest),
        };
        let (upstream, path) = rest.split_once('/').unwrap_or((rest, ""));
        let upstream = upstream.to_owned();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let commands = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let (log, count) = (commands.clone(), connections.clone());
        let (hold, held) = tokio::sync::watch::channel(0u32);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let index = count.fetch_add(1, Ordering::SeqCst);
                assert!(index < 32, "the hold mask has a bit for 32 connections");
                let server = tokio::net::TcpStream::connect(&upstream).await.unwrap();
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
                });
                let log = log.clone();
                let mut held = held.clone();
                tokio::spawn(async move {
                    let mut pending = Vec::new();
                    // Read while held, so every command is logged; what was
                    // read goes on to the server once released.
                    let mut unsent = Vec::new();
                    let mut chunk = [0u8; 16 * 1024];
                    loop {
                        let is_held = |mask: &u32| mask & (1 << index) != 0;
                        tokio::select! {
                            read = client_read.read(&mut chunk) => {
                                let n = match read {
                                    Ok(0) | Err(_) => return,
                                    Ok(n) => n,
                                };
                                pending.extend_from_slice(&chunk[..n]);
                                while let Some((used, name)) = parse_command(&pending) {
                                    log.lock().unwrap().push((index, name));
                                    pending.drain(..used);
                                }
                                unsent.extend_from_slice(&chunk[..n]);
                            }
                            released = held.wait_for(|mask| !is_held(mask)), if !unsent.is_empty() => {
                                if released.is_err() {
                                    return;
                                }
                            }
                        }
                        if !is_held(&held.borrow()) && !unsent.is_empty() {
                            if server_write.write_all(&unsent).await.is_err() {
                                return;
                            }
                            unsent.clear();
                        }
                    }
                });
            }
        });
        Proxy {
            url: format!("redis://{user_info}127.0.0.1:{port}/{path}"),
            commands,
            connections,
            hold,
        }
    }

    /// The command names sent since the last call, uppercase.
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.commands.lock().unwrap())
            .into_iter()
            .map(|(_, name)| name)
            .collect()
    }
}

/// One RESP command (an array of bulk strings) at the start of `buf`: the
/// bytes it takes and its name; `None` until it is complete.
fn parse_command(buf: &[u8]) -> Option<(usize, String)> {
    fn line(buf: &[u8], at: usize) -> Option<(usize, &[u8])> {
        let end = buf[at..].windows(2).position(|w| w == b"\r\n")? + at;
        Some((end + 2, &buf[at..end]))
    }
    let number = |bytes: &[u8]| -> usize { std::str::from_utf8(bytes).unwrap().parse().unwrap() };
    let (mut at, header) = line(buf, 0)?;
    assert_eq!(
        header.first(),
        Some(&b'*'),
        "the proxy reads RESP arrays only"
    );
    let mut name = None;
    for _ in 0..number(&header[1..]) {
        let (start, len) = line(buf, at)?;
        let len = number(&len[1..]);
        if buf.len() < start + len + 2 {
            return None;
        }
        name.get_or_insert_with(|| {
            String::from_utf8_lossy(&buf[start..start + len]).to_uppercase()
        });
        at = start + len + 2;
    }
    Some((at, name.unwrap_or_default()))
}

#[tokio::test]
async fn a_lookup_is_one_get_or_mget_and_no_script() {
    let Some(mut admin) = admin().await else {
        return;
    };
    let prefix = unique("ths-wire") + ":";
    let proxy = Proxy::start().await;
    let store = RedisStore::builder(&proxy.url)
        .prefix(&prefix)
        .connections(1)
        .connect()
        .await
        .unwrap();
    let a = record(Some("alice"), T0);
    store.insert(&a).await.unwrap();
    let b = rotated(&a, credential(2), T0);
    assert!(store.replace(&a, &b, T0).await.unwrap());
    let writes = proxy.take();
    assert!(
        writes.iter().all(|c| c != "MGET" && c != "GET"),
        "{writes:?}"
    );

    // Eight candidates (two cookie values, four key versions), one round
    // trip, no script.
    let mut candidates = vec![candidate(b.current, 0), candidate(a.current, 1)];
    candidates.extend((0..6).map(|i| candidate(credential(i), i as u8 / 3)));
    let matches = store.find_active(&candidates, T0).await.unwrap();
    assert_eq!(matches.len(), 2);
    assert_eq!(proxy.take(), ["MGET"]);
    // One candidate (the usual lookup): one `GET`.
    let matches = store
        .find_active(&[candidate(b.current, 0)], T0)
        .await
        .unwrap();
    assert_eq!(matches.len(), 1);
    assert_eq!(matches[0].slot, tower_hmac_session::Slot::Current);
    assert_eq!(proxy.take(), ["GET"]);
    let matches = store
        .find_active(&[candidate(a.current, 0)], T0)
        .await
        .unwrap();
    assert_eq!(matches[0].slot, tower_hmac_session::Slot::Previous);
    assert!(
        store
            .find_active(&[candidate(credential(9), 0)], T0)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(proxy.take(), ["GET", "GET"]);
    // A lookup by id (only after a refused write) is one small read-only
    // script: `s:<id>` points to the value under the current lookup key.
    // (The first call may load the script.)
    assert!(store.get_active(&a.id, T0).await.unwrap().is_some());
    proxy.take();
    assert!(store.get_active(&a.id, T0).await.unwrap().is_some());
    assert_eq!(proxy.take(), ["EVALSHA"]);
    // No candidates, no command.
    assert!(store.find_active(&[], T0).await.unwrap().is_empty());
    assert!(proxy.take().is_empty());
    cleanup(&mut admin, &prefix).await;
}

#[tokio::test]
async fn commands_fill_one_connection_first_and_the_first_moves_on() {
    let Some(mut admin) = admin().await else {
        return;
    };
    let prefix = unique("ths-connections") + ":";
    let proxy = Proxy::start().await;
    let store = RedisStore::builder(&proxy.url)
        .prefix(&prefix)
        .connections(3)
        .connect()
        .await
        .unwrap();
    assert_eq!(proxy.connections.load(Ordering::SeqCst), 3);
    proxy.commands.lock().unwrap().clear();
    let probe = [candidate(credential(0), 0)];
    let connection_of_each = |proxy: &Proxy| -> Vec<usize> {
        let mut commands = proxy.commands.lock().unwrap();
        let indexes = commands.iter().map(|(index, _)| *index).collect();
        assert!(commands.iter().all(|(_, name)| name == "GET"));
        commands.clear();
        indexes
    };

    // One at a time: each command finds the first connection free, and the
    // first connection changes every 256 commands, so all three are used.
    for _ in 0..3 * 256 {
        assert!(store.find_active(&probe, T0).await.unwrap().is_empty());
    }
    let sequential = connection_of_each(&proxy);
    assert_eq!(sequential.len(), 3 * 256);
    for (turn, chunk) in sequential.chunks(256).enumerate() {
        assert!(chunk.iter().all(|&index| index == turn), "turn {turn}");
    }

    // Held in flight: the first connection takes 64, the next the rest.
    proxy.hold.send_replace(0b111);
    let lookups: Vec<_> = (0..70)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.find_active(&probe, T0).await })
        })
        .collect();
    // Every lookup has taken its connection once all 70 are logged.
    tokio::time::timeout(Duration::from_secs(10), async {
        while proxy.commands.lock().unwrap().len() < 70 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("every lookup reaches the proxy");
    proxy.hold.send_replace(0);
    for lookup in lookups {
        assert!(lookup.await.unwrap().unwrap().is_empty());
    }
    let mut per_connection = [0; 3];
    for index in connection_of_each(&proxy) {
        per_connection[index] += 1;
    }
    assert_eq!(per_connection, [64, 6, 0]);

    let debug = format!("{store:?}");
    assert!(debug.contains("connections: 3"), "{debug}");
    cleanup(&mut admin, &prefix).await;
}

/// A store on `prefix` with two connections through a [`Proxy`], and a
/// timeout of one second: for tests that hold a connection past it.
async fn two_connections_with_a_timeout(prefix: &str) -> (Proxy, RedisStore) {
    let proxy = Proxy::start().await;
    let store = RedisStore::builder(&proxy.url)
        .prefix(prefix)
        .connections(2)
        .timeout(Duration::from_secs(1))
        .connect()
        .await
        .unwrap();
    (proxy, store)
}

#[tokio::test]
async fn a_connection_whose_command_timed_out_is_passed_over() {
    let Some(mut admin) = admin().await else {
        return;
    };
    let prefix = unique("ths-stalled") + ":";
    let (proxy, store) = two_connections_with_a_timeout(&prefix).await;
    proxy.commands.lock().unwrap().clear();
    let probe = [candidate(credential(0), 0)];
    // The first connection hangs (the server never answers on it, and
    // never closes it): its lookup times out.
    proxy.hold.send_replace(0b01);
    let error = store.find_active(&probe, T0).await.unwrap_err();
    assert!(matches!(error, StoreError::Timeout { .. }), "{error:?}");
    // The rest of the turn goes to the sound connection.
    for _ in 0..10 {
        assert!(store.find_active(&probe, T0).await.unwrap().is_empty());
    }
    let used: Vec<usize> = std::mem::take(&mut *proxy.commands.lock().unwrap())
        .into_iter()
        .map(|(index, _)| index)
        .collect();
    assert_eq!(used, [vec![0], vec![1; 10]].concat());
    proxy.hold.send_replace(0);
    cleanup(&mut admin, &prefix).await;
}

/// A data write whose script outlives the store's timeout is a timeout,
/// and no second script follows it: both share one deadline. The held
/// write reaches the server afterwards and applies whole (a write that
/// applies but reported a timeout); a replace from the record it replaced
/// is then refused, and one from the new record applies.
#[tokio::test]
async fn a_data_write_out_of_time_sends_no_second_script() {
    let Some(mut admin) = admin().await else {
        return;
    };
    let prefix = unique("ths-late-write") + ":";
    let (proxy, store) = two_connections_with_a_timeout(&prefix).await;
    let first = record(Some("alice"), T0);
    store.insert(&first).await.unwrap();
    // Data only: the same keys and expiries, so the small script. One
    // applies first, so the server has the script cached: the held
    // `EVALSHA` cannot meet `NOSCRIPT`, whose reload would have died with
    // the caller.
    let a = successor(&first, |n| {
        n.data.insert("theme".into(), "light".into());
    });
    assert!(store.replace(&first, &a, T0).await.unwrap());
    let next = successor(&a, |n| {
        n.data.insert("theme".into(), "dark".into());
    });
    proxy.take();
    proxy.hold.send_replace(0b11);
    let error = store.replace(&a, &next, T0).await.unwrap_err();
    assert!(matches!(error, StoreError::Timeout { .. }), "{error:?}");
    assert_eq!(proxy.take(), ["EVALSHA"]);
    proxy.hold.send_replace(0);
    // The held script applies once it reaches the server.
    tokio::time::timeout(Duration::from_secs(10), async {
        while store.get_active(&a.id, T0).await.unwrap().as_deref() != Some(&next) {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the held write applies");
    assert!(!store.replace(&a, &next, T0).await.unwrap());
    let after = successor(&next, |n| {
        n.data.insert("lang".into(), "fr".into());
    });
    assert!(store.replace(&next, &after, T0).await.unwrap());
    assert_eq!(
        store.get_active(&a.id, T0).await.unwrap().as_deref(),
        Some(&after)
    );
    cleanup(&mut admin, &prefix).await;
}

/// Two app instances: separate connections and managers on one prefix.
async fn two_instances(prefix: &str, config: SessionConfig) -> (Harness, Harness) {
    (
        Harness::with_store(store(prefix).await, config.clone(), ring(1, &[1])),
        Harness::with_store(store(prefix).await, config, ring(1, &[1])),
    )
}

#[tokio::test]
async fn revocation_and_rotation_through_one_instance_are_seen_by_the_other() {
    let Some(mut admin) = admin().await else {
        return;
    };
    let prefix = unique("ths-instances") + ":";
    let (a, b) = two_instances(&prefix, common::rotating()).await;
    common::revocation_is_shared(&a, &b).await;
    common::rotation_is_shared(&a, &b).await;
    cleanup(&mut admin, &prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_rotation_through_both_instances_has_one_winner() {
    let Some(mut admin) = admin().await else {
        return;
    };
    let prefix = unique("ths-race") + ":";
    let (a, b) = two_instances(&prefix, common::rotating()).await;
    let secret = a.login("alice").await;
    a.advance(901);
    b.advance(901);
    let new = common::race_rotation(&a, &b, &secret).await;
    assert_eq!(a.call("GET", "/me", Some(&new)).await.body, "alice");
    cleanup(&mut admin, &prefix).await;
}

#[tokio::test]
async fn lost_responses_and_copied_cookies_through_redis() {
    let Some(mut admin) = admin().await else {
        return;
    };
    let prefix = unique("ths-lifecycle") + ":";
    // A fresh app instance per scenario: each counts its own writes.
    let instance =
        async || Harness::with_store(store(&prefix).await, common::rotating(), ring(1, &[1]));
    common::lost_rotation_response_keeps_the_session(&instance().await).await;
    common::copied_cookie_after_confirmed_rotation_is_reuse(&instance().await).await;
    common::superseded_secret_is_reuse(&instance().await).await;
    common::rotation_write_that_times_out_converges(&instance().await).await;
    cleanup(&mut admin, &prefix).await;
}

#[tokio::test]
async fn writes_survive_a_script_cache_flush() {
    let Some(mut admin) = admin().await else {
        return;
    };
    let prefix = unique("ths-flush") + ":";
    let store = store(&prefix).await;
    let a = record(Some("alice"), T0);
    store.insert(&a).await.unwrap();
    // A restarted server, or an operator's `SCRIPT FLUSH`: the next EVALSHA
    // answers NOSCRIPT, and the store loads the script and runs it again.
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut admin)
        .await
        .unwrap();
    let b = rotated(&a, credential(1), T0);
    assert!(store.replace(&a, &b, T0).await.unwrap());
    assert_eq!(found(&store, b.current, T0).await, [Slot::Current]);
    cleanup(&mut admin, &prefix).await;
}

/// A log sink for one test.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A `redis-server` child of this test on a free loopback port, with
/// `args`, killed on drop: for what must not touch the shared server's
/// configuration.
struct PrivateRedis {
    child: std::process::Child,
    url: String,
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn private_redis(args: &[&str]) -> PrivateRedis {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let child = std::process::Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("redis-server (the tests start one of their own)");
    let server = PrivateRedis {
        child,
        url: format!("redis://127.0.0.1:{port}"),
    };
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return server;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("the private redis-server did not start listening");
}

#[tokio::test]
async fn connecting_refuses_a_server_that_may_evict_keys() {
    let Some(mut admin) = admin().await else {
        return;
    };
    let logs = Logs::default();
    let sink = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || sink.clone())
        .with_max_level(tracing::Level::WARN)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let text = || String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();

    // A server of its own: the shared one keeps `noeviction` throughout.
    let evicting = private_redis(&["--maxmemory-policy", "allkeys-lru"]);
    let refused = RedisStore::builder(&evicting.url)
        .connections(1)
        .connect()
        .await
        .unwrap_err();
    assert!(matches!(refused, StoreError::Backend { .. }), "{refused:?}");
    let message = format!("{}", std::error::Error::source(&refused).unwrap());
    assert!(message.contains("allkeys-lru"), "{message}");
    assert!(message.contains("allow_eviction"), "{message}");
    // The explicit opt-out connects, with a warning.
    let allowed = RedisStore::builder(&evicting.url)
        .connections(1)
        .allow_eviction(true)
        .connect()
        .await
        .unwrap();
    allowed.ping().await.unwrap();
    let logs = text();
    assert_eq!(logs.matches("noeviction").count(), 1, "{logs}");
    assert!(logs.contains("allkeys-lru"), "{logs}");

    // The shared server's `noeviction`: no warning.
    let policy: Vec<String> = redis::cmd("CONFIG")
        .arg(&["GET", "maxmemory-policy"][..])
        .query_async(&mut admin)
        .await
        .unwrap();
    assert_eq!(policy[1], "noeviction", "the test server's own policy");
    RedisStore::builder(url())
        .connections(1)
        .connect()
        .await
        .unwrap();
    assert_eq!(text(), logs);

    // A user who may not read the configuration (managed Redis): warned,
    // and connected.
    let prefix = unique("ths-noconfig") + ":";
    let (user, password) = common::redis_acl_user_with(&mut admin, &prefix, &["-config"]).await;
    let store = RedisStore::builder(url())
        .prefix(&prefix)
        .username(&user)
        .password(&password)
        .connections(1)
        .connect()
        .await;
    let _: () = redis::cmd("ACL")
        .arg(&["DELUSER", &user][..])
        .query_async(&mut admin)
        .await
        .unwrap();
    store.unwrap();
    let logs = text();
    assert!(
        logs.contains("could not read the Redis eviction policy"),
        "{logs}"
    );
    assert!(!logs.contains(&password), "{logs}");
    cleanup(&mut admin, &prefix).await;
}

#[tokio::test]
async fn prefixes_keep_stores_apart() {
    let Some(mut admin) = admin().await else {
        return;
    };
    let (p1, p2) = (unique("ths-p1") + ":", unique("ths-p2") + ":");
    let one = Harness::with_store(store(&p1).await, SessionConfig::default(), ring(1, &[1]));
    let two = Harness::with_store(store(&p2).await, SessionConfig::default(), ring(1, &[1]));
    let secret = one.login("alice").await;
    assert_eq!(
        one.call("GET", "/me", Some(&secret)).await.status,
        StatusCode::OK
    );
    assert_eq!(
        two.call("GET", "/me", Some(&secret)).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert!(keys(&mut admin, &p2).await.is_empty());
    cleanup(&mut admin, &p1).await;
}

/// The value of record `id`: `s:<id>` holds its current lookup key, and
/// the value is under that key.
async fn stored_value(admin: &mut Admin, prefix: &str, id: SessionId) -> Option<String> {
    let pointer: Option<String> = admin.get(format!("{prefix}s:{id}")).await.unwrap();
    admin.get(format!("{prefix}k:{}", pointer?)).await.unwrap()
}

/// Rewrites the value of record `id`, under every lookup key it holds, as
/// `case` says: `h<n>=<text>` replaces header field `n`, `b<from>=><to>`
/// replaces text after the header (the state line and the data),
/// `raw=<text>` the whole value.
async fn damage(admin: &mut Admin, prefix: &str, id: SessionId, case: &str) {
    let value = stored_value(admin, prefix, id).await.unwrap();
    let (header, body) = value.split_once('\n').unwrap();
    let fields: Vec<&str> = header.split('|').collect();
    let damaged = if let Some(raw) = case.strip_prefix("raw=") {
        raw.to_owned()
    } else if let Some(change) = case.strip_prefix('h') {
        let (index, text) = change.split_once('=').unwrap();
        let mut fields = fields.clone();
        fields[index.parse::<usize>().unwrap()] = text;
        format!("{}\n{body}", fields.join("|"))
    } else {
        let (from, to) = case[1..].split_once("=>").unwrap();
        assert!(body.contains(from), "{case}");
        format!("{header}\n{}", body.replacen(from, to, 1))
    };
    let mut keys = vec![];
    for field in &fields[6..9] {
        if *field != "-" {
            keys.push(format!("{prefix}k:{field}"));
        }
    }
    for key in keys {
        let _: () = redis::cmd("SET")
            .arg(&key)
            .arg(&damaged)
            .arg("KEEPTTL")
            .query_async(admin)
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn damaged_values_are_reported_as_corruption() {
    let Some(mut admin) = admin().await else {
        return;
    };
    let prefix = unique("ths-corrupt") + ":";
    let h = Harness::with_store(
        store(&prefix).await,
        SessionConfig::default(),
        ring(1, &[1]),
    );
    let other_key = "f".repeat(64);
    let (h6, h7) = (format!("h6={other_key}"), format!("h7={other_key}"));
    let cases = [
        "raw=",
        "raw=garbage",
        "raw=ths3|x\n{}",
        "h0=ths1",
        "h1=ABABABABABABABABABABABABABABABAB",
        "h2=01",
        "h3=+1893456000000000",
        "h3=1.9e15",
        "h4= 1",
        "h5=1,bogus",
        "h5=x,logout",
        // An actor no revocation could have written.
        "h5=1,admin,",
        "h5=1,admin,0a",
        // The value under the lookup key does not hold it.
        &h6,
        "h6=ABABABABABABABABABABABABABABABABABABABABABABABABABABABABABABABAB",
        &h7,
        "h9=",
        "h9=zz",
        // `created_at` with a leading zero, then after `last_seen_at`.
        "b=>0",
        "b=>9",
        // A field more on the state line; data that is no JSON object.
        "b\n=>|x\n",
        "b\n{=>\n[",
    ];
    common::assert_damage_is_corruption(&h, &cases, |_user, id, case| {
        let mut admin = admin.clone();
        let prefix = prefix.clone();
        async move { damage(&mut admin, &prefix, id, &case).await }
    })
    .await;
    cleanup(&mut admin, &prefix).await;
}

/// Whether `error` is corruption naming one of `ids`.
fn is_corrupt(error: &StoreError, ids: &[SessionId]) -> bool {
    matches!(error, StoreError::Corrupt { id: Some(id), .. } if ids.contains(id))
}

#[tokio::test]
async fn every_operation_reports_a_damaged_record() {
    let Some(mut admin) = admin().await else {
        return;
    };
    let prefix = unique("ths-damaged") + ":";
    let store = store(&prefix).await;
    let healthy = record(Some("alice"), T0);
    let a = record(Some("alice"), T0);
    let b = record(Some("alice"), T0);
    let c = record(Some("alice"), T0);
    let d = rotated(&record(Some("alice"), T0), credential(1), T0);
    for r in [&healthy, &a, &b, &c, &d] {
        store.insert(r).await.unwrap();
    }
    // `a`'s header no longer parses; `b`'s id points to another record's
    // value; `c`'s id to no lookup key at all; `d`'s to its own previous
    // key.
    damage(&mut admin, &prefix, a.id, "h0=ths1").await;
    let healthy_key: Vec<u8> = admin
        .get(format!("{prefix}s:{}", healthy.id))
        .await
        .unwrap();
    let d_previous = hex::encode(d.previous.unwrap().credential.lookup_key.as_bytes());
    for (id, pointer) in [
        (b.id, healthy_key),
        (c.id, b"not a key".to_vec()),
        (d.id, d_previous.into_bytes()),
    ] {
        let _: () = redis::cmd("SET")
            .arg(format!("{prefix}s:{id}"))
            .arg(pointer)
            .arg("KEEPTTL")
            .query_async(&mut admin)
            .await
            .unwrap();
    }
    let revocation = Revocation::new(RevocationReason::Admin);
    for id in [a.id, b.id, c.id, d.id] {
        let error = store.get_active(&id, T0).await.unwrap_err();
        assert!(is_corrupt(&error, &[id]), "{error:?}");
    }
    for id in [a.id, b.id, c.id, d.id] {
        let error = store.revoke(&id, None, T0, &revocation).await.unwrap_err();
        assert!(is_corrupt(&error, &[id]), "{error:?}");
    }
    let error = store
        .replace(&a, &successor(&a, |_| {}), T0)
        .await
        .unwrap_err();
    assert!(is_corrupt(&error, &[a.id]), "{error:?}");
    let error = store.list_for_subject("alice", T0).await.unwrap_err();
    assert!(matches!(error, StoreError::Corrupt { .. }), "{error:?}");
    let error = store
        .revoke_all_for_subject("alice", T0, &revocation, None)
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::Corrupt { .. }), "{error:?}");
    // Nothing was revoked by the refused revoke-all.
    assert!(store.get_active(&healthy.id, T0).await.unwrap().is_some());
    let error = store.count_by_key_version(T0, T0).await.unwrap_err();
    assert!(matches!(error, StoreError::Corrupt { .. }), "{error:?}");
    // Errors name the id, never a lookup key.
    let message = format!("{error} {error:?}");
    for r in [&healthy, &a, &b, &c, &d] {
        assert!(!message.contains(&hex::encode(r.current.lookup_key.as_bytes())));
    }
    // Purging past everyone's expiry deletes the healthy record and
    // reports a damaged one, which it leaves alone.
    let error = store.purge_expired(T0 + secs(86_400)).await.unwrap_err();
    assert!(is_corrupt(&error, &[a.id, b.id, c.id, d.id]), "{error:?}");
    assert!(
        !admin
            .exists::<_, bool>(format!("{prefix}s:{}", healthy.id))
            .await
            .unwrap()
    );
    assert!(
        admin
            .exists::<_, bool>(format!("{prefix}s:{}", a.id))
            .await
            .unwrap()
    );
    cleanup(&mut admin, &prefix).await;
}

#[tokio::test]
async fn acl_credentials_and_the_health_check() {
    let Some(mut admin) = admin().await else {
        return;
    };
    let prefix = unique("ths-acl") + ":";
    let (user, password) = common::redis_acl_user(&mut admin, &prefix).await;

    let store = RedisStore::builder(url())
        .prefix(&prefix)
        .username(&user)
        .password(&password)
        .connect()
        .await
        .unwrap();
    store.ping().await.unwrap();
    let debug = format!("{:?}", RedisStore::builder(url()).password(&password));
    assert!(!debug.contains(&password), "{debug}");
    let h = Harness::with_store(store, SessionConfig::default(), ring(1, &[1]));
    let secret = h.login("alice").await;
    assert_eq!(h.call("GET", "/me", Some(&secret)).await.body, "alice");
    let clients: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut admin)
        .await
        .unwrap();
    assert!(
        clients.contains(&format!("user={user}")),
        "the store connected as the ACL user"
    );

    // Outside its key pattern the user is refused: proof the ACL applies.
    let outside = RedisStore::builder(url())
        .prefix("ths-outside-the-acl:")
        .username(&user)
        .password(&password)
        .connect()
        .await
        .unwrap();
    let refused = record(Some("bob"), T0);
    let error = outside.insert(&refused).await.unwrap_err();
    assert!(matches!(error, StoreError::Backend { .. }), "{error:?}");
    // The driver's message travels as the source; no lookup key in it.
    let message = format!(
        "{error} {error:?} {}",
        std::error::Error::source(&error).unwrap()
    );
    assert!(
        !message.contains(&hex::encode(refused.current.lookup_key.as_bytes())),
        "{message}"
    );

    let wrong = RedisStore::builder(url())
        .username(&user)
        .password("not-the-password")
        .connect()
        .await
        .unwrap_err();
    let message = format!("{wrong} {wrong:?}");
    assert!(!message.contains("not-the-password"), "{message}");

    let _: () = redis::cmd("ACL")
        .arg(&["DELUSER", &user][..])
        .query_async(&mut admin)
        .await
        .unwrap();
    cleanup(&mut admin, &prefix).await;
}

/// The header field `index` of record `id`'s value.
async fn header_field(admin: &mut Admin, prefix: &str, id: SessionId, index: usize) -> String {
    let value = stored_value(admin, prefix, id).await.unwrap();
    value.split('|').nth(index).unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_logins_through_the_router_keep_the_cap() {
    let Some(mut admin) = admin().await else {
        return;
    };
    let prefix = unique("ths-cap") + ":";
    let config = SessionConfig::builder()
        .max_sessions_per_subject(Some(3))
        .build()
        .unwrap();
    let h = Arc::new(Harness::with_store(
        store(&prefix).await,
        config,
        ring(1, &[1]),
    ));
    // A watcher lists alice's sessions while the logins run.
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (h, done) = (h.clone(), done.clone());
        tokio::spawn(async move {
            let mut most = 0;
            while !done.load(Ordering::SeqCst) {
                most = most.max(h.manager.list_for_subject("alice").await.unwrap().len());
                tokio::task::yield_now().await;
            }
            most
        })
    };
    let logins: Vec<_> = (0..20)
        .map(|_| {
            let h = h.clone();
            tokio::spawn(async move {
                let res = h.call("POST", "/login?user=alice", None).await;
                assert_eq!(res.status, StatusCode::OK, "{}", res.body);
                (
                    res.body.parse::<SessionId>().unwrap(),
                    res.new_secret().unwrap(),
                )
            })
        })
        .collect();
    let mut issued = Vec::new();
    for login in logins {
        issued.push(login.await.unwrap());
    }
    done.store(true, Ordering::SeqCst);
    assert!(
        watcher.await.unwrap() <= 3,
        "more than 3 live at some point"
    );

    let live: Vec<SessionId> = h
        .manager
        .list_for_subject("alice")
        .await
        .unwrap()
        .iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(live.len(), 3, "{live:?}");
    for (id, secret) in &issued {
        let res = h.call("GET", "/me", Some(secret)).await;
        if live.contains(id) {
            assert_eq!(res.status, StatusCode::OK);
        } else {
            // Evicted: revoked (not deleted), stamped `session_limit`.
            assert_eq!(res.status, StatusCode::UNAUTHORIZED);
            let revocation = header_field(&mut admin, &prefix, *id, 5).await;
            assert!(revocation.ends_with(",session_limit"), "{revocation}");
        }
    }
    // The index holds the live ones only.
    let mut indexed: Vec<String> = admin
        .zrange(format!("{prefix}u:alice"), 0, -1)
        .await
        .unwrap();
    indexed.sort();
    let mut expected: Vec<String> = live.iter().map(SessionId::to_string).collect();
    expected.sort();
    assert_eq!(indexed, expected);
    cleanup(&mut admin, &prefix).await;
}

/// `n` sessions of `subject` created at `T0` with the given idle and
/// absolute expiry (seconds from `T0`), inserted.
async fn sessions(
    store: &RedisStore,
    subject: &str,
    n: usize,
    idle: i64,
    absolute: i64,
) -> Vec<SessionRecord> {
    let mut records = Vec::with_capacity(n);
    for _ in 0..n {
        let r = SessionRecord {
            expires_at: T0 + secs(idle),
            absolute_expires_at: T0 + secs(absolute),
            ..record(Some(subject), T0)
        };
        store.insert(&r).await.unwrap();
        records.push(r);
    }
    records
}

/// 1,000 sessions ended idly, 1,000 absolutely, 1,000 revoked (500 of
/// them put back into the index, as a revocation that did not reach it
/// would leave them), and `live` live ones: the subject's index afterwards.
async fn long_history(
    admin: &mut Admin,
    store: &RedisStore,
    prefix: &str,
    subject: &str,
    live: usize,
) -> (String, Vec<SessionRecord>) {
    let index = format!("{prefix}u:{subject}");
    sessions(store, subject, 1000, 60, 86_400).await;
    sessions(store, subject, 1000, 120, 120).await;
    let revoked = sessions(store, subject, 1000, 3600, 86_400).await;
    let live = sessions(store, subject, live, 7200, 86_400).await;
    let revocation = Revocation::new(RevocationReason::Logout);
    for r in &revoked {
        store.revoke(&r.id, None, T0, &revocation).await.unwrap();
    }
    // A revocation takes the entry out of the index at once.
    let size: usize = admin.zcard(&index).await.unwrap();
    assert_eq!(size, 2000 + live.len());
    let stale: Vec<(i64, String)> = revoked[..500]
        .iter()
        .map(|r| ((T0 + secs(3600)).unix_timestamp(), r.id.to_string()))
        .collect();
    let _: () = admin.zadd_multiple(&index, &stale).await.unwrap();
    (index, live)
}

/// Largest amount of index entries one script call may remove: the dead
/// ones it drops by score, plus those it reads.
const ONE_CALL: usize = 1000 + 200;

#[tokio::test]
async fn a_long_history_leaves_the_index_in_bounded_steps() {
    let Some(mut admin) = admin().await else {
        return;
    };
    let prefix = unique("ths-history") + ":";
    let store = store(&prefix).await;
    let now = T0 + secs(200);

    // Lists: each call drops a bounded number of entries and lists the
    // live sessions every time.
    let (index, live) = long_history(&mut admin, &store, &prefix, "alice", 2).await;
    let mut size: usize = admin.zcard(&index).await.unwrap();
    assert_eq!(size, 2502);
    let mut expected: Vec<SessionId> = live.iter().map(|r| r.id).collect();
    expected.sort();
    let mut calls = 0;
    while size > live.len() {
        let mut listed: Vec<SessionId> = store
            .list_for_subject("alice", now)
            .await
            .unwrap()
            .iter()
            .map(|r| r.id)
            .collect();
        listed.sort();
        assert_eq!(listed, expected);
        let after: usize = admin.zcard(&index).await.unwrap();
        assert!(after < size, "no progress");
        assert!(
            size - after <= ONE_CALL,
            "one call dropped {}",
            size - after
        );
        size = after;
        calls += 1;
        assert!(calls <= 5, "the index does not shrink");
    }
    eprintln!("list: 2502 index entries down to {size} in {calls} calls");
    // What is left is the live sessions.
    let mut indexed: Vec<String> = admin.zrange(&index, 0, -1).await.unwrap();
    indexed.sort();
    let ids: Vec<String> = expected.iter().map(SessionId::to_string).collect();
    assert_eq!(indexed, ids);

    // Logins with a cap of 3: each drops a bounded number too, and the cap
    // holds throughout.
    let (index, _) = long_history(&mut admin, &store, &prefix, "bob", 2).await;
    let mut size: usize = admin.zcard(&index).await.unwrap();
    let cap = tower_hmac_session::store::SubjectCap {
        max_sessions: 3,
        except: None,
        revocation: Revocation::new(RevocationReason::SessionLimit),
    };
    let mut calls = 0;
    loop {
        let login = record(Some("bob"), now);
        store.insert_capped(&login, now, &cap).await.unwrap();
        let after: usize = admin.zcard(&index).await.unwrap();
        // The login adds one entry.
        assert!(
            size + 1 - after <= ONE_CALL,
            "one call dropped {}",
            size + 1 - after
        );
        size = after;
        calls += 1;
        assert!(calls <= 6, "the index does not shrink");
        if size <= 3 {
            break;
        }
    }
    eprintln!("insert_capped: down to {size} index entries in {calls} logins");
    assert_eq!(store.list_for_subject("bob", now).await.unwrap().len(), 3);
    assert_eq!(admin.zcard::<_, usize>(&index).await.unwrap(), 3);

    // "Log out everywhere" on a long history: a few script calls (the
    // stale entries take up what one reads), the live ones revoked.
    let (_, live) = long_history(&mut admin, &store, &prefix, "carol", 5).await;
    let revocation = Revocation::new(RevocationReason::LogoutEverywhere);
    assert_eq!(
        store
            .revoke_all_for_subject("carol", now, &revocation, None)
            .await
            .unwrap(),
        live.len() as u64
    );
    assert!(
        store
            .list_for_subject("carol", now)
            .await
            .unwrap()
            .is_empty()
    );
    cleanup(&mut admin, &prefix).await;
}

#[tokio::test]
async fn a_timeout_too_long_to_add_to_now_is_no_limit() {
    let Some(mut admin) = admin().await else {
        return;
    };
    let prefix = unique("ths-forever") + ":";
    let store = RedisStore::builder(url())
        .prefix(&prefix)
        .timeout(Duration::MAX)
        .connect()
        .await
        .unwrap();
    let a = record(None, T0);
    store.insert(&a).await.unwrap();
    let next = successor(&a, |n| n.last_seen_at = T0 + secs(1));
    assert!(store.replace(&a, &next, T0 + secs(1)).await.unwrap());
    // A stale write: the data-write script does not apply, the full one
    // says why, within the same (unbounded) time.
    assert!(!store.replace(&a, &next, T0 + secs(1)).await.unwrap());
    assert_eq!(
        store.get_active(&a.id, T0).await.unwrap().as_deref(),
        Some(&next)
    );
    cleanup(&mut admin, &prefix).await;
}

#[tokio::test]
async fn a_rotation_restores_an_id_key_that_is_gone() {
    let Some(mut admin) = admin().await else {
        return;
    };
    let prefix = unique("ths-pointer") + ":";
    let store = store(&prefix).await;
    let a = rotated(&record(Some("alice"), T0), credential(1), T0);
    store.insert(&a).await.unwrap();
    // What an eviction (or an operator) leaves: the lookup keys, not the id.
    let _: () = admin.del(format!("{prefix}s:{}", a.id)).await.unwrap();
    // A lookup reads lookup keys only: it still resolves, and data writes
    // (which do not read the id's key) apply.
    assert_eq!(found(&store, a.current, T0).await, [Slot::Current]);
    let revocation = Revocation::new(RevocationReason::Admin);
    assert_eq!(
        store.revoke(&a.id, None, T0, &revocation).await.unwrap(),
        RevokeOutcome::NotFound
    );
    let touched = successor(&a, |n| n.last_seen_at = T0 + secs(60));
    assert!(store.replace(&a, &touched, T0 + secs(60)).await.unwrap());
    assert!(store.get_active(&a.id, T0).await.unwrap().is_none());
    // A list cannot find it either, and drops it from the subject's index.
    assert!(
        store
            .list_for_subject("alice", T0)
            .await
            .unwrap()
            .is_empty()
    );
    // A rotation writes the id's key again: revocation by id finds the
    // session, and no lookup key resolves to it afterwards.
    let next = rotated(&touched, credential(2), T0 + secs(60));
    assert!(store.replace(&touched, &next, T0 + secs(60)).await.unwrap());
    assert_eq!(
        store.get_active(&a.id, T0).await.unwrap().as_deref(),
        Some(&next)
    );
    // The rotation put the index entry back too: the list shows it, and
    // "log out everywhere" ends it.
    let listed = store.list_for_subject("alice", T0).await.unwrap();
    assert_eq!(listed.iter().map(|r| r.id).collect::<Vec<_>>(), [a.id]);
    assert_eq!(
        store
            .revoke_all_for_subject("alice", T0, &revocation, None)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        store.revoke(&a.id, None, T0, &revocation).await.unwrap(),
        RevokeOutcome::AlreadyRevoked
    );
    for c in [next.current, touched.current] {
        assert!(found(&store, c, T0).await.is_empty());
    }
    cleanup(&mut admin, &prefix).await;
}

#[tokio::test]
async fn a_write_deletes_the_copies_of_a_record_whose_current_key_is_gone() {
    let Some(mut admin) = admin().await else {
        return;
    };
    let prefix = unique("ths-orphan") + ":";
    let store = store(&prefix).await;
    let a = rotated(&record(Some("alice"), T0), credential(1), T0);
    store.insert(&a).await.unwrap();
    // What an eviction (or an operator) leaves: the value under the
    // previous lookup key and the id's key, not the value they point to.
    let current = format!("{prefix}k:{}", hex::encode(a.current.lookup_key.as_bytes()));
    let _: () = admin.del(&current).await.unwrap();
    let previous = a.previous.unwrap().credential;
    assert_eq!(found(&store, previous, T0).await, [Slot::Previous]);
    // The record is gone: by id, and the next write ends it everywhere.
    assert!(store.get_active(&a.id, T0).await.unwrap().is_none());
    let revocation = Revocation::new(RevocationReason::Admin);
    assert_eq!(
        store.revoke(&a.id, None, T0, &revocation).await.unwrap(),
        RevokeOutcome::NotFound
    );
    let touched = successor(&a, |n| n.last_seen_at = T0 + secs(60));
    assert!(!store.replace(&a, &touched, T0 + secs(60)).await.unwrap());
    assert!(found(&store, previous, T0).await.is_empty());
    assert!(
        keys(&mut admin, &prefix)
            .await
            .iter()
            .all(|k| k.contains(":u:"))
    );
    // Only its own copies: a lookup key told about that holds another
    // record is left alone, and the write is not applied.
    let b = record(Some("alice"), T0);
    store.insert(&b).await.unwrap();
    let mut stale = a.clone();
    stale.current = b.current;
    assert!(
        !store
            .replace(&stale, &successor(&stale, |_| {}), T0)
            .await
            .unwrap()
    );
    assert_eq!(found(&store, b.current, T0).await, [Slot::Current]);
    assert_eq!(
        store.get_active(&b.id, T0).await.unwrap().as_deref(),
        Some(&b)
    );
    // A purge deletes an id's key that points to a value gone, and leaves
    // live records alone.
    let c = record(None, T0);
    store.insert(&c).await.unwrap();
    let c_key = format!("{prefix}k:{}", hex::encode(c.current.lookup_key.as_bytes()));
    let _: () = admin.del(&c_key).await.unwrap();
    assert_eq!(store.purge_expired(T0).await.unwrap(), 0);
    assert!(
        !admin
            .exists::<_, bool>(format!("{prefix}s:{}", c.id))
            .await
            .unwrap()
    );
    assert!(store.get_active(&b.id, T0).await.unwrap().is_some());
    cleanup(&mut admin, &prefix).await;
}

#[tokio::test]
async fn an_invalid_revocation_actor_is_refused_before_anything() {
    let Some(mut admin) = admin().await else {
        return;
    };
    let prefix = unique("ths-actor") + ":";
    let store = store(&prefix).await;
    let a = record(Some("alice"), T0);
    store.insert(&a).await.unwrap();
    let long = "x".repeat(257);
    for actor in ["", "ops\n", long.as_str()] {
        let bad = Revocation::new(RevocationReason::Admin).by(actor);
        let error = store.revoke(&a.id, None, T0, &bad).await.unwrap_err();
        assert!(matches!(error, StoreError::Invalid(_)), "{error:?}");
        let error = store
            .revoke_all_for_subject("alice", T0, &bad, None)
            .await
            .unwrap_err();
        assert!(matches!(error, StoreError::Invalid(_)), "{error:?}");
        let b = record(Some("alice"), T0);
        let cap = tower_hmac_session::store::SubjectCap {
            max_sessions: 1,
            except: None,
            revocation: bad,
        };
        let error = store.insert_capped(&b, T0, &cap).await.unwrap_err();
        assert!(matches!(error, StoreError::Invalid(_)), "{error:?}");
        assert!(store.get_active(&b.id, T0).await.unwrap().is_none());
    }
    assert!(store.get_active(&a.id, T0).await.unwrap().is_some());
    cleanup(&mut admin, &prefix).await;
}

/// A store under `ths:` on a Redis server of its own, so that its command
/// statistics are the test's, with an admin connection to that server
/// (`None` where [`admin`] is).
async fn private_store() -> Option<(PrivateRedis, Admin, RedisStore)> {
    admin().await?;
    let server = private_redis(&[]);
    let admin = redis::Client::open(server.url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let store = RedisStore::builder(&server.url)
        .prefix("ths:")
        .connect()
        .await
        .unwrap();
    Some((server, admin, store))
}

#[tokio::test]
async fn a_write_reads_only_the_header_and_sets_each_lookup_key() {
    let Some((_server, mut admin, store)) = private_store().await else {
        return;
    };
    // Idle 1 h: the index score moves in steps of 60 s (T0 is on one).
    let a = record(Some("alice"), T0);
    store.insert(&a).await.unwrap();
    let index = "ths:u:alice";
    let pointer = format!("ths:s:{}", a.id);
    let hex = |c: Credential| hex::encode(c.lookup_key.as_bytes());
    let member = a.id.to_string();
    let score = async |admin: &mut Admin| -> i64 { admin.zscore(index, &member).await.unwrap() };
    let expiry = |r: &SessionRecord| r.expires_at.unix_timestamp();
    let start = expiry(&a);
    assert_eq!(score(&mut admin).await, start);
    // Calls of GETRANGE, SET, ZADD, EXISTS and DEL by the write, from INFO
    // commandstats; never a GET: the compare reads the stored header
    // (GETRANGE), not the value.
    let mut last = a.clone();
    let mut write = async |admin: &mut Admin, next: SessionRecord, now| {
        let _: () = redis::cmd("CONFIG")
            .arg("RESETSTAT")
            .query_async(admin)
            .await
            .unwrap();
        assert!(store.replace(&last, &next, now).await.unwrap());
        let mut counts = vec![];
        for command in ["getrange", "set", "zadd", "exists", "del"] {
            counts.push(calls(admin, command).await);
        }
        assert_eq!(calls(admin, "get").await, 0);
        last = next;
        counts
    };
    let touch = |r: &SessionRecord, at: OffsetDateTime| {
        successor(r, |n| {
            n.last_seen_at = at;
            n.expires_at = at + secs(3600);
        })
    };

    // The idle expiry passes the entry's score: it moves, a step on.
    let w1 = touch(&a, T0 + secs(30));
    assert_eq!(
        write(&mut admin, w1.clone(), T0 + secs(30)).await,
        [1, 1, 1, 0, 0]
    );
    assert_eq!(score(&mut admin).await, start + 60);
    // Within the step: one GETRANGE and one SET, the entry is left as it is
    // and still not before the expiry.
    let w2 = touch(&w1, T0 + secs(59));
    assert_eq!(
        write(&mut admin, w2.clone(), T0 + secs(59)).await,
        [1, 1, 0, 0, 0]
    );
    assert_eq!(score(&mut admin).await, start + 60);
    assert!(score(&mut admin).await >= expiry(&w2));
    // A rotation: the new key is checked and set, the old one keeps a copy,
    // the id's key points to the new one, and the index entry is written
    // again though its score stays.
    let mut w3 = rotated(&w2, credential(1), T0 + secs(60));
    (w3.last_seen_at, w3.expires_at) = (T0 + secs(60), T0 + secs(3660));
    assert_eq!(
        write(&mut admin, w3.clone(), T0 + secs(60)).await,
        [1, 3, 1, 1, 0]
    );
    assert_eq!(score(&mut admin).await, start + 60);
    let held: String = admin.get(&pointer).await.unwrap();
    assert_eq!(held, hex(w3.current));
    // The id's key outlives the lookup keys by an hour, whichever host's
    // clock renewed them last.
    let current = format!("ths:k:{}", hex(w3.current));
    let (id_ttl, key_ttl): (i64, i64) = (
        admin.pttl(&pointer).await.unwrap(),
        admin.pttl(&current).await.unwrap(),
    );
    assert!(id_ttl - key_ttl > 3_590_000, "{id_ttl} {key_ttl}");
    // Two lookup keys: a SET each.
    let w4 = touch(&w3, T0 + secs(61));
    assert_eq!(
        write(&mut admin, w4.clone(), T0 + secs(61)).await,
        [1, 2, 1, 0, 0]
    );
    assert_eq!(score(&mut admin).await, start + 120);
    // Within the step again: a SET each, the keys keep their time-to-live
    // (a write setting it afresh, 58 s later by this clock, would have set
    // it 58 s shorter), and a copy that is gone is not written back.
    let previous = format!("ths:k:{}", hex(w3.previous.unwrap().credential));
    let before: i64 = admin.pttl(&current).await.unwrap();
    let w4b = touch(&w4, T0 + secs(119));
    assert_eq!(
        write(&mut admin, w4b.clone(), T0 + secs(119)).await,
        [1, 2, 0, 0, 0]
    );
    let after: i64 = admin.pttl(&current).await.unwrap();
    assert!(
        after <= before && before - after < 30_000,
        "{before} {after}"
    );
    let _: () = admin.del(&previous).await.unwrap();
    let w4c = touch(&w4b, T0 + secs(119));
    assert_eq!(
        write(&mut admin, w4c.clone(), T0 + secs(119)).await,
        [1, 2, 0, 0, 0]
    );
    assert!(!admin.exists::<_, bool>(&previous).await.unwrap());
    // Another host's clock, ahead, dropped the entry: the next write that
    // moves the score puts it back, for revoking everything to find it.
    let _: () = admin.zrem(index, &member).await.unwrap();
    let mut w5 = touch(&w4c, T0 + secs(150));
    w5.previous = None;
    assert_eq!(
        write(&mut admin, w5.clone(), T0 + secs(150)).await,
        [1, 1, 1, 0, 1]
    );
    assert_eq!(score(&mut admin).await, start + 180);
    let revocation = Revocation::new(RevocationReason::LogoutEverywhere);
    assert_eq!(
        store
            .revoke_all_for_subject("alice", T0 + secs(150), &revocation, None)
            .await
            .unwrap(),
        1
    );
    assert!(found(&store, w5.current, T0 + secs(150)).await.is_empty());
}

/// Calls of `command` since the last `CONFIG RESETSTAT`, from `INFO
/// commandstats` (commands scripts run count too).
async fn calls(admin: &mut Admin, command: &str) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(admin)
        .await
        .unwrap();
    info.lines()
        .find_map(|line| line.strip_prefix(&format!("cmdstat_{command}:calls=")))
        .map_or(0, |rest| rest.split(',').next().unwrap().parse().unwrap())
}

#[tokio::test]
async fn one_script_call_reads_and_drops_a_bounded_number_of_entries() {
    let Some((_server, mut admin, store)) = private_store().await else {
        return;
    };
    let now = T0 + secs(200);
    let (index, _) = long_history(&mut admin, &store, "ths:", "alice", 2).await;
    let cap = tower_hmac_session::store::SubjectCap {
        max_sessions: 3,
        except: None,
        revocation: Revocation::new(RevocationReason::SessionLimit),
    };
    let reset = async |admin: &mut Admin| {
        let _: () = redis::cmd("CONFIG")
            .arg("RESETSTAT")
            .query_async(admin)
            .await
            .unwrap();
    };
    // The server loads each script the first time it is sent (NOSCRIPT,
    // then again): load them beforehand, on another subject.
    store.list_for_subject("bob", now).await.unwrap();
    store
        .insert_capped(&record(Some("bob"), now), now, &cap)
        .await
        .unwrap();
    for step in 0..4 {
        reset(&mut admin).await;
        match step % 2 {
            0 => drop(store.list_for_subject("alice", now).await.unwrap()),
            _ => drop(
                store
                    .insert_capped(&record(Some("alice"), now), now, &cap)
                    .await
                    .unwrap(),
            ),
        }
        let (scripts, gets) = (
            calls(&mut admin, "evalsha").await + calls(&mut admin, "eval").await,
            calls(&mut admin, "get").await,
        );
        let drops = calls(&mut admin, "zremrangebyrank").await;
        let zrems = calls(&mut admin, "zrem").await;
        let size: usize = admin.zcard(&index).await.unwrap();
        eprintln!(
            "step {step}: {gets} GET, {drops} ZREMRANGEBYRANK, {zrems} ZREM; {size} entries left"
        );
        assert_eq!(scripts, 1, "step {step}");
        // Two per entry read: the id's key, then the value it points to.
        assert!(gets <= 2 * 200, "step {step}: {gets} GETs");
        assert!(drops <= 1, "step {step}: {drops} ZREMRANGEBYRANK");
        assert!(zrems <= 200, "step {step}: {zrems} ZREM");
    }
    let size: usize = admin.zcard(&index).await.unwrap();
    assert_eq!(size, 3, "the index holds the live sessions only");
}
