//! `RedisStore` losing its connections (`CLIENT KILL`): 503s, then recovery
//! of every connection without a restart and without losing the session.
//!
//! In a test binary of its own: it kills every other client connection,
//! and cargo runs test binaries one after another.
#![cfg(all(feature = "redis", feature = "memory"))]

mod common;

use std::time::Duration;

use common::{Harness, ring, unique};
use http::StatusCode;
use tower_hmac_session::SessionConfig;
use tower_hmac_session::store::RedisStore;

const CONNECTIONS: usize = 3;

#[tokio::test]
async fn a_killed_connection_gives_503s_and_the_store_recovers() {
    let url = std::env::var("TOWER_HMAC_SESSION_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let store = match RedisStore::builder(&url)
        .prefix(unique("ths-outage") + ":")
        .connections(CONNECTIONS)
        .connect()
        .await
    {
        Ok(store) => store,
        Err(error) => return common::unreachable("Redis", &url, &error),
    };
    let mut admin = redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let h = Harness::with_store(store.clone(), SessionConfig::default(), ring(1, &[1]));
    let secret = h.login("alice").await;
    assert_eq!(
        h.call("GET", "/me", Some(&secret)).await.status,
        StatusCode::OK
    );

    let killed: i64 = redis::cmd("CLIENT")
        .arg(&["KILL", "TYPE", "normal", "SKIPME", "yes"][..])
        .query_async(&mut admin)
        .await
        .unwrap();
    assert!(killed >= 1);

    // redis-rs's connection manager reconnects only after a command fails
    // with a dropped connection, so the first request after the kill sees
    // the error: at least one 503 is deterministic, not a race. Each of the
    // store's connections fails once and reconnects by itself; recovery is
    // a run of requests that all succeed, whichever connection they take.
    let mut unavailable = 0;
    let mut served_in_a_row = 0;
    for _ in 0..60 {
        let res = h.call("GET", "/me", Some(&secret)).await;
        assert!(
            res.raw_set_cookies.is_empty(),
            "no cookie change while the store is down"
        );
        match res.status {
            StatusCode::SERVICE_UNAVAILABLE => {
                unavailable += 1;
                served_in_a_row = 0;
                // Give the connection manager's background reconnect a turn.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            StatusCode::OK => {
                assert_eq!(res.body, "alice");
                served_in_a_row += 1;
                if served_in_a_row == 2 * CONNECTIONS {
                    break;
                }
            }
            other => panic!("unexpected {other}: {}", res.body),
        }
    }
    eprintln!("{unavailable} request(s) answered 503 before the store reconnected");
    assert!(unavailable >= 1, "the lost connection was not reported");
    assert_eq!(
        served_in_a_row,
        2 * CONNECTIONS,
        "the store did not reconnect by itself"
    );
    // Writes go through again too.
    let bob = h.login("bob").await;
    assert_eq!(h.call("GET", "/me", Some(&bob)).await.body, "bob");
    store.ping().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}*", store.prefix()))
        .query_async(&mut admin)
        .await
        .unwrap();
    let _: () = redis::cmd("DEL")
        .arg(&keys)
        .query_async(&mut admin)
        .await
        .unwrap();
}
