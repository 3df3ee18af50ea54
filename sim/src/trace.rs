//! The event trace of a run: everything the simulator fed the engine and got
//! back, folded into an FNV-1a digest (same seed ⇒ same digest, the
//! determinism check) plus a short tail of readable lines for failure reports.

use std::collections::VecDeque;
use std::fmt::Write;

/// Lines kept for a failure report; older ones only live on in the digest.
const TAIL_LINES_MAX: usize = 60;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

pub struct Trace {
    digest: u64,
    events: u64,
    tail: VecDeque<String>,
    line: String,
    /// Print every line as it happens (STRAIT_SIM_VERBOSE=1).
    pub verbose: bool,
}

impl Default for Trace {
    fn default() -> Trace {
        Trace::new()
    }
}

impl Trace {
    pub fn new() -> Trace {
        Trace {
            digest: FNV_OFFSET,
            events: 0,
            tail: VecDeque::with_capacity(TAIL_LINES_MAX),
            line: String::new(),
            verbose: false,
        }
    }

    /// Records one event: a tag and its numbers, at virtual time `now_ns`.
    pub fn event(&mut self, now_ns: u64, tag: &str, args: &[u64]) {
        self.line.clear();
        let _ = write!(self.line, "{now_ns} {tag}");
        for a in args {
            let _ = write!(self.line, " {a}");
        }
        for &b in self.line.as_bytes() {
            self.digest = (self.digest ^ u64::from(b)).wrapping_mul(FNV_PRIME);
        }
        self.digest = (self.digest ^ u64::from(b'\n')).wrapping_mul(FNV_PRIME);
        self.events += 1;
        if self.verbose {
            println!("{}", self.line);
        }
        if self.tail.len() == TAIL_LINES_MAX {
            self.tail.pop_front();
        }
        self.tail.push_back(self.line.clone());
    }

    pub fn digest(&self) -> u64 {
        self.digest
    }

    pub fn events(&self) -> u64 {
        self.events
    }

    /// The last events, oldest first.
    pub fn tail(&self) -> impl Iterator<Item = &str> {
        self.tail.iter().map(String::as_str)
    }
}
