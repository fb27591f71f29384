//! Store faults under concurrent load, through the real Router: many
//! clients on many sessions, requests in flight while errors, latency,
//! hangs and writes that apply but report failure switch on and off. No
//! request outlives what its store calls may take under the store timeout,
//! cookie requests answer 503 while the store is down, no cookie is cleared
//! or issued wrongly, everything recovers, and the store holds the same
//! sessions afterwards: none lost, none revived, none created.
//!
//! Real servers (PostgreSQL backends terminated, Redis connections killed,
//! a Redis server restarted) are in `faults_servers.rs`.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::faults::{Fault, FaultyStore, Op, Rng, Snapshot, faulty_harness};
use common::{Harness, TestResponse, request, ring};
use http::StatusCode;
use tokio::time::Instant;
use tower::ServiceExt as _;
use tower_hmac_session::SessionConfig;

/// Who a client is to the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Logged in; follows every `Set-Cookie`.
    Live,
    /// Logged out, still sending its old cookie (a stale tab).
    Revoked,
    /// Its session passed its idle timeout.
    Expired,
    /// A well-formed secret the store never saw.
    Stranger,
}

struct Client {
    kind: Kind,
    subject: String,
    jar: Mutex<String>,
    /// Data keys whose write was answered 200: they must persist.
    acked: Mutex<Vec<String>>,
}

impl Client {
    fn secret(&self) -> String {
        self.jar.lock().unwrap().clone()
    }
}

/// Sets up 24 live, 4 revoked, 4 expired sessions and 4 strangers; the
/// clock ends 10 minutes after the logins.
async fn population(h: &Harness) -> Vec<Arc<Client>> {
    let mut clients = Vec::new();
    let client = |kind, subject: String, secret: String| {
        Arc::new(Client {
            kind,
            subject,
            jar: Mutex::new(secret),
            acked: Mutex::new(Vec::new()),
        })
    };
    for i in 0..24 {
        let user = format!("live{i}");
        clients.push(client(Kind::Live, user.clone(), h.login(&user).await));
    }
    for i in 0..4 {
        let user = format!("gone{i}");
        let secret = h.login(&user).await;
        let out = h.call("POST", "/logout", Some(&secret)).await;
        assert!(out.clears_cookie());
        clients.push(client(Kind::Revoked, user, secret));
    }
    for i in 0..4 {
        let user = format!("idle{i}");
        let res = h
            .call("POST", &format!("/login-short?user={user}"), None)
            .await;
        assert_eq!(res.status, StatusCode::OK, "{}", res.body);
        clients.push(client(Kind::Expired, user, res.new_secret().unwrap()));
    }
    for i in 0..4 {
        clients.push(client(
            Kind::Stranger,
            format!("stranger{i}"),
            common::stranger(),
        ));
    }
    // Past the short sessions' 5-minute idle timeout; the others live on.
    h.advance(600);
    clients
}

/// What a wave saw.
#[derive(Debug, Default)]
struct Wave {
    ok: usize,
    unavailable: usize,
    unauthorized: usize,
    issued: usize,
    slowest: Duration,
}

/// One request of `client`, checked against the rules that hold in every
/// fault mode; returns the response and how long it took.
async fn one(h: &Harness, client: &Client, method: &str, uri: &str) -> (TestResponse, Duration) {
    let secret = client.secret();
    let started = Instant::now();
    let res = h.call(method, uri, Some(&secret)).await;
    let took = started.elapsed();
    let what = format!("{:?} {} {method} {uri}", client.kind, client.subject);
    assert!(
        !res.clears_cookie(),
        "{what}: a cookie was cleared ({})",
        res.status
    );
    match client.kind {
        Kind::Live => {
            assert!(
                matches!(res.status, StatusCode::OK | StatusCode::SERVICE_UNAVAILABLE),
                "{what}: {} {}",
                res.status,
                res.body
            );
            if res.status == StatusCode::SERVICE_UNAVAILABLE {
                assert!(res.raw_set_cookies.is_empty(), "{what}: a 503 set a cookie");
                assert_eq!(res.body, "session store unavailable", "{what}");
            }
            if let Some(new) = res.new_secret() {
                assert_eq!(res.status, StatusCode::OK, "{what}");
                *client.jar.lock().unwrap() = new;
            }
        }
        Kind::Revoked | Kind::Expired | Kind::Stranger => {
            assert!(res.raw_set_cookies.is_empty(), "{what}: {res:?}");
            match res.status {
                StatusCode::UNAUTHORIZED => assert_eq!(uri, "/me", "{what}"),
                StatusCode::OK => assert!(
                    res.body == "anonymous" || res.body == "false",
                    "{what}: served {:?}",
                    res.body
                ),
                StatusCode::SERVICE_UNAVAILABLE => {}
                other => panic!("{what}: {other} {}", res.body),
            }
        }
    }
    (res, took)
}

