//! Limits: huge and numerous `Cookie` headers, many values of the session
//! cookie, and strangers (no cookie, malformed, unknown, revoked or expired
//! cookies) on every route with every method: no store call for what cannot
//! be a secret, at most one lookup of at most four values for what can, and
//! no store write unless the handler stores something.
//!
//! The 1 MiB headers go straight to the tower `Service` (the Router under
//! the layer): hyper refuses headers that large before any layer sees them.
//! That the scan is linear in the header's length is a bench, not a timed
//! test: `cargo bench --bench limits` compares 256 KiB with 1 MiB.

mod common;

use common::faults::{FaultyStore, faulty_harness};
use common::{COOKIE, Counts, Harness, request_with_cookies, stranger};
use http::{HeaderValue, Request, StatusCode, header};
use std::sync::Arc;
use std::time::Duration;
use tower_hmac_session::{MAX_COOKIE_VALUES, SessionConfig, SessionSecret};

const MIB: usize = 1 << 20;

fn hv(s: impl AsRef<[u8]>) -> HeaderValue {
    HeaderValue::from_bytes(s.as_ref()).unwrap()
}

/// `unit` repeated to at least `len` bytes.
fn fill(unit: &str, len: usize) -> String {
    unit.repeat(len.div_ceil(unit.len()))
}

fn two_versions() -> (Harness, Arc<FaultyStore>) {
    faulty_harness(SessionConfig::default(), common::ring(2, &[1, 2]))
}

#[tokio::test]
async fn a_one_mebibyte_cookie_header_that_holds_no_secret_makes_no_store_call() {
    let (h, _) = two_versions();
    let valid = SessionSecret::generate().encode();
    let cases = [
        ("junk cookies", fill("a=b; ", MIB)),
        (
            "malformed session values",
            fill(&format!("{COOKIE}=x; "), MIB),
        ),
        (
            "42-character session values",
            fill(&format!("{COOKIE}={}; ", &valid[..42]), MIB),
        ),
        (
            "44-character session values",
            fill(&format!("{COOKIE}={valid}A; "), MIB),
        ),
        ("one huge value", format!("{COOKIE}={}", "A".repeat(MIB))),
        ("one huge name", format!("{}={valid}", "A".repeat(MIB))),
        ("separators", ";".repeat(MIB)),
        ("equals signs", "=".repeat(MIB)),
        ("spaces around nothing", fill(" ; = ; ", MIB)),
    ];
    for (what, value) in cases {
        assert!(value.len() >= MIB, "{what}");
        let res = h.send(request_with_cookies(vec![hv(&value)])).await;
        assert_eq!(
            (res.status, res.body.as_str()),
            (StatusCode::OK, "anonymous"),
            "{what}"
        );
        assert!(res.raw_set_cookies.is_empty(), "{what}");
        assert_eq!(h.store.counts.total(), 0, "{what}: no store call");
    }
}

#[tokio::test]
async fn a_secret_inside_a_one_mebibyte_header_is_found_with_one_lookup() {
    let (h, faults) = two_versions();
    let secret = h.login("alice").await;
    let junk = fill(&format!("{COOKIE}=x; a=b; "), MIB);
    for (what, value) in [
        ("first", format!("{COOKIE}={secret}; {junk}")),
        ("last", format!("{junk}; {COOKIE}={secret}")),
        ("middle", format!("{junk}; {COOKIE}={secret}; {junk}")),
        // The same secret over and over: one value, looked up once.
        ("repeated", fill(&format!("{COOKIE}={secret}; "), MIB)),
    ] {
        h.store.reset_counts();
        let res = h.send(request_with_cookies(vec![hv(&value)])).await;
        assert_eq!(res.body, "alice", "{what}");
        assert_eq!(Counts::get(&h.store.counts.find_active), 1, "{what}");
        assert_eq!(h.store.counts.total(), 1, "{what}: nothing else");
    }
    // One value under each of the ring's two versions, even when repeated.
    assert_eq!(faults.max_candidates(), 2);
}

#[tokio::test]
async fn a_mebibyte_of_well_formed_session_values_is_one_lookup_of_four() {
    let (h, faults) = two_versions();
    let secret = h.login("alice").await;
    let strangers: String = (0..MIB / 60)
        .map(|_| format!("{COOKIE}={}; ", stranger()))
        .collect();
    assert!(strangers.len() >= MIB - 60);
    h.store.reset_counts();
    // Only the first four well-formed values count: a secret after them is
    // never looked up, and the request is anonymous.
    let res = h
        .send(request_with_cookies(vec![hv(format!(
            "{strangers}{COOKIE}={secret}"
        ))]))
        .await;
    assert_eq!(res.body, "anonymous");
    assert!(res.raw_set_cookies.is_empty());
    assert_eq!(Counts::get(&h.store.counts.find_active), 1);
    assert_eq!(h.store.counts.writes(), 0);
    assert_eq!(faults.max_candidates(), 2 * MAX_COOKIE_VALUES as u64);
    // Among the first four, it is found.
    let res = h
        .send(request_with_cookies(vec![hv(format!(
            "{COOKIE}={}; {COOKIE}={secret}; {strangers}",
            stranger()
        ))]))
        .await;
    assert_eq!(res.body, "alice");
    assert_eq!(faults.max_candidates(), 2 * MAX_COOKIE_VALUES as u64);
}

