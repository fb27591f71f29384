//! `Cookie` header(s) → the secrets the layer looks up (`find_secrets`).
//!
//! Arbitrary bytes in several `Cookie` headers, with real secrets, near
//! misses and other cookies spliced in. Checks: no panic; at most
//! `MAX_COOKIE_VALUES` secrets, no repeats; exactly what a plain reference
//! reading of RFC 6265 pairs finds, in order; every secret round-trips
//! through its canonical 43-character encoding, which occurs in a header.
#![no_main]

use arbitrary::Arbitrary;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::header::COOKIE;
use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use tower_hmac_session::__fuzz::find_secrets;
use tower_hmac_session::{ENCODED_SECRET_LEN, MAX_COOKIE_VALUES, SessionSecret};

const NAMES: [&str; 4] = ["__Host-session", "sid", "a", "__Secure-x"];

#[derive(Arbitrary, Debug)]
enum Piece {
    Raw(Vec<u8>),
    /// `<name>=<secret>` with the configured or another name.
    Secret {
        name: u8,
        bytes: [u8; 32],
        pad: u8,
    },
    /// A secret's encoding, one character changed.
    NearMiss {
        bytes: [u8; 32],
        at: u8,
        to: u8,
    },
    Sep(u8),
}

#[derive(Arbitrary, Debug)]
struct Input {
    name: u8,
    headers: Vec<Vec<Piece>>,
}

fn render(piece: &Piece, name: &str, out: &mut Vec<u8>) {
    match piece {
        Piece::Raw(bytes) => out.extend_from_slice(bytes),
        Piece::Secret {
            name: n,
            bytes,
            pad,
        } => {
            let n = match n % 3 {
                0 => name,
                1 => NAMES[usize::from(*n) % NAMES.len()],
                _ => "x",
            };
            let spaces = [b' ', b'\t'];
            for _ in 0..pad % 3 {
                out.push(spaces[usize::from(pad & 1)]);
            }
            out.extend_from_slice(n.as_bytes());
            out.push(b'=');
            out.extend_from_slice(URL_SAFE_NO_PAD.encode(bytes).as_bytes());
        }
        Piece::NearMiss { bytes, at, to } => {
            let mut text = URL_SAFE_NO_PAD.encode(bytes).into_bytes();
            let i = usize::from(*at) % text.len();
            text[i] = *to;
            out.extend_from_slice(name.as_bytes());
            out.push(b'=');
            out.extend_from_slice(&text);
        }
        Piece::Sep(b) => out.extend_from_slice(match b % 4 {
            0 => b"; ",
            1 => b";",
            2 => b" ",
            _ => b"=",
        }),
    }
}

/// A plain reading: split every header on `;`, trim, split at the first
/// `=`, trim both sides; keep the values of `name` that parse, in order,
/// without repeats, at most `MAX_COOKIE_VALUES`.
fn reference(headers: &[Vec<u8>], name: &str) -> Vec<[u8; 32]> {
    let mut found: Vec<[u8; 32]> = Vec::new();
    for header in headers {
        for pair in header.split(|&b| b == b';') {
            let pair = pair.trim_ascii();
            let Some(eq) = pair.iter().position(|&b| b == b'=') else {
                continue;
            };
            if pair[..eq].trim_ascii() != name.as_bytes() {
                continue;
            }
            let value = pair[eq + 1..].trim_ascii();
            if let Some(secret) = SessionSecret::parse_bytes(value) {
                let bytes = *secret.expose_bytes();
                if found.len() == MAX_COOKIE_VALUES {
                    return found;
                }
                if !found.contains(&bytes) {
                    found.push(bytes);
                }
            }
        }
    }
    found
}

fuzz_target!(|input: Input| {
    let name = NAMES[usize::from(input.name) % NAMES.len()];
    let mut map = HeaderMap::new();
    let mut values = Vec::new();
    for pieces in input.headers.iter().take(8) {
        let mut bytes = Vec::new();
        for piece in pieces {
            render(piece, name, &mut bytes);
        }
        // Only what a `HeaderValue` can hold reaches the layer.
        if let Ok(value) = HeaderValue::from_bytes(&bytes) {
            map.append(COOKIE, value);
            values.push(bytes);
        }
    }
    let found = find_secrets(&map, name);
    assert!(found.len() <= MAX_COOKIE_VALUES);
    let found_bytes: Vec<[u8; 32]> = found.iter().map(|s| *s.expose_bytes()).collect();
    assert_eq!(
        found_bytes,
        reference(&values, name),
        "differs from the reference reading"
    );
    for secret in &found {
        let encoded = secret.encode();
        assert_eq!(encoded.len(), ENCODED_SECRET_LEN);
        let again = SessionSecret::parse(&encoded).expect("a canonical encoding parses");
        assert_eq!(again.expose_bytes(), secret.expose_bytes());
        assert!(
            values.iter().any(|v| v
                .windows(ENCODED_SECRET_LEN)
                .any(|w| w == encoded.as_bytes())),
            "a found secret's encoding is in a header"
        );
    }
});
