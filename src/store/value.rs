//! The one value a record is stored as: by Redis under each of its lookup
//! keys, and by PostgreSQL in the `record` column of each of its rows.
//! A header line Redis' write scripts read, then JSON that only Rust reads.
//!
//! ```text
//! ths2|<id>|<generation>|<expires_at>|<absolute_expires_at>|<revocation>|<current>|<previous>|<superseded>|<subject>
//! {"created_at":…,"last_seen_at":…,…}
//! ```
//!
//! Timestamps are decimal microseconds since the Unix epoch; the id and the
//! lookup keys lowercase hex; `-` marks an empty slot, no revocation, or no
//! subject; the revocation is `<at>,<reason>` or `<at>,<reason>,<actor hex>`;
//! the subject is hex, so no byte of it can be taken for a separator. Each
//! field is in the header or in the JSON, never in both, so the two cannot
//! disagree. Decoding accepts exactly what encoding produces (every number
//! and hex string in its one canonical spelling, no unknown field) and
//! checks the record's invariants: anything else is
//! [`StoreError::Corrupt`], never a panic and never another session.

use std::net::IpAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::keys::{KeyVersion, LookupKey};
use crate::record::{
    Credential, Data, PreviousCredential, Revocation, Revoked, SessionId, SessionRecord,
};
use crate::store::StoreError;

/// The first header field: the layout's version.
const TAG: &str = "ths2";

pub(super) use super::{from_micros, to_micros};

/// Lowercase hex, the one spelling of ids, lookup keys and subjects here.
pub(super) fn hex_of(bytes: &[u8]) -> String {
    let mut out = Vec::with_capacity(bytes.len() * 2);
    push_hex(&mut out, bytes);
    // Hex digits are ASCII.
    String::from_utf8(out).unwrap_or_default()
}

/// Appends the lowercase hex of `bytes` to `out` (a table lookup per
/// nibble: `hex::encode` collects an iterator of `char`s, several times
/// slower, and this runs for every key of every write).
fn push_hex(out: &mut Vec<u8>, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    out.reserve(bytes.len() * 2);
    for &byte in bytes {
        out.push(DIGITS[usize::from(byte >> 4)]);
        out.push(DIGITS[usize::from(byte & 0x0f)]);
    }
}

/// The previous slot, as stored in the JSON (its lookup key is in the header).
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PreviousJson {
    key_version: u32,
    rotated_at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    valid_until: Option<i64>,
}

/// What the JSON part holds when written: borrowed from the record.
///
/// The field order is part of the layout: the per-subject cap's script reads
/// `created_at` and `last_seen_at` from the start of the JSON (`created_at`
/// first, then `authenticated_at` when there is one, then `last_seen_at`).
#[derive(Serialize)]
struct BodyOut<'a> {
    created_at: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    authenticated_at: Option<i64>,
    last_seen_at: i64,
    idle_timeout: u64,
    persistent: bool,
    access_expires_at: i64,
    key_version: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    previous: Option<PreviousJson>,
    #[serde(skip_serializing_if = "Option::is_none")]
    superseded_key_version: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_agent: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_ip: Option<IpAddr>,
    #[serde(skip_serializing_if = "Data::is_empty")]
    data: &'a Data,
}

/// What the JSON part holds when read: every field of [`BodyOut`], strictly.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BodyIn {
    created_at: i64,
    #[serde(default)]
    authenticated_at: Option<i64>,
    last_seen_at: i64,
    idle_timeout: u64,
    persistent: bool,
    access_expires_at: i64,
    key_version: u32,
    #[serde(default)]
    previous: Option<PreviousJson>,
    #[serde(default)]
    superseded_key_version: Option<u32>,
    #[serde(default)]
    user_agent: Option<String>,
    #[serde(default)]
    client_ip: Option<IpAddr>,
    #[serde(default)]
    data: Data,
}