#[tokio::test]
async fn ten_thousand_cookie_headers_are_read_as_one() {
    let (h, _) = two_versions();
    let secret = h.login("alice").await;
    let junk: Vec<HeaderValue> = (0..10_000)
        .map(|i| {
            if i % 2 == 0 {
                hv(format!("c{i}=v{i}"))
            } else {
                hv(format!("{COOKIE}=nope{i}"))
            }
        })
        .collect();
    h.store.reset_counts();
    let res = h.send(request_with_cookies(junk.clone())).await;
    assert_eq!(res.body, "anonymous");
    assert_eq!(h.store.counts.total(), 0, "no well-formed value: no call");
    let mut with_secret = junk;
    with_secret.push(hv(format!("{COOKIE}={secret}")));
    let res = h.send(request_with_cookies(with_secret)).await;
    assert_eq!(res.body, "alice");
    assert_eq!(h.store.counts.total(), 1);
}

/// Every route of the test app, with the query its handler needs, and
/// whether a POST to it stores something for a stranger (a login, or data
/// kept before login).
fn routes() -> Vec<(&'static str, bool)> {
    vec![
        ("/login?user=mallory", true),
        ("/login-short?user=mallory", true),
        ("/me", false),
        ("/maybe", false),
        ("/logout", false),
        ("/logout-everywhere", false),
        ("/logout-others", false),
        ("/devices", false),
        ("/renew", false),
        ("/cacheable", false),
        ("/uncached-public", false),
        ("/slow?secs=0", false),
        ("/attr-remove?key=theme", false),
        ("/attr?key=theme&value=dark", true),
        ("/revoke-device?id=00000000000000000000000000000000", false),
        ("/no-such-route", false),
    ]
}

const METHODS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"];

#[tokio::test]
async fn strangers_cause_no_store_write_on_any_route_with_any_method() {
    let config = SessionConfig::builder()
        .access_ttl(Some(Duration::from_secs(900)))
        .touch_interval(Duration::from_secs(60))
        .build()
        .unwrap();
    let (h, _) = faulty_harness(config, common::ring(1, &[1]));
    // A revoked session and an expired one, each still presented.
    let revoked = h.login("gone").await;
    assert!(
        h.call("POST", "/logout", Some(&revoked))
            .await
            .clears_cookie()
    );
    let expired = h
        .call("POST", "/login-short?user=idle", None)
        .await
        .new_secret()
        .unwrap();
    h.advance(3600);
    let valid = SessionSecret::generate().encode();
    let kinds: Vec<(&str, Vec<HeaderValue>, bool)> = vec![
        ("no cookie", vec![], false),
        (
            "malformed",
            vec![hv(format!("{COOKIE}={}", &valid[..40]))],
            false,
        ),
        ("another cookie", vec![hv(format!("other={valid}"))], false),
        (
            "unknown",
            vec![hv(format!("{COOKIE}={}", stranger()))],
            true,
        ),
        ("revoked", vec![hv(format!("{COOKIE}={revoked}"))], true),
        ("expired", vec![hv(format!("{COOKIE}={expired}"))], true),
        (
            "four unknown and junk",
            vec![
                hv(format!("{COOKIE}={}; {COOKIE}=x", stranger())),
                hv(format!(
                    "{COOKIE}={}; {COOKIE}={}; {COOKIE}={}",
                    stranger(),
                    stranger(),
                    stranger()
                )),
            ],
            true,
        ),
    ];
    let before = common::faults::Snapshot::of(&h);
    let mut checked = 0;
    let mut stored = 0;
    for (kind, cookies, well_formed) in &kinds {
        for (route, stores) in routes() {
            for method in METHODS {
                h.store.reset_counts();
                let mut req = Request::builder()
                    .method(method)
                    .uri(route)
                    .body(axum::body::Body::empty())
                    .unwrap();
                for c in cookies {
                    req.headers_mut().append(header::COOKIE, c.clone());
                }
                let res = h.send(req).await;
                let what = format!("{kind}: {method} {route} -> {} {}", res.status, res.body);
                let c = &h.store.counts;
                if stores && method == "POST" {
                    // The handler asked to store: one insert, nothing else.
                    assert_eq!(res.status, StatusCode::OK, "{what}");
                    assert_eq!(c.writes(), 1, "{what}");
                    assert_eq!(Counts::get(&c.insert), 1, "{what}");
                    assert!(res.new_secret().is_some(), "{what}");
                    stored += 1;
                    continue;
                }
                assert_eq!(c.writes(), 0, "{what}: a store write");
                assert_eq!(
                    Counts::get(&c.find_active),
                    u64::from(*well_formed),
                    "{what}: lookups"
                );
                assert_eq!(c.total(), u64::from(*well_formed), "{what}: store calls");
                assert!(
                    res.raw_set_cookies.is_empty(),
                    "{what}: {:?}",
                    res.raw_set_cookies
                );
                assert!(res.status != StatusCode::SERVICE_UNAVAILABLE, "{what}");
                checked += 1;
            }
        }
    }
    assert_eq!(stored, kinds.len() * 3);
    assert_eq!(
        checked,
        kinds.len() * routes().len() * METHODS.len() - stored
    );
    // What strangers sent changed none of the records that were there.
    let after = common::faults::Snapshot::of(&h);
    for (id, record) in &before.records {
        assert_eq!(Some(record), after.records.get(id));
    }
}
