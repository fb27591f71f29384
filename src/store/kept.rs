//! Connections a SQL store keeps checked out of its pool between its
//! statements ([`PostgresStore::keep_connections`](super::PostgresStore::keep_connections)).
//!
//! sqlx's pool tests a connection with a round trip (`Sync`, then waiting
//! for `ReadyForQuery`) every time one goes back to the pool, and by
//! default every time one comes out of it: a statement that takes one round
//! trip costs the pool two or three, and the server a wake-up for each. A
//! store that keeps the connection it used, when the statement finished and
//! the connection is known to be in step, saves them: the next statement
//! takes it straight back.
//!
//! Why that is safe:
//! - A connection is kept only after its statement ran to its end (a row
//!   set, or the server's error for it), so the protocol is in step;
//!   sqlx's `fetch_optional` reads its row set to the end itself, and
//!   anything else the server still owes is read before the next
//!   statement, as it is by a `ping`.
//! - A statement whose future is dropped (a cancelled request) or that
//!   fails on the connection itself drops its lease, and with it the
//!   connection goes back to the pool, which tests it, rolls back a
//!   transaction left open and closes it if it is broken: sqlx's own path.
//! - A connection that fails after being kept (the server restarted, say)
//!   makes the store drop every connection it keeps, so the next
//!   statements take tested ones from the pool.
//! - The store never holds more than `max` connections, kept or in use,
//!   and `max` is at most the pool's size: a statement that finds none kept
//!   waits for a lease to end (and takes the connection it leaves), never
//!   for the pool while the store keeps connections idle.
//! - No connection is kept longer than the hold after the pool handed it
//!   out: a task returns the ones not used meanwhile, so a store gone idle
//!   gives its connections back, and the pool's own limits (lifetime, idle
//!   timeout) still apply within a hold.

use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use sqlx::Database;
use sqlx::pool::{Pool, PoolConnection};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The connections a store keeps, at most `max`, each for at most `hold`
/// after the pool handed it out. With `max` 0 every lease comes from the
/// pool and goes back to it.
pub(crate) struct Kept<DB: Database> {
    pool: Pool<DB>,
    max: usize,
    hold: Duration,
    /// `max` permits, one per lease (`None` when `max` is 0): the store's
    /// connections, kept and leased, are never more than `max`.
    leases: Option<Arc<Semaphore>>,
    state: Mutex<State<DB>>,
}

/// A kept connection and when the pool handed it out.
type Entry<DB> = (PoolConnection<DB>, Instant);

struct State<DB: Database> {
    /// In the order they were kept.
    conns: Vec<Entry<DB>>,
    /// Whether a task returning expired connections is running.
    reaping: bool,
}

impl<DB: Database> std::fmt::Debug for Kept<DB> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kept")
            .field("max", &self.max)
            .field("hold", &self.hold)
            .field("kept", &self.lock().conns.len())
            .finish_non_exhaustive()
    }
}

impl<DB: Database> Kept<DB> {
    pub(crate) fn new(pool: Pool<DB>, max: usize, hold: Duration) -> Arc<Self> {
        // More than the pool's size would leave leases waiting for the pool
        // while others keep connections idle.
        let max = max.min(pool.options().get_max_connections() as usize);
        // A year at most: `since + hold` never overflows.
        let hold = hold.min(Duration::from_secs(365 * 24 * 3600));
        Arc::new(Self {
            pool,
            max,
            hold,
            leases: (max > 0).then(|| Arc::new(Semaphore::new(max))),
            state: Mutex::new(State {
                conns: Vec::new(),
                reaping: false,
            }),
        })
    }

