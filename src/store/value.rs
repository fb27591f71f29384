//! The one value a record is stored as: by Redis under each of its lookup
//! keys, and by PostgreSQL in the `record` column of each of its rows.
//! A header line Redis' write scripts read, a state line, then the data as
//! JSON; only Rust reads the last two (but for the cap script, which reads
//! the state line's first two fields).
//!
//! ```text
//! ths3|<id>|<generation>|<expires_at>|<absolute_expires_at>|<revocation>|<current>|<previous>|<superseded>|<subject>
//! <created_at>|<last_seen_at>|<authenticated_at>|<access_expires_at>|<idle_timeout>|<persistent>|<key_version>|<previous>|<superseded>|<client_ip>|<user_agent>
//! {"theme":"dark",…}
//! ```
//!
//! Timestamps are decimal microseconds since the Unix epoch; the id and the
//! lookup keys lowercase hex; `-` marks an empty slot, no revocation, no
//! subject, or no other optional field; the revocation is `<at>,<reason>` or
//! `<at>,<reason>,<actor hex>`; the subject is hex, so no byte of it can be
//! taken for a separator. The state line's `<previous>` is
//! `<key_version>,<rotated_at>` or `<key_version>,<rotated_at>,<valid_until>`
//! (the slot's lookup key is in the header), `<superseded>` the superseded
//! slot's key version, `<persistent>` `0` or `1`, `<idle_timeout>` whole
//! seconds, `<client_ip>` as `Display` writes it and `<user_agent>` a JSON
//! string (last on the line, so a `|` in it is no separator). Each field is
//! in one place only, so no two can disagree. Decoding accepts exactly what
//! encoding produces on the header and state lines (every number, address,
//! hex and JSON string in its one spelling, no field more or less; the
//! data's JSON is read by serde_json, which also takes other whitespace and
//! key orders) and checks the record's
//! invariants: anything else is [`StoreError::Corrupt`], never a panic and
//! never another session.
//!
//! No JSON but the data's, and the user agent's when there is one: every
//! read decodes a value, and decoding the record's fields from a JSON
//! object took half as long again as this whole layout takes.

use std::io::Write as _;
use std::net::IpAddr;
use std::time::Duration;

use crate::keys::{KeyVersion, LookupKey};
use crate::record::{
    Credential, Data, PreviousCredential, Revocation, Revoked, SessionId, SessionRecord,
};
use crate::store::StoreError;

/// The first header field: the layout's version.
const TAG: &str = "ths3";

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
pub(super) fn push_hex(out: &mut Vec<u8>, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    out.reserve(bytes.len() * 2);
    for &byte in bytes {
        out.push(DIGITS[usize::from(byte >> 4)]);
        out.push(DIGITS[usize::from(byte & 0x0f)]);
    }
}

/// The header line of `record`'s stored value, newline included. Canonical:
/// the same record always has the same header, so a write script can
/// compare a stored header with the one its caller read, byte for byte.
pub(super) fn header(record: &SessionRecord) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_CAPACITY);
    push_header(&mut out, record);
    out
}

/// Room for a header with every key slot filled and a short subject, and
/// for the state line after it: one allocation per encoded value.
const HEADER_CAPACITY: usize = 320;

/// Appends `record`'s header line (see [`header`]) to `out`.
fn push_header(out: &mut Vec<u8>, record: &SessionRecord) {
    // Written in place (no string per field): it is encoded on every write.
    let hex_or_dash = |out: &mut Vec<u8>, bytes: Option<&[u8]>| {
        out.push(b'|');
        match bytes {
            Some(bytes) => push_hex(out, bytes),
            None => out.push(b'-'),
        }
    };
    out.extend_from_slice(TAG.as_bytes());
    hex_or_dash(out, Some(record.id.as_bytes()));
    out.push(b'|');
    push_int(out, record.generation);
    for micros in [
        to_micros(record.expires_at),
        to_micros(record.absolute_expires_at),
    ] {
        out.push(b'|');
        push_int(out, micros);
    }
    out.push(b'|');
    match &record.revoked {
        None => out.push(b'-'),
        Some(revoked) => out.extend_from_slice(
            revocation_field(to_micros(revoked.at), &revoked.revocation).as_bytes(),
        ),
    }
    hex_or_dash(out, Some(record.current.lookup_key.as_bytes()));
    hex_or_dash(
        out,
        record
            .previous
            .as_ref()
            .map(|p| &p.credential.lookup_key.as_bytes()[..]),
    );
    hex_or_dash(
        out,
        record
            .superseded
            .as_ref()
            .map(|c| &c.lookup_key.as_bytes()[..]),
    );
    hex_or_dash(out, record.subject.as_deref().map(str::as_bytes));
    out.push(b'\n');
}

