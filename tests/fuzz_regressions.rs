//! Regression tests for what the fuzz targets in `fuzz/` found (see
//! FUZZING.md): each fails without its fix.

use std::time::Duration;

use time::OffsetDateTime;
use time::macros::datetime;
use tower_hmac_session::{
    Credential, Data, KeyVersion, LookupKey, Revocation, RevocationReason, Revoked, SessionId,
    SessionRecord,
};

const T0: OffsetDateTime = datetime!(2030-01-01 00:00 UTC);

fn record() -> SessionRecord {
    SessionRecord {
        id: SessionId::from_bytes([1; 16]),
        generation: 0,
        subject: Some("user-1".into()),
        created_at: T0,
        authenticated_at: Some(T0),
        last_seen_at: T0,
        expires_at: T0 + Duration::from_secs(600),
        absolute_expires_at: T0 + Duration::from_secs(3600),
        idle_timeout: Duration::from_secs(600),
        persistent: true,
        access_expires_at: T0 + Duration::from_secs(60),
        current: Credential {
            lookup_key: LookupKey::from_bytes([2; 32]),
            key_version: KeyVersion(1),
        },
        previous: None,
        superseded: None,
        revoked: None,
        user_agent: None,
        client_ip: None,
        data: Data::new(),
    }
}

/// fuzz/redis_value: `validate()` accepted a record whose revocation actor
/// every persistent backend rejects on reading (empty, over 256 bytes, or
/// with control characters), so a store could write a record it then reads
/// as corrupt.
#[test]
fn validate_refuses_a_revocation_actor_the_stores_cannot_read_back() {
    for actor in ["", "ops\u{1b}[2J", &"a".repeat(257)] {
        let record = SessionRecord {
            revoked: Some(Revoked {
                at: T0,
                revocation: Revocation::new(RevocationReason::Admin).by(actor),
            }),
            ..record()
        };
        assert!(record.validate().is_err(), "actor {actor:?}");
    }
    let ok = SessionRecord {
        revoked: Some(Revoked {
            at: T0,
            revocation: Revocation::new(RevocationReason::Admin).by("ops"),
        }),
        ..record()
    };
    assert_eq!(ok.validate(), Ok(()));
}

/// `[[[…]]]` nested `depth` arrays deep, around `null`.
fn nested(depth: usize) -> serde_json::Value {
    let mut value = serde_json::Value::Null;
    for _ in 0..depth {
        value = serde_json::Value::Array(vec![value]);
    }
    value
}

/// fuzz/sql_record and fuzz/redis_value: data nested deeper than serde_json
/// reads back (128 levels, the record's own object included) passed the
/// 4 KiB bound (`[[[…]]]` 200 deep is 400 bytes), so SQLite, PostgreSQL and
/// Redis stored a session that every later request read as corrupt (a 503
/// until it expired).
#[test]
fn data_nested_deeper_than_the_stores_read_back_is_refused() {
    let mut data = Data::new();
    data.insert("deep".into(), nested(200));
    let deep = SessionRecord { data, ..record() };
    assert!(deep.validate().is_err());

    let mut data = Data::new();
    data.insert("ok".into(), nested(60));
    let shallow = SessionRecord { data, ..record() };
    assert_eq!(shallow.validate(), Ok(()));
}

/// The same through the public API: a handler's `insert` of such a value is
/// refused when it is made, not when the store reads it back.
#[tokio::test]
async fn inserting_data_nested_too_deep_is_an_invalid_data_error() {
    use tower_hmac_session::{KeyRing, MemoryStore, SessionConfig, SessionError, SessionManager};
    let keys = KeyRing::builder().key(1, [7u8; 32]).build().unwrap();
    let sessions = SessionManager::new(MemoryStore::new(), keys, SessionConfig::default());
    let mut data = Data::new();
    data.insert("deep".into(), nested(200));
    let error = sessions.create_session("user-1", data).await.unwrap_err();
    assert!(matches!(error, SessionError::InvalidData(_)), "{error:?}");
}

/// A float whose shortest decimal form serde_json's default (fast, not
/// exact) parser reads back one unit in the last place off.
const FLOAT: f64 = 2.876_336_489_185_688_8e209;

/// fuzz/sql_record and fuzz/redis_value: a float in session data came back
/// from SQLite, PostgreSQL and Redis one ULP off (the memory store kept it
/// exact), because serde_json parsed without `float_roundtrip`. Every
/// persistent store keeps data as JSON text, as here.
#[test]
fn floats_in_session_data_survive_the_stores_json_text() {
    let mut data = Data::new();
    data.insert("x".into(), serde_json::Value::from(FLOAT));
    let text = serde_json::to_string(&data).unwrap();
    let back: Data = serde_json::from_str(&text).unwrap();
    assert_eq!(back, data, "{text}");
    assert_eq!(back["x"].as_f64(), Some(FLOAT));
}

/// The same through the SQL and Redis record codecs themselves.
#[cfg(all(feature = "fuzzing", feature = "redis"))]
#[test]
fn floats_in_session_data_round_trip_through_the_record_codecs() {
    use tower_hmac_session::__fuzz::{redis_decode, redis_encode, sql_decode, sql_encode};
    let mut data = Data::new();
    data.insert("x".into(), serde_json::Value::from(FLOAT));
    let record = SessionRecord { data, ..record() };
    assert_eq!(sql_decode(sql_encode(&record).unwrap()).unwrap(), record);
    assert_eq!(redis_decode(&redis_encode(&record)).unwrap(), record);
}