/// The header line of `record`'s stored value, newline included. Canonical:
/// the same record always has the same header, so a write script can
/// compare a stored header with the one its caller read, byte for byte.
pub(super) fn header(record: &SessionRecord) -> Vec<u8> {
    // Written in place (no string per field): it is encoded on every write.
    let mut out = Vec::with_capacity(320);
    let mut int = itoa::Buffer::new();
    let hex_or_dash = |out: &mut Vec<u8>, bytes: Option<&[u8]>| {
        out.push(b'|');
        match bytes {
            Some(bytes) => push_hex(out, bytes),
            None => out.push(b'-'),
        }
    };
    out.extend_from_slice(TAG.as_bytes());
    hex_or_dash(&mut out, Some(record.id.as_bytes()));
    out.push(b'|');
    out.extend_from_slice(int.format(record.generation).as_bytes());
    for micros in [
        to_micros(record.expires_at),
        to_micros(record.absolute_expires_at),
    ] {
        out.push(b'|');
        out.extend_from_slice(int.format(micros).as_bytes());
    }
    out.push(b'|');
    match &record.revoked {
        None => out.push(b'-'),
        Some(revoked) => out.extend_from_slice(
            revocation_field(to_micros(revoked.at), &revoked.revocation).as_bytes(),
        ),
    }
    hex_or_dash(&mut out, Some(record.current.lookup_key.as_bytes()));
    hex_or_dash(
        &mut out,
        record
            .previous
            .as_ref()
            .map(|p| &p.credential.lookup_key.as_bytes()[..]),
    );
    hex_or_dash(
        &mut out,
        record
            .superseded
            .as_ref()
            .map(|c| &c.lookup_key.as_bytes()[..]),
    );
    hex_or_dash(&mut out, record.subject.as_deref().map(str::as_bytes));
    out.push(b'\n');
    out
}

/// The stored value of `record`: its [`header`], then its JSON.
pub(crate) fn encode(record: &SessionRecord) -> Vec<u8> {
    let mut value = header(record);
    let body = BodyOut {
        created_at: to_micros(record.created_at),
        authenticated_at: record.authenticated_at.map(to_micros),
        last_seen_at: to_micros(record.last_seen_at),
        idle_timeout: record.idle_timeout.as_secs(),
        persistent: record.persistent,
        access_expires_at: to_micros(record.access_expires_at),
        key_version: record.current.key_version.0,
        previous: record.previous.map(|p| PreviousJson {
            key_version: p.credential.key_version.0,
            rotated_at: to_micros(p.rotated_at),
            valid_until: p.valid_until.map(to_micros),
        }),
        superseded_key_version: record.superseded.map(|c| c.key_version.0),
        user_agent: record.user_agent.as_deref(),
        client_ip: record.client_ip,
        data: &record.data,
    };
    // Serializing plain numbers, strings and a map of JSON values cannot
    // fail; were it to, the empty object fails to decode: corruption, not
    // another session.
    if serde_json::to_writer(&mut value, &body).is_err() {
        value.truncate(value.iter().position(|&b| b == b'\n').unwrap_or(0) + 1);
        value.extend_from_slice(b"{}");
    }
    value
}

/// The header's revocation field, as the revoke scripts also write it.
pub(super) fn revocation_field(at_micros: i64, revocation: &Revocation) -> String {
    match &revocation.actor {
        None => format!("{at_micros},{}", revocation.reason.as_str()),
        Some(actor) => format!(
            "{at_micros},{},{}",
            revocation.reason.as_str(),
            hex_of(actor.as_bytes())
        ),
    }
}

