//! The `Cookie` scan is linear in the header's length: the same request
//! with a 256 KiB and a 1 MiB `Cookie` header, straight into the tower
//! `Service` (hyper would refuse headers this large before any layer).
//!
//! ```sh
//! cargo bench --bench limits
//! ```
//!
//! Linear means the 1 MiB case takes about 4x the 256 KiB case. Three
//! shapes: junk cookies (no value of the session cookie's name), malformed
//! values of the session cookie (the name matches, the value never
//! parses), and the same junk followed by a live secret (one store lookup
//! on top: a constant). `tests/limits.rs` checks what these requests do.

use std::convert::Infallible;
use std::hint::black_box;
use std::time::Duration;

use axum::body::Body;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use http::{HeaderValue, Request, Response, header};
use time::macros::datetime;
use tower::{Layer as _, ServiceExt as _, service_fn};
use tower_hmac_session::{
    Data, KeyRing, MemoryStore, MockClock, SessionConfig, SessionLayer, SessionManager,
};

const COOKIE: &str = "__Host-session";
const KIB: usize = 1 << 10;

fn fill(unit: &str, len: usize) -> String {
    unit.repeat(len.div_ceil(unit.len()))
}

fn bench_cookie_scan(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let keys = KeyRing::builder()
        .key(2, [2u8; 32])
        .key(1, [1u8; 32])
        .current(2)
        .build()
        .unwrap();
    let manager = SessionManager::new(MemoryStore::new(), keys, SessionConfig::default())
        .with_clock(MockClock::new(datetime!(2030-01-01 00:00 UTC)));
    let secret = runtime
        .block_on(manager.create_session("alice", Data::new()))
        .unwrap()
        .secret
        .encode();
    let service = SessionLayer::new(manager).layer(service_fn(|_req: Request<Body>| async {
        Ok::<_, Infallible>(Response::new(Body::empty()))
    }));

    let mut group = c.benchmark_group("cookie_scan");
    for (shape, unit, tail) in [
        ("junk", "a=b; c=d; ", String::new()),
        (
            "malformed_session_values",
            "__Host-session=x; ",
            String::new(),
        ),
        (
            "junk_then_secret",
            "a=b; c=d; ",
            format!("; {COOKIE}={secret}"),
        ),
    ] {
        for size in [256 * KIB, 1024 * KIB] {
            let value = HeaderValue::from_str(&(fill(unit, size) + &tail)).unwrap();
            group.throughput(Throughput::Bytes(value.len() as u64));
            group.bench_with_input(
                BenchmarkId::new(shape, format!("{}KiB", size / KIB)),
                &value,
                |b, value| {
                    b.to_async(&runtime).iter(|| {
                        let mut req = Request::new(Body::empty());
                        // A `HeaderValue` clone shares its bytes: no copy.
                        req.headers_mut().insert(header::COOKIE, value.clone());
                        let service = service.clone();
                        async move { black_box(service.oneshot(req).await.unwrap()) }
                    });
                },
            );
        }
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30);
    targets = bench_cookie_scan
}
criterion_main!(benches);
