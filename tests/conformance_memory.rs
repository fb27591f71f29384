//! The public conformance suite, run on `MemoryStore`.
#![cfg(all(feature = "conformance", feature = "memory"))]

use tower_hmac_session::MemoryStore;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_store_passes_the_conformance_suite() {
    tower_hmac_session::conformance::run(|| async { MemoryStore::new() }).await;
}
