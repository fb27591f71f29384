#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![forbid(unsafe_code)]

mod clock;
mod config;
mod extract;
mod keys;
mod layer;
mod lifecycle;
mod login;
mod manager;
mod record;
mod secret;
pub mod store;

#[cfg(feature = "conformance")]
#[cfg_attr(docsrs, doc(cfg(feature = "conformance")))]
pub mod conformance;

#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod __fuzz;

#[doc(inline)]
pub use clock::{Clock, MockClock, SystemClock};
#[doc(inline)]
pub use config::{
    ClientIpFrom, ConfigError, CookieConfig, SameSite, SessionConfig, SessionConfigBuilder,
    StoreErrorPolicy, StoreErrorResponse, UnauthenticatedResponse,
};
#[doc(inline)]
pub use extract::{
    ActiveSession, ActiveSessionRejection, MissingSessionLayer, Session, Unauthenticated,
};
#[doc(inline)]
pub use keys::{
    Candidate, Candidates, KeyRing, KeyRingBuilder, KeyRingError, KeyVersion, LOOKUP_DOMAIN,
    LookupKey, MAX_COOKIE_VALUES, MAX_KEY_VERSIONS, MIN_KEY_LEN,
};
#[doc(inline)]
pub use layer::{ResponseBody, ResponseFuture, SessionLayer, SessionService};
#[doc(inline)]
pub use login::{CarryData, LoginOptions};
#[doc(inline)]
pub use manager::{IssuedSession, SessionError, SessionManager};
#[doc(inline)]
pub use record::{
    ActiveSessionRecord, Credential, Data, DataPatch, MAX_DATA_LEN, MAX_SUBJECT_LEN,
    MAX_USER_AGENT_LEN, ParseRevocationReasonError, ParseSessionIdError, PreviousCredential,
    Revocation, RevocationReason, RevokeOutcome, Revoked, SessionId, SessionMatch, SessionRecord,
    Slot, VersionCount,
};
#[doc(inline)]
pub use secret::{ENCODED_SECRET_LEN, SECRET_LEN, SessionSecret};
#[cfg(feature = "memory")]
#[doc(inline)]
pub use store::MemoryStore;
#[doc(inline)]
pub use store::{SessionStore, StoreError, SubjectCap, check_successor};
