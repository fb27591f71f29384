//! `RedisStore` against a real server: the conformance suite, two app
//! instances on one Redis, corrupt hashes, key expiry, ACL credentials and
//! the health check.
//!
//! `TOWER_HMAC_SESSION_REDIS_URL` (default `redis://127.0.0.1:6379`) names
//! the server. Each test works under a key prefix of its own, so tests run
//! in parallel.
#![cfg(all(feature = "redis", feature = "conformance"))]

mod common;

use std::time::Duration;

use common::{Harness, ring, unique};
use http::StatusCode;
use redis::AsyncCommands as _;
use tower_hmac_session::store::RedisStore;
use tower_hmac_session::{SessionConfig, SessionStore, StoreError};

fn url() -> String {
    std::env::var("TOWER_HMAC_SESSION_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// A plain connection for inspecting and damaging keys, or `None` (a skip)
/// when the server is unreachable outside CI.
async fn admin() -> Option<redis::aio::MultiplexedConnection> {
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

async fn keys(admin: &mut redis::aio::MultiplexedConnection, prefix: &str) -> Vec<String> {
    let mut keys: Vec<String> = admin.keys(format!("{prefix}*")).await.unwrap();
    keys.sort();
    keys
}

async fn cleanup(admin: &mut redis::aio::MultiplexedConnection, prefix: &str) {
    let keys = keys(admin, prefix).await;
    if !keys.is_empty() {
        let _: () = admin.del(keys).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_store_passes_the_conformance_suite() {
    let Some(mut admin) = admin().await else {
        return;
    };
    let mut prefixes = Vec::new();
    tower_hmac_session::conformance::run(|| {
        let prefix = unique("ths-conformance") + ":";
        prefixes.push(prefix.clone());
        async move { store(&prefix).await }
    })
    .await;
    for prefix in prefixes {
        cleanup(&mut admin, &prefix).await;
    }
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
async fn keys_expire_by_themselves_at_the_absolute_expiry() {
    let Some(mut admin) = admin().await else {
        return;
    };
    let prefix = unique("ths-ttl") + ":";
    let h = Harness::with_store(
        store(&prefix).await,
        SessionConfig::default(),
        ring(1, &[1]),
    );
    h.login("alice").await;
    let absolute_ms = (common::T0 + Duration::from_secs(30 * 24 * 3600)).unix_timestamp() * 1000;
    let keys = keys(&mut admin, &prefix).await;
    let session_keys: Vec<_> = keys
        .iter()
        .filter(|k| {
            k.starts_with(&format!("{prefix}s:"))
                || k.starts_with(&format!("{prefix}k:"))
                || k.starts_with(&format!("{prefix}u:"))
        })
        .collect();
    assert_eq!(session_keys.len(), 3, "{keys:?}");
    for key in session_keys {
        let at: i64 = redis::cmd("PEXPIRETIME")
            .arg(key)
            .query_async(&mut admin)
            .await
            .unwrap();
        assert_eq!(at, absolute_ms, "{key}");
    }
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

#[tokio::test]
async fn corrupt_hashes_are_reported_as_corruption() {
    let Some(mut admin) = admin().await else {
        return;
    };
    let prefix = unique("ths-corrupt") + ":";
    let h = Harness::with_store(
        store(&prefix).await,
        SessionConfig::default(),
        ring(1, &[1]),
    );
    let cases = [
        "expires_at=01893456000000000",
        "expires_at=1.9e15",
        "expires_at= 1893456000000000",
        "current_key_version=+1",
        "attributes=[1]",
        "subject=",
        "revoked_reason=bogus",
        "id=ABABABABABABABABABABABABABABABAB",
        // Well-formed, but not the id of the key the hash lives under.
        "id=0000000000000000000000000000000a",
        "unexpected_field=1",
        "previous_key_version=1",
        "current_lookup_key=0102",
        "current_lookup_key=ZZ00000000000000000000000000000000000000000000000000000000000000",
    ];
    common::assert_damage_is_corruption(&h, &cases, |_user, id, case| {
        let mut admin = admin.clone();
        let key = format!("{prefix}s:{id}");
        async move {
            let (field, value) = case.split_once('=').unwrap();
            let _: () = admin.hset(key, field, value).await.unwrap();
        }
    })
    .await;
    cleanup(&mut admin, &prefix).await;
}

#[tokio::test]
async fn acl_credentials_and_the_health_check() {
    let Some(mut admin) = admin().await else {
        return;
    };
    let prefix = unique("ths-acl") + ":";
    let user = unique("ths_user");
    let password = unique("pw");
    let _: () = redis::cmd("ACL")
        .arg(
            &[
                "SETUSER",
                &user,
                "on",
                &format!(">{password}"),
                &format!("~{prefix}*"),
                "+@all",
            ][..],
        )
        .query_async(&mut admin)
        .await
        .unwrap();

    let store = RedisStore::builder(url())
        .prefix(&prefix)
        .username(&user)
        .password(&password)
        .connect()
        .await
        .unwrap();
    store.ping().await.unwrap();
    let h = Harness::with_store(store, SessionConfig::default(), ring(1, &[1]));
    let secret = h.login("alice").await;
    assert_eq!(h.call("GET", "/me", Some(&secret)).await.body, "alice");
    let whoami: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut admin)
        .await
        .unwrap();
    assert!(
        whoami.contains(&format!("user={user}")),
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
    assert!(matches!(
        outside.purge_expired(common::T0).await,
        Err(StoreError::Backend { .. })
    ));

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
