//! Strict decoding of stored records, shared by the persistent backends.
//!
//! A backend reads its row, hash or document into a [`RawRecord`] of plain
//! values; [`RawRecord::decode`] turns it into a [`SessionRecord`] or a
//! [`StoreError::Corrupt`]: never a panic, never a different session.
//! [`CandidateKeys`] turns the lookup keys a backend found back into one
//! [`SessionMatch`] per matching candidate.

// A backend uses only what it needs (Redis keeps its own encoding).
#![cfg_attr(not(any(feature = "sqlite", feature = "postgres")), allow(dead_code))]

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;

use crate::keys::{Candidate, KeyVersion, LookupKey};
use crate::record::{
    Credential, Data, PreviousCredential, Revocation, Revoked, SessionId, SessionMatch,
    SessionRecord, Slot,
};
use crate::store::StoreError;

/// A stored record as plain values, before validation. Timestamps are
/// microseconds since the Unix epoch ([`to_micros`]); `None` where the
/// backend holds nothing. Its `Debug` shows the id only: it holds lookup
/// keys.
#[derive(Default)]
pub(crate) struct RawRecord {
    pub(crate) id: Vec<u8>,
    pub(crate) generation: i64,
    pub(crate) subject: Option<String>,
    pub(crate) created_at: Option<i64>,
    pub(crate) authenticated_at: Option<i64>,
    pub(crate) last_seen_at: Option<i64>,
    pub(crate) expires_at: Option<i64>,
    pub(crate) absolute_expires_at: Option<i64>,
    pub(crate) idle_timeout_secs: i64,
    /// `0` or `1`.
    pub(crate) persistent: i64,
    pub(crate) access_expires_at: Option<i64>,
    pub(crate) current_lookup_key: Vec<u8>,
    pub(crate) current_key_version: i64,
    pub(crate) previous_lookup_key: Option<Vec<u8>>,
    pub(crate) previous_key_version: Option<i64>,
    pub(crate) previous_rotated_at: Option<i64>,
    pub(crate) previous_valid_until: Option<i64>,
    pub(crate) superseded_lookup_key: Option<Vec<u8>>,
    pub(crate) superseded_key_version: Option<i64>,
    pub(crate) revoked_at: Option<i64>,
    pub(crate) revoked_reason: Option<String>,
    pub(crate) revoked_actor: Option<String>,
    pub(crate) user_agent: Option<String>,
    /// The canonical text of an [`IpAddr`] (`Display`).
    pub(crate) client_ip: Option<String>,
    /// A JSON object.
    pub(crate) data: String,
}

impl std::fmt::Debug for RawRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawRecord")
            .field("id", &hex::encode(&self.id))
            .finish_non_exhaustive()
    }
}

impl RawRecord {
    /// The plain values of `record`, as backends write them.
    ///
    /// # Errors
    ///
    /// [`StoreError::Invalid`] if the generation does not fit a signed
    /// 64-bit column.
    #[cfg_attr(not(any(feature = "sqlite", feature = "fuzzing")), allow(dead_code))]
    pub(crate) fn encode(record: &SessionRecord) -> Result<Self, StoreError> {
        Self::encode_with(record, true)
    }

    /// As [`encode`](Self::encode), for PostgreSQL, which keeps the record
    /// whole in its `record` column and beside it only the columns its
    /// statements select by: the fields no column of its holds (data, user
    /// agent, client address) are left empty, so a write does not
    /// serialize the data a second time.
    #[cfg(feature = "postgres")]
    pub(crate) fn encode_indexed(record: &SessionRecord) -> Result<Self, StoreError> {
        Self::encode_with(record, false)
    }

