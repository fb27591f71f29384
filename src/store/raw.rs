//! Strict decoding of stored records, shared by the persistent backends.
//!
//! A backend reads its row, hash or document into a [`RawRecord`] of plain
//! values; [`RawRecord::decode`] turns it into a [`SessionRecord`] or a
//! [`StoreError::Corrupt`]: never a panic, never a different session.

use time::OffsetDateTime;

use crate::keys::{Candidate, KeyVersion, LookupKey};
use crate::record::{
    Attributes, Credential, PreviousCredential, Revocation, Revoked, SessionId, SessionRecord,
    Slot, validate_subject,
};
use crate::store::StoreError;

/// A stored record as plain values, before validation.
#[derive(Debug, Default)]
pub(crate) struct RawRecord {
    pub(crate) id: Vec<u8>,
    pub(crate) subject: String,
    pub(crate) created_at: Option<OffsetDateTime>,
    pub(crate) last_seen_at: Option<OffsetDateTime>,
    pub(crate) expires_at: Option<OffsetDateTime>,
    pub(crate) absolute_expires_at: Option<OffsetDateTime>,
    pub(crate) access_expires_at: Option<OffsetDateTime>,
    pub(crate) current_lookup_key: Vec<u8>,
    pub(crate) current_key_version: i64,
    pub(crate) previous_lookup_key: Option<Vec<u8>>,
    pub(crate) previous_key_version: Option<i64>,
    pub(crate) previous_valid_until: Option<OffsetDateTime>,
    pub(crate) revoked_at: Option<OffsetDateTime>,
    pub(crate) revoked_reason: Option<String>,
    pub(crate) revoked_actor: Option<String>,
    pub(crate) attributes: String,
}

fn key_version(id: SessionId, value: i64) -> Result<KeyVersion, StoreError> {
    u32::try_from(value)
        .map(KeyVersion)
        .map_err(|_| StoreError::corrupt(Some(id), "a key version is out of range"))
}

fn lookup_key(id: SessionId, bytes: &[u8]) -> Result<LookupKey, StoreError> {
    LookupKey::from_slice(bytes)
        .ok_or_else(|| StoreError::corrupt(Some(id), "a lookup key is not 32 bytes"))
}

impl RawRecord {
    /// Validates every field and invariant.
    pub(crate) fn decode(self) -> Result<SessionRecord, StoreError> {
        let id = <[u8; 16]>::try_from(self.id.as_slice())
            .map(SessionId::from_bytes)
            .map_err(|_| StoreError::corrupt(None, "the id is not 16 bytes"))?;
        let corrupt = |reason: &str| StoreError::corrupt(Some(id), reason);
        let required = |t: Option<OffsetDateTime>, name: &str| {
            t.ok_or_else(|| corrupt(&format!("`{name}` is missing")))
        };
        validate_subject(&self.subject).map_err(corrupt)?;
        let previous = match (
            self.previous_lookup_key,
            self.previous_key_version,
            self.previous_valid_until,
        ) {
            (None, None, None) => None,
            (Some(key), Some(version), Some(valid_until)) => Some(PreviousCredential {
                credential: Credential {
                    lookup_key: lookup_key(id, &key)?,
                    key_version: key_version(id, version)?,
                },
                valid_until,
            }),
            _ => return Err(corrupt("the previous credential is partly missing")),
        };
        let revoked = match (self.revoked_at, self.revoked_reason, self.revoked_actor) {
            (None, None, None) => None,
            (Some(at), Some(reason), actor) => Some(Revoked {
                at,
                revocation: Revocation {
                    reason: reason
                        .parse()
                        .map_err(|_| corrupt("unknown revocation reason"))?,
                    actor,
                },
            }),
            _ => return Err(corrupt("the revocation is partly missing")),
        };
        let attributes: Attributes = serde_json::from_str(&self.attributes)
            .map_err(|_| corrupt("the attributes are not a JSON object"))?;
        let record = SessionRecord {
            id,
            subject: self.subject,
            created_at: required(self.created_at, "created_at")?,
            last_seen_at: required(self.last_seen_at, "last_seen_at")?,
            expires_at: required(self.expires_at, "expires_at")?,
            absolute_expires_at: required(self.absolute_expires_at, "absolute_expires_at")?,
            access_expires_at: required(self.access_expires_at, "access_expires_at")?,
            current: Credential {
                lookup_key: lookup_key(id, &self.current_lookup_key)?,
                key_version: key_version(id, self.current_key_version)?,
            },
            previous,
            revoked,
            attributes,
        };
        record.validate().map_err(corrupt)?;
        Ok(record)
    }
}

