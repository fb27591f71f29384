//! What a request does to its session: one pure decision, no I/O.
//!
//! [`decide`] takes the record, the slot the request's secret matched, the
//! key ring's current version, the config, the time and whether the response
//! may be stored by shared caches, and returns a [`Decision`]: serve, reuse,
//! or serve and write one [`Maintenance`]. [`successor`] and [`apply`] build
//! the record that write stores. The layer only carries the decision out; the
//! table of cases at the bottom of this file is DESIGN.md's rotation rules,
//! row by row.
//!
//! Rotation in short (DESIGN.md, "Sliding expiry and rotation"):
//! - a confirmed current secret past its access ttl is **rotated**: it moves
//!   to the previous slot, *unconfirmed*, and a fresh random secret is sent;
//! - the first request with the unconfirmed current secret **confirms** it:
//!   only then does the previous secret's grace window start;
//! - the previous secret while the current is unconfirmed is served; after
//!   the grace it means the successor was lost, and the session is
//!   **re-rotated** (the lost successor becomes *superseded*);
//! - a previous secret after the grace of a confirmed successor, or a
//!   superseded secret, means two parties hold the session's cookies: **reuse**.

use std::time::Duration;

use time::OffsetDateTime;

use crate::config::SessionConfig;
use crate::keys::KeyVersion;
use crate::manager::saturating_add;
use crate::record::{Credential, PreviousCredential, SessionRecord, Slot};

/// What a request does to its session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Serve the session; nothing to write.
    Serve,
    /// Serve the session and, on the way out, write this.
    Maintain(Maintenance),
    /// Two parties hold the session's cookies: end it, serve anonymously.
    Reuse,
}

/// One write the way out makes. Each also slides the idle expiry where the
/// rules say so; only the two rotations send a cookie.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Maintenance {
    /// The first request with an unconfirmed current secret: start the
    /// previous secret's grace and the current one's access ttl. Re-keys the
    /// current credential too when it is under an old key version.
    Confirm {
        /// Re-key the current credential to the ring's current version.
        rekey: bool,
    },
    /// A fresh secret replaces the confirmed current one, which becomes the
    /// unconfirmed previous.
    Rotate,
    /// The previous secret came back after the grace while its successor is
    /// unconfirmed: the successor was lost. A fresh secret replaces it; the
    /// lost one becomes superseded.
    ReRotate,
    /// Move the matched credential to the ring's current version.
    Rekey {
        /// Slide the idle expiry in the same write.
        touch: bool,
    },
    /// Slide the idle expiry.
    Touch,
}

impl Maintenance {
    /// Whether the write issues a fresh secret (and so a cookie).
    pub(crate) fn issues_secret(self) -> bool {
        matches!(self, Self::Rotate | Self::ReRotate)
    }
}

/// Everything [`decide`] looks at.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Input<'a> {
    /// The record as the request found it.
    pub(crate) record: &'a SessionRecord,
    /// The slot the request's secret matched.
    pub(crate) slot: Slot,
    /// The key version of the matched credential.
    pub(crate) key_version: KeyVersion,
    /// The key ring's current version.
    pub(crate) current_version: KeyVersion,
    /// The configuration.
    pub(crate) config: &'a SessionConfig,
    /// The time of the decision (read again on the way out): what is due.
    pub(crate) now: OffsetDateTime,
    /// When the request arrived: whether it was in flight during a
    /// rotation is judged by this, however long the handler then ran.
    pub(crate) arrived_at: OffsetDateTime,
    /// Whether the response may be stored by shared caches: no secret may
    /// be issued on it. `false` when the response is not known yet.
    pub(crate) shared_cacheable: bool,
}

