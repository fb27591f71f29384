//! `SessionManager` outside a request: creating, purging, and the purge task.

mod common;

use std::time::Duration;

use common::{Harness, ring};
use http::StatusCode;
use serde_json::json;
use tower_hmac_session::{Data as Attributes, RevokeOutcome, SessionConfig};

#[tokio::test]
async fn a_session_created_outside_a_request_works_in_one() {
    let h = Harness::new();
    let mut attributes = Attributes::new();
    attributes.insert("device".into(), json!("cli"));
    let issued = h.manager.create_session("alice", attributes).await.unwrap();
    assert_eq!(
        issued.record.get::<String>("device").as_deref(),
        Some("cli")
    );
    let header = h
        .manager
        .set_cookie_header(&issued.secret, Some(std::time::Duration::from_secs(60)));
    let header = header.to_str().unwrap();
    assert!(header.starts_with(&format!(
        "{}={}; Max-Age=60",
        common::COOKIE,
        issued.secret.encode()
    )));
    let res = h
        .call("GET", "/attr?key=device", Some(&issued.secret.encode()))
        .await;
    assert_eq!((res.status, res.body.as_str()), (StatusCode::OK, "cli"));
    assert!(
        h.manager
            .create_session("", Attributes::new())
            .await
            .is_err()
    );
}

#[tokio::test]
async fn revoke_by_id_reports_what_happened() {
    let h = Harness::new();
    let issued = h
        .manager
        .create_session("alice", Attributes::new())
        .await
        .unwrap();
    let id = issued.record.id;
    let admin =
        tower_hmac_session::Revocation::new(tower_hmac_session::RevocationReason::Admin).by("ops");
    assert_eq!(
        h.manager.revoke(&id, admin.clone()).await.unwrap(),
        RevokeOutcome::Revoked
    );
    assert_eq!(
        h.manager.revoke(&id, admin).await.unwrap(),
        RevokeOutcome::AlreadyRevoked
    );
    let stored = h.records().pop().unwrap().revoked.unwrap();
    assert_eq!(stored.revocation.actor.as_deref(), Some("ops"));
    assert_eq!(stored.at, common::T0);
    let res = h.call("GET", "/maybe", Some(&issued.secret.encode())).await;
    assert_eq!(res.body, "anonymous");
}

#[tokio::test]
async fn purge_removes_expired_and_revoked_records_only() {
    let h = Harness::with(
        SessionConfig::builder()
            .idle_timeout(Duration::from_secs(3600))
            .build()
            .unwrap(),
        ring(1, &[1]),
    );
    let old = h.login("alice").await;
    let logged_out = h.login("bob").await;
    h.call("POST", "/logout", Some(&logged_out)).await;
    h.advance(1800);
    let fresh = h.login("carol").await;
    h.advance(1801);
    assert_eq!(h.manager.purge_expired().await.unwrap(), 2);
    assert_eq!(h.records().len(), 1);
    assert_eq!(h.call("GET", "/me", Some(&fresh)).await.body, "carol");
    assert_eq!(
        h.call("GET", "/me", Some(&old)).await.status,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test(start_paused = true)]
async fn the_purge_task_runs_every_period() {
    let h = Harness::new();
    h.login("alice").await;
    let task = h.manager.spawn_purge_task(Duration::from_secs(60));
    // Let the first tick (immediate) run: nothing is expired yet.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(h.records().len(), 1);
    // Past the idle timeout on the session clock; the next tick purges.
    h.advance(8 * 24 * 3600);
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(h.records().is_empty());
    task.abort();
}

#[tokio::test(start_paused = true)]
async fn a_zero_purge_period_is_a_second_not_a_dead_task() {
    let h = Harness::new();
    h.login("alice").await;
    let task = h.manager.spawn_purge_task(Duration::ZERO);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!task.is_finished(), "the purge task ended (panicked)");
    h.advance(8 * 24 * 3600);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(h.records().is_empty());
    assert!(!task.is_finished());
    task.abort();
}