    /// How many connections are kept now.
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) fn len(&self) -> usize {
        self.lock().conns.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State<DB>> {
        // A panic while the lock was held left a list of connections, each
        // whole: still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A connection for one statement (or one transaction): the one kept
    /// last if any is still within its hold, else one from the pool.
    pub(crate) async fn lease(self: &Arc<Self>) -> Result<Lease<DB>, sqlx::Error> {
        if self.pool.is_closed() {
            self.release_all();
            return Err(sqlx::Error::PoolClosed);
        }
        let Some(leases) = &self.leases else {
            let conn = self.pool.acquire().await?;
            return Ok(self.leased(conn, Instant::now(), false, None));
        };
        // Waiting for a lease to end, then maybe for the pool: together no
        // longer than the pool alone would wait, then the pool's own error,
        // so a store whose statements hang fails as it would keeping none.
        tokio::time::timeout(self.pool.options().get_acquire_timeout(), async {
            let permit = Arc::clone(leases)
                .acquire_owned()
                .await
                // Never closed; as sqlx says of a pool that is.
                .map_err(|_| sqlx::Error::PoolClosed)?;
            let (kept, expired) = self.pop_fresh();
            // Back to the pool outside the lock (each drop spawns sqlx's
            // return-to-pool task).
            drop(expired);
            Ok(match kept {
                Some((conn, since)) => self.leased(conn, since, true, Some(permit)),
                None => {
                    let conn = self.pool.acquire().await?;
                    self.leased(conn, Instant::now(), false, Some(permit))
                }
            })
        })
        .await
        .map_err(|_| sqlx::Error::PoolTimedOut)?
    }

    fn leased(
        self: &Arc<Self>,
        conn: PoolConnection<DB>,
        since: Instant,
        reused: bool,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Lease<DB> {
        Lease {
            conn: Some(conn),
            since,
            reused,
            kept: Arc::clone(self),
            _permit: permit,
        }
    }

    /// The connection kept last that is still within its hold, and those
    /// popped before it that were not. (Others past their hold further
    /// down are the reaper's: a lease looks at as few as it can.)
    fn pop_fresh(&self) -> (Option<Entry<DB>>, Vec<Entry<DB>>) {
        let now = Instant::now();
        let mut expired = Vec::new();
        let mut state = self.lock();
        while let Some((conn, since)) = state.conns.pop() {
            if now.saturating_duration_since(since) < self.hold {
                return (Some((conn, since)), expired);
            }
            expired.push((conn, since));
        }
        (None, expired)
    }

    /// Removes the kept connections past their hold (in any position: they
    /// come back in the order their statements end), for the reaper.
    fn take_expired(&self, state: &mut State<DB>) -> Vec<Entry<DB>> {
        let mut expired = Vec::new();
        let mut i = 0;
        while i < state.conns.len() {
            if state.conns[i].1.elapsed() >= self.hold {
                expired.push(state.conns.remove(i));
            } else {
                i += 1;
            }
        }
        expired
    }

    fn keep(self: &Arc<Self>, conn: PoolConnection<DB>, since: Instant) {
        if since.elapsed() >= self.hold {
            // Past its hold: back to the pool (dropped here).
            return;
        }
        let mut state = self.lock();
        if state.conns.len() >= self.max {
            return;
        }
        state.conns.push((conn, since));
        if !state.reaping {
            state.reaping = true;
            tokio::spawn(reap(Arc::downgrade(self)));
        }
    }

    /// Every kept connection back to the pool, which tests them.
    fn release_all(&self) {
        let conns = std::mem::take(&mut self.lock().conns);
        drop(conns);
    }
}

impl<DB: Database> Drop for Kept<DB> {
    fn drop(&mut self) {
        // A kept connection goes back to the pool through a task sqlx
        // spawns, which needs a runtime; without one (a store dropped after
        // its runtime), the connections are closed instead, never a panic.
        if tokio::runtime::Handle::try_current().is_err() {
            let conns = std::mem::take(&mut self.lock().conns);
            for (conn, _) in conns {
                drop(conn.detach());
            }
        }
    }
}

/// Returns kept connections to the pool as their holds end, until none is
/// kept (or the store is gone, which drops them all).
async fn reap<DB: Database>(kept: Weak<Kept<DB>>) {
    loop {
        let wait = match kept.upgrade() {
            Some(kept) => {
                let (expired, next) = {
                    let mut state = kept.lock();
                    let expired = kept.take_expired(&mut state);
                    let next = state
                        .conns
                        .iter()
                        .map(|(_, since)| *since + kept.hold)
                        .min();
                    if next.is_none() {
                        // Under the lock: a connection kept after this
                        // starts a new task.
                        state.reaping = false;
                    }
                    (expired, next)
                };
                drop(expired);
                match next {
                    Some(at) => at.saturating_duration_since(Instant::now()),
                    None => return,
                }
            }
            None => return,
        };
        tokio::time::sleep(wait).await;
    }
}

/// One connection for one statement. [`done`](Self::done) keeps it when the
/// statement finished with the connection in step; dropped otherwise (a
/// cancelled future), the connection goes back to the pool, which tests it.
pub(crate) struct Lease<DB: Database> {
    conn: Option<PoolConnection<DB>>,
    since: Instant,
    reused: bool,
    kept: Arc<Kept<DB>>,
    /// Released after `conn` is kept (fields drop after `done`'s body), so
    /// the lease waiting for it finds the connection.
    _permit: Option<OwnedSemaphorePermit>,
}

impl<DB: Database> Lease<DB> {
    /// Ends the lease after a statement that returned `result`.
    pub(crate) fn done<T>(mut self, result: &Result<T, sqlx::Error>) {
        let Some(conn) = self.conn.take() else {
            return;
        };
        match result {
            // The statement ran to its end, or the server answered it with
            // an error about the statement: the connection is in step.
            Ok(_) | Err(sqlx::Error::RowNotFound) => self.kept.keep(conn, self.since),
            Err(sqlx::Error::Database(e)) if !ends_connection(e.code().as_deref()) => {
                self.kept.keep(conn, self.since);
            }
            // The connection itself failed, maybe as every kept one would
            // (a restarted server): back to the pool with all of them.
            Err(
                sqlx::Error::Io(_)
                | sqlx::Error::Protocol(_)
                | sqlx::Error::Tls(_)
                | sqlx::Error::Database(_),
            ) if self.reused => {
                drop(conn);
                self.kept.release_all();
            }
            // Anything else (a value that did not decode, say): back to the
            // pool, which tests it.
            Err(_) => drop(conn),
        }
    }
}

impl<DB: Database> std::ops::Deref for Lease<DB> {
    type Target = DB::Connection;

    fn deref(&self) -> &Self::Target {
        // `conn` is `None` only inside `done`, which consumes the lease.
        self.conn.as_deref().expect("a lease holds its connection")
    }
}

impl<DB: Database> std::ops::DerefMut for Lease<DB> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        self.conn
            .as_deref_mut()
            .expect("a lease holds its connection")
    }
}

