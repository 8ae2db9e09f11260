//! Captures every log line the service writes during the test run (at debug level) and remembers
//! any line that contains something shaped like a token or an API key, with the OS thread that
//! wrote it. Each `TestApp` owns the threads its server started (HTTP workers, the Redis I/O
//! runtime) and asserts on drop that none of them leaked, so a leak fails the test whose server
//! wrote the line, with the line. A leak from a thread no app owns fails every app that ends
//! after it, so no leak ever goes unreported.
#![allow(dead_code)]

use std::collections::HashSet;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, Once};

static INSTALL: Once = Once::new();
static LEAKS: Mutex<Vec<Leak>> = Mutex::new(Vec::new());
static LINES: Mutex<usize> = Mutex::new(0);
/// The threads each live app owns, by app id.
static OWNERS: Mutex<Vec<(u64, HashSet<u64>)>> = Mutex::new(Vec::new());
/// Held while an app starts, so the threads that appear in that window are that app's.
static STARTING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
static NEXT_APP: AtomicU64 = AtomicU64::new(1);
/// Lines kept for tests that read them back: `(watch id, needle, lines containing it)`.
static WATCHES: Mutex<Vec<(u64, String, Vec<String>)>> = Mutex::new(Vec::new());
static NEXT_WATCH: AtomicU64 = AtomicU64::new(1);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leak {
    pub thread: u64,
    pub line: String,
}

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
        *lock(&LINES) += 1;
        for (_, needle, lines) in lock(&WATCHES).iter_mut() {
            if line.contains(needle.as_str()) {
                lines.push(line.clone());
            }
        }
        if looks_secret(&line) {
            lock(&LEAKS).push(Leak {
                thread: current_thread(),
                line,
            });
        }
    }

    fn flush(&self) {}
}

/// A panicking test must not poison the detector for every other test.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

thread_local! {
    static THREAD_ID: u64 = std::fs::read_link("/proc/thread-self")
        .ok()
        .and_then(|path| path.file_name()?.to_str()?.parse().ok())
        .unwrap_or(0);
}

/// The kernel's id of the calling thread (what `/proc/self/task` lists).
pub fn current_thread() -> u64 {
    THREAD_ID.with(|id| *id)
}

fn process_threads() -> HashSet<u64> {
    std::fs::read_dir("/proc/self/task")
        .map(|tasks| {
            tasks
                .flatten()
                .filter_map(|task| task.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
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

/// Runs `start`, which must return once an app's server answers, and registers the threads
/// that appeared meanwhile, plus the calling thread, as that app's. Returns the app's id.
pub async fn owning_threads_of<T>(start: impl Future<Output = T>) -> (u64, T) {
    let _one_at_a_time = STARTING.lock().await;
    let id = NEXT_APP.fetch_add(1, Ordering::Relaxed);
    let before = process_threads();
    let started = start.await;
    let mut owned: HashSet<u64> = process_threads().difference(&before).copied().collect();
    owned.insert(current_thread());
    lock(&OWNERS).push((id, owned));
    (id, started)
}

/// The leaks app `id` must answer for: those from its threads, and those no app owns.
pub fn take_leaks_of(id: u64) -> Vec<String> {
    let mut owners = lock(&OWNERS);
    let position = owners.iter().position(|(owner, _)| *owner == id);
    let mine = position.map(|at| owners.remove(at).1).unwrap_or_default();
    let others: Vec<HashSet<u64>> = owners.iter().map(|(_, threads)| threads.clone()).collect();
    drop(owners);
    let mut leaks = lock(&LEAKS);
    let (blamed, kept) = blame(std::mem::take(&mut *leaks), &mine, &others);
    *leaks = kept;
    blamed
}

/// Splits `leaks` into the lines to report for an app owning `mine` (its own, and those of
/// threads nobody owns, which stay on record for the apps still running) and the rest.
fn blame(
    leaks: Vec<Leak>,
    mine: &HashSet<u64>,
    others: &[HashSet<u64>],
) -> (Vec<String>, Vec<Leak>) {
    let mut blamed = Vec::new();
    let mut kept = Vec::new();
    for leak in leaks {
        if mine.contains(&leak.thread) {
            blamed.push(leak.line);
        } else if others.iter().any(|threads| threads.contains(&leak.thread)) {
            kept.push(leak);
        } else {
            blamed.push(format!("{} (from a thread no test app owns)", leak.line));
            kept.push(leak);
        }
    }
    (blamed, kept)
}

/// Keeps every line containing `needle` written while it lives (from any thread), so a test can
/// show that the lines it means to judge were written at all.
pub struct Watch(u64);

pub fn watch(needle: &str) -> Watch {
    let id = NEXT_WATCH.fetch_add(1, Ordering::Relaxed);
    lock(&WATCHES).push((id, needle.to_owned(), Vec::new()));
    Watch(id)
}

impl Watch {
    pub fn lines(&self) -> Vec<String> {
        lock(&WATCHES)
            .iter()
            .find(|(id, _, _)| *id == self.0)
            .map(|(_, _, lines)| lines.clone())
            .unwrap_or_default()
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        lock(&WATCHES).retain(|(id, _, _)| *id != self.0);
    }
}

pub fn lines_seen() -> usize {
    *lock(&LINES)
}

/// Every leak so far, whoever wrote it.
pub fn leaked_lines() -> Vec<String> {
    lock(&LEAKS).iter().map(|leak| leak.line.clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leak(thread: u64, line: &str) -> Leak {
        Leak {
            thread,
            line: line.into(),
        }
    }

    #[test]
    fn a_leak_is_blamed_on_the_app_whose_thread_wrote_it_and_on_no_other() {
        let leaks = vec![leak(1, "a's"), leak(7, "b's"), leak(99, "nobody's")];
        let a: HashSet<u64> = [1, 2].into();
        let b: HashSet<u64> = [7].into();

        let (blamed_on_b, kept) = blame(leaks, &b, std::slice::from_ref(&a));
        let (blamed_on_a, _) = blame(kept, &a, &[]);

        assert_eq!(
            blamed_on_b,
            ["b's", "nobody's (from a thread no test app owns)"]
        );
        assert_eq!(
            blamed_on_a,
            ["a's", "nobody's (from a thread no test app owns)"]
        );
    }
}