/// Decodes a stored value strictly. `id` is the record's id when the caller
/// knows it (it read the value through `s:<id>`, or asked for that id),
/// for the error.
pub(crate) fn decode(value: &[u8], id: Option<SessionId>) -> Result<SessionRecord, StoreError> {
    let split = value
        .iter()
        .position(|&b| b == b'\n')
        .ok_or_else(|| StoreError::corrupt(id, "the value has no header line"))?;
    let (header, body) = (&value[..split], &value[split + 1..]);
    let header = std::str::from_utf8(header)
        .map_err(|_| StoreError::corrupt(id, "the header is not UTF-8"))?;
    let Some(
        [
            tag,
            stored_id,
            generation,
            expires_at,
            absolute_expires_at,
            revocation,
            current,
            previous,
            superseded,
            subject,
        ],
    ) = split_exact::<10>(header, '|')
    else {
        return Err(StoreError::corrupt(
            id,
            "the header does not have ten fields",
        ));
    };
    if tag != TAG {
        return Err(StoreError::corrupt(id, "unknown value layout"));
    }
    let stored_id = hex_exact::<16>(stored_id)
        .map(SessionId::from_bytes)
        .ok_or_else(|| StoreError::corrupt(id, "the id is not 16 bytes of lowercase hex"))?;
    // From here on the record's own id names it in errors.
    let id = stored_id;
    let corrupt = |reason: &str| StoreError::corrupt(Some(id), reason);
    let instant = |micros: i64, name: &str| {
        from_micros(micros).ok_or_else(|| corrupt(&format!("`{name}` is out of range")))
    };
    let header_instant = |text: &str, name: &str| {
        canonical_i64(text)
            .ok_or_else(|| corrupt(&format!("`{name}` is not a canonical integer")))
            .and_then(|micros| instant(micros, name))
    };
    let lookup_key = |text: &str, name: &str| {
        hex_exact::<32>(text)
            .map(LookupKey::from_bytes)
            .ok_or_else(|| {
                corrupt(&format!(
                    "the {name} lookup key is not 32 bytes of lowercase hex"
                ))
            })
    };
    let optional_key = |text: &str, name: &str| match text {
        "-" => Ok(None),
        text => lookup_key(text, name).map(Some),
    };

    let generation = canonical_u64(generation)
        .ok_or_else(|| corrupt("the generation is not a canonical integer"))?;
    let expires_at = header_instant(expires_at, "expires_at")?;
    let absolute_expires_at = header_instant(absolute_expires_at, "absolute_expires_at")?;
    let revoked = match revocation {
        "-" => None,
        text => Some(decode_revocation(text).ok_or_else(|| corrupt("malformed revocation"))?),
    };
    let current_key = lookup_key(current, "current")?;
    let previous_key = optional_key(previous, "previous")?;
    let superseded_key = optional_key(superseded, "superseded")?;
    let subject = match subject {
        "-" => None,
        text => {
            Some(hex_text(text).ok_or_else(|| corrupt("the subject is not hex of UTF-8 text"))?)
        }
    };

    let body: BodyIn =
        serde_json::from_slice(body).map_err(|_| corrupt("the JSON part does not decode"))?;
    let previous = match (previous_key, body.previous) {
        (None, None) => None,
        (Some(lookup_key), Some(p)) => Some(PreviousCredential {
            credential: Credential {
                lookup_key,
                key_version: KeyVersion(p.key_version),
            },
            rotated_at: instant(p.rotated_at, "previous.rotated_at")?,
            valid_until: p
                .valid_until
                .map(|t| instant(t, "previous.valid_until"))
                .transpose()?,
        }),
        _ => return Err(corrupt("the previous slot is partly missing")),
    };
    let superseded = match (superseded_key, body.superseded_key_version) {
        (None, None) => None,
        (Some(lookup_key), Some(version)) => Some(Credential {
            lookup_key,
            key_version: KeyVersion(version),
        }),
        _ => return Err(corrupt("the superseded slot is partly missing")),
    };
    let revoked = match revoked {
        None => None,
        Some((at, revocation)) => {
            revocation.validate().map_err(corrupt)?;
            Some(Revoked {
                at: instant(at, "revoked_at")?,
                revocation,
            })
        }
    };
    let record = SessionRecord {
        id,
        generation,
        subject,
        created_at: instant(body.created_at, "created_at")?,
        authenticated_at: body
            .authenticated_at
            .map(|t| instant(t, "authenticated_at"))
            .transpose()?,
        last_seen_at: instant(body.last_seen_at, "last_seen_at")?,
        expires_at,
        absolute_expires_at,
        idle_timeout: Duration::from_secs(body.idle_timeout),
        persistent: body.persistent,
        access_expires_at: instant(body.access_expires_at, "access_expires_at")?,
        current: Credential {
            lookup_key: current_key,
            key_version: KeyVersion(body.key_version),
        },
        previous,
        superseded,
        revoked,
        user_agent: body.user_agent,
        client_ip: body.client_ip,
        data: body.data,
    };
    record.validate().map_err(corrupt)?;
    Ok(record)
}

/// `<at>,<reason>` or `<at>,<reason>,<actor hex>`.
fn decode_revocation(text: &str) -> Option<(i64, Revocation)> {
    let mut parts = text.split(',');
    let at = canonical_i64(parts.next()?)?;
    let reason = parts.next()?.parse().ok()?;
    let actor = match parts.next() {
        None => None,
        Some(hex) => Some(hex_text(hex)?),
    };
    if parts.next().is_some() {
        return None;
    }
    Some((at, Revocation { reason, actor }))
}

