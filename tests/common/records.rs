//! Record builders shared by the Redis tests and the Redis bench
//! (included with `#[path]`): fresh records, credentials, successors.
#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use time::OffsetDateTime;
use tower_hmac_session::{
    Candidate, Credential, Data, KeyVersion, LookupKey, PreviousCredential, SessionId,
    SessionRecord,
};

pub fn random_key() -> LookupKey {
    let (a, b) = (SessionId::generate(), SessionId::generate());
    let mut bytes = [0u8; 32];
    bytes[..16].copy_from_slice(a.as_bytes());
    bytes[16..].copy_from_slice(b.as_bytes());
    LookupKey::from_bytes(bytes)
}

pub fn credential(version: u32) -> Credential {
    Credential {
        lookup_key: random_key(),
        key_version: KeyVersion(version),
    }
}

pub fn secs(n: i64) -> time::Duration {
    time::Duration::seconds(n)
}

/// A fresh record created at `now`: idle 1 h, absolute 1 day, key version 1.
pub fn record(subject: Option<&str>, now: OffsetDateTime) -> SessionRecord {
    let mut data = Data::new();
    data.insert("theme".into(), "dark".into());
    SessionRecord {
        id: SessionId::generate(),
        generation: 0,
        subject: subject.map(str::to_owned),
        created_at: now,
        authenticated_at: subject.map(|_| now),
        last_seen_at: now,
        expires_at: now + secs(3600),
        absolute_expires_at: now + secs(86_400),
        idle_timeout: Duration::from_secs(3600),
        persistent: true,
        access_expires_at: now + secs(900),
        current: credential(1),
        previous: None,
        superseded: None,
        revoked: None,
        user_agent: Some("test agent".into()),
        client_ip: Some("192.0.2.7".parse().unwrap()),
        data,
    }
}

pub fn candidate(credential: Credential, value_index: u8) -> Candidate {
    Candidate {
        key_version: credential.key_version,
        lookup_key: credential.lookup_key,
        value_index,
    }
}

/// `record` one generation on, with `change` applied.
pub fn successor(record: &SessionRecord, change: impl FnOnce(&mut SessionRecord)) -> SessionRecord {
    let mut next = record.clone();
    next.generation += 1;
    change(&mut next);
    next
}

/// Moves the current credential to the previous slot (unconfirmed) and
/// makes `new` current.
pub fn rotated(record: &SessionRecord, new: Credential, now: OffsetDateTime) -> SessionRecord {
    successor(record, |next| {
        next.previous = Some(PreviousCredential {
            credential: record.current,
            rotated_at: now,
            valid_until: None,
        });
        next.current = new;
    })
}
