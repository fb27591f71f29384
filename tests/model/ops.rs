//! The operations a model run is made of, and how proptest generates them.

use proptest::prelude::*;

/// How many clients (browsers) a run has, and how many subjects log in.
pub(crate) const CLIENTS: u8 = 3;
pub(crate) const SUBJECTS: u8 = 2;

/// Which cookie values a request carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Cookie {
    /// The client's cookie jar, as its last `Set-Cookie` left it.
    Jar,
    /// No cookie at all.
    None,
    /// A secret the client held earlier (index into its history, modulo).
    Old(u8),
    /// The jar's value and an earlier one, both in one `Cookie` header.
    JarAndOld(u8),
}

/// What the `/model` handler does with the session's data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Data {
    Read,
    Set(u8, u8),
    Remove(u8),
}

/// One request to `/model`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Call {
    pub(crate) client: u8,
    pub(crate) cookie: Cookie,
    pub(crate) data: Data,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    /// A request; `lost`: its response never reaches the client; `slow`:
    /// the handler runs this many seconds.
    Request {
        call: Call,
        lost: bool,
        slow: u32,
    },
    /// Two requests resolved together, then finished in either order.
    Pair(Call, Call),
    /// `POST /login` with the client's jar.
    Login {
        client: u8,
        user: u8,
        lost: bool,
    },
    Logout {
        client: u8,
    },
    LogoutEverywhere {
        client: u8,
    },
    LogoutOthers {
        client: u8,
    },
    Renew {
        client: u8,
    },
    /// `Session::revoke_device` of the `target`-th session the model knows.
    RevokeDevice {
        client: u8,
        target: u8,
    },
    /// `SessionManager::revoke_all_for_subject` (an admin).
    RevokeAll {
        user: u8,
    },
    /// Client `to` gets a copy of client `from`'s cookie.
    Share {
        from: u8,
        to: u8,
    },
    /// Add a key version and make it current.
    AddKey,
    /// Remove the oldest version that is not current.
    RetireKey,
    /// Move the clock on.
    Advance(u32),
}

/// Client 0 more often than the others, so that one session lives long
/// enough to rotate, be confirmed, be copied.
fn client() -> impl Strategy<Value = u8> {
    prop_oneof![3 => Just(0), 2 => 0..CLIENTS]
}

fn cookie() -> impl Strategy<Value = Cookie> {
    prop_oneof![
        10 => Just(Cookie::Jar),
        1 => Just(Cookie::None),
        3 => any::<u8>().prop_map(Cookie::Old),
        1 => any::<u8>().prop_map(Cookie::JarAndOld),
    ]
}

fn data() -> impl Strategy<Value = Data> {
    prop_oneof![
        4 => Just(Data::Read),
        3 => (0..3u8, 0..3u8).prop_map(|(k, v)| Data::Set(k, v)),
        2 => (0..3u8).prop_map(Data::Remove),
    ]
}

fn call() -> impl Strategy<Value = Call> {
    (client(), cookie(), data()).prop_map(|(client, cookie, data)| Call {
        client,
        cookie,
        data,
    })
}

/// Clock steps around every boundary of the model's config (touch 300 s,
/// grace 60 s, access ttl 900 s, pre-login idle 1800 s, idle 3600 s,
/// absolute 14400 s), and anything up to an hour.
fn step() -> impl Strategy<Value = u32> {
    prop_oneof![
        // The steps rotation turns on: past the grace, past the access ttl.
        5 => prop::sample::select(vec![30u32, 61, 120, 901, 1000]),
        3 => prop::sample::select(vec![
            1u32, 30, 59, 60, 61, 120, 299, 300, 301, 600, 899, 900, 901, 1799, 1800, 1801,
            3599, 3600, 3601, 7200, 14_400,
        ]),
        1 => 0..3_600u32,
    ]
}