/// The value of a lowercase hex digit, or `None` for any other byte
/// (uppercase included: one byte string has one stored spelling).
const fn lower_hex_digit(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        _ => None,
    }
}

/// Decodes lowercase hex into `out`, checking and decoding in one pass
/// (every read decodes an id and at least one lookup key). `None` unless
/// `text` is exactly `2 × out.len()` lowercase hex digits.
fn unhex_into(text: &[u8], out: &mut [u8]) -> Option<()> {
    if text.len() != 2 * out.len() {
        return None;
    }
    for (pair, byte) in text.chunks_exact(2).zip(out) {
        *byte = (lower_hex_digit(pair[0])? << 4) | lower_hex_digit(pair[1])?;
    }
    Some(())
}

/// A lookup key spelled as the store spells it: 64 lowercase hex digits
/// (Redis keeps the current one under each id).
#[cfg(feature = "redis")]
pub(super) fn lookup_key_of_hex(text: &[u8]) -> Option<LookupKey> {
    let mut bytes = [0u8; 32];
    unhex_into(text, &mut bytes)?;
    Some(LookupKey::from_bytes(bytes))
}

/// Exactly `N` bytes as lowercase hex.
fn hex_exact<const N: usize>(text: &str) -> Option<[u8; N]> {
    let mut bytes = [0u8; N];
    unhex_into(text.as_bytes(), &mut bytes)?;
    Some(bytes)
}

/// Lowercase hex of UTF-8 text (possibly empty).
fn hex_text(text: &str) -> Option<String> {
    let mut bytes = vec![0; text.len() / 2];
    unhex_into(text.as_bytes(), &mut bytes)?;
    String::from_utf8(bytes).ok()
}

/// Exactly `N` fields separated by `separator`, without allocating.
fn split_exact<const N: usize>(text: &str, separator: char) -> Option<[&str; N]> {
    let mut parts = text.split(separator);
    let mut fields = [""; N];
    for field in &mut fields {
        *field = parts.next()?;
    }
    parts.next().is_none().then_some(fields)
}

/// Whether `digits` is how Rust prints a non-negative integer: ASCII
/// digits, no sign, no leading zero (except `0` itself).
fn canonical_digits(digits: &str) -> bool {
    !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits == "0" || !digits.starts_with('0'))
}

/// An `i64` written exactly as `i64::to_string` writes it (no `+`, no
/// leading zeros, no `-0`), so one number has one stored form.
fn canonical_i64(text: &str) -> Option<i64> {
    let (negative, digits) = match text.strip_prefix('-') {
        Some(digits) => (true, digits),
        None => (false, text),
    };
    if !canonical_digits(digits) || (negative && digits == "0") {
        return None;
    }
    text.parse().ok()
}

