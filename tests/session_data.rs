//! Session data written as patches merged at write time: concurrent
//! requests changing different keys both persist, a removed key stays
//! removed, the size bound holds for the merged result.

mod common;

use std::sync::Arc;

use common::{Harness, request, ring};
use http::StatusCode;
use tokio::sync::Barrier;
use tower::ServiceExt as _;
use tower_hmac_session::{MAX_DATA_LEN, Session, SessionConfig, SessionError, SessionLayer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_writing_different_keys_both_persist() {
    let h = Harness::new();
    let secret = h.login("alice").await;
    let n = 32;
    let barrier = Arc::new(Barrier::new(n));
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let router = h.router.clone();
            let req = request("POST", &format!("/attr?key=k{i}&value=v{i}"), Some(&secret));
            let barrier = barrier.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                router.oneshot(req).await.unwrap().status()
            })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap(), StatusCode::OK);
    }
    let data = &h.records()[0].data;
    for i in 0..n {
        assert_eq!(data[&format!("k{i}")], format!("v{i}"), "k{i} was lost");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_request_never_writes_back_a_key_another_removed() {
    let h = Harness::new();
    let secret = h.login("alice").await;
    assert_eq!(
        h.call("POST", "/attr?key=admin&value=yes", Some(&secret))
            .await
            .status,
        StatusCode::OK
    );
    // A slow request reads the session (admin=yes), sets another key, and
    // waits; meanwhile another request removes the privilege.
    let read = Arc::new(tokio::sync::Notify::new());
    let go = Arc::new(tokio::sync::Notify::new());
    let app = axum::Router::new()
        .route(
            "/slow",
            axum::routing::post({
                let (read, go) = (read.clone(), go.clone());
                move |session: Session| async move {
                    assert_eq!(
                        session.get::<String>("admin").unwrap().as_deref(),
                        Some("yes")
                    );
                    session.insert("theme", "dark").unwrap();
                    read.notify_one();
                    go.notified().await;
                    "done"
                }
            }),
        )
        .layer(SessionLayer::new(h.manager.clone()));
    let slow = tokio::spawn(app.oneshot(request("POST", "/slow", Some(&secret))));
    read.notified().await;
    let removed = h
        .call("POST", "/attr-remove?key=admin", Some(&secret))
        .await;
    assert_eq!(removed.status, StatusCode::OK);
    go.notify_one();
    assert_eq!(slow.await.unwrap().unwrap().status(), StatusCode::OK);
    let data = &h.records()[0].data;
    assert!(
        data.get("admin").is_none(),
        "the removed key came back: {data:?}"
    );
    assert_eq!(data["theme"], "dark");
    assert_eq!(
        h.call("GET", "/attr?key=admin", Some(&secret)).await.body,
        "<none>"
    );
}

#[tokio::test]
async fn a_removed_key_stays_removed_when_another_request_wrote_later_from_an_older_read() {
    // Deterministic: the second request resolved the record before the first
    // removed the key, and writes after it.
    let h = Harness::new();
    let secret = h.login("alice").await;
    h.call("POST", "/attr?key=admin&value=yes", Some(&secret))
        .await;
    let stale = h
        .manager
        .store()
        .get_active(&h.records()[0].id, h.manager.now())
        .await
        .unwrap()
        .unwrap();
    h.call("POST", "/attr-remove?key=admin", Some(&secret))
        .await;
    // Replacing from the stale read fails: the generation moved on.
    let mut next = (*stale).clone();
    next.generation += 1;
    next.data.insert("theme".into(), "dark".into());
    assert!(
        !h.manager
            .store()
            .replace(&stale, &next, h.manager.now())
            .await
            .unwrap()
    );
    assert!(h.records()[0].data.get("admin").is_none());
}

#[tokio::test]
async fn data_over_the_bound_or_with_nul_is_refused_alike_on_every_path() {
    let h = Harness::new();
    let secret = h.login("alice").await;
    let big = "x".repeat(MAX_DATA_LEN);
    let res = h
        .call("POST", &format!("/attr?key=big&value={big}"), Some(&secret))
        .await;
    assert_eq!(res.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(res.body, "invalid session data");
    let res = h
        .call("POST", "/attr?key=k&value=a%00b", Some(&secret))
        .await;
    assert_eq!(res.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(h.records()[0].data.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_size_bound_holds_for_the_merged_result() {
    let h = Harness::with(SessionConfig::default(), ring(1, &[1]));
    let secret = h.login("alice").await;
    // Two values that each fit alone but not together. The slow request
    // stages its value, then waits until the other request has written its own.
    let half = "y".repeat(MAX_DATA_LEN / 2 + 100);
    let staged = Arc::new(tokio::sync::Notify::new());
    let go = Arc::new(tokio::sync::Notify::new());
    let app = axum::Router::new()
        .route(
            "/slow",
            axum::routing::post({
                let (staged, go, half) = (staged.clone(), go.clone(), half.clone());
                move |session: Session| async move {
                    session.insert("a", &half).unwrap();
                    staged.notify_one();
                    go.notified().await;
                    "done"
                }
            }),
        )
        .layer(SessionLayer::new(h.manager.clone()));
    let slow = tokio::spawn(app.oneshot(request("POST", "/slow", Some(&secret))));
    staged.notified().await;
    let other = h
        .call("POST", &format!("/attr?key=b&value={half}"), Some(&secret))
        .await;
    assert_eq!(other.status, StatusCode::OK);
    go.notify_one();
    let slow = common::TestResponse::from(slow.await.unwrap().unwrap()).await;
    // Refused at write time, on the merged result: the handler's answer
    // becomes an error and nothing of it is stored.
    assert_eq!(
        (slow.status, slow.body.as_str()),
        (StatusCode::INTERNAL_SERVER_ERROR, "invalid session data")
    );
    let data = &h.records()[0].data;
    assert_eq!(data.keys().collect::<Vec<_>>(), ["b"]);
    assert!(serde_json::to_vec(data).unwrap().len() <= MAX_DATA_LEN);
}

#[tokio::test]
async fn nul_characters_are_refused_on_login_and_outside_requests_too() {
    let h = Harness::new();
    let mut data = tower_hmac_session::Data::new();
    data.insert("k".into(), "a\u{0}b".into());
    let created = h.manager.create_session("alice", data.clone()).await;
    assert!(
        matches!(created, Err(SessionError::InvalidData(_))),
        "{created:?}"
    );
    let app = axum::Router::new()
        .route(
            "/login",
            axum::routing::post(move |session: Session| {
                let data = data.clone();
                async move {
                    let options = tower_hmac_session::LoginOptions::new().data(data);
                    session.login_with("alice", options).await.map(|_| "in")
                }
            }),
        )
        .layer(SessionLayer::new(h.manager.clone()));
    let res =
        common::TestResponse::from(app.oneshot(request("POST", "/login", None)).await.unwrap())
            .await;
    assert_eq!(
        (res.status, res.body.as_str()),
        (StatusCode::INTERNAL_SERVER_ERROR, "invalid session data")
    );
    assert!(res.raw_set_cookies.is_empty());
    assert!(h.records().is_empty());
}
