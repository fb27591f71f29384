//! `RedisStore` losing its connections (`CLIENT KILL`): every connection
//! reconnects by itself, before a request fails, without losing the session.
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
async fn killed_connections_reconnect_by_themselves_before_a_request_fails() {
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

    // Over RESP3 a connection's manager hears at once that the server
    // closed it and reconnects in the background: every connection is back
    // before any request is sent, so none fails.
    let mut clients = 0;
    for _ in 0..250 {
        clients = normal_clients(&mut admin).await;
        if clients == CONNECTIONS + 1 {
            break;
        }
        // A real server reconnecting: nothing to inject a clock into.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        clients,
        CONNECTIONS + 1,
        "the store did not reconnect by itself"
    );
    for _ in 0..3 * CONNECTIONS {
        let res = h.call("GET", "/me", Some(&secret)).await;
        assert_eq!((res.status, res.body.as_str()), (StatusCode::OK, "alice"));
        assert!(res.raw_set_cookies.is_empty());
    }
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

/// How many normal (not replica or pub/sub) clients the server has.
async fn normal_clients(admin: &mut redis::aio::MultiplexedConnection) -> usize {
    let list: String = redis::cmd("CLIENT")
        .arg(&["LIST", "TYPE", "normal"][..])
        .query_async(admin)
        .await
        .unwrap();
    list.lines().count()
}
