//! Memory and allocations, counted (dhat's allocator counts every block):
//!
//! - bytes a `MemoryStore` holds per session without attributes;
//! - heap allocations per request through an axum `Router`: bare, this crate
//!   (no cookie; a valid cookie), tower-sessions 0.15 (no cookie; a valid
//!   cookie).
//!
//! ```sh
//! cargo bench --bench memory
//! ```

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use http::Request;
use time::macros::datetime;
use tower::ServiceExt as _;
use tower_hmac_session::{
    Data as Attributes, MemoryStore, MockClock, Session, SessionConfig, SessionLayer,
    SessionManager, SessionStore,
};

mod support;
use support::get_req;

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

async fn bytes_per_session(n: u64) -> f64 {
    let store = MemoryStore::new();
    // Warm up past the first table growths, then measure the net heap growth.
    for i in 0..1000 {
        store.insert(&support::filler_record(i)).await.unwrap();
    }
    let before = dhat::HeapStats::get().curr_bytes;
    for i in 1000..1000 + n {
        store.insert(&support::filler_record(i)).await.unwrap();
    }
    let after = dhat::HeapStats::get().curr_bytes;
    (after - before) as f64 / n as f64
}

/// Heap blocks and bytes allocated per request, over `n` requests.
async fn per_request(router: &Router, n: u64, make: impl Fn() -> Request<Body>) -> (f64, f64) {
    // Warm-up: lazily built statics and caches are not per-request costs.
    for _ in 0..100 {
        let res = router.clone().oneshot(make()).await.unwrap();
        assert!(res.status().is_success());
    }
    let before = dhat::HeapStats::get();
    for _ in 0..n {
        let res = router.clone().oneshot(make()).await.unwrap();
        assert!(res.status().is_success());
        drop(res);
    }
    let after = dhat::HeapStats::get();
    (
        (after.total_blocks - before.total_blocks) as f64 / n as f64,
        (after.total_bytes - before.total_bytes) as f64 / n as f64,
    )
}

fn main() {
    let _profiler = dhat::Profiler::builder().testing().build();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        println!("## MemoryStore: heap bytes per session (no attributes, 12-byte subject)\n");
        println!("| sessions | bytes per session |\n|---:|---:|");
        for n in [10_000, 100_000, 1_000_000] {
            println!("| {n} | {:.0} |", bytes_per_session(n).await);
        }

        let n = 10_000;
        let bare = Router::new().route("/", get(|| async { "ok" }));

        let manager = SessionManager::new(
            MemoryStore::new(),
            support::ring(2),
            SessionConfig::default(),
        )
        .with_clock(MockClock::new(datetime!(2030-01-01 00:00 UTC)));
        let mut attributes = Attributes::new();
        attributes.insert("k".into(), "v".into());
        let issued = manager.create_session("user-42", attributes).await.unwrap();
        let cookie = format!("__Host-session={}", issued.secret.encode());
        let ours = Router::new()
            .route("/", get(|| async { "ok" }))
            .route(
                "/read",
                get(|s: Session| async move { s.get::<String>("k").unwrap().unwrap_or_default() }),
            )
            .layer(SessionLayer::new(manager));

        let ts = support::tower_sessions();
        let res = ts.clone().oneshot(get_req("/write", None)).await.unwrap();
        let ts_cookie = support::set_cookie(&res, "id").expect("tower-sessions sets its cookie");

        println!("\n## Heap allocations per request (mean of {n})\n");
        println!("| scenario | allocations | bytes |\n|---|---:|---:|");
        let rows = [
            (
                "bare router",
                per_request(&bare, n, || get_req("/", None)).await,
            ),
            (
                "tower-sessions, no cookie",
                per_request(&ts, n, || get_req("/", None)).await,
            ),
            (
                "tower-sessions, valid cookie, read",
                per_request(&ts, n, || get_req("/read", Some(&ts_cookie))).await,
            ),
            (
                "ours, no cookie",
                per_request(&ours, n, || get_req("/", None)).await,
            ),
            (
                "ours, valid cookie (2 keys), read",
                per_request(&ours, n, || get_req("/read", Some(&cookie))).await,
            ),
        ];
        for (name, (blocks, bytes)) in rows {
            println!("| {name} | {blocks:.1} | {bytes:.0} |");
        }
    });
}