/// Every client sends its requests at once (3 each): live clients read,
/// write one data key and read again; the others read and log out.
async fn wave(h: &Harness, clients: &[Arc<Client>], n: usize) -> (Wave, Vec<(Kind, StatusCode)>) {
    let mut tasks = Vec::new();
    for client in clients {
        let requests: Vec<(&str, String)> = match client.kind {
            Kind::Live => vec![
                ("GET", "/me".into()),
                ("POST", format!("/attr?key=w{n}&value=v{n}")),
                ("GET", "/maybe".into()),
            ],
            _ => vec![
                ("GET", "/me".into()),
                ("GET", "/maybe".into()),
                ("POST", "/logout".into()),
            ],
        };
        for (method, uri) in requests {
            let (h, client) = (h.clone_handle(), client.clone());
            tasks.push(tokio::spawn(async move {
                let (res, took) = one(&h, &client, method, &uri).await;
                if res.status == StatusCode::OK && uri.starts_with("/attr") {
                    client.acked.lock().unwrap().push(format!("w{n}"));
                }
                (client.kind, res.status, res.new_secret().is_some(), took)
            }));
        }
    }
    let mut out = Wave::default();
    let mut statuses = Vec::new();
    for task in tasks {
        let (kind, status, issued, took) = task.await.unwrap();
        match status {
            StatusCode::OK => out.ok += 1,
            StatusCode::SERVICE_UNAVAILABLE => out.unavailable += 1,
            StatusCode::UNAUTHORIZED => out.unauthorized += 1,
            _ => {}
        }
        out.issued += usize::from(issued);
        out.slowest = out.slowest.max(took);
        statuses.push((kind, status));
    }
    (out, statuses)
}

trait CloneHandle {
    fn clone_handle(&self) -> Harness;
}

impl CloneHandle for Harness {
    fn clone_handle(&self) -> Harness {
        Harness {
            store: self.store.clone(),
            manager: self.manager.clone(),
            clock: self.clock.clone(),
            router: self.router.clone(),
        }
    }
}

const TIMEOUT: Duration = Duration::from_millis(250);

fn config(timeout: Duration) -> SessionConfig {
    SessionConfig::builder()
        .access_ttl(Some(Duration::from_secs(900)))
        .rotation_grace(Duration::from_secs(60))
        .touch_interval(Duration::from_secs(60))
        .store_timeout(Some(timeout))
        .build()
        .unwrap()
}

/// After healing: every live client is served as itself and reads back
/// every data key it was told was saved; the other clients stay out.
async fn assert_recovered(h: &Harness, clients: &[Arc<Client>]) {
    for client in clients {
        let res = h.call("GET", "/me", Some(&client.secret())).await;
        if client.kind == Kind::Live {
            assert_eq!(
                (res.status, res.body.as_str()),
                (StatusCode::OK, client.subject.as_str()),
                "{} did not recover",
                client.subject
            );
            if let Some(new) = res.new_secret() {
                *client.jar.lock().unwrap() = new;
            }
            let acked = client.acked.lock().unwrap().clone();
            assert!(
                !acked.is_empty(),
                "{}: no write ever succeeded",
                client.subject
            );
            for key in acked {
                let read = h
                    .call("GET", &format!("/attr?key={key}"), Some(&client.secret()))
                    .await;
                assert_eq!(read.body, format!("v{}", &key[1..]), "{}", client.subject);
            }
        } else {
            assert_eq!(res.status, StatusCode::UNAUTHORIZED, "{:?}", client.kind);
            assert!(res.raw_set_cookies.is_empty());
        }
    }
}

