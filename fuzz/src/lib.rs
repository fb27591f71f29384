//! Shared input generators for the fuzz targets: arbitrary session records
//! and JSON values, built from the fuzzer's bytes with `arbitrary`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use arbitrary::Arbitrary;
use serde_json::Value;
use time::OffsetDateTime;
use tower_hmac_session::{
    Credential, Data, KeyVersion, LookupKey, PreviousCredential, Revocation, RevocationReason,
    Revoked, SessionId, SessionRecord,
};

/// 2030-01-01T00:00:00Z in microseconds: the fuzzers' usual "now".
pub const T0_MICROS: i64 = 1_893_456_000_000_000;
/// The smallest and largest instants `time` represents (years ±9999), in µs.
pub const MIN_MICROS: i64 = -377_705_116_800_000_000;
pub const MAX_MICROS: i64 = 253_402_300_799_999_999;

/// An instant: mostly near [`T0_MICROS`], sometimes at or past the edges
/// of what can be represented.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum ArbTime {
    /// Seconds from T0, plus sub-second microseconds.
    Near(i32, u32),
    /// Any microsecond count (may be out of range).
    Micros(i64),
    Min,
    Max,
    /// Seconds before the largest instant.
    BeforeMax(u32),
}

impl ArbTime {
    /// Microseconds since the epoch, possibly out of range.
    pub fn micros(self) -> i64 {
        match self {
            Self::Near(secs, us) => {
                T0_MICROS + i64::from(secs) * 1_000_000 + i64::from(us % 1_000_000)
            }
            Self::Micros(m) => m,
            Self::Min => MIN_MICROS,
            Self::Max => MAX_MICROS,
            Self::BeforeMax(secs) => MAX_MICROS - i64::from(secs) * 1_000_000,
        }
    }

    /// An instant in range (clamped), on a whole microsecond.
    pub fn instant(self) -> OffsetDateTime {
        let micros = self.micros().clamp(MIN_MICROS, MAX_MICROS);
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1_000)
            .expect("clamped into range")
    }
}

/// A JSON value of bounded shape; `Nested` wraps a value in many arrays or
/// objects at once, so deep nesting is reachable from a few bytes. At most
/// 300 levels in all: serde_json's own recursive `to_value`, `Clone` and
/// `Drop` of an application's value overflow the stack some way beyond
/// that under ASan's large frames, before the crate sees the value; values
/// parsed by serde_json are at most 128 levels deep anyway.
#[derive(Arbitrary, Debug, Clone)]
pub enum ArbJson {
    Null,
    Bool(bool),
    I64(i64),
    U64(u64),
    F64(f64),
    Str(String),
    Array(Vec<ArbJson>),
    Object(Vec<(String, ArbJson)>),
    Nested(u16, bool, Box<ArbJson>),
}

/// The deepest value built, in all: `Nested` inside `Nested` multiplies.
const MAX_DEPTH: usize = 300;

impl ArbJson {
    pub fn value(&self) -> Value {
        self.value_at(0)
    }

    fn value_at(&self, depth: usize) -> Value {
        if depth >= MAX_DEPTH {
            return Value::Null;
        }
        match self {
            Self::Null => Value::Null,
            Self::Bool(b) => Value::Bool(*b),
            Self::I64(n) => Value::from(*n),
            Self::U64(n) => Value::from(*n),
            Self::F64(f) => serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number),
            Self::Str(s) => Value::String(s.clone()),
            Self::Array(items) => {
                Value::Array(items.iter().map(|v| v.value_at(depth + 1)).collect())
            }
            Self::Object(entries) => Value::Object(
                entries
                    .iter()
                    .map(|(k, v)| (k.clone(), v.value_at(depth + 1)))
                    .collect(),
            ),
            Self::Nested(levels, array, inner) => {
                let levels = usize::from(*levels % 256).min(MAX_DEPTH - depth);
                let mut value = inner.value_at(depth + levels);
                for _ in 0..levels {
                    value = if *array {
                        Value::Array(vec![value])
                    } else {
                        let mut map = serde_json::Map::new();
                        map.insert("a".into(), value);
                        Value::Object(map)
                    };
                }
                value
            }
        }
    }
}

/// Session data: a JSON object.
pub fn data_of(entries: &[(String, ArbJson)]) -> Data {
    entries
        .iter()
        .map(|(k, v)| (k.clone(), v.value()))
        .collect()
}

#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum ArbIp {
    V4([u8; 4]),
    V6([u8; 16]),
}

impl ArbIp {
    pub fn ip(self) -> IpAddr {
        match self {
            Self::V4(b) => IpAddr::V4(Ipv4Addr::from(b)),
            Self::V6(b) => IpAddr::V6(Ipv6Addr::from(b)),
        }
    }
}

/// A session record, every field chosen by the fuzzer. It need not be
/// valid: callers check [`SessionRecord::validate`] where they need one.
#[derive(Arbitrary, Debug, Clone)]
pub struct ArbRecord {
    pub id: [u8; 16],
    pub generation: u64,
    pub subject: Option<String>,
    pub created_at: ArbTime,
    pub authenticated_at: Option<ArbTime>,
    pub last_seen_at: ArbTime,
    pub expires_at: ArbTime,
    pub absolute_expires_at: ArbTime,
    pub idle_timeout_secs: u64,
    pub persistent: bool,
    pub access_expires_at: ArbTime,
    pub current: ([u8; 2], u32),
    pub previous: Option<([u8; 2], u32, ArbTime, Option<ArbTime>)>,
    pub superseded: Option<([u8; 2], u32)>,
    pub revoked: Option<(ArbTime, u8, Option<String>)>,
    pub user_agent: Option<String>,
    pub client_ip: Option<ArbIp>,
    pub data: Vec<(String, ArbJson)>,
}

/// A 32-byte lookup key from two seed bytes (so that slots can collide).
pub fn key_of(seed: [u8; 2]) -> LookupKey {
    let mut bytes = [seed[0]; 32];
    bytes[31] = seed[1];
    LookupKey::from_bytes(bytes)
}

impl ArbRecord {
    pub fn record(&self) -> SessionRecord {
        let credential = |(seed, version): ([u8; 2], u32)| Credential {
            lookup_key: key_of(seed),
            key_version: KeyVersion(version),
        };
        SessionRecord {
            id: SessionId::from_bytes(self.id),
            generation: self.generation,
            subject: self.subject.clone(),
            created_at: self.created_at.instant(),
            authenticated_at: self.authenticated_at.map(ArbTime::instant),
            last_seen_at: self.last_seen_at.instant(),
            expires_at: self.expires_at.instant(),
            absolute_expires_at: self.absolute_expires_at.instant(),
            idle_timeout: Duration::from_secs(self.idle_timeout_secs),
            persistent: self.persistent,
            access_expires_at: self.access_expires_at.instant(),
            current: credential(self.current),
            previous: self
                .previous
                .map(
                    |(seed, version, rotated_at, valid_until)| PreviousCredential {
                        credential: credential((seed, version)),
                        rotated_at: rotated_at.instant(),
                        valid_until: valid_until.map(ArbTime::instant),
                    },
                ),
            superseded: self.superseded.map(credential),
            revoked: self.revoked.as_ref().map(|(at, reason, actor)| Revoked {
                at: at.instant(),
                revocation: Revocation {
                    reason: RevocationReason::ALL
                        [usize::from(*reason) % RevocationReason::ALL.len()],
                    actor: actor.clone(),
                },
            }),
            user_agent: self.user_agent.clone(),
            client_ip: self.client_ip.map(ArbIp::ip),
            data: data_of(&self.data),
        }
    }
}
