//! `RedisStore` losing its connections (`CLIENT KILL`): every connection
//! reconnects by itself, before a request fails, without losing the session.
//!
//! The test kills only the connections of an ACL user of its own.
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
    let mut admin = match redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
    {
        Ok(admin) => admin,
        Err(error) => return common::unreachable("Redis", &url, &error),
    };
    let prefix = unique("ths-outage") + ":";
    let (user, password) = common::redis_acl_user(&mut admin, &prefix).await;
    let store = RedisStore::builder(&url)
        .prefix(&prefix)
        .username(&user)
        .password(&password)
        .connections(CONNECTIONS)
        .connect()
        .await
        .unwrap();
    // Every connection speaks RESP3 (what lets it hear the close).
    assert_eq!(
        store_clients(&mut admin, &user, "resp=3").await,
        CONNECTIONS
    );
    let h = Harness::with_store(store.clone(), SessionConfig::default(), ring(1, &[1]));
    let secret = h.login("alice").await;
    assert_eq!(
        h.call("GET", "/me", Some(&secret)).await.status,
        StatusCode::OK
    );

    let killed: i64 = redis::cmd("CLIENT")
        .arg(&["KILL", "USER", &user][..])
        .query_async(&mut admin)
        .await
        .unwrap();
    assert_eq!(killed, CONNECTIONS as i64);

    // Over RESP3 a connection's manager hears at once that the server
    // closed it and reconnects in the background: every connection is back
    // before any request is sent, so none fails.
    let mut clients = 0;
    for _ in 0..250 {
        clients = store_clients(&mut admin, &user, "resp=3").await;
        if clients == CONNECTIONS {
            break;
        }
        // A real server reconnecting: nothing to inject a clock into.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        clients, CONNECTIONS,
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
    common::redis_delete_prefix(&mut admin, store.prefix()).await;
    let _: i64 = redis::cmd("ACL")
        .arg(&["DELUSER", &user][..])
        .query_async(&mut admin)
        .await
        .unwrap();
}

/// How many of `user`'s connections the server lists with `marker` (for
/// example `resp=3`) among their fields.
async fn store_clients(
    admin: &mut redis::aio::MultiplexedConnection,
    user: &str,
    marker: &str,
) -> usize {
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(admin)
        .await
        .unwrap();
    let user_field = format!("user={user}");
    list.lines()
        .filter(|line| {
            let mut fields = line.split(' ');
            fields.clone().any(|f| f == user_field) && fields.any(|f| f == marker)
        })
        .count()
}