/// Waves of concurrent requests, each under one fault mode, with the
/// session clock moved between them so touches, rotations, confirmations
/// and re-rotations are due while the store fails. Tokio's clock is
/// paused: hung calls time out in virtual time, exactly, and the bounds
/// below are exact.
#[tokio::test(start_paused = true)]
async fn fault_modes_under_concurrent_load_keep_every_session_and_never_hang() {
    let (h, faults) = faulty_harness(config(TIMEOUT), ring(1, &[1]));
    let clients = population(&h).await;
    let before = Snapshot::of(&h);
    assert_eq!(before.live(), 24);

    // (name, faults, session clock advance before the wave, slowest allowed)
    type Setup = fn(&FaultyStore);
    let modes: Vec<(&str, Setup, u64, Duration)> = vec![
        ("healthy", |_| {}, 0, Duration::ZERO),
        (
            "reads fail",
            |f| f.set_each(&Op::READS, Fault::Error),
            0,
            Duration::ZERO,
        ),
        (
            "writes fail, rotation due",
            |f| f.set_each(&Op::WRITES, Fault::Error),
            901,
            Duration::ZERO,
        ),
        ("everything hangs", |f| f.set_all(Fault::Hang), 0, TIMEOUT),
        // A data write: its replace hangs, the read-back answers: one timeout.
        (
            "writes hang",
            |f| f.set_each(&Op::WRITES, Fault::Hang),
            0,
            TIMEOUT,
        ),
        // Rotations and data writes apply, their answers are lost.
        (
            "writes apply then fail",
            |f| f.set_each(&Op::WRITES, Fault::ApplyThenFail),
            0,
            Duration::ZERO,
        ),
        // Past the grace: the lost successors are re-rotated, answers lost again.
        (
            "writes apply then hang, grace over",
            |f| f.set_each(&Op::WRITES, Fault::ApplyThenHang),
            120,
            TIMEOUT,
        ),
        // A write that applied and a read-back that fails: 503, applied.
        (
            "write answers lost, reads fail",
            |f| {
                f.set_each(&Op::WRITES, Fault::ApplyThenFail);
                f.set(Op::GetActive, Fault::Error);
            },
            120,
            Duration::ZERO,
        ),
        // find, replace, get_active: at most three calls in a row.
        // Lookup, then up to three writes with two lost compare-and-swaps
        // (the client's other two requests wrote first) and their re-reads.
        (
            "latency",
            |f| f.set_all(Fault::Latency(Duration::from_millis(40))),
            901,
            6 * Duration::from_millis(40),
        ),
        (
            "lookups slower than the timeout",
            |f| f.set(Op::FindActive, Fault::Latency(2 * TIMEOUT)),
            0,
            TIMEOUT,
        ),
        ("healthy again", |_| {}, 61, Duration::ZERO),
    ];
    for (n, (name, setup, advance, slowest)) in modes.into_iter().enumerate() {
        faults.heal();
        h.advance(advance);
        setup(&faults);
        let (seen, statuses) = wave(&h, &clients, n).await;
        eprintln!("{name}: {seen:?}");
        assert!(
            seen.slowest <= slowest,
            "{name}: a request took {:?}, more than {slowest:?}",
            seen.slowest
        );
        let live = |s: StatusCode| {
            statuses
                .iter()
                .filter(|(k, st)| *k == Kind::Live && *st == s)
                .count()
        };
        match name {
            "healthy" | "healthy again" | "latency" => {
                assert_eq!(seen.unavailable, 0, "{name}")
            }
            "reads fail" | "everything hangs" | "lookups slower than the timeout" => {
                // Fail closed: every request with a cookie answers 503.
                assert_eq!(seen.unavailable, statuses.len(), "{name}");
                assert_eq!(seen.issued, 0, "{name}");
            }
            "writes fail, rotation due" | "writes hang" => {
                // Reads and logouts of unknown cookies are served; every
                // live data write fails and says so; no rotation is sent.
                assert_eq!(live(StatusCode::SERVICE_UNAVAILABLE), 24, "{name}");
                assert_eq!(live(StatusCode::OK), 48, "{name}");
                assert_eq!(seen.issued, 0, "{name}");
            }
            _ => {}
        }
        // Whatever the fault, a live session is never refused as unknown.
        assert_eq!(live(StatusCode::UNAUTHORIZED), 0, "{name}");
    }
    faults.heal();
    assert!(faults.injected() > 0);
    assert_recovered(&h, &clients).await;
    let after = Snapshot::of(&h);
    before.assert_nothing_lost_or_revived(&after);
    // The faults hit sessions that were rotating: every live session has a
    // new current secret, and lost successors were re-rotated.
    let rotated = before
        .records
        .values()
        .filter(|r| r.is_active(before.at))
        .filter(|r| after.records[&r.id].current != r.current)
        .count();
    assert_eq!(rotated, 24);
    assert!(after.records.values().any(|r| r.superseded.is_some()));
}