/// Appends the decimal digits of `n` (no string per number).
fn push_int(out: &mut Vec<u8>, n: impl itoa::Integer) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// The stored value of `record`: its [`header`], its state line, then its
/// data as JSON.
pub(crate) fn encode(record: &SessionRecord) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_CAPACITY + 64);
    push_header(&mut out, record);
    // `created_at` and `last_seen_at` first: the cap script reads them.
    for at in [
        Some(record.created_at),
        Some(record.last_seen_at),
        record.authenticated_at,
        Some(record.access_expires_at),
    ] {
        match at {
            Some(at) => push_int(&mut out, to_micros(at)),
            None => out.push(b'-'),
        }
        out.push(b'|');
    }
    push_int(&mut out, record.idle_timeout.as_secs());
    out.extend_from_slice(if record.persistent { b"|1|" } else { b"|0|" });
    push_int(&mut out, record.current.key_version.0);
    out.push(b'|');
    match &record.previous {
        None => out.push(b'-'),
        Some(p) => {
            push_int(&mut out, p.credential.key_version.0);
            out.push(b',');
            push_int(&mut out, to_micros(p.rotated_at));
            if let Some(until) = p.valid_until {
                out.push(b',');
                push_int(&mut out, to_micros(until));
            }
        }
    }
    out.push(b'|');
    match &record.superseded {
        None => out.push(b'-'),
        Some(c) => push_int(&mut out, c.key_version.0),
    }
    out.push(b'|');
    match record.client_ip {
        None => out.push(b'-'),
        // Into `out` itself (writing to a `Vec` cannot fail).
        Some(ip) => {
            let _ = write!(out, "{ip}");
        }
    }
    out.push(b'|');
    // Last on the line, so a `|` in it is no separator; JSON escapes every
    // control character, so it holds no newline.
    let written = match &record.user_agent {
        None => {
            out.push(b'-');
            Ok(())
        }
        Some(agent) => serde_json::to_writer(&mut out, agent),
    };
    out.push(b'\n');
    // Serializing a string and a map of JSON values cannot fail; were it
    // to, the value fails to decode: corruption, not another session.
    if written.is_err() || serde_json::to_writer(&mut out, &record.data).is_err() {
        out.truncate(out.iter().position(|&b| b == b'\n').unwrap_or(0) + 1);
    }
    out
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
///
/// Every read decodes a value, so this works on bytes, field by field,
/// without a copy or a check of the whole value as UTF-8: only the
/// subject, the revocation, the client address and the JSON parts are read
/// as text.
pub(crate) fn decode(value: &[u8], id: Option<SessionId>) -> Result<SessionRecord, StoreError> {
    let (header, rest) =
        split_line(value).ok_or_else(|| StoreError::corrupt(id, "the value has no header line"))?;
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
    ) = split_exact::<10>(header)
    else {
        return Err(StoreError::corrupt(
            id,
            "the header does not have ten fields",
        ));
    };
    if tag != TAG.as_bytes() {
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
    let at = |text: &[u8], name: &str| {
        canonical_i64(text)
            .ok_or_else(|| corrupt(&format!("`{name}` is not a canonical integer")))
            .and_then(|micros| instant(micros, name))
    };
    let lookup_key = |text: &[u8], name: &str| {
        hex_exact::<32>(text)
            .map(LookupKey::from_bytes)
            .ok_or_else(|| {
                corrupt(&format!(
                    "the {name} lookup key is not 32 bytes of lowercase hex"
                ))
            })
    };
    let optional_key = |text: &[u8], name: &str| match text {
        b"-" => Ok(None),
        text => lookup_key(text, name).map(Some),
    };
    let version = |text: &[u8], name: &str| {
        canonical_u64(text)
            .and_then(|n| u32::try_from(n).ok())
            .map(KeyVersion)
            .ok_or_else(|| corrupt(&format!("`{name}` is not a canonical 32-bit integer")))
    };

    let generation = canonical_u64(generation)
        .ok_or_else(|| corrupt("the generation is not a canonical integer"))?;
    let expires_at = at(expires_at, "expires_at")?;
    let absolute_expires_at = at(absolute_expires_at, "absolute_expires_at")?;
    let revoked = match revocation {
        b"-" => None,
        text => {
            let (at_micros, revocation) =
                decode_revocation(text).ok_or_else(|| corrupt("malformed revocation"))?;
            revocation.validate().map_err(corrupt)?;
            Some(Revoked {
                at: instant(at_micros, "revoked_at")?,
                revocation,
            })
        }
    };
    let current_key = lookup_key(current, "current")?;
    let previous_key = optional_key(previous, "previous")?;
    let superseded_key = optional_key(superseded, "superseded")?;
    let subject = match subject {
        b"-" => None,
        text => {
            Some(hex_text(text).ok_or_else(|| corrupt("the subject is not hex of UTF-8 text"))?)
        }
    };

    let (state, data) = split_line(rest).ok_or_else(|| corrupt("the value has no state line"))?;
    let mut fields = split_fields(state);
    let mut next = |name: &str| {
        fields
            .next()
            .ok_or_else(|| corrupt(&format!("the state line has no `{name}`")))
    };
    let created_at = at(next("created_at")?, "created_at")?;
    let last_seen_at = at(next("last_seen_at")?, "last_seen_at")?;
    let authenticated_at = match next("authenticated_at")? {
        b"-" => None,
        text => Some(at(text, "authenticated_at")?),
    };
    let access_expires_at = at(next("access_expires_at")?, "access_expires_at")?;
    let idle_timeout = canonical_u64(next("idle_timeout")?)
        .map(Duration::from_secs)
        .ok_or_else(|| corrupt("`idle_timeout` is not a canonical integer"))?;
    let persistent = match next("persistent")? {
        b"0" => false,
        b"1" => true,
        _ => return Err(corrupt("`persistent` is neither 0 nor 1")),
    };
    let key_version = version(next("key_version")?, "key_version")?;
    let previous = match (previous_key, next("previous")?) {
        (None, b"-") => None,
        (Some(lookup_key), text) if text != b"-" => {
            let mut parts = text.split(|&b| b == b',');
            let (Some(version_text), Some(rotated_at)) = (parts.next(), parts.next()) else {
                return Err(corrupt("malformed previous slot"));
            };
            let valid_until = parts
                .next()
                .map(|text| at(text, "previous.valid_until"))
                .transpose()?;
            if parts.next().is_some() {
                return Err(corrupt("malformed previous slot"));
            }
            Some(PreviousCredential {
                credential: Credential {
                    lookup_key,
                    key_version: version(version_text, "previous.key_version")?,
                },
                rotated_at: at(rotated_at, "previous.rotated_at")?,
                valid_until,
            })
        }
        _ => return Err(corrupt("the previous slot is partly missing")),
    };
    let superseded = match (superseded_key, next("superseded")?) {
        (None, b"-") => None,
        (Some(lookup_key), text) if text != b"-" => Some(Credential {
            lookup_key,
            key_version: version(text, "superseded.key_version")?,
        }),
        _ => return Err(corrupt("the superseded slot is partly missing")),
    };
    let client_ip = match next("client_ip")? {
        b"-" => None,
        text => Some(
            std::str::from_utf8(text)
                .ok()
                .and_then(|text| text.parse::<IpAddr>().ok())
                // One address, one spelling: what `Display` writes. An IPv4
                // address that parses has only that one (decimal octets
                // without leading zeros, which the parser refuses); IPv6
                // has others, so it is written back and compared.
                .filter(|&ip| ip.is_ipv4() || ip_spelling(ip, &mut [0; IP_TEXT_MAX]) == Some(text))
                .ok_or_else(|| corrupt("`client_ip` is not an IP address as written"))?,
        ),
    };
    // The user agent is last and may hold a `|`: the rest of the line.
    let user_agent = match fields
        .rest()
        .ok_or_else(|| corrupt("the state line has no `user_agent`"))?
    {
        b"-" => None,
        text => Some(
            serde_json::from_slice::<String>(text)
                .ok()
                // One spelling: the JSON string encoding writes. It writes
                // each character in its shortest form (a user agent has no
                // control character: `validate` below), escaping only `"`
                // and `\`; any other spelling (whitespace around it, `\/`,
                // `\u…`) is longer. So the length tells, without encoding
                // it again on every read.
                .filter(|agent| {
                    let escaped = agent.bytes().filter(|b| matches!(b, b'"' | b'\\')).count();
                    text.len() == agent.len() + 2 + escaped
                })
                .ok_or_else(|| corrupt("`user_agent` is not a JSON string as written"))?,
        ),
    };
    let data: Data =
        serde_json::from_slice(data).map_err(|_| corrupt("the data does not decode"))?;

    let record = SessionRecord {
        id,
        generation,
        subject,
        created_at,
        authenticated_at,
        last_seen_at,
        expires_at,
        absolute_expires_at,
        idle_timeout,
        persistent,
        access_expires_at,
        current: Credential {
            lookup_key: current_key,
            key_version,
        },
        previous,
        superseded,
        revoked,
        user_agent,
        client_ip,
        data,
    };
    record.validate().map_err(corrupt)?;
    Ok(record)
}

