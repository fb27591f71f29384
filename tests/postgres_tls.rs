//! `PostgresStore` over TLS (feature `postgres-tls`): `sslmode` in the URL.
#![cfg(all(feature = "postgres-tls", feature = "conformance"))]

mod common;

use common::{Harness, ring, unique};
use http::StatusCode;
use tower_hmac_session::SessionConfig;
use tower_hmac_session::store::PostgresStore;

fn url(sslmode: &str) -> String {
    let base = std::env::var("TOWER_HMAC_SESSION_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}sslmode={sslmode}")
}

#[tokio::test]
async fn sessions_work_over_an_encrypted_connection() {
    let store = match PostgresStore::connect(&url("require")).await {
        Ok(store) => store,
        Err(error) => return common::unreachable("PostgreSQL with TLS", "sslmode=require", &error),
    };
    let ssl: bool = sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert!(ssl, "the connection is not encrypted");

    let schema = unique("ths_tls");
    let in_schema = PostgresStore::in_schema(store.pool().clone(), &schema).unwrap();
    in_schema.migrate().await.unwrap();
    let h = Harness::with_store(in_schema, SessionConfig::default(), ring(1, &[1]));
    let secret = h.login("alice").await;
    let res = h.call("GET", "/me", Some(&secret)).await;
    assert_eq!((res.status, res.body.as_str()), (StatusCode::OK, "alice"));
    sqlx::raw_sql(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
        .execute(store.pool())
        .await
        .unwrap();

    // `verify-full` checks the certificate against the webpki roots, which
    // cannot vouch for a local server at 127.0.0.1 (the default URL): no
    // session traffic goes over an unverified connection in that mode.
    if std::env::var("TOWER_HMAC_SESSION_POSTGRES_URL").is_err() {
        let verified = PostgresStore::connect(&url("verify-full")).await;
        assert!(
            verified.is_err(),
            "an unverifiable certificate was accepted"
        );
    }
}