/// Faults switch at random every few milliseconds while waves of requests
/// are in flight; no request may take longer than `bound`.
async fn chaos(
    h: &Harness,
    faults: &Arc<FaultyStore>,
    clients: &[Arc<Client>],
    timeout: Duration,
    bound: Duration,
) {
    let stop = Arc::new(AtomicBool::new(false));
    let toggler = {
        let (faults, stop) = (faults.clone(), stop.clone());
        tokio::spawn(async move {
            let mut rng = Rng::new(0x5eed);
            let choices = [
                Fault::None,
                Fault::None,
                Fault::Error,
                Fault::Hang,
                Fault::Latency(timeout / 10),
                Fault::Latency(timeout * 2),
                Fault::ApplyThenFail,
                Fault::ApplyThenHang,
            ];
            let mut toggles = 0u32;
            while !stop.load(Ordering::SeqCst) {
                for op in Op::ALL {
                    faults.set(op, choices[rng.below(choices.len() as u64) as usize]);
                }
                toggles += 1;
                tokio::time::sleep(timeout / 5).await;
            }
            faults.heal();
            toggles
        })
    };
    let mut unavailable = 0;
    let mut slowest = Duration::ZERO;
    for n in 0..6 {
        h.advance([0, 61, 901, 120, 61, 30][n]);
        let (seen, _) = wave(h, clients, 100 + n).await;
        unavailable += seen.unavailable;
        slowest = slowest.max(seen.slowest);
    }
    stop.store(true, Ordering::SeqCst);
    let toggles = toggler.await.unwrap();
    // Healed: a wave with every request served.
    let (healed, _) = wave(h, clients, 200).await;
    assert_eq!(healed.unavailable, 0, "{healed:?}");
    eprintln!("chaos: {toggles} toggles, {unavailable} answers 503, slowest {slowest:?}");
    assert!(toggles >= 5, "the faults changed while requests ran");
    assert!(unavailable > 0, "the faults were felt");
    assert!(
        slowest <= bound,
        "a request took {slowest:?} (bound {bound:?}) with a store timeout of {timeout:?}"
    );
}

/// The most store calls one request of a wave makes: the lookup, then a
/// write and its read-back, and two more of each for compare-and-swaps lost
/// to the client's two other requests in the wave.
const STORE_CALLS_PER_REQUEST: u32 = 7;