/// The decision for one request; see the module docs.
pub(crate) fn decide(input: Input<'_>) -> Decision {
    let Input {
        record,
        slot,
        key_version,
        current_version,
        config,
        now,
        arrived_at,
        shared_cacheable,
    } = input;
    match slot {
        Slot::Superseded => Decision::Reuse,
        Slot::Previous => {
            let Some(previous) = record.previous else {
                return Decision::Serve;
            };
            match previous.valid_until {
                // Confirmed successor: requests in flight are served during
                // the grace, and a later presentation is a copy in use.
                Some(until) if arrived_at < until => Decision::Serve,
                Some(_) => Decision::Reuse,
                // Unconfirmed successor: a request that arrived within the
                // grace of the rotation was in flight; one that arrived after
                // it means the successor was lost.
                None if arrived_at
                    < saturating_add(previous.rotated_at, config.rotation_grace())
                    || shared_cacheable =>
                {
                    touch_only(record, config, now)
                }
                None => Decision::Maintain(Maintenance::ReRotate),
            }
        }
        Slot::Current => {
            let rekey = key_version != current_version;
            if record.previous.is_some_and(|p| p.valid_until.is_none()) {
                return Decision::Maintain(Maintenance::Confirm { rekey });
            }
            let due = config.access_ttl().is_some() && now >= record.access_expires_at;
            if due && !shared_cacheable {
                return Decision::Maintain(Maintenance::Rotate);
            }
            match (rekey, touch_due(record, config, now)) {
                (true, touch) => Decision::Maintain(Maintenance::Rekey { touch }),
                (false, true) => Decision::Maintain(Maintenance::Touch),
                (false, false) => Decision::Serve,
            }
        }
    }
}

fn touch_only(record: &SessionRecord, config: &SessionConfig, now: OffsetDateTime) -> Decision {
    match touch_due(record, config, now) {
        true => Decision::Maintain(Maintenance::Touch),
        false => Decision::Serve,
    }
}

/// Whether a use at `now` should slide the idle expiry: at most once per
/// effective touch interval, and only if the expiry would move.
fn touch_due(record: &SessionRecord, config: &SessionConfig, now: OffsetDateTime) -> bool {
    let interval = config.effective_touch_interval(record.idle_timeout);
    now - record.last_seen_at >= interval && idle_expiry(record, now) > record.expires_at
}

/// The idle expiry of a session used at `now`: never past its absolute expiry.
pub(crate) fn idle_expiry(record: &SessionRecord, now: OffsetDateTime) -> OffsetDateTime {
    saturating_add(now, record.idle_timeout).min(record.absolute_expires_at)
}

/// When a secret issued at `now` is due for rotation.
pub(crate) fn access_expiry(
    config: &SessionConfig,
    now: OffsetDateTime,
    absolute_expires_at: OffsetDateTime,
) -> OffsetDateTime {
    match config.access_ttl() {
        Some(ttl) => saturating_add(now, ttl).min(absolute_expires_at),
        None => absolute_expires_at,
    }
}

/// The record a write replaces `record` with: the same, one generation on.
/// Apply data changes and at most one [`Maintenance`] to it.
pub(crate) fn successor(record: &SessionRecord) -> SessionRecord {
    let mut next = record.clone();
    next.generation = record.generation.wrapping_add(1);
    next
}

/// What [`apply`] needs besides the decision: the fresh credential a
/// rotation issues, and the matched secret's credential under the current
/// version for a re-key.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Credentials {
    /// A fresh secret's credential (rotate, re-rotate).
    pub(crate) fresh: Option<Credential>,
    /// The matched secret's credential under the current key version.
    pub(crate) rekeyed: Option<Credential>,
}

/// Applies `maintenance` at `now` to `next` (a [`successor`]).
pub(crate) fn apply(
    next: &mut SessionRecord,
    maintenance: Maintenance,
    config: &SessionConfig,
    now: OffsetDateTime,
    credentials: Credentials,
) {
    match maintenance {
        Maintenance::Confirm { rekey } => {
            if let Some(previous) = &mut next.previous {
                previous.valid_until = Some(saturating_add(now, config.rotation_grace()));
            }
            next.access_expires_at = access_expiry(config, now, next.absolute_expires_at);
            if let (true, Some(rekeyed)) = (rekey, credentials.rekeyed) {
                next.current = rekeyed;
            }
        }
        Maintenance::Rotate => {
            let Some(fresh) = credentials.fresh else {
                return;
            };
            next.previous = Some(PreviousCredential {
                credential: next.current,
                rotated_at: now,
                valid_until: None,
            });
            next.current = fresh;
            next.access_expires_at = access_expiry(config, now, next.absolute_expires_at);
        }
        Maintenance::ReRotate => {
            let (Some(fresh), Some(previous)) = (credentials.fresh, &mut next.previous) else {
                return;
            };
            previous.rotated_at = now;
            next.superseded = Some(next.current);
            next.current = fresh;
        }
        Maintenance::Rekey { touch } => {
            if let Some(rekeyed) = credentials.rekeyed {
                next.current = rekeyed;
            }
            if !touch {
                return;
            }
        }
        Maintenance::Touch => {}
    }
    touch(next, now);
}

