//! Per-request overhead through an axum `Router`, in process, side by side in
//! one run: a bare router, tower-sessions 0.15 on its memory store, and this
//! crate on `MemoryStore`; plus the two micro steps of the read path.
//!
//! ```sh
//! cargo bench --bench overhead
//! python3 benches/report.py   # overheads (scenario − bare) and ratios
//! ```
//!
//! Time stands still on a `MockClock` in the read scenarios, so they never
//! trip maintenance; the touch and rotation scenarios advance it by exactly
//! the interval on every iteration, so every request does that write.

use std::cell::RefCell;
use std::hint::black_box;
use std::rc::Rc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::routing::{get, post};
use criterion::{Criterion, criterion_group, criterion_main};
use http::Request;
use support::{get_req, ring, set_cookie, tower_sessions};
use time::macros::datetime;
use tower::ServiceExt as _;
use tower_hmac_session::{
    Data as Attributes, MemoryStore, MockClock, Session, SessionConfig, SessionLayer,
    SessionManager, SessionSecret, SessionStore,
};

mod support;

const COOKIE: &str = "__Host-session";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

async fn call(router: &Router, req: Request<Body>) -> http::Response<Body> {
    let res = router.clone().oneshot(req).await.unwrap();
    assert!(res.status().is_success(), "{}", res.status());
    res
}

fn clock() -> MockClock {
    MockClock::new(datetime!(2030-01-01 00:00 UTC))
}

/// Read scenarios: nothing is ever due.
fn still() -> SessionConfig {
    SessionConfig::builder().build().unwrap()
}

fn ours(manager: &SessionManager) -> Router {
    Router::new()
        .route("/", get(|| async { "ok" }))
        .route(
            "/read",
            get(|s: Session| async move { s.get::<String>("k").unwrap().unwrap_or_default() }),
        )
        .route(
            "/login",
            post(|s: Session| async move {
                s.login("user-42").await.unwrap();
                "ok"
            }),
        )
        .layer(SessionLayer::new(manager.clone()))
}

/// A manager on `store` with `versions` keys, and a cookie for a live
/// session that has attribute `k`.
async fn session(
    store: MemoryStore,
    versions: u32,
    config: SessionConfig,
) -> (SessionManager, MockClock, String) {
    let clock = clock();
    let manager = SessionManager::new(store, ring(versions), config).with_clock(clock.clone());
    let mut attributes = Attributes::new();
    attributes.insert("k".into(), "v".into());
    let issued = manager.create_session("user-42", attributes).await.unwrap();
    (
        manager,
        clock,
        format!("{COOKIE}={}", issued.secret.encode()),
    )
}

/// `n` live sessions with random lookup keys, inserted directly.
async fn fill(store: &MemoryStore, n: usize) {
    for i in 0..n as u64 {
        store.insert(&support::filler_record(i)).await.unwrap();
    }
}

