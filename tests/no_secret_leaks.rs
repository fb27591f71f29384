//! The raw secret — bytes, hex or base64 — appears in no stored record and
//! in no log line, through login, maintenance, replay and logout.

mod common;

use std::io::Write;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Harness, ring};
use tower_hmac_session::{SessionConfig, SessionRecord, SessionSecret};

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Every byte a record holds, raw: id, subject, lookup keys, attributes.
fn raw_bytes(record: &SessionRecord) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(record.id.as_bytes());
    out.extend_from_slice(record.subject.as_deref().unwrap_or_default().as_bytes());
    for (_, credential) in record.credentials() {
        out.extend_from_slice(credential.lookup_key.as_bytes());
    }
    out.extend_from_slice(serde_json::to_string(&record.data).unwrap().as_bytes());
    out.extend_from_slice(format!("{record:?}").as_bytes());
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn the_secret_appears_in_no_record_and_no_log_line() {
    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let config = SessionConfig::builder()
        .access_ttl(Some(Duration::from_secs(900)))
        .touch_interval(Duration::from_secs(60))
        .build()
        .unwrap();
    let h = Harness::with(config, ring(1, &[1]));
    let mut secrets = Vec::new();
    let first = h.login("alice").await;
    secrets.push(first.clone());
    h.call("POST", "/attr?key=device&value=laptop", Some(&first))
        .await;
    h.advance(120);
    h.call("GET", "/me", Some(&first)).await; // touch
    h.manager.set_key_ring(ring(2, &[1, 2]));
    h.call("GET", "/me", Some(&first)).await; // re-key
    h.advance(900);
    let second = h
        .call("GET", "/me", Some(&first))
        .await
        .new_secret()
        .unwrap(); // rotate
    secrets.push(second.clone());
    h.store.fail_reads.store(true, Ordering::SeqCst);
    h.call("GET", "/me", Some(&second)).await; // store error
    h.store.fail_reads.store(false, Ordering::SeqCst);
    h.advance(120);
    // The successor looks lost: re-rotation.
    let fourth = h
        .call("GET", "/me", Some(&first))
        .await
        .new_secret()
        .unwrap();
    secrets.push(fourth.clone());
    h.call("GET", "/me", Some(&fourth)).await; // confirm
    h.advance(120);
    h.call("GET", "/me", Some(&second)).await; // superseded: reuse, revoked
    let third = h.login("bob").await;
    secrets.push(third.clone());
    h.call("POST", "/logout", Some(&third)).await;

    let records = h.records();
    assert_eq!(records.len(), 2);
    let stored: Vec<u8> = records.iter().flat_map(raw_bytes).collect();
    let logs = capture.0.lock().unwrap().clone();
    let log_text = String::from_utf8_lossy(&logs);
    // The capture works: it holds the events that name sessions.
    for record in &records {
        assert!(log_text.contains(&record.id.to_string()), "{log_text}");
    }
    assert!(log_text.contains("revoked as reuse"), "{log_text}");

    for secret in &secrets {
        let bytes = *SessionSecret::parse(secret).unwrap().expose_bytes();
        for (place, haystack) in [("records", &stored), ("logs", &logs)] {
            assert!(
                !contains(haystack, secret.as_bytes()),
                "base64 secret in {place}"
            );
            assert!(!contains(haystack, &bytes), "raw secret in {place}");
            assert!(
                !contains(haystack, hex_lower(&bytes).as_bytes()),
                "hex secret in {place}"
            );
        }
    }
    // Lookup keys stay out of the logs too.
    for record in &records {
        for (_, credential) in record.credentials() {
            let key = credential.lookup_key.as_bytes();
            assert!(!contains(&logs, hex_lower(key).as_bytes()));
            assert!(!contains(&logs, format!("{key:?}").as_bytes()));
            assert!(!contains(&logs, key));
        }
    }
}

fn hex_lower(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
