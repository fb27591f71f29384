//! Stored value → record decoding (`store/value.rs`: Redis values and
//! PostgreSQL's `record` column), three ways:
//! - arbitrary bytes: a record or `StoreError::Corrupt`, never a panic; a
//!   decoded record is valid, its header and state lines are exactly what
//!   encoding writes (the Lua scripts parse them), and it re-encodes to a
//!   value that decodes to the same record;
//! - a valid value with bytes spliced in or overwritten: the same;
//! - an arbitrary record that `validate()` accepts: its encoding decodes
//!   back to exactly that record.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use tower_hmac_session::__fuzz::{redis_decode, redis_encode};
use tower_hmac_session::{SessionRecord, StoreError};
use tower_hmac_session_fuzz::ArbRecord;

#[derive(Arbitrary, Debug)]
enum Edit {
    Overwrite(u16, u8),
    Insert(u16, Vec<u8>),
    Remove(u16, u8),
    /// Replace header field `n` (0..10) with the text.
    Field(u8, String),
}

#[derive(Arbitrary, Debug)]
enum Input {
    Bytes(Vec<u8>),
    Edited(ArbRecord, Vec<Edit>),
    Record(ArbRecord),
}

/// The header and state lines: everything before the second newline (left
/// out), or the whole value when it has fewer than two.
fn header(value: &[u8]) -> &[u8] {
    let mut lines = value.iter().enumerate().filter(|&(_, &b)| b == b'\n');
    let end = lines.nth(1).map_or(value.len(), |(i, _)| i);
    &value[..end]
}

fn check_decode(value: &[u8]) {
    match redis_decode(value) {
        Ok(record) => {
            assert_eq!(record.validate(), Ok(()), "a decoded record is valid");
            let encoded = redis_encode(&record);
            assert_eq!(
                header(&encoded),
                header(value),
                "the header and state lines are canonical"
            );
            round_trip(&record);
        }
        Err(StoreError::Corrupt { reason, .. }) => assert!(!reason.is_empty()),
        Err(other) => panic!("decoding failed with a non-corruption error: {other:?}"),
    }
}

fn round_trip(record: &SessionRecord) {
    let value = redis_encode(record);
    let again = redis_decode(&value).expect("an encoded valid record decodes");
    assert_eq!(&again, record, "record → value → record");
    assert_eq!(redis_encode(&again), value, "the encoding is canonical");
}

fuzz_target!(|input: Input| match input {
    Input::Bytes(bytes) => check_decode(&bytes),
    Input::Edited(record, edits) => {
        let record = record.record();
        if record.validate().is_err() {
            return;
        }
        let mut value = redis_encode(&record);
        for edit in &edits {
            let at = |i: u16, len: usize| usize::from(i) % (len + 1);
            match edit {
                Edit::Overwrite(i, b) => {
                    if !value.is_empty() {
                        let i = usize::from(*i) % value.len();
                        value[i] = *b;
                    }
                }
                Edit::Insert(i, bytes) => {
                    let i = at(*i, value.len());
                    value.splice(i..i, bytes.iter().copied());
                }
                Edit::Remove(i, n) => {
                    let i = at(*i, value.len());
                    let end = (i + usize::from(*n)).min(value.len());
                    value.drain(i..end);
                }
                Edit::Field(n, text) => {
                    let split = value
                        .iter()
                        .position(|&b| b == b'\n')
                        .unwrap_or(value.len());
                    let head = String::from_utf8_lossy(&value[..split]).into_owned();
                    let mut fields: Vec<&str> = head.split('|').collect();
                    let n = usize::from(*n) % fields.len().max(1);
                    if n < fields.len() {
                        fields[n] = text;
                    }
                    let mut next = fields.join("|").into_bytes();
                    next.extend_from_slice(&value[split..]);
                    value = next;
                }
            }
        }
        check_decode(&value);
    }
    Input::Record(record) => {
        let record = record.record();
        if record.validate().is_ok() {
            round_trip(&record);
        }
    }
});
