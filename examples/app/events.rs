//! A `tracing_subscriber` layer that keeps the crate's recent events in
//! memory, for the admin page's "what happened" list.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, PoisonError};

use time::OffsetDateTime;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

/// How many events are kept: enough for a demo, bounded whatever happens.
const CAPACITY: usize = 200;

/// One event of target `tower_hmac_session`. The crate logs session ids
/// (not credentials), never secrets or keys, so these are safe to show.
#[derive(Debug, Clone)]
pub(crate) struct Recorded {
    pub(crate) at: OffsetDateTime,
    pub(crate) message: String,
    pub(crate) fields: Vec<(String, String)>,
}

/// What a user would care about: a stolen cookie used, sessions ended, keys
/// replaced, sign-ins. Everything else (renewals, pre-login sessions) is noise
/// on this page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Reuse,
    Ended,
    Keys,
    SignIn,
}

impl Recorded {
    pub(crate) fn kind(&self) -> Option<Kind> {
        let m = self.message.as_str();
        if m.contains("presented again") || m.contains("reuse") {
            Some(Kind::Reuse)
        } else if m.contains("revoked")
            || m.contains("logged out")
            || m.contains("replaced by a new login")
            || m.contains("max_sessions_per_subject")
        {
            Some(Kind::Ended)
        } else if m.contains("key ring") {
            Some(Kind::Keys)
        } else if m.contains("created by login") {
            Some(Kind::SignIn)
        } else {
            None
        }
    }
}

/// The shared buffer; the layer writes, the admin page reads.
#[derive(Debug, Clone, Default)]
pub(crate) struct EventLog {
    events: Arc<Mutex<VecDeque<Recorded>>>,
}

impl EventLog {
    /// The recent events a user cares about, newest first.
    pub(crate) fn interesting(&self, limit: usize) -> Vec<(Kind, Recorded)> {
        let events = self.events.lock().unwrap_or_else(PoisonError::into_inner);
        events
            .iter()
            .rev()
            .filter_map(|e| Some((e.kind()?, e.clone())))
            .take(limit)
            .collect()
    }

    pub(crate) fn layer(&self) -> RecorderLayer {
        RecorderLayer { log: self.clone() }
    }
}

#[derive(Debug)]
pub(crate) struct RecorderLayer {
    log: EventLog,
}

impl<S: Subscriber> Layer<S> for RecorderLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let meta = event.metadata();
        if !meta.target().starts_with("tower_hmac_session") || *meta.level() > Level::INFO {
            return;
        }
        let mut visitor = Visitor::default();
        event.record(&mut visitor);
        let recorded = Recorded {
            at: OffsetDateTime::now_utc(),
            message: visitor.message,
            fields: visitor.fields,
        };
        let mut events = self
            .log
            .events
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if events.len() == CAPACITY {
            events.pop_front();
        }
        events.push_back(recorded);
    }
}

#[derive(Default)]
struct Visitor {
    message: String,
    fields: Vec<(String, String)>,
}

impl Visit for Visitor {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.push(field, value.to_owned());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let mut text = String::new();
        let _ = write!(text, "{value:?}");
        self.push(field, text);
    }
}

impl Visitor {
    fn push(&mut self, field: &Field, value: String) {
        if field.name() == "message" {
            self.message = value;
        } else {
            self.fields.push((field.name().to_owned(), value));
        }
    }
}