    fn encode_with(record: &SessionRecord, whole: bool) -> Result<Self, StoreError> {
        let generation = i64::try_from(record.generation)
            .map_err(|_| StoreError::Invalid("the generation is out of range"))?;
        let idle_timeout_secs = i64::try_from(record.idle_timeout.as_secs())
            .map_err(|_| StoreError::Invalid("the idle timeout is out of range"))?;
        let previous = record.previous.as_ref();
        let revoked = record.revoked.as_ref();
        Ok(Self {
            id: record.id.as_bytes().to_vec(),
            generation,
            subject: record.subject.clone(),
            created_at: Some(to_micros(record.created_at)),
            authenticated_at: record.authenticated_at.map(to_micros),
            last_seen_at: Some(to_micros(record.last_seen_at)),
            expires_at: Some(to_micros(record.expires_at)),
            absolute_expires_at: Some(to_micros(record.absolute_expires_at)),
            idle_timeout_secs,
            persistent: i64::from(record.persistent),
            access_expires_at: Some(to_micros(record.access_expires_at)),
            current_lookup_key: record.current.lookup_key.as_bytes().to_vec(),
            current_key_version: i64::from(record.current.key_version.0),
            previous_lookup_key: previous.map(|p| p.credential.lookup_key.as_bytes().to_vec()),
            previous_key_version: previous.map(|p| i64::from(p.credential.key_version.0)),
            previous_rotated_at: previous.map(|p| to_micros(p.rotated_at)),
            previous_valid_until: previous.and_then(|p| p.valid_until.map(to_micros)),
            superseded_lookup_key: record.superseded.map(|s| s.lookup_key.as_bytes().to_vec()),
            superseded_key_version: record.superseded.map(|s| i64::from(s.key_version.0)),
            revoked_at: revoked.map(|r| to_micros(r.at)),
            revoked_reason: revoked.map(|r| r.revocation.reason.as_str().to_owned()),
            revoked_actor: revoked.and_then(|r| r.revocation.actor.clone()),
            user_agent: record.user_agent.clone().filter(|_| whole),
            client_ip: record.client_ip.filter(|_| whole).map(|ip| ip.to_string()),
            data: if whole {
                data_json(&record.data)
            } else {
                String::new()
            },
        })
    }

    /// Validates every field and invariant.
    pub(crate) fn decode(self) -> Result<SessionRecord, StoreError> {
        let id = session_id(&self.id)?;
        let corrupt = |reason: &str| StoreError::corrupt(Some(id), reason);
        let required = |t: Option<i64>, name: &str| match t {
            Some(micros) => at(id, micros, name),
            None => Err(corrupt(&format!("`{name}` is missing"))),
        };
        let optional =
            |t: Option<i64>, name: &str| t.map(|micros| at(id, micros, name)).transpose();
        let previous = match (
            self.previous_lookup_key,
            self.previous_key_version,
            self.previous_rotated_at,
        ) {
            (None, None, None) if self.previous_valid_until.is_none() => None,
            (Some(key), Some(version), Some(rotated_at)) => Some(PreviousCredential {
                credential: credential(id, &key, version)?,
                rotated_at: at(id, rotated_at, "previous_rotated_at")?,
                valid_until: optional(self.previous_valid_until, "previous_valid_until")?,
            }),
            _ => return Err(corrupt("the previous credential is partly missing")),
        };
        let superseded = match (self.superseded_lookup_key, self.superseded_key_version) {
            (None, None) => None,
            (Some(key), Some(version)) => Some(credential(id, &key, version)?),
            _ => return Err(corrupt("the superseded credential is partly missing")),
        };
        let revoked = match (self.revoked_at, self.revoked_reason, self.revoked_actor) {
            (None, None, None) => None,
            (Some(revoked_at), Some(reason), actor) => {
                let revocation = Revocation {
                    reason: reason
                        .parse()
                        .map_err(|_| corrupt("unknown revocation reason"))?,
                    actor,
                };
                revocation.validate().map_err(corrupt)?;
                Some(Revoked {
                    at: at(id, revoked_at, "revoked_at")?,
                    revocation,
                })
            }
            _ => return Err(corrupt("the revocation is partly missing")),
        };
        let generation =
            u64::try_from(self.generation).map_err(|_| corrupt("the generation is negative"))?;
        let idle_timeout = u64::try_from(self.idle_timeout_secs)
            .map(Duration::from_secs)
            .map_err(|_| corrupt("the idle timeout is negative"))?;
        let persistent = match self.persistent {
            0 => false,
            1 => true,
            _ => return Err(corrupt("`persistent` is neither 0 nor 1")),
        };
        let client_ip = match self.client_ip {
            None => None,
            Some(text) => match text.parse::<IpAddr>() {
                // Canonical text only, so one address has one spelling.
                Ok(ip) if ip.to_string() == text => Some(ip),
                _ => return Err(corrupt("the client address is not a canonical IP address")),
            },
        };
        let data: Data = serde_json::from_str(&self.data)
            .map_err(|_| corrupt("the data is not a JSON object"))?;
        let record = SessionRecord {
            id,
            generation,
            subject: self.subject,
            created_at: required(self.created_at, "created_at")?,
            authenticated_at: optional(self.authenticated_at, "authenticated_at")?,
            last_seen_at: required(self.last_seen_at, "last_seen_at")?,
            expires_at: required(self.expires_at, "expires_at")?,
            absolute_expires_at: required(self.absolute_expires_at, "absolute_expires_at")?,
            idle_timeout,
            persistent,
            access_expires_at: required(self.access_expires_at, "access_expires_at")?,
            current: credential(id, &self.current_lookup_key, self.current_key_version)?,
            previous,
            superseded,
            revoked,
            user_agent: self.user_agent,
            client_ip,
            data,
        };
        record.validate().map_err(corrupt)?;
        Ok(record)
    }
}

