//! Malformed cookies are anonymous: no HMAC, no store call, no panic.

mod common;

use common::{COOKIE, Harness, request_with_cookies};
use http::{HeaderValue, StatusCode};
use tower_hmac_session::SessionSecret;

fn hv(s: impl AsRef<[u8]>) -> HeaderValue {
    HeaderValue::from_bytes(s.as_ref()).unwrap()
}

#[tokio::test]
async fn malformed_cookies_are_anonymous_without_a_store_call() {
    let h = Harness::new();
    let valid = SessionSecret::generate().encode();
    let many: String = (0..300)
        .map(|i| format!("c{i}=v{i}"))
        .collect::<Vec<_>>()
        .join("; ");
    let many_same: String = (0..300)
        .map(|_| format!("{COOKIE}=nope"))
        .collect::<Vec<_>>()
        .join("; ");
    let cases: Vec<(&str, Vec<HeaderValue>)> = vec![
        ("no cookie", vec![]),
        ("empty value", vec![hv(format!("{COOKIE}="))]),
        ("name only", vec![hv(COOKIE)]),
        ("empty header", vec![hv("")]),
        (
            "42 characters",
            vec![hv(format!("{COOKIE}={}", &valid[..42]))],
        ),
        ("44 characters", vec![hv(format!("{COOKIE}={valid}A"))]),
        ("padded", vec![hv(format!("{COOKIE}={}=", &valid[..42]))]),
        (
            "standard alphabet",
            vec![hv(format!("{COOKIE}={}+", &valid[..42]))],
        ),
        (
            "wrong alphabet",
            vec![hv(format!("{COOKIE}={}*", &valid[..42]))],
        ),
        ("quoted", vec![hv(format!("{COOKIE}=\"{}\"", &valid[..41]))]),
        (
            "non-UTF-8 bytes",
            vec![hv([COOKIE.as_bytes(), b"=\xff\xfe\x80abc"].concat())],
        ),
        (
            "non-UTF-8 of the right length",
            vec![hv([COOKIE.as_bytes(), b"=", &[0xc3; 43]].concat())],
        ),
        (
            "8 KiB value",
            vec![hv(format!("{COOKIE}={}", "A".repeat(8192)))],
        ),
        ("300 cookies in one header", vec![hv(&many)]),
        ("300 malformed session cookies", vec![hv(&many_same)]),
        (
            "several Cookie headers",
            vec![hv("a=1"), hv(format!("{COOKIE}=x")), hv("b=2")],
        ),
        (
            "duplicate names, all malformed",
            vec![hv(format!(
                "{COOKIE}=a; {COOKIE}=b; {COOKIE}={}",
                &valid[..10]
            ))],
        ),
        ("another cookie's name", vec![hv(format!("other={valid}"))]),
        (
            "a name that merely ends like it",
            vec![hv(format!("x{COOKIE}={valid}"))],
        ),
        ("separators only", vec![hv(";;;;; ; ;=;=")]),
    ];
    for (what, values) in cases {
        let res = h.send(request_with_cookies(values)).await;
        assert_eq!(res.status, StatusCode::OK, "{what}");
        assert_eq!(res.body, "anonymous", "{what}");
        assert!(res.raw_set_cookies.is_empty(), "{what}: no cookie change");
        assert_eq!(h.store.counts.total(), 0, "{what}: no store call");
    }
}

#[tokio::test]
async fn well_formed_values_are_found_across_headers_among_malformed_ones() {
    let h = Harness::new();
    let secret = h.login("alice").await;
    h.store.reset_counts();
    for values in [
        vec![hv("a=1"), hv(format!("{COOKIE}={secret}"))],
        vec![hv(format!("{COOKIE}=short; {COOKIE}={secret}"))],
        vec![hv([
            b"x=\xff; ".as_slice(),
            format!("{COOKIE} = {secret} ; y=2").as_bytes(),
        ]
        .concat())],
        // A stranger's well-formed value beside the real one: both looked up.
        vec![
            hv(format!("{COOKIE}={}", common::stranger())),
            hv(format!("{COOKIE}={secret}")),
        ],
    ] {
        let res = h.send(request_with_cookies(values)).await;
        assert_eq!(res.body, "alice");
    }
    assert_eq!(common::Counts::get(&h.store.counts.find_active), 4);
    assert_eq!(h.store.counts.writes(), 0);
}