/// Room for any address as `Display` writes it (at most 39 bytes: eight
/// groups of four hex digits; an IPv4-mapped address is shorter).
const IP_TEXT_MAX: usize = 64;

/// `ip` as `Display` writes it (and [`encode`] stores it), written into
/// `buf`: every read of a record with an address checks its spelling, so
/// without a `String` each time. `None` if it does not fit, which no
/// address does.
fn ip_spelling(ip: IpAddr, buf: &mut [u8; IP_TEXT_MAX]) -> Option<&[u8]> {
    let mut rest = &mut buf[..];
    write!(rest, "{ip}").ok()?;
    let len = IP_TEXT_MAX - rest.len();
    Some(&buf[..len])
}

/// The bytes before the first newline, and those after it.
fn split_line(value: &[u8]) -> Option<(&[u8], &[u8])> {
    let end = memchr::memchr(b'\n', value)?;
    Some((&value[..end], &value[end + 1..]))
}

/// `<at>,<reason>` or `<at>,<reason>,<actor hex>`.
fn decode_revocation(text: &[u8]) -> Option<(i64, Revocation)> {
    let mut parts = text.split(|&b| b == b',');
    let at = canonical_i64(parts.next()?)?;
    let reason = std::str::from_utf8(parts.next()?).ok()?.parse().ok()?;
    let actor = match parts.next() {
        None => None,
        Some(hex) => Some(hex_text(hex)?),
    };
    if parts.next().is_some() {
        return None;
    }
    Some((at, Revocation { reason, actor }))
}