/// Which slot of `record` holds one of `candidates` under the candidate's
/// key version, and that version. A lookup key found under another version
/// does not match.
pub(crate) fn match_candidate(
    record: &SessionRecord,
    candidates: &[Candidate],
) -> Option<(Slot, KeyVersion)> {
    candidates.iter().find_map(|c| {
        let wanted = Some(Credential {
            lookup_key: c.lookup_key,
            key_version: c.key_version,
        });
        [Slot::Current, Slot::Previous]
            .into_iter()
            .find(|&slot| record.credential(slot) == wanted)
            .map(|slot| (slot, c.key_version))
    })
}

#[cfg(any(feature = "sqlite", feature = "redis"))]
/// Microseconds since the Unix epoch: how SQLite and Redis keep timestamps
/// (one canonical integer per instant; sub-microsecond digits are dropped).
pub(crate) fn to_micros(t: OffsetDateTime) -> i64 {
    // Every `OffsetDateTime` (years ±9999) fits: ±3.2e17 µs < i64::MAX.
    (t.unix_timestamp_nanos().div_euclid(1_000)) as i64
}

#[cfg(any(feature = "sqlite", feature = "redis"))]
/// The inverse of [`to_micros`]; `None` outside the representable years.
pub(crate) fn from_micros(micros: i64) -> Option<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1_000).ok()
}

/// The JSON text of an attribute map.
pub(crate) fn attributes_json(attributes: &Attributes) -> String {
    // Serializing a map of JSON values cannot fail.
    serde_json::to_string(attributes).unwrap_or_else(|_| "{}".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw() -> RawRecord {
        let t = OffsetDateTime::from_unix_timestamp(1_900_000_000).unwrap();
        RawRecord {
            id: vec![1; 16],
            subject: "alice".into(),
            created_at: Some(t),
            last_seen_at: Some(t),
            expires_at: Some(t),
            absolute_expires_at: Some(t),
            access_expires_at: Some(t),
            current_lookup_key: vec![2; 32],
            current_key_version: 1,
            attributes: "{}".into(),
            ..RawRecord::default()
        }
    }

    #[test]
    fn a_valid_raw_record_decodes() {
        let record = raw().decode().unwrap();
        assert_eq!(record.subject, "alice");
        assert_eq!(record.current.key_version, KeyVersion(1));
    }

    #[test]
    fn every_kind_of_damage_is_corruption() {
        let cases: Vec<(&str, RawRecord)> = vec![
            (
                "short id",
                RawRecord {
                    id: vec![1; 3],
                    ..raw()
                },
            ),
            (
                "empty subject",
                RawRecord {
                    subject: String::new(),
                    ..raw()
                },
            ),
            (
                "short lookup key",
                RawRecord {
                    current_lookup_key: vec![1; 31],
                    ..raw()
                },
            ),
            (
                "negative version",
                RawRecord {
                    current_key_version: -1,
                    ..raw()
                },
            ),
            (
                "huge version",
                RawRecord {
                    current_key_version: 1 << 40,
                    ..raw()
                },
            ),
            (
                "half a previous",
                RawRecord {
                    previous_key_version: Some(1),
                    ..raw()
                },
            ),
            (
                "reason without time",
                RawRecord {
                    revoked_reason: Some("admin".into()),
                    ..raw()
                },
            ),
            (
                "unknown reason",
                RawRecord {
                    revoked_at: raw().created_at,
                    revoked_reason: Some("x".into()),
                    ..raw()
                },
            ),
            (
                "array attributes",
                RawRecord {
                    attributes: "[1]".into(),
                    ..raw()
                },
            ),
            (
                "broken attributes",
                RawRecord {
                    attributes: "{".into(),
                    ..raw()
                },
            ),
            (
                "missing timestamp",
                RawRecord {
                    expires_at: None,
                    ..raw()
                },
            ),
        ];
        for (what, record) in cases {
            assert!(
                matches!(record.decode(), Err(StoreError::Corrupt { .. })),
                "{what}"
            );
        }
    }

    #[test]
    #[cfg(any(feature = "sqlite", feature = "redis"))]
    fn micros_round_trip_and_floor() {
        let t = from_micros(-1).unwrap();
        assert_eq!(to_micros(t), -1);
        assert_eq!(
            to_micros(from_micros(1_893_456_000_123_456).unwrap()),
            1_893_456_000_123_456
        );
        assert!(from_micros(i64::MAX).is_none());
    }
}
