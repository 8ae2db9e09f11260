//! Caps on open sessions, over the whole process and per org. A slot is taken before a use is
//! consumed, so a client turned away for capacity keeps a usable token; it is given back when
//! the session ends, however it ends.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

#[derive(Debug)]
pub struct SessionSlots {
    max_total: usize,
    max_per_org: usize,
    open: Mutex<Open>,
}

#[derive(Debug, Default)]
struct Open {
    total: usize,
    per_org: HashMap<String, usize>,
}

/// One open session's place; dropping it frees the place.
#[derive(Debug)]
pub struct Slot {
    slots: Arc<SessionSlots>,
    org: String,
}

impl SessionSlots {
    pub fn new(max_total: usize, max_per_org: usize) -> Arc<Self> {
        Arc::new(SessionSlots {
            max_total,
            max_per_org,
            open: Mutex::new(Open::default()),
        })
    }

    /// A place for one more session of `org`, or `None` when either cap is reached.
    pub fn try_take(self: &Arc<Self>, org: &str) -> Option<Slot> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let of_org = open.per_org.get(org).copied().unwrap_or(0);
        if open.total >= self.max_total || of_org >= self.max_per_org {
            return None;
        }
        open.total += 1;
        open.per_org.insert(org.to_owned(), of_org + 1);
        Some(Slot {
            slots: self.clone(),
            org: org.to_owned(),
        })
    }

    /// Sessions open now, in all and for `org`.
    pub fn open(&self, org: &str) -> (usize, usize) {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        (open.total, open.per_org.get(org).copied().unwrap_or(0))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.slots.open.lock().unwrap_or_else(|p| p.into_inner());
        open.total -= 1;
        if let Some(count) = open.per_org.get_mut(&self.org) {
            *count -= 1;
            if *count == 0 {
                // Orgs come and go; an idle org holds no memory here.
                open.per_org.remove(&self.org);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_cap_refuses_until_a_slot_is_given_back() {
        let slots = SessionSlots::new(3, 2);
        let a1 = slots.try_take("a").unwrap();
        let _a2 = slots.try_take("a").unwrap();
        assert!(slots.try_take("a").is_none(), "per-org cap");
        let _b1 = slots.try_take("b").unwrap();
        assert!(slots.try_take("c").is_none(), "total cap");
        drop(a1);
        assert_eq!(slots.open("a"), (2, 1));
        assert!(slots.try_take("c").is_some());
    }

    #[test]
    fn an_org_with_no_open_session_leaves_nothing_behind() {
        let slots = SessionSlots::new(10, 10);
        drop(slots.try_take("a").unwrap());
        assert!(slots.open.lock().unwrap().per_org.is_empty());
        assert_eq!(slots.open("a"), (0, 0));
    }
}