/// Slides the idle expiry of `next` to a use at `now`.
pub(crate) fn touch(next: &mut SessionRecord, now: OffsetDateTime) {
    next.expires_at = idle_expiry(next, now).max(next.expires_at);
    next.last_seen_at = now.max(next.last_seen_at);
}

/// `Session::renew`: a fresh secret now; the previous and superseded
/// secrets become unknown (never "reuse": the browser's own requests in
/// flight must not end the session just renewed).
pub(crate) fn renew(
    next: &mut SessionRecord,
    fresh: Credential,
    config: &SessionConfig,
    now: OffsetDateTime,
) {
    next.current = fresh;
    next.previous = None;
    next.superseded = None;
    // A session before login is never rotated: its access expiry stays its
    // absolute one.
    if next.subject.is_some() {
        next.access_expires_at = access_expiry(config, now, next.absolute_expires_at);
    }
    touch(next, now);
}

/// The cookie's `Max-Age` for a session at `now`: to the absolute expiry for
/// a persistent session (the server decides when it ends), none otherwise.
pub(crate) fn cookie_max_age(record: &SessionRecord, now: OffsetDateTime) -> Option<Duration> {
    record.persistent.then(|| {
        (record.absolute_expires_at - now)
            .try_into()
            .unwrap_or_default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::LookupKey;
    use crate::record::{Data, SessionId};

    const T0: i64 = 1_893_456_000;

    fn at(secs: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(T0 + secs).unwrap()
    }

    fn credential(byte: u8, version: u32) -> Credential {
        Credential {
            lookup_key: LookupKey::from_bytes([byte; 32]),
            key_version: KeyVersion(version),
        }
    }

    /// access ttl 900 s, grace 60 s, touch 300 s, idle 7 days, absolute 30 days.
    fn config() -> SessionConfig {
        SessionConfig::default()
    }

    /// A session created at 0, last seen at `seen`, access expiring at 900.
    fn record(seen: i64) -> SessionRecord {
        SessionRecord {
            id: SessionId::from_bytes([1; 16]),
            generation: 3,
            subject: Some("user".into()),
            created_at: at(0),
            authenticated_at: Some(at(0)),
            last_seen_at: at(seen),
            expires_at: at(seen + 7 * 86_400),
            absolute_expires_at: at(30 * 86_400),
            idle_timeout: Duration::from_secs(7 * 86_400),
            persistent: true,
            access_expires_at: at(900),
            current: credential(1, 1),
            previous: None,
            superseded: None,
            revoked: None,
            user_agent: None,
            client_ip: None,
            data: Data::new(),
        }
    }

    fn unconfirmed(rotated_at: i64) -> SessionRecord {
        let mut r = record(rotated_at);
        r.previous = Some(PreviousCredential {
            credential: credential(2, 1),
            rotated_at: at(rotated_at),
            valid_until: None,
        });
        r
    }

    fn confirmed(until: i64) -> SessionRecord {
        let mut r = unconfirmed(0);
        if let Some(p) = &mut r.previous {
            p.valid_until = Some(at(until));
        }
        r
    }

    fn decide_at(record: &SessionRecord, slot: Slot, now: i64) -> Decision {
        decide_with(record, slot, 1, now, false)
    }

    fn decide_with(
        record: &SessionRecord,
        slot: Slot,
        version: u32,
        now: i64,
        shared_cacheable: bool,
    ) -> Decision {
        decide_full(record, slot, version, now, now, shared_cacheable)
    }

    fn decide_full(
        record: &SessionRecord,
        slot: Slot,
        version: u32,
        arrived: i64,
        now: i64,
        shared_cacheable: bool,
    ) -> Decision {
        let config = config();
        decide(Input {
            record,
            slot,
            key_version: KeyVersion(version),
            current_version: KeyVersion(1),
            config: &config,
            now: at(now),
            arrived_at: at(arrived),
            shared_cacheable,
        })
    }

    use Decision::{Maintain, Reuse, Serve};
    use Maintenance::{Confirm, ReRotate, Rekey, Rotate, Touch};

    /// DESIGN.md's rotation rules, one row per case.
    #[test]
    fn the_rotation_rules_case_by_case() {
        let cases: &[(&str, SessionRecord, Slot, i64, Decision)] = &[
            (
                "current, fresh, nothing due",
                record(0),
                Slot::Current,
                10,
                Serve,
            ),
            (
                "current, touch interval passed",
                record(0),
                Slot::Current,
                300,
                Maintain(Touch),
            ),
            (
                "current, access ttl passed: rotate",
                record(0),
                Slot::Current,
                900,
                Maintain(Rotate),
            ),
            (
                "current confirmed in grace, ttl passed: rotate",
                confirmed(950),
                Slot::Current,
                900,
                Maintain(Rotate),
            ),
            (
                "unconfirmed current presented: confirm, never rotate",
                unconfirmed(0),
                Slot::Current,
                5_000,
                Maintain(Confirm { rekey: false }),
            ),
            (
                "previous, successor unconfirmed, in flight",
                unconfirmed(0),
                Slot::Previous,
                30,
                Serve,
            ),
            (
                "previous, successor unconfirmed, just before the grace ends",
                unconfirmed(0),
                Slot::Previous,
                59,
                Serve,
            ),
            (
                "previous, successor unconfirmed, in flight, touch due: slides",
                {
                    let mut r = unconfirmed(400);
                    r.last_seen_at = at(0);
                    r
                },
                Slot::Previous,
                420,
                Maintain(Touch),
            ),
            (
                "previous, successor unconfirmed, after the grace: re-rotate",
                unconfirmed(0),
                Slot::Previous,
                60,
                Maintain(ReRotate),
            ),
            (
                "previous, successor unconfirmed, long after: re-rotate",
                unconfirmed(0),
                Slot::Previous,
                86_400,
                Maintain(ReRotate),
            ),
            (
                "previous, successor confirmed, in grace",
                confirmed(100),
                Slot::Previous,
                99,
                Serve,
            ),
            (
                "previous, successor confirmed, grace over: reuse",
                confirmed(100),
                Slot::Previous,
                100,
                Reuse,
            ),
            (
                "superseded: reuse",
                unconfirmed(0),
                Slot::Superseded,
                1,
                Reuse,
            ),
        ];
        for (name, record, slot, now, expected) in cases {
            assert_eq!(decide_at(record, *slot, *now), *expected, "{name}");
        }
    }

    #[test]
    fn being_in_flight_is_judged_by_the_arrival_time() {
        // Arrived within the grace of the rotation, left long after it: a
        // request in flight, not a lost successor.
        // (It slides, being a use past the touch interval; it never re-rotates.)
        assert_eq!(
            decide_full(&unconfirmed(0), Slot::Previous, 1, 30, 500, false),
            Maintain(Touch)
        );
        assert_eq!(
            decide_full(&unconfirmed(0), Slot::Previous, 1, 30, 200, false),
            Serve
        );
        assert_eq!(
            decide_full(&unconfirmed(0), Slot::Previous, 1, 61, 61, false),
            Maintain(ReRotate)
        );
        // Arrived within the grace of a confirmed successor: served, even if
        // the grace is over when it leaves.
        assert_eq!(
            decide_full(&confirmed(100), Slot::Previous, 1, 99, 500, false),
            Serve
        );
    }

    #[test]
    fn an_old_key_version_is_rekeyed_with_whatever_else_is_due() {
        assert_eq!(
            decide_with(&record(0), Slot::Current, 0, 10, false),
            Maintain(Rekey { touch: false })
        );
        assert_eq!(
            decide_with(&record(0), Slot::Current, 0, 300, false),
            Maintain(Rekey { touch: true })
        );
        assert_eq!(
            decide_with(&unconfirmed(0), Slot::Current, 0, 10, false),
            Maintain(Confirm { rekey: true })
        );
        // Rotation re-keys by itself: the fresh secret is under the current version.
        assert_eq!(
            decide_with(&record(0), Slot::Current, 0, 900, false),
            Maintain(Rotate)
        );
    }

    #[test]
    fn no_secret_is_issued_on_a_shared_cacheable_response() {
        assert_eq!(
            decide_with(&record(0), Slot::Current, 1, 900, true),
            Maintain(Touch)
        );
        assert_eq!(
            decide_with(&record(800), Slot::Current, 1, 900, true),
            Serve
        );
        assert_eq!(
            decide_with(&unconfirmed(0), Slot::Previous, 1, 500, true),
            Maintain(Touch)
        );
        // Confirming sends nothing, so it still happens.
        assert_eq!(
            decide_with(&unconfirmed(0), Slot::Current, 1, 500, true),
            Maintain(Confirm { rekey: false })
        );
    }

    #[test]
    fn touch_interval_is_at_most_half_the_idle_timeout() {
        let mut short = record(0);
        short.idle_timeout = Duration::from_secs(120);
        short.expires_at = at(120);
        assert_eq!(decide_at(&short, Slot::Current, 59), Serve);
        assert_eq!(decide_at(&short, Slot::Current, 60), Maintain(Touch));
    }

    #[test]
    fn a_session_at_its_absolute_expiry_is_not_touched() {
        let mut capped = record(0);
        capped.absolute_expires_at = capped.expires_at;
        capped.access_expires_at = capped.expires_at;
        assert_eq!(decide_with(&capped, Slot::Current, 1, 400, false), Serve);
    }

    fn fresh() -> Credentials {
        Credentials {
            fresh: Some(credential(9, 1)),
            rekeyed: Some(credential(8, 1)),
        }
    }

    #[test]
    fn rotate_keeps_the_old_secret_unconfirmed() {
        let config = config();
        let old = record(0);
        let mut next = successor(&old);
        apply(&mut next, Rotate, &config, at(900), fresh());
        assert_eq!(next.generation, old.generation + 1);
        assert_eq!(next.current, credential(9, 1));
        let previous = next.previous.unwrap();
        assert_eq!(previous.credential, old.current);
        assert_eq!(previous.rotated_at, at(900));
        assert_eq!(previous.valid_until, None);
        assert_eq!(next.last_seen_at, at(900));
        assert_eq!(next.access_expires_at, at(1_800));
    }

    #[test]
    fn confirm_starts_the_grace_and_the_access_ttl() {
        let config = config();
        let mut next = successor(&unconfirmed(0));
        apply(
            &mut next,
            Confirm { rekey: true },
            &config,
            at(500),
            fresh(),
        );
        assert_eq!(next.previous.unwrap().valid_until, Some(at(560)));
        assert_eq!(next.access_expires_at, at(1_400));
        assert_eq!(next.current, credential(8, 1));
    }

    #[test]
    fn re_rotation_supersedes_the_lost_successor() {
        let config = config();
        let old = unconfirmed(0);
        let mut next = successor(&old);
        apply(&mut next, ReRotate, &config, at(100), fresh());
        assert_eq!(next.superseded, Some(old.current));
        assert_eq!(next.current, credential(9, 1));
        let previous = next.previous.unwrap();
        assert_eq!(previous.credential, old.previous.unwrap().credential);
        assert_eq!(previous.rotated_at, at(100));
        assert_eq!(previous.valid_until, None);
    }

    #[test]
    fn renew_forgets_every_older_secret() {
        let config = config();
        let mut old = unconfirmed(0);
        old.superseded = Some(credential(7, 1));
        let mut next = successor(&old);
        renew(&mut next, credential(9, 1), &config, at(10));
        assert_eq!(next.current, credential(9, 1));
        assert_eq!(next.previous, None);
        assert_eq!(next.superseded, None);
        assert!(next.validate().is_ok());
    }

    #[test]
    fn touch_never_passes_the_absolute_expiry_nor_moves_back() {
        let mut next = record(0);
        next.absolute_expires_at = at(1_000);
        next.expires_at = at(800);
        touch(&mut next, at(500));
        assert_eq!(next.expires_at, at(1_000));
        let mut later = record(100);
        touch(&mut later, at(50));
        assert_eq!(later.last_seen_at, at(100));
    }

    #[test]
    fn cookies_last_to_the_absolute_expiry_or_the_browser_session() {
        let mut r = record(0);
        assert_eq!(
            cookie_max_age(&r, at(86_400)),
            Some(Duration::from_secs(29 * 86_400))
        );
        r.persistent = false;
        assert_eq!(cookie_max_age(&r, at(0)), None);
    }
}