fn bench_routers(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("request");

    // The baseline every overhead is measured against.
    let bare = Router::new().route("/", get(|| async { "ok" }));
    group.bench_function("bare", |b| {
        b.to_async(&rt).iter(|| call(&bare, get_req("/", None)))
    });

    // What any layer costs under `Router::layer`, before doing anything: the
    // floor under every layered scenario.
    let noop = Router::new()
        .route("/", get(|| async { "ok" }))
        .layer(tower::util::MapRequestLayer::new(|req: Request<Body>| req));
    group.bench_function("noop_layer", |b| {
        b.to_async(&rt).iter(|| call(&noop, get_req("/", None)))
    });

    // tower-sessions 0.15 on its memory store.
    let ts = tower_sessions();
    let ts_cookie = rt.block_on(async {
        let res = call(&ts, get_req("/write", None)).await;
        set_cookie(&res, "id").expect("tower-sessions sets its cookie")
    });
    group.bench_function("tower_sessions/no_cookie", |b| {
        b.to_async(&rt).iter(|| call(&ts, get_req("/", None)))
    });
    group.bench_function("tower_sessions/read", |b| {
        b.to_async(&rt)
            .iter(|| call(&ts, get_req("/read", Some(&ts_cookie))))
    });
    group.bench_function("tower_sessions/write", |b| {
        b.to_async(&rt)
            .iter(|| call(&ts, get_req("/write", Some(&ts_cookie))))
    });

    // This crate on MemoryStore.
    for versions in [1, 2, 3, 5] {
        let (manager, _clock, cookie) = rt.block_on(session(MemoryStore::new(), versions, still()));
        let router = ours(&manager);
        if versions == 1 {
            group.bench_function("ours/no_cookie", |b| {
                b.to_async(&rt).iter(|| call(&router, get_req("/", None)))
            });
        }
        group.bench_function(format!("ours/read/{versions}_keys"), |b| {
            b.to_async(&rt)
                .iter(|| call(&router, get_req("/read", Some(&cookie))))
        });
    }

    // Due for a sliding touch on every request.
    let touching = SessionConfig::builder()
        .touch_interval(Duration::from_secs(1))
        .idle_timeout(Duration::from_secs(3600))
        .absolute_lifetime(Duration::from_secs(99 * 365 * 24 * 3600))
        .access_ttl(None)
        .build()
        .unwrap();
    let (manager, clock, cookie) = rt.block_on(session(MemoryStore::new(), 2, touching));
    let router = ours(&manager);
    group.bench_function("ours/touch", |b| {
        b.to_async(&rt).iter(|| {
            clock.advance(Duration::from_secs(1));
            let req = get_req("/read", Some(&cookie));
            async {
                let res = call(&router, req).await;
                // A slide sends no cookie: Max-Age runs to the absolute expiry.
                debug_assert!(set_cookie(&res, COOKIE).is_none());
                res
            }
        })
    });

    // A rotation cycle per iteration, two requests: one due for rotation
    // (new secret, CAS write, new cookie), then the first use of the new
    // secret, which confirms it (CAS write, no cookie). The client follows
    // the new cookie.
    let rotating = SessionConfig::builder()
        .access_ttl(Some(Duration::from_secs(2)))
        .rotation_grace(Duration::from_secs(1))
        .touch_interval(Duration::from_secs(1))
        .idle_timeout(Duration::from_secs(3600))
        .absolute_lifetime(Duration::from_secs(99 * 365 * 24 * 3600))
        .build()
        .unwrap();
    let (manager, clock, cookie) = rt.block_on(session(MemoryStore::new(), 2, rotating));
    let router = ours(&manager);
    let cookie = Rc::new(RefCell::new(cookie));
    group.bench_function("ours/rotate_and_confirm", |b| {
        b.to_async(&rt).iter(|| {
            clock.advance(Duration::from_secs(2));
            let req = get_req("/read", Some(&cookie.borrow()));
            let cookie = cookie.clone();
            let router = &router;
            async move {
                let res = call(router, req).await;
                let new = set_cookie(&res, COOKIE).expect("rotated");
                let confirm = call(router, get_req("/read", Some(&new))).await;
                debug_assert!(set_cookie(&confirm, COOKIE).is_none());
                *cookie.borrow_mut() = new;
                (res, confirm)
            }
        })
    });

    let (manager, _clock, _) = rt.block_on(session(MemoryStore::new(), 2, still()));
    let router = ours(&manager);
    group.bench_function("ours/login", |b| {
        b.to_async(&rt).iter(|| {
            let req = Request::post("/login").body(Body::empty()).unwrap();
            call(&router, req)
        })
    });

    // The read path against stores of growing size.
    for n in [1_000, 100_000, 1_000_000] {
        let store = MemoryStore::new();
        rt.block_on(fill(&store, n));
        let (manager, _clock, cookie) = rt.block_on(session(store, 2, still()));
        let router = ours(&manager);
        group.bench_function(format!("ours/read_with_sessions/{n}"), |b| {
            b.to_async(&rt)
                .iter(|| call(&router, get_req("/read", Some(&cookie))))
        });
    }
    group.finish();
}

fn bench_micro(c: &mut Criterion) {
    let mut group = c.benchmark_group("micro");
    let encoded = SessionSecret::generate().encode();
    group.bench_function("secret_parse", |b| {
        b.iter(|| SessionSecret::parse(black_box(&encoded)))
    });
    let ring1 = ring(1);
    let secret = SessionSecret::parse(&encoded).unwrap();
    group.bench_function("candidate_derivation", |b| {
        b.iter(|| ring1.current_credential(black_box(&secret)))
    });
    // The first version's derivation, for a ratio in the same run: the
    // `hmac` crate's keyed state (cloned per use) with the 37-byte tag
    // `tower-hmac-session/v1/session-lookup\0`, which does not fit one block
    // with the secret.
    {
        use hmac::Mac as _;
        let mut v1 = hmac::Hmac::<sha2::Sha256>::new_from_slice(&[1u8; 32]).unwrap();
        v1.update(b"tower-hmac-session/v1/session-lookup\0");
        group.bench_function("candidate_derivation_v1_tag", |b| {
            b.iter(|| {
                let mut mac = v1.clone();
                mac.update(black_box(secret.expose_bytes()));
                mac.finalize().into_bytes()
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(60);
    targets = bench_routers, bench_micro
}
criterion_main!(benches);
