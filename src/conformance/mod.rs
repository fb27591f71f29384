//! The public conformance suite: every rule of [`SessionStore`], checked
//! against any implementation (feature `conformance`).
//!
//! Run it from a test with a factory that returns a fresh, empty store for
//! each check (a new schema or key prefix, say):
//!
//! ```
//! use tower_hmac_session::MemoryStore;
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! tower_hmac_session::conformance::run(|| async { MemoryStore::new() }).await;
//! # });
//! ```
//!
//! A failed rule panics with the check's name and what went wrong, the way
//! `assert!` does in any test. Checks that race writers against each other
//! spawn tokio tasks, so run the suite in a (preferably multi-threaded) tokio
//! runtime.
//!
//! The checks' clock is fixed in 2030, with microseconds: a store must keep
//! timestamps to the microsecond and judge expiry by the `now` it is given,
//! never by its own clock. The session lifecycle (confirm, rotate,
//! re-rotate, renew, touch, re-key, data patches) is computed by the crate
//! and written through [`SessionStore::replace`]; the checks build each
//! next record by hand, the way the crate does, and check which lookup keys
//! resolve afterwards, in which slot and under which version, and which do
//! not.

use std::future::Future;
use std::sync::Arc;

use crate::store::SessionStore;

mod find;
mod housekeeping;
mod insert;
mod replace;
mod subjects;
mod support;
mod transitions;

/// The names of every check, in the order [`run`] runs them.
pub const CHECKS: &[&str] = &[
    "insert_then_find_round_trips_every_field",
    "find_reports_the_slot_version_and_value_index_of_each_match",
    "find_returns_every_matched_record",
    "find_returns_previous_secrets_past_their_grace",
    "find_ignores_inactive_records",
    "get_active_returns_active_records_only",
    "insert_conflicts_on_a_duplicate_id_or_lookup_key",
    "insert_refuses_invalid_records",
    "concurrent_inserts_of_one_lookup_key_have_one_winner",
    "replace_applies_only_on_the_expected_generation",
    "replace_refuses_revoked_and_expired_records",
    "replace_refuses_invalid_successors",
    "replace_conflicts_on_another_records_lookup_key",
    "concurrent_replaces_from_one_generation_have_one_winner",
    "revocation_racing_a_replace_is_never_undone",
    "replace_confirms_a_rotation",
    "replace_rotates_current_to_previous",
    "replace_re_rotates_an_unconfirmed_successor",
    "replace_renews_and_forgets_older_secrets",
    "replace_rekeys_a_slot_in_place",
    "replace_touches_and_slides_the_expiry",
    "replace_writes_data_changes",
    "revoke_reports_each_outcome_and_is_final",
    "revoke_with_a_subject_matches_only_that_subject",
    "revoke_all_for_subject_keeps_the_exception",
    "list_for_subject_is_newest_first_and_active_only",
    "insert_capped_evicts_the_least_recently_used",
    "insert_capped_is_atomic_under_concurrent_logins",
    "count_by_key_version_splits_recent_and_dormant",
    "purge_expired_removes_dead_records_only",
];

/// Runs every check in [`CHECKS`], each on a fresh store from `make_store`.
///
/// # Panics
///
/// When the store breaks a rule (or fails with an error): the message names
/// the check.
pub async fn run<S, F, Fut>(mut make_store: F)
where
    S: SessionStore,
    F: FnMut() -> Fut,
    Fut: Future<Output = S>,
{
    macro_rules! run_checks {
        ($($module:ident::$check:ident),* $(,)?) => {{
            let names: &[&str] = &[$(stringify!($check)),*];
            assert_eq!(names, CHECKS, "CHECKS lists every check in order");
            $(
                let store: Arc<dyn SessionStore> = Arc::new(make_store().await);
                tracing::debug!(check = stringify!($check), "conformance check");
                $module::$check(store).await;
            )*
        }};
    }
    run_checks!(
        find::insert_then_find_round_trips_every_field,
        find::find_reports_the_slot_version_and_value_index_of_each_match,
        find::find_returns_every_matched_record,
        find::find_returns_previous_secrets_past_their_grace,
        find::find_ignores_inactive_records,
        find::get_active_returns_active_records_only,
        insert::insert_conflicts_on_a_duplicate_id_or_lookup_key,
        insert::insert_refuses_invalid_records,
        insert::concurrent_inserts_of_one_lookup_key_have_one_winner,
        replace::replace_applies_only_on_the_expected_generation,
        replace::replace_refuses_revoked_and_expired_records,
        replace::replace_refuses_invalid_successors,
        replace::replace_conflicts_on_another_records_lookup_key,
        replace::concurrent_replaces_from_one_generation_have_one_winner,
        replace::revocation_racing_a_replace_is_never_undone,
        transitions::replace_confirms_a_rotation,
        transitions::replace_rotates_current_to_previous,
        transitions::replace_re_rotates_an_unconfirmed_successor,
        transitions::replace_renews_and_forgets_older_secrets,
        transitions::replace_rekeys_a_slot_in_place,
        transitions::replace_touches_and_slides_the_expiry,
        transitions::replace_writes_data_changes,
        subjects::revoke_reports_each_outcome_and_is_final,
        subjects::revoke_with_a_subject_matches_only_that_subject,
        subjects::revoke_all_for_subject_keeps_the_exception,
        subjects::list_for_subject_is_newest_first_and_active_only,
        subjects::insert_capped_evicts_the_least_recently_used,
        subjects::insert_capped_is_atomic_under_concurrent_logins,
        housekeeping::count_by_key_version_splits_recent_and_dormant,
        housekeeping::purge_expired_removes_dead_records_only,
    );
}