#[tokio::test(start_paused = true)]
async fn faults_switching_while_requests_run_lose_and_revive_nothing() {
    let (h, faults) = faulty_harness(config(TIMEOUT), ring(1, &[1]));
    let clients = population(&h).await;
    let before = Snapshot::of(&h);
    // Virtual time is exact: at most three calls (lookup, write, read-back)
    // run into the timeout; the compare-and-swaps lost to the client's two
    // other requests add a fast write and re-read each (at most the
    // 0.1x-timeout latency fault each).
    let bound = 3 * TIMEOUT + TIMEOUT * 4 / 10;
    chaos(&h, &faults, &clients, TIMEOUT, bound).await;
    assert_recovered(&h, &clients).await;
    before.assert_nothing_lost_or_revived(&Snapshot::of(&h));
}

/// The same on a multi-threaded runtime in real time: requests really run
/// in parallel with the toggling. The bound is real time, where a loaded
/// two-core CI machine may delay any await by far more than the virtual-time
/// test's exact margins: it is the store timeout for every store call a
/// request can make (each call is cut off there, whatever the store does)
/// plus a generous second of scheduling slack. It still catches what it is
/// for: a request that waits on a hung store without a timeout never ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn faults_switching_on_a_multi_threaded_runtime_lose_and_revive_nothing() {
    let timeout = Duration::from_millis(100);
    let (h, faults) = faulty_harness(config(timeout), ring(1, &[1]));
    let clients = population(&h).await;
    let before = Snapshot::of(&h);
    let bound = STORE_CALLS_PER_REQUEST * timeout + Duration::from_secs(1);
    chaos(&h, &faults, &clients, timeout, bound).await;
    assert_recovered(&h, &clients).await;
    before.assert_nothing_lost_or_revived(&Snapshot::of(&h));
}

