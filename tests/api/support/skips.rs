//! The skip ledger: a test that cannot run here (no redis-server on a developer's machine) says
//! so in `target/tmp/skipped-tests.txt`, which `make test` reads back at the end, so a local run
//! never looks fully green when it was not. Under `CI=true` nothing may skip.
#![allow(dead_code)]

use std::io::Write;

pub const LEDGER: &str = concat!(env!("CARGO_TARGET_TMPDIR"), "/skipped-tests.txt");

/// Whether this run is CI's, where a missing tool is a failure rather than a skip.
pub fn on_ci() -> bool {
    matches!(std::env::var("CI").as_deref(), Ok("true" | "1"))
}

/// Records that the calling test skipped itself, and why.
pub fn record(reason: &str) {
    let test = std::thread::current()
        .name()
        .unwrap_or("an unnamed test")
        .to_owned();
    eprintln!("skipping {test}: {reason}");
    let line = format!("{test}\t{reason}\n");
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(LEDGER)
        .and_then(|mut ledger| ledger.write_all(line.as_bytes()));
    if let Err(e) = written {
        eprintln!("could not record the skip in {LEDGER}: {e}");
    }
}
