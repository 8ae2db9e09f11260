//! Captures every log line the service writes during the test run (at debug level) and remembers
//! any line that contains something shaped like a token or an API key. `TestApp` asserts on drop
//! that none did, so a leak anywhere fails the run.
#![allow(dead_code)]

use std::sync::{Mutex, Once};

static INSTALL: Once = Once::new();
static LEAKS: Mutex<Vec<String>> = Mutex::new(Vec::new());
static LINES: Mutex<usize> = Mutex::new(0);

struct LeakDetector;

impl log::Log for LeakDetector {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        // The HTTP client in the tests is not the service; its logs are not ours to judge.
        let target = metadata.target();
        !(target.starts_with("reqwest") || target.starts_with("hyper"))
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let line = format!("{} {}: {}", record.level(), record.target(), record.args());
        *LINES.lock().unwrap() += 1;
        if looks_secret(&line) {
            LEAKS.lock().unwrap().push(line);
        }
    }

    fn flush(&self) {}
}

/// A JWT (`eyJ` + base64url) or one of our API keys (`st_` + 43 base64url characters).
pub fn looks_secret(line: &str) -> bool {
    let shaped = |marker: &str, min_len: usize| {
        line.match_indices(marker).any(|(at, _)| {
            line[at + marker.len()..]
                .bytes()
                .take_while(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_')
                .count()
                >= min_len
        })
    };
    shaped("eyJ", 16) || shaped("st_", 43)
}

pub fn install() {
    INSTALL.call_once(|| {
        log::set_boxed_logger(Box::new(LeakDetector)).expect("no other logger installed");
        log::set_max_level(log::LevelFilter::Debug);
    });
}

pub fn leaked_lines() -> Vec<String> {
    LEAKS.lock().unwrap().clone()
}

pub fn lines_seen() -> usize {
    *LINES.lock().unwrap()
}

pub fn assert_no_leaks() {
    let leaks = leaked_lines();
    assert!(
        leaks.is_empty(),
        "secrets reached the log:\n{}",
        leaks.join("\n")
    );
}