/// The id a backend read, or corruption (without an id: it is the id that
/// is damaged).
pub(crate) fn session_id(bytes: &[u8]) -> Result<SessionId, StoreError> {
    <[u8; 16]>::try_from(bytes)
        .map(SessionId::from_bytes)
        .map_err(|_| StoreError::corrupt(None, "the id is not 16 bytes"))
}

fn at(id: SessionId, micros: i64, name: &str) -> Result<OffsetDateTime, StoreError> {
    from_micros(micros)
        .ok_or_else(|| StoreError::corrupt(Some(id), format!("`{name}` is out of range")))
}

fn credential(id: SessionId, key: &[u8], version: i64) -> Result<Credential, StoreError> {
    Ok(Credential {
        lookup_key: LookupKey::from_slice(key)
            .ok_or_else(|| StoreError::corrupt(Some(id), "a lookup key is not 32 bytes"))?,
        key_version: u32::try_from(version)
            .map(KeyVersion)
            .map_err(|_| StoreError::corrupt(Some(id), "a key version is out of range"))?,
    })
}

/// The candidates of one lookup, by lookup key: a backend looks up the
/// distinct keys and hands back what it found, slot by slot.
///
/// A lookup has at most [`MAX_COOKIE_VALUES`](crate::keys::MAX_COOKIE_VALUES)
/// × [`MAX_KEY_VERSIONS`](crate::keys::MAX_KEY_VERSIONS) candidates, and
/// usually one: scanning them costs less than hashing 32-byte keys into a
/// map, and allocates only the list of distinct keys.
#[derive(Debug)]
pub(crate) struct CandidateKeys<'a> {
    candidates: &'a [Candidate],
    /// Each distinct lookup key, in the order first given.
    distinct: Vec<LookupKey>,
}

impl<'a> CandidateKeys<'a> {
    /// Collects the distinct lookup keys of `candidates`, in the order first
    /// seen (two cookie values holding the same secret give one key, looked
    /// up once and reported for both).
    pub(crate) fn new(candidates: &'a [Candidate]) -> Self {
        let mut distinct: Vec<LookupKey> = Vec::with_capacity(candidates.len());
        for candidate in candidates {
            if !distinct.contains(&candidate.lookup_key) {
                distinct.push(candidate.lookup_key);
            }
        }
        Self {
            candidates,
            distinct,
        }
    }

    /// The distinct lookup keys to look up.
    pub(crate) fn distinct(&self) -> &[LookupKey] {
        &self.distinct
    }

    /// One match per candidate whose lookup key and key version are those of
    /// `record`'s credential in `slot` (a key found under another version
    /// does not match), in the candidates' order. Appended to `out`.
    pub(crate) fn matches(
        &self,
        record: &Arc<SessionRecord>,
        slot: Slot,
        out: &mut Vec<SessionMatch>,
    ) {
        let Some(credential) = record.credential(slot) else {
            return;
        };
        for candidate in self.candidates.iter().filter(|c| {
            c.lookup_key == credential.lookup_key && c.key_version == credential.key_version
        }) {
            out.push(SessionMatch {
                record: Arc::clone(record),
                slot,
                key_version: candidate.key_version,
                value_index: candidate.value_index,
            });
        }
    }
}

pub(crate) use super::{from_micros, to_micros};