/// Each byte's value as a lowercase hex digit, or `INVALID` (uppercase
/// included: one byte string has one stored spelling).
const HEX_DIGITS: [u8; 256] = {
    let mut table = [INVALID; 256];
    let mut i = 0;
    while i < 10 {
        table[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        table[b'a' as usize + i] = 10 + i as u8;
        i += 1;
    }
    table
};

/// Not a hex digit: any bit above the low four.
const INVALID: u8 = 0xf0;

/// Decodes lowercase hex into `out`, checking and decoding in one pass
/// (every read decodes an id and at least one lookup key). `None` unless
/// `text` is exactly `2 × out.len()` lowercase hex digits.
///
/// A table lookup per digit and one check at the end, without a branch per
/// digit: the digits of random bytes are letters or numerals at random, so
/// a branch on which would be mispredicted half the time.
fn unhex_into(text: &[u8], out: &mut [u8]) -> Option<()> {
    if text.len() != 2 * out.len() {
        return None;
    }
    let mut seen = 0;
    for (pair, byte) in text.chunks_exact(2).zip(out) {
        let (high, low) = (
            HEX_DIGITS[usize::from(pair[0])],
            HEX_DIGITS[usize::from(pair[1])],
        );
        seen |= high | low;
        *byte = (high << 4) | low;
    }
    (seen & INVALID == 0).then_some(())
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
fn hex_exact<const N: usize>(text: &[u8]) -> Option<[u8; N]> {
    let mut bytes = [0u8; N];
    unhex_into(text, &mut bytes)?;
    Some(bytes)
}

/// Lowercase hex of UTF-8 text (possibly empty).
fn hex_text(text: &[u8]) -> Option<String> {
    let mut bytes = vec![0; text.len() / 2];
    unhex_into(text, &mut bytes)?;
    String::from_utf8(bytes).ok()
}

/// Exactly `N` fields separated by `|`, without allocating.
fn split_exact<const N: usize>(text: &[u8]) -> Option<[&[u8]; N]> {
    let mut fields = [&[][..]; N];
    let mut rest = split_fields(text);
    for field in &mut fields {
        *field = rest.next()?;
    }
    rest.next().is_none().then_some(fields)
}

/// The fields of `text` separated by `|` (a scan by `memchr`: a header line
/// is a few hundred bytes, read on every request).
fn split_fields(text: &[u8]) -> Fields<'_> {
    Fields { rest: Some(text) }
}

/// See [`split_fields`].
struct Fields<'a> {
    /// What follows the fields taken so far; `None` after the last.
    rest: Option<&'a [u8]>,
}

