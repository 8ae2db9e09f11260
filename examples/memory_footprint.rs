//! How much memory the in-process replay store needs per live consumed `jti`: records
//! 1,000,000 uses that are still inside their window and prints the process's RSS before and
//! after. `make bench` runs it in release mode.

use std::sync::Arc;

use streamtoken::store::{MemoryStore, ReplayStore, UseOf};
use uuid::Uuid;

const ENTRIES: usize = 1_000_000;

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.starts_with("VmRSS:"))
                .and_then(|line| line.split_whitespace().nth(1))
                .and_then(|kib| kib.parse().ok())
        })
        .unwrap_or(0)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let before = rss_kib();
    let store = Arc::new(MemoryStore::new());
    let expires_at = chrono::Utc::now().timestamp() + 3600;
    for _ in 0..ENTRIES {
        store
            .consume_once(UseOf {
                attempt: uuid::Uuid::new_v4(),
                jti: Uuid::new_v4(),
                org: "acme",
                allowed_uses: 1,
                expires_at,
                credit_limit: None,
                outlive_seconds: 0,
                issued_at: 0,
                session: None,
            })
            .await
            .expect("memory store answers");
    }
    let after = rss_kib();
    assert_eq!(store.len(), ENTRIES);
    println!(
        "entries={ENTRIES} rss_before_kib={before} rss_after_kib={after} rss_mib={:.1} bytes_per_entry={:.0}",
        after as f64 / 1024.0,
        (after - before) as f64 * 1024.0 / ENTRIES as f64
    );
}
