//! Loopback load test: throughput of an axum server with and without the
//! session layer, driven by `wrk` (Debian's `wrk` package) with 64
//! connections, alternating the servers round by round so both see the same
//! machine load.
//!
//! ```sh
//! apt-get install wrk
//! cargo bench --bench load
//! ```
//!
//! Every request goes to 127.0.0.1, for a bounded time.
#![allow(missing_docs)]

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use tower_hmac_session::{MemoryStore, SessionConfig, SessionLayer, SessionManager};

mod support;

const ROUNDS: usize = 3;
const SECONDS: u32 = 8;

async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// Requests per second that `wrk` reports, and whether every response was 2xx.
fn wrk(addr: SocketAddr, path: &str, cookie: Option<&str>) -> f64 {
    let mut cmd = Command::new("wrk");
    cmd.args(["-t2", "-c64", &format!("-d{SECONDS}s"), "--latency"]);
    if let Some(cookie) = cookie {
        cmd.args(["-H", &format!("Cookie: {cookie}")]);
    }
    let out = cmd
        .arg(format!("http://{addr}{path}"))
        .output()
        .expect("wrk is installed (apt-get install wrk)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("Non-2xx"), "some responses failed:\n{text}");
    text.lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no throughput in wrk's output:\n{text}"))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let (bare, layered, cookie) = rt.block_on(async {
        let bare = serve(Router::new().route("/", get(|| async { "ok" }))).await;
        // Nothing becomes due during the run: this measures the read path.
        let config = SessionConfig::builder()
            .access_ttl(None)
            .touch_interval(Duration::from_secs(3600))
            .build()
            .unwrap();
        let manager = SessionManager::new(MemoryStore::new(), support::ring(2), config);
        let issued = manager
            .create_session("user-42", Default::default())
            .await
            .unwrap();
        let cookie = format!("__Host-session={}", issued.secret.encode());
        let layered = serve(
            Router::new()
                .route("/", get(|| async { "ok" }))
                .layer(SessionLayer::new(manager)),
        )
        .await;
        (bare, layered, cookie)
    });

    let (mut without, mut anonymous, mut with_cookie) = (Vec::new(), Vec::new(), Vec::new());
    for round in 1..=ROUNDS {
        without.push(wrk(bare, "/", None));
        anonymous.push(wrk(layered, "/", None));
        // Same handler as the bare server: the difference is the layer alone
        // (cookie parse, two HMACs, one store lookup, the session handle).
        with_cookie.push(wrk(layered, "/", Some(&cookie)));
        eprintln!("round {round} of {ROUNDS} done");
    }
    let base = median(without.clone());
    println!("## Loopback throughput, wrk -t2 -c64, {SECONDS} s × {ROUNDS} rounds (median)\n");
    println!("| server | requests/s | ÷ without the layer |\n|---|---:|---:|");
    println!("| without the layer | {base:.0} | 1.00 |");
    for (name, runs) in [
        ("with the layer, no cookie", anonymous),
        (
            "with the layer, valid cookie (2 keys, MemoryStore)",
            with_cookie,
        ),
    ] {
        let m = median(runs);
        println!("| {name} | {m:.0} | {:.2} |", m / base);
    }
}