/// A hung store is cut off at the store timeout, per request, however many
/// requests wait on it at once.
#[tokio::test(start_paused = true)]
async fn a_thousand_requests_on_a_hung_store_all_answer_503_at_the_timeout() {
    let (h, faults) = faulty_harness(config(TIMEOUT), ring(1, &[1]));
    let secrets: Vec<String> = logins(&h, 50).await;
    faults.set_all(Fault::Hang);
    let started = Instant::now();
    let tasks: Vec<_> = (0..1000)
        .map(|i| {
            let router = h.router.clone();
            let req = request("GET", "/me", Some(&secrets[i % secrets.len()]));
            tokio::spawn(async move {
                let res = TestResponse::from(router.oneshot(req).await.unwrap()).await;
                (res, Instant::now())
            })
        })
        .collect();
    for task in tasks {
        let (res, done) = task.await.unwrap();
        assert_eq!(res.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(res.raw_set_cookies.is_empty());
        // At the timeout: not before (no early give-up), not after (the
        // timer's millisecond resolution aside).
        let took = done - started;
        assert!(
            took >= TIMEOUT && took <= TIMEOUT + Duration::from_millis(1),
            "{took:?}"
        );
    }
    assert_eq!(faults.calls(Op::FindActive), 1000);
    faults.heal();
    for secret in &secrets {
        assert_eq!(
            h.call("GET", "/me", Some(secret)).await.status,
            StatusCode::OK
        );
    }
}

async fn logins(h: &Harness, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    for i in 0..n {
        out.push(h.login(&format!("u{i}")).await);
    }
    out
}

/// A logout, a revoke-all and a device revocation during an outage fail
/// with 503 and keep both the session and the cookie; after it they work,
/// and what they revoked stays revoked through a second outage, in which
/// lookups work and every write (a rotation, a data write, a renewal)
/// applies and then reports a failure: each is reported as applied, the
/// data is acknowledged and stored, and the client keeps its session.
#[tokio::test(start_paused = true)]
async fn revocations_during_an_outage_change_nothing_and_stay_done_after_it() {
    let (h, faults) = faulty_harness(config(TIMEOUT), ring(1, &[1]));
    let a = h.login("alice").await;
    let a2 = h.login("alice").await;
    let b = h.login("bob").await;
    let before = Snapshot::of(&h);
    for fault in [Fault::Error, Fault::Hang] {
        faults.set_each(&Op::WRITES, fault);
        for uri in ["/logout", "/logout-everywhere", "/logout-others", "/renew"] {
            let res = h.call("POST", uri, Some(&a)).await;
            assert_eq!(
                res.status,
                StatusCode::SERVICE_UNAVAILABLE,
                "{uri} {fault:?}"
            );
            assert!(res.raw_set_cookies.is_empty(), "{uri} {fault:?}");
        }
        faults.heal();
        before.assert_nothing_lost_or_revived(&Snapshot::of(&h));
    }
    // After the outage: alice logs out everywhere; bob stays.
    let res = h.call("POST", "/logout-everywhere", Some(&a)).await;
    assert_eq!((res.status, res.body.as_str()), (StatusCode::OK, "2"));
    assert!(res.clears_cookie());
    let revoked = Snapshot::of(&h);
    // A second outage in which lookups work and every write applies but
    // its answer is lost, with bob due for a rotation: the writes really
    // happen, and the manager's read-back tells each request that its
    // write applied, so the client hears what the store holds.
    faults.set_each(&Op::WRITES, Fault::ApplyThenFail);
    h.advance(901);
    let injected = faults.injected();
    // Revoked cookies stay out; nothing is written for them.
    for s in [&a, &a2] {
        let res = h.call("GET", "/me", Some(s)).await;
        assert_eq!(res.status, StatusCode::UNAUTHORIZED);
        assert!(res.raw_set_cookies.is_empty());
    }
    assert_eq!(faults.injected(), injected, "a write for a revoked session");
    let mut jar = b.clone();
    let follow = |jar: &mut String, res: &TestResponse| {
        assert!(!res.clears_cookie());
        if let Some(new) = res.new_secret() {
            *jar = new;
        }
    };
    // The rotation applies; its answer is lost.
    let res = h.call("GET", "/me", Some(&jar)).await;
    assert_eq!((res.status, res.body.as_str()), (StatusCode::OK, "bob"));
    follow(&mut jar, &res);
    let rotated = h
        .records()
        .into_iter()
        .find(|r| r.subject.as_deref() == Some("bob"));
    assert!(
        rotated.is_some_and(|r| r.previous.is_some()),
        "the rotation was not written"
    );
    // A data write applies; its answer is lost.
    let res = h.call("POST", "/attr?key=k&value=v", Some(&jar)).await;
    let acknowledged = res.status == StatusCode::OK;
    follow(&mut jar, &res);
    // A renewal applies; its answer is lost. Were its secret not sent, bob
    // would be logged out.
    let res = h.call("POST", "/renew", Some(&jar)).await;
    let renewed = res.status == StatusCode::OK;
    assert_eq!(renewed, res.new_secret().is_some(), "{}", res.body);
    follow(&mut jar, &res);
    assert!(
        faults.injected() >= injected + 3,
        "the rotation, the data write and the renewal were attempted"
    );
    faults.heal();
    for s in [&a, &a2] {
        let res = h.call("GET", "/me", Some(s)).await;
        assert_eq!(res.status, StatusCode::UNAUTHORIZED);
        assert!(res.raw_set_cookies.is_empty());
    }
    // A client that followed every Set-Cookie is still bob.
    let res = h.call("GET", "/me", Some(&jar)).await;
    assert_eq!((res.status, res.body.as_str()), (StatusCode::OK, "bob"));
    follow(&mut jar, &res);
    // The data write was acknowledged exactly when it is stored, and each
    // write that applied was reported as applied.
    let stored = h.call("GET", "/attr?key=k", Some(&jar)).await.body;
    assert_eq!(
        (acknowledged, stored.as_str()),
        (true, "v"),
        "acknowledged {acknowledged}, stored {stored:?}"
    );
    assert!(renewed, "a renewal that applied answered as failed");
    // The renewal forgot every secret bob held before it.
    let res = h.call("GET", "/me", Some(&b)).await;
    assert_eq!(res.status, StatusCode::UNAUTHORIZED);
    assert!(res.raw_set_cookies.is_empty());
    revoked.assert_nothing_lost_or_revived(&Snapshot::of(&h));
}