/// Runs `$statement` (an expression that awaits and gives a
/// `Result<_, sqlx::Error>`) on a connection `$conn` leased from `$kept`, and
/// ends the lease with its result: every statement of a SQL store goes
/// through here, so none forgets to. A `?` inside `$statement` would leave
/// the lease unended (its connection back to the pool, tested): fine, but
/// give the result instead.
macro_rules! leased {
    ($kept:expr, |$conn:ident| $statement:expr) => {
        match $kept.lease().await {
            Ok(mut lease) => {
                let $conn = &mut *lease;
                let result = $statement;
                lease.done(&result);
                result
            }
            Err(e) => Err(e),
        }
    };
}
pub(crate) use leased;

/// Whether a database error with SQLSTATE `code` ends the connection: class
/// 08 (connection exception) or 57P (the server shutting down or
/// terminating the backend, which it reports before closing). (SQLite's
/// codes are numbers, never these.)
fn ends_connection(code: Option<&str>) -> bool {
    code.is_some_and(|c| c.starts_with("08") || c.starts_with("57P"))
}

#[cfg(test)]
mod tests {
    use super::ends_connection;

    #[test]
    fn only_connection_and_shutdown_errors_end_a_connection() {
        for code in ["08006", "08003", "57P01", "57P02", "57P03"] {
            assert!(ends_connection(Some(code)), "{code}");
        }
        for code in ["23505", "40P01", "40001", "57014", "2067", "5"] {
            assert!(!ends_connection(Some(code)), "{code}");
        }
        assert!(!ends_connection(None));
    }
}
