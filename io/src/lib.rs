//! # strait-io: the mio event loops around strait-engine
//!
//! This crate **owns** the sockets, the clock and the worker threads. It
//! decides nothing about traffic: every decision (route, node, retry, FIN,
//! timeout) is the engine's. A worker is a loop of "wait for readiness, feed
//! the events to its `Engine`, perform the actions the engine asks for, arm the
//! timer the engine wants".
//!
//! - One `mio::Poll` per worker thread; each worker binds its own listeners
//!   with SO_REUSEPORT so the kernel spreads connections over workers.
//! - Edge-triggered readiness: a side is read until `WouldBlock` (or until the
//!   engine's buffer is full: back-pressure), with a per-wake budget so one busy
//!   connection cannot starve the others.
//! - Bytes are read straight into the engine's buffers and written straight
//!   from them: no copy in between, no allocation per read.
//! - New config snapshots and shutdown requests arrive over a channel plus a
//!   `mio::Waker`; there is no lock on the data path.

mod access_log;
mod clock;
mod congestion;
mod conn_io;
mod limits;
mod listeners;
mod probe;
mod splice;
mod udp;
mod udp_batch;
mod worker;
mod workers;

pub use limits::raise_open_file_limit;
pub use listeners::BindError;
pub use workers::{SnapshotPublisher, StartError, Workers, WorkersConfig};