pub(crate) fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        16 => (call(), prop::bool::weighted(0.15), prop_oneof![6 => Just(0u32), 1 => step()])
            .prop_map(|(call, lost, slow)| Op::Request { call, lost, slow }),
        3 => (call(), call()).prop_map(|(a, b)| Op::Pair(a, b)),
        2 => (client(), 0..SUBJECTS, prop::bool::weighted(0.15))
            .prop_map(|(client, user, lost)| Op::Login { client, user, lost }),
        1 => client().prop_map(|client| Op::Logout { client }),
        1 => client().prop_map(|client| Op::LogoutEverywhere { client }),
        1 => client().prop_map(|client| Op::LogoutOthers { client }),
        1 => client().prop_map(|client| Op::Renew { client }),
        1 => (client(), any::<u8>()).prop_map(|(client, target)| Op::RevokeDevice { client, target }),
        1 => (0..SUBJECTS).prop_map(|user| Op::RevokeAll { user }),
        2 => (client(), client()).prop_map(|(from, to)| Op::Share { from, to }),
        1 => Just(Op::AddKey),
        1 => Just(Op::RetireKey),
        8 => step().prop_map(Op::Advance),
    ]
}

/// Mostly a secret from before the rotation.
fn old_cookie() -> impl Strategy<Value = Cookie> {
    prop_oneof![
        4 => any::<u8>().prop_map(Cookie::Old),
        1 => any::<u8>().prop_map(Cookie::JarAndOld),
        1 => Just(Cookie::Jar),
    ]
}

/// One client's session walked through a rotation, so that the rare rules
/// are reached in every run, not by luck: a login (its cookie perhaps
/// copied to another client), the access ttl passing, a request that
/// rotates (its answer perhaps lost), perhaps a new key, the clock moved
/// around the grace, a request with the jar (confirm, re-rotate, or re-key),
/// the clock moved again, and a request from it or the copy's holder with
/// an old or mixed cookie (reuse, a superseded secret, two sessions, or nothing).
fn rotation_story() -> impl Strategy<Value = Vec<Op>> {
    let around_grace = || prop::sample::select(vec![30u32, 61, 120]);
    (
        (client(), 0..SUBJECTS, prop::option::weighted(0.4, client())),
        (prop::bool::weighted(0.35), prop::bool::weighted(0.25)),
        (around_grace(), around_grace()),
        (any::<bool>(), old_cookie(), data()),
    )
        .prop_map(
            |((c, user, copy_to), (lost, add_key), (first, second), (by_copy, cookie, data))| {
                let last = copy_to.filter(|_| by_copy).unwrap_or(c);
                let read = |client, cookie, lost| Op::Request {
                    call: Call {
                        client,
                        cookie,
                        data: Data::Read,
                    },
                    lost,
                    slow: 0,
                };
                let mut story = vec![Op::Login {
                    client: c,
                    user,
                    lost: false,
                }];
                story.extend(copy_to.map(|to| Op::Share { from: c, to }));
                story.push(Op::Advance(901));
                story.push(read(c, Cookie::Jar, lost));
                if add_key {
                    story.push(Op::AddKey);
                }
                story.push(Op::Advance(first));
                story.push(read(c, Cookie::Jar, false));
                story.push(Op::Advance(second));
                story.push(Op::Request {
                    call: Call {
                        client: last,
                        cookie,
                        data,
                    },
                    lost: false,
                    slow: 0,
                });
                story
            },
        )
}

/// Random operations with, now and then, a [`rotation_story`]; at most
/// `max` in all.
pub(crate) fn ops(max: usize) -> impl Strategy<Value = Vec<Op>> {
    let chunk = prop_oneof![
        12 => op().prop_map(|op| vec![op]),
        1 => rotation_story(),
    ];
    prop::collection::vec(chunk, (max / 4).max(1)..=max).prop_map(move |chunks| {
        let mut ops: Vec<Op> = chunks.into_iter().flatten().collect();
        ops.truncate(max);
        ops
    })
}
