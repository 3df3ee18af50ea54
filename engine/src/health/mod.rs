//! Upstream node health (spec §4.8, fixing §8.16-18).
//!
//! - `NodeHealth` is one node's state under one check configuration. It is
//!   shared by every upstream with the same node and settings and by every
//!   worker (`HealthBoard`), so a probe or a failure seen anywhere counts
//!   everywhere. Reads on the data path are one atomic load.
//! - Active TCP probes are planned by `Prober` inside one worker's engine
//!   (sans-IO: the engine asks for `Action::Probe`, the driver connects and
//!   reports back), so the simulator drives probing like everything else.
//! - Passive reports come from real connections: refused or timed-out
//!   connects and upstream resets count as failures, successful connects as
//!   successes, so a passively ejected node can come back without probes.

mod node;
pub(crate) mod prober;

pub use node::{HealthBoard, HealthCounters, HealthEvent, NodeHealth, Thresholds};