/// The JSON text of a data map.
pub(crate) fn data_json(data: &Data) -> String {
    // Serializing a map of JSON values cannot fail.
    serde_json::to_string(data).unwrap_or_else(|_| "{}".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: i64 = 1_900_000_000_000_000;

    fn raw() -> RawRecord {
        RawRecord {
            id: vec![1; 16],
            generation: 3,
            subject: Some("alice".into()),
            created_at: Some(T),
            authenticated_at: Some(T),
            last_seen_at: Some(T),
            expires_at: Some(T + 10),
            absolute_expires_at: Some(T + 20),
            idle_timeout_secs: 3600,
            persistent: 1,
            access_expires_at: Some(T),
            current_lookup_key: vec![2; 32],
            current_key_version: 1,
            data: "{}".into(),
            ..RawRecord::default()
        }
    }

    fn full() -> RawRecord {
        RawRecord {
            previous_lookup_key: Some(vec![3; 32]),
            previous_key_version: Some(2),
            previous_rotated_at: Some(T),
            previous_valid_until: Some(T + 5),
            superseded_lookup_key: Some(vec![4; 32]),
            superseded_key_version: Some(1),
            revoked_at: Some(T + 1),
            revoked_reason: Some("admin".into()),
            revoked_actor: Some("ops".into()),
            user_agent: Some("curl/8".into()),
            client_ip: Some("2001:db8::1".into()),
            data: r#"{"cart":[1,2]}"#.into(),
            ..raw()
        }
    }

    /// PostgreSQL's writes bind the same values from the indexed encoding
    /// as from the whole one: nothing it leaves out has a column there.
    #[cfg(feature = "postgres")]
    #[test]
    fn postgres_binds_the_same_values_from_the_indexed_encoding() {
        use crate::store::sql::{Dialect, insert_values, mutable_values};
        let record = full().decode().unwrap();
        let whole = RawRecord::encode(&record).unwrap();
        let indexed = RawRecord::encode_indexed(&record).unwrap();
        assert!(indexed.data.is_empty() && indexed.user_agent.is_none());
        assert!(indexed.client_ip.is_none() && whole.client_ip.is_some());
        let pg = Dialect::Postgres;
        assert!(insert_values(pg, &whole, b"r") == insert_values(pg, &indexed, b"r"));
        assert!(mutable_values(pg, &whole, b"r") == mutable_values(pg, &indexed, b"r"));
        // SQLite has a column for each, so there they differ.
        let sqlite = Dialect::Sqlite;
        assert!(insert_values(sqlite, &whole, b"") != insert_values(sqlite, &indexed, b""));
    }

    #[test]
    fn a_valid_raw_record_decodes_and_encodes_back() {
        let record = raw().decode().unwrap();
        assert_eq!(record.subject.as_deref(), Some("alice"));
        assert_eq!(record.current.key_version, KeyVersion(1));
        assert_eq!(record.generation, 3);
        assert!(record.persistent);

        let record = full().decode().unwrap();
        let encoded = RawRecord::encode(&record).unwrap();
        assert_eq!(encoded.decode().unwrap(), record);
        let previous = record.previous.unwrap();
        assert_eq!(previous.valid_until, from_micros(T + 5));
        assert_eq!(record.superseded.unwrap().lookup_key.as_bytes(), &[4; 32]);
        assert_eq!(record.client_ip, Some("2001:db8::1".parse().unwrap()));
    }

    #[test]
    fn an_unconfirmed_previous_and_a_session_before_login_decode() {
        let record = RawRecord {
            subject: None,
            authenticated_at: None,
            previous_lookup_key: Some(vec![3; 32]),
            previous_key_version: Some(1),
            previous_rotated_at: Some(T),
            ..raw()
        }
        .decode()
        .unwrap();
        assert_eq!(record.subject, None);
        assert_eq!(record.previous.unwrap().valid_until, None);
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
                    subject: Some(String::new()),
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
                "negative generation",
                RawRecord {
                    generation: -1,
                    ..raw()
                },
            ),
            (
                "zero idle timeout",
                RawRecord {
                    idle_timeout_secs: 0,
                    ..raw()
                },
            ),
            (
                "negative idle timeout",
                RawRecord {
                    idle_timeout_secs: -1,
                    ..raw()
                },
            ),
            (
                "persistent 2",
                RawRecord {
                    persistent: 2,
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
                "previous without rotation time",
                RawRecord {
                    previous_rotated_at: None,
                    ..full()
                },
            ),
            (
                "grace without previous",
                RawRecord {
                    previous_valid_until: Some(T),
                    ..raw()
                },
            ),
            (
                "half a superseded",
                RawRecord {
                    superseded_key_version: None,
                    ..full()
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
                    revoked_reason: Some("x".into()),
                    ..full()
                },
            ),
            (
                "array data",
                RawRecord {
                    data: "[1]".into(),
                    ..raw()
                },
            ),
            (
                "broken data",
                RawRecord {
                    data: "{".into(),
                    ..raw()
                },
            ),
            (
                "NUL in data",
                RawRecord {
                    data: r#"{"a":"\u0000"}"#.into(),
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
            (
                "timestamp out of range",
                RawRecord {
                    created_at: Some(i64::MAX),
                    ..raw()
                },
            ),
            (
                "idle past absolute",
                RawRecord {
                    expires_at: Some(T + 30),
                    ..raw()
                },
            ),
            (
                "authenticated without subject",
                RawRecord {
                    subject: None,
                    ..raw()
                },
            ),
            (
                "not an address",
                RawRecord {
                    client_ip: Some("localhost".into()),
                    ..raw()
                },
            ),
            (
                "uncanonical address",
                RawRecord {
                    client_ip: Some("2001:DB8:0::1".into()),
                    ..raw()
                },
            ),
            (
                "one key in two slots",
                RawRecord {
                    superseded_lookup_key: Some(vec![2; 32]),
                    ..full()
                },
            ),
            (
                "empty actor",
                RawRecord {
                    revoked_actor: Some(String::new()),
                    ..full()
                },
            ),
            (
                "control in actor",
                RawRecord {
                    revoked_actor: Some("ops\u{1b}[2J".into()),
                    ..full()
                },
            ),
            (
                "long actor",
                RawRecord {
                    revoked_actor: Some("a".repeat(257)),
                    ..full()
                },
            ),
            (
                "control in user agent",
                RawRecord {
                    user_agent: Some("a\nb".into()),
                    ..raw()
                },
            ),
        ];
        for (what, record) in cases {
            match record.decode() {
                Err(StoreError::Corrupt { id, reason }) => {
                    if what != "short id" {
                        assert_eq!(id, Some(SessionId::from_bytes([1; 16])), "{what}");
                    }
                    assert!(!reason.is_empty());
                }
                other => panic!("{what}: {other:?}"),
            }
        }
    }

    #[test]
    fn matches_follow_the_candidates_key_version_and_value() {
        let record = Arc::new(full().decode().unwrap());
        let candidate = |index: u8, version: u32, key: u8| Candidate {
            key_version: KeyVersion(version),
            lookup_key: LookupKey::from_bytes([key; 32]),
            value_index: index,
        };
        let candidates = [
            candidate(0, 1, 2), // current
            candidate(0, 2, 2), // current's key, wrong version
            candidate(1, 2, 3), // previous
            candidate(2, 1, 2), // a second copy of the current secret
            candidate(3, 1, 9), // unknown
        ];
        let keys = CandidateKeys::new(&candidates);
        assert_eq!(keys.distinct().len(), 3);
        let mut found = Vec::new();
        for slot in [Slot::Current, Slot::Previous, Slot::Superseded] {
            keys.matches(&record, slot, &mut found);
        }
        let summary: Vec<_> = found
            .iter()
            .map(|m| (m.slot, m.key_version.0, m.value_index))
            .collect();
        assert_eq!(
            summary,
            [
                (Slot::Current, 1, 0),
                (Slot::Current, 1, 2),
                (Slot::Previous, 2, 1)
            ]
        );
    }

    #[test]
    fn debug_shows_no_lookup_key() {
        let text = format!("{:?}", full());
        assert_eq!(
            text,
            format!("RawRecord {{ id: \"{}\", .. }}", "01".repeat(16))
        );
    }

    #[test]
    fn micros_round_trip_and_floor() {
        let t = from_micros(-1).unwrap();
        assert_eq!(to_micros(t), -1);
        assert_eq!(
            to_micros(from_micros(1_893_456_000_123_456).unwrap()),
            1_893_456_000_123_456
        );
        let t = OffsetDateTime::from_unix_timestamp_nanos(-1).unwrap();
        assert_eq!(to_micros(t), -1);
        assert!(from_micros(i64::MAX).is_none());
        assert!(from_micros(i64::MIN).is_none());
        // The 64-bit arithmetic agrees with the plain 128-bit definition,
        // at the edges of the representable years too.
        let max = OffsetDateTime::new_utc(time::Date::MAX, time::Time::MAX);
        let min = OffsetDateTime::new_utc(time::Date::MIN, time::Time::MIDNIGHT);
        for t in [
            min,
            max,
            from_micros(-1_500_001).unwrap(),
            OffsetDateTime::UNIX_EPOCH,
        ] {
            let micros = (t.unix_timestamp_nanos().div_euclid(1_000)) as i64;
            assert_eq!(to_micros(t), micros, "{t}");
            let back = OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1_000).ok();
            assert_eq!(from_micros(micros), back, "{t}");
            assert_eq!(from_micros(micros + 1).is_some(), t != max, "{t}");
        }
        for micros in [-999_999, -1_000_000, 999_999, 1_000_000, 123] {
            let back = OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1_000).ok();
            assert_eq!(from_micros(micros), back, "{micros}");
        }
    }
}