impl<'a> Fields<'a> {
    /// Everything after the fields taken so far, `|` included.
    fn rest(&mut self) -> Option<&'a [u8]> {
        self.rest.take()
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let text = self.rest?;
        match memchr::memchr(b'|', text) {
            Some(end) => {
                self.rest = Some(&text[end + 1..]);
                Some(&text[..end])
            }
            None => self.rest.take(),
        }
    }
}

/// A `u64` written exactly as `u64::to_string` writes it: ASCII digits, no
/// sign, no leading zero (except `0` itself), no overflow.
fn canonical_u64(text: &[u8]) -> Option<u64> {
    match text {
        [] | [b'0', _, ..] => None,
        digits => digits.iter().try_fold(0u64, |n, &b| {
            let digit = b.wrapping_sub(b'0');
            (digit < 10).then_some(())?;
            n.checked_mul(10)?.checked_add(u64::from(digit))
        }),
    }
}

/// An `i64` written exactly as `i64::to_string` writes it (no `+`, no
/// leading zeros, no `-0`), so one number has one stored form.
fn canonical_i64(text: &[u8]) -> Option<i64> {
    match text.strip_prefix(b"-") {
        Some(digits) => match canonical_u64(digits)? {
            0 => None,
            magnitude => 0i64.checked_sub_unsigned(magnitude),
        },
        None => i64::try_from(canonical_u64(text)?).ok(),
    }
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
            assert_eq!(canonical_i64(text.as_bytes()), by_i64, "{text:?}");
            assert_eq!(canonical_u64(text.as_bytes()), by_u64, "{text:?}");
        }
        let fields = |texts: [&'static str; 3]| texts.map(str::as_bytes);
        assert_eq!(split_exact::<3>(b"a|b|c"), Some(fields(["a", "b", "c"])));
        assert_eq!(split_exact::<3>(b"a|b"), None);
        assert_eq!(split_exact::<3>(b"a|b|c|"), None);
        assert_eq!(split_exact::<2>(b"|"), Some([&b""[..], b""]));
    }

    #[test]
    fn hex_decoding_takes_lowercase_digits_only() {
        for byte in 0..=u8::MAX {
            let digit = match byte {
                b'0'..=b'9' => Some(byte - b'0'),
                b'a'..=b'f' => Some(byte - b'a' + 10),
                _ => None,
            };
            for (text, expected) in [
                ([byte, b'7'], digit.map(|d| d << 4 | 7)),
                ([b'7', byte], digit.map(|d| 0x70 | d)),
            ] {
                let mut out = [0u8; 1];
                let decoded = unhex_into(&text, &mut out).map(|()| out[0]);
                assert_eq!(decoded, expected, "{text:?}");
            }
        }
        assert_eq!(unhex_into(b"0", &mut [0u8; 1]), None);
        assert_eq!(unhex_into(b"000", &mut [0u8; 1]), None);
        let mut key = [0u8; 32];
        let text: String = (0..32u8).map(|i| format!("{:02x}", i * 7 + 3)).collect();
        assert_eq!(unhex_into(text.as_bytes(), &mut key), Some(()));
        assert_eq!(key, std::array::from_fn(|i| i as u8 * 7 + 3));
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
    fn the_longest_addresses_round_trip() {
        let longest = [
            "255.255.255.255",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            "::ffff:255.255.255.255",
            // Written back as eight hex groups: 39 bytes.
            "1111:2222:3333:4444:5555:6666:255.255.255.255",
        ];
        for text in longest {
            let ip: IpAddr = text.parse().unwrap();
            let mut with_ip = record();
            with_ip.client_ip = Some(ip);
            assert_eq!(decode(&encode(&with_ip), None).unwrap(), with_ip, "{text}");
            assert_eq!(
                ip_spelling(ip, &mut [0; IP_TEXT_MAX]),
                Some(ip.to_string().as_bytes()),
                "{text}"
            );
        }
    }

    #[test]
    fn the_header_is_what_the_scripts_parse() {
        let value = String::from_utf8(encode(&minimal())).unwrap();
        let header = value.lines().next().unwrap();
        assert_eq!(
            header,
            format!(
                "ths3|{}|0|{}|{}|-|{}|-|-|-",
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
                "ths3|{}|{}|{}|{}|-5,admin,{}|{}|{}|{}|{}",
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
    fn the_state_line_starts_with_what_the_cap_script_reads() {
        for record in [record(), minimal()] {
            let value = String::from_utf8(encode(&record)).unwrap();
            let state = value.split('\n').nth(1).unwrap();
            assert!(state.starts_with(&format!("{T}|{}|", T + 2)), "{state}");
        }
    }

    #[test]
    fn the_state_line_and_the_data_are_as_documented() {
        let value = String::from_utf8(encode(&record())).unwrap();
        let lines: Vec<&str> = value.split('\n').collect();
        assert_eq!(
            lines[1..],
            [
                format!(
                    "{T}|{}|{}|{}|1800|1|2|1,{},{}|2|2001:db8::1|\"Mozilla/5.0\"",
                    T + 2,
                    T + 1,
                    T + 5,
                    T + 6,
                    T + 7
                ),
                r#"{"theme":"dark|\n,"}"#.to_owned(),
            ]
        );
        let value = String::from_utf8(encode(&minimal())).unwrap();
        assert_eq!(
            value.split('\n').skip(1).collect::<Vec<_>>(),
            [
                format!("{T}|{}|-|{}|1800|1|2|-|-|-|-", T + 2, T + 5),
                "{}".to_owned()
            ]
        );
    }

    #[test]
    fn a_user_agent_may_hold_separators_and_quotes() {
        let mut r = minimal();
        r.user_agent = Some("a|b\\\"c\u{e9}|".into());
        let value = encode(&r);
        assert_eq!(decode(&value, None).unwrap(), r);
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
        let (state, data) = body.split_once('\n').unwrap();
        let state_fields: Vec<&str> = state.splitn(11, '|').collect();
        let state_with = |index: usize, value: &str| {
            let mut f = state_fields.clone();
            f[index] = value;
            format!("{header}\n{}\n{data}", f.join("|"))
        };
        let cases = [
            header.to_owned(),
            format!("{header}|x\n{body}"),
            with(0, "ths2"),
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
            with(9, "0a"),                // a control character
            format!("{header}\n{state}"), // no data line
            format!("{header}\n{state}|x\n{data}"),
            format!("{header}\n{}\n{data}", state_fields[..10].join("|")),
            state_with(0, "x"),
            state_with(1, "-"),
            state_with(2, "01"),
            state_with(3, ""),
            state_with(4, "0"),
            state_with(4, "-1"),
            state_with(5, "true"),
            state_with(5, "2"),
            state_with(6, "4294967296"),
            state_with(7, "-"),
            state_with(7, "1"),
            state_with(7, "1,x"),
            state_with(7, &format!("1,{},{},{}", T + 6, T + 7, T + 8)),
            state_with(8, "-"),
            state_with(8, "02"),
            state_with(9, "localhost"),
            state_with(9, "2001:0db8::1"), // not as `Display` writes it
            // IPv4 in another spelling: decoding takes a parsed IPv4 address
            // as written, so the parser must refuse these.
            state_with(9, "192.0.2.07"),
            state_with(9, "192.000.2.7"),
            state_with(9, "0192.0.2.7"),
            state_with(9, "+192.0.2.7"),
            state_with(9, "192.0.2.7 "),
            state_with(9, "192.0.2"),
            state_with(9, "192.0.2.256"),
            state_with(9, "3221225991"),
            state_with(9, "0xc0.0.2.7"),
            state_with(10, "Mozilla/5.0"), // not a JSON string
            state_with(10, "\"a\" x"),
            // JSON, but not as encoding writes it.
            state_with(10, "\"Mozilla/5.0\" "),
            state_with(10, " \"Mozilla/5.0\""),
            state_with(10, "\"\\u004dozilla/5.0\""),
            state_with(10, "\"Mozilla\\/5.0\""),
            state_with(10, "\"Mozilla/5.0\"\t"),
            state_with(10, "\"\\ud83d\\ude00\""),
            format!("{header}\n{state}\n[{data}]"),
            format!("{header}\n{state}\n{data} trailing"),
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