/// A `u64` written exactly as `u64::to_string` writes it.
fn canonical_u64(text: &str) -> Option<u64> {
    if !canonical_digits(text) {
        return None;
    }
    text.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::RevocationReason;
    use time::OffsetDateTime;

    #[test]
    fn canonical_integers_are_exactly_what_to_string_writes() {
        let samples = [
            "0",
            "-0",
            "00",
            "01",
            "+1",
            "1",
            "-1",
            "10",
            "-10",
            " 1",
            "1 ",
            "",
            "-",
            "9223372036854775807",
            "9223372036854775808",
            "-9223372036854775808",
            "-9223372036854775809",
            "18446744073709551615",
            "18446744073709551616",
            "1a",
            "٣",
        ];
        for text in samples {
            let by_i64 = text.parse::<i64>().ok().filter(|n| n.to_string() == text);
            let by_u64 = text.parse::<u64>().ok().filter(|n| n.to_string() == text);
            assert_eq!(canonical_i64(text), by_i64, "{text:?}");
            assert_eq!(canonical_u64(text), by_u64, "{text:?}");
        }
        assert_eq!(split_exact::<3>("a|b|c", '|'), Some(["a", "b", "c"]));
        assert_eq!(split_exact::<3>("a|b", '|'), None);
        assert_eq!(split_exact::<3>("a|b|c|", '|'), None);
        assert_eq!(split_exact::<2>("|", '|'), Some(["", ""]));
    }

    const T: i64 = 1_893_456_000_000_000;

    fn at(micros: i64) -> OffsetDateTime {
        from_micros(micros).unwrap()
    }

    fn key(byte: u8) -> LookupKey {
        LookupKey::from_bytes([byte; 32])
    }

    fn record() -> SessionRecord {
        let mut data = Data::new();
        data.insert("theme".into(), "dark|\n,".into());
        SessionRecord {
            id: SessionId::from_bytes([7; 16]),
            generation: u64::MAX,
            subject: Some("alice | bob,\u{e9}".into()),
            created_at: at(T),
            authenticated_at: Some(at(T + 1)),
            last_seen_at: at(T + 2),
            expires_at: at(T + 3),
            absolute_expires_at: at(T + 4),
            idle_timeout: Duration::from_secs(1800),
            persistent: true,
            access_expires_at: at(T + 5),
            current: Credential {
                lookup_key: key(1),
                key_version: KeyVersion(2),
            },
            previous: Some(PreviousCredential {
                credential: Credential {
                    lookup_key: key(3),
                    key_version: KeyVersion(1),
                },
                rotated_at: at(T + 6),
                valid_until: Some(at(T + 7)),
            }),
            superseded: Some(Credential {
                lookup_key: key(4),
                key_version: KeyVersion(2),
            }),
            revoked: Some(Revoked {
                at: at(-5),
                revocation: Revocation::new(RevocationReason::Admin).by("ops, on call"),
            }),
            user_agent: Some("Mozilla/5.0".into()),
            client_ip: Some("2001:db8::1".parse().unwrap()),
            data,
        }
    }

    fn minimal() -> SessionRecord {
        SessionRecord {
            subject: None,
            authenticated_at: None,
            previous: None,
            superseded: None,
            revoked: None,
            user_agent: None,
            client_ip: None,
            data: Data::new(),
            generation: 0,
            ..record()
        }
    }

    #[test]
    fn records_round_trip() {
        for record in [record(), minimal()] {
            let value = encode(&record);
            assert_eq!(decode(&value, None).unwrap(), record);
        }
        let mut unconfirmed = record();
        unconfirmed.previous.as_mut().unwrap().valid_until = None;
        unconfirmed.revoked.as_mut().unwrap().revocation.actor = None;
        assert_eq!(decode(&encode(&unconfirmed), None).unwrap(), unconfirmed);
    }

    #[test]
    fn the_header_is_what_the_scripts_parse() {
        let value = String::from_utf8(encode(&minimal())).unwrap();
        let header = value.lines().next().unwrap();
        assert_eq!(
            header,
            format!(
                "ths2|{}|0|{}|{}|-|{}|-|-|-",
                "07".repeat(16),
                T + 3,
                T + 4,
                "01".repeat(32)
            )
        );
    }

    /// Every field, against an independent spelling (`{:02x}`, `Display`
    /// of the integers): the scripts compare stored headers byte for byte
    /// with the ones the store computes, so the spelling must never drift.
    #[test]
    fn the_full_header_is_canonical() {
        let mut r = record();
        // Bytes whose two nibbles differ, above and below 0xa.
        r.id = SessionId::from_bytes(std::array::from_fn(|i| (i * 17 + 0x9a) as u8));
        let varied =
            |seed: usize| LookupKey::from_bytes(std::array::from_fn(|i| (i * 37 + seed) as u8));
        r.current.lookup_key = varied(0xc3);
        r.previous.as_mut().unwrap().credential.lookup_key = varied(0x1f);
        r.superseded.as_mut().unwrap().lookup_key = varied(0x5e);
        let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
        let value = String::from_utf8(encode(&r)).unwrap();
        let header = value.lines().next().unwrap();
        let previous = r.previous.unwrap().credential.lookup_key;
        assert_eq!(
            header,
            format!(
                "ths2|{}|{}|{}|{}|-5,admin,{}|{}|{}|{}|{}",
                hex(r.id.as_bytes()),
                u64::MAX,
                T + 3,
                T + 4,
                hex(b"ops, on call"),
                hex(r.current.lookup_key.as_bytes()),
                hex(previous.as_bytes()),
                hex(r.superseded.unwrap().lookup_key.as_bytes()),
                hex("alice | bob,\u{e9}".as_bytes()),
            )
        );
    }

    #[test]
    fn the_json_starts_with_what_the_cap_script_reads() {
        for record in [record(), minimal()] {
            let value = String::from_utf8(encode(&record)).unwrap();
            let body = value.split_once('\n').unwrap().1;
            let start = match record.authenticated_at {
                Some(at) => format!(
                    "{{\"created_at\":{},\"authenticated_at\":{},\"last_seen_at\":{},",
                    T,
                    to_micros(at),
                    T + 2
                ),
                None => format!("{{\"created_at\":{T},\"last_seen_at\":{},", T + 2),
            };
            assert!(body.starts_with(&start), "{body}");
        }
    }

    #[test]
    fn every_kind_of_damage_is_corruption() {
        let good = String::from_utf8(encode(&record())).unwrap();
        let (header, body) = good.split_once('\n').unwrap();
        let fields: Vec<&str> = header.split('|').collect();
        let with = |index: usize, value: &str| {
            let mut f = fields.clone();
            f[index] = value;
            format!("{}\n{body}", f.join("|"))
        };
        let body_with = |from: &str, to: &str| {
            assert!(body.contains(from), "{from}");
            format!("{header}\n{}", body.replacen(from, to, 1))
        };
        let cases = [
            header.to_owned(),
            format!("{header}|x\n{body}"),
            with(0, "ths1"),
            with(1, &"AB".repeat(16)),
            with(1, "07"),
            with(2, "01"),
            with(2, "-1"),
            with(2, "18446744073709551616"),
            with(3, "+1893456000000003"),
            with(3, "1.9e15"),
            with(3, " 1893456000000003"),
            with(3, "999999999999999999"),
            with(4, &(T + 2).to_string()), // expires after the absolute expiry
            with(5, "1,bogus"),
            with(5, "1"),
            with(5, "x,admin"),
            with(5, "1,admin,zz"),
            with(5, "1,admin,61,62"),
            with(5, "1,admin,"),   // an empty actor
            with(5, "1,admin,0a"), // a control character in the actor
            with(6, "0102"),
            with(6, &"ZZ".repeat(32)),
            with(7, "-"),
            with(8, "-"),
            with(7, fields[6]), // two slots hold one lookup key
            with(9, ""),
            with(9, "ff"),
            with(9, "0a"), // a control character
            body_with("\"persistent\":true", "\"persistent\":1"),
            body_with(
                "\"persistent\":true",
                "\"persistent\":true,\"persistent\":true",
            ),
            body_with("\"persistent\":true", "\"persistent\":true,\"extra\":1"),
            body_with("\"idle_timeout\":1800", "\"idle_timeout\":0"),
            body_with("\"idle_timeout\":1800", "\"idle_timeout\":-1"),
            body_with("\"key_version\":2", "\"key_version\":4294967296"),
            body_with(
                "\"client_ip\":\"2001:db8::1\"",
                "\"client_ip\":\"localhost\"",
            ),
            body_with("\"data\":{", "\"data\":[{"),
            body_with(",\"superseded_key_version\":2", ""),
            format!("{header}\n"),
            format!("{header}\n{body} trailing"),
        ];
        for case in cases {
            let result = decode(case.as_bytes(), None);
            assert!(
                matches!(result, Err(StoreError::Corrupt { .. })),
                "{case}: {result:?}"
            );
        }
        assert!(matches!(
            decode(b"\xff\n{}", Some(SessionId::from_bytes([9; 16]))),
            Err(StoreError::Corrupt { id: Some(id), .. }) if id == SessionId::from_bytes([9; 16])
        ));
    }

    #[test]
    fn errors_never_show_the_value() {
        let mut value = encode(&record());
        value[0] = b'x';
        let error = decode(&value, None).unwrap_err();
        let message = format!("{error} {error:?}");
        assert!(!message.contains(&"01".repeat(32)), "{message}");
        assert!(!message.contains("dark"), "{message}");
    }

    #[test]
    fn micros_round_trip_and_floor() {
        let t = from_micros(-1).unwrap();
        assert_eq!(to_micros(t), -1);
        let t = OffsetDateTime::from_unix_timestamp_nanos(-1).unwrap();
        assert_eq!(to_micros(t), -1);
        assert_eq!(from_micros(i64::MAX), None);
    }
}
