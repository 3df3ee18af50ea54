//! # strait-sim: deterministic simulation of strait-engine
//!
//! This crate **owns** the harnesses that drive the real sans-IO engine
//! through adversarial situations, fast and reproducibly:
//!
//! - an engine-level simulator ([`runner::Sim`]): an in-memory network
//!   ([`net`]), a virtual clock (`strait_engine::Time`), small models of
//!   clients, upstream nodes and the config store ([`models`]), and a weighted
//!   grammar of steps with swarm testing ([`grammar`]). It feeds the engine
//!   exactly as a driver does: events in, `poll_action` drained after every
//!   call, `poll_timeout` honoured, back-pressure (`read_buf` = `None`) obeyed.
//! - oracles ([`invariants`]) the run is checked against after every step and
//!   every action: byte integrity and order, half-close, routing per the
//!   reference matcher, exact smooth weighted round robin, timeouts never
//!   early, and everything released once the run drains.
//!   The world has TCP connections, UDP sessions (datagrams, replies, ICMP
//!   errors, idle and `proxy_responses` expiry, the session limit) and
//!   upstreams with health `checks` (the driver answers `Probe` per the node
//!   model; every pick is judged against the health the control plane shows).
//! - property tests (tests/) of the router, balancers (round robin, chash
//!   against APISIX's ring, least_conn, priority groups) and config parsing.
//! - the fuzz targets' bodies ([`fuzz_targets`]), shared by the cargo-fuzz
//!   crate in fuzz/ and the stable corpus replay (tests/fuzz_corpus.rs).
//! - a turmoil shell (tests/turmoil_shell.rs): a thin tokio driver around the
//!   same engine on simulated hosts, with crashes, partitions and held links.
//!
//! It **never** uses real sockets, threads, the wall clock or OS randomness
//! inside a run: everything comes from the seed ([`rng`]), so one seed is one
//! trace, and the trace's digest ([`trace`]) proves it.
//!
//! ## Running and replaying
//!
//! ```text
//! cargo test -p strait-sim                          # 500 seeds (the default swarm)
//! STRAIT_SIM_SEEDS=5000 STRAIT_SIM_STEPS=1000 cargo test -p strait-sim --release
//! STRAIT_SIM_SEED=42 cargo test -p strait-sim -- --nocapture   # one seed; prints `trace digest: <hex>`
//! STRAIT_SIM_SEED=42 STRAIT_SIM_VERBOSE=1 cargo test -p strait-sim -- --nocapture  # every event
//! ```
//!
//! A failing seed prints its seed, the last events of its trace and the exact
//! command that replays it. Bugs found this way are listed in FOUND.md and
//! kept as regression seeds in tests/regressions.rs.

pub mod fuzz_targets;
pub mod grammar;
pub mod invariants;
pub mod models;
pub mod net;
pub mod rng;
pub mod runner;
pub mod trace;

use std::panic::{catch_unwind, AssertUnwindSafe};

/// Steps per seed unless STRAIT_SIM_STEPS says otherwise.
pub const DEFAULT_STEPS: u64 = 500;
/// Seeds per `cargo test` unless STRAIT_SIM_SEEDS says otherwise.
pub const DEFAULT_SEEDS: u64 = 500;

/// What a passing seed leaves behind.
#[derive(Clone, Debug)]
pub struct Report {
    pub seed: u64,
    pub digest: u64,
    pub events: u64,
    pub stats: runner::SimStats,
}

/// Runs one seed; on any failure (a broken invariant or an engine panic)
/// returns a report naming the seed and the command that replays it.
pub fn check_seed(seed: u64, steps: u64) -> Result<Report, String> {
    let mut sim: Option<runner::Sim> = None;
    let verbose = std::env::var("STRAIT_SIM_VERBOSE").is_ok_and(|v| v == "1");
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        let sim = sim.insert(runner::Sim::new(seed));
        sim.trace.verbose = verbose;
        sim.run(steps);
    }));
    match outcome {
        Ok(()) => {
            let sim = sim.expect("set by the run");
            Ok(Report { seed, digest: sim.trace.digest(), events: sim.trace.events(), stats: sim.stats.clone() })
        }
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "(non-text panic)".into());
            let mut text = format!("simulation seed {seed} failed: {message}\n");
            if let Some(sim) = &sim {
                text.push_str(&format!("swarm: {:?}\nlast events (ns tag args):\n", sim.swarm));
                for line in sim.trace.tail() {
                    text.push_str("  ");
                    text.push_str(line);
                    text.push('\n');
                }
            }
            let steps_env = if steps == DEFAULT_STEPS { String::new() } else { format!("STRAIT_SIM_STEPS={steps} ") };
            text.push_str(&format!(
                "replay: STRAIT_SIM_SEED={seed} {steps_env}cargo test -p strait-sim -- --nocapture\n"
            ));
            Err(text)
        }
    }
}

/// Reads a number from the environment (for STRAIT_SIM_SEED and friends).
pub fn env_u64(name: &str) -> Option<u64> {
    let text = std::env::var(name).ok()?;
    match text.trim().parse() {
        Ok(n) => Some(n),
        Err(_) => panic!("{name} must be a whole number, got {text:?}"),
    }
}
