//! The revision this node's workers route with, shared between the syncer
//! (which sets it after publishing) and the admin thread (which waits on it
//! for read-your-writes).

use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

#[derive(Default)]
pub struct AppliedRevision {
    revision: Mutex<u64>,
    changed: Condvar,
}

impl AppliedRevision {
    pub fn new(revision: u64) -> AppliedRevision {
        AppliedRevision { revision: Mutex::new(revision), changed: Condvar::new() }
    }

    /// Records what the workers now have. It may go down: a wiped etcd starts
    /// counting again, and writes made after that carry the new numbers.
    pub fn set(&self, revision: u64) {
        *self.revision.lock().unwrap_or_else(|p| p.into_inner()) = revision;
        self.changed.notify_all();
    }

    pub fn get(&self) -> u64 {
        *self.revision.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until the applied revision is at least `revision`, at most
    /// `limit`; true when it got there.
    pub fn wait_for(&self, revision: u64, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let mut current = self.revision.lock().unwrap_or_else(|p| p.into_inner());
        while *current < revision {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            current = self.changed.wait_timeout(current, deadline - now).unwrap_or_else(|p| p.into_inner()).0;
        }
        true
    }
}
