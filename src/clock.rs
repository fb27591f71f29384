//! Where the crate reads the time: injectable, so tests never sleep.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use time::OffsetDateTime;

/// A source of the current time.
///
/// The [`SessionManager`](crate::SessionManager) reads every timestamp from
/// its clock; swap in a [`MockClock`] to test expiry and rotation without
/// sleeping.
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// The current time, in UTC.
    fn now(&self) -> OffsetDateTime;
}

/// The system's wall clock (the default).
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }
}

/// A clock that moves only when told to. Clones share the same time.
///
/// ```
/// use std::time::Duration;
/// use time::macros::datetime;
/// use tower_hmac_session::{Clock, MockClock};
///
/// let clock = MockClock::new(datetime!(2030-01-01 0:00 UTC));
/// clock.advance(Duration::from_secs(90));
/// assert_eq!(clock.now(), datetime!(2030-01-01 0:01:30 UTC));
/// ```
#[derive(Debug, Clone)]
pub struct MockClock(Arc<Mutex<OffsetDateTime>>);

impl MockClock {
    /// A clock stopped at `start`.
    pub fn new(start: OffsetDateTime) -> Self {
        Self(Arc::new(Mutex::new(start)))
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        let mut now = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        *now = crate::manager::saturating_add(*now, by);
    }

    /// Sets the clock.
    pub fn set(&self, to: OffsetDateTime) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = to;
    }
}

impl Clock for MockClock {
    fn now(&self) -> OffsetDateTime {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
