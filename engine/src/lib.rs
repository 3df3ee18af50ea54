//! # strait-engine: Strait's sans-IO core
//!
//! This crate decides everything Strait does with a connection: which stream
//! route it takes, which upstream node it goes to, when to retry, when to pass
//! a FIN on, when to give up. It **owns** the connection state machines, their
//! byte buffers (bounded, pooled), their timers, balancer state and the current
//! config snapshot.
//!
//! It **never** touches a socket, reads a clock, starts a thread or draws
//! randomness that is not seeded: time and I/O results are passed in, and the
//! work to do is handed out as [`Action`]s. That is what lets the same engine
//! run under mio in production and in a deterministic simulator (strait-sim).
//! A test over `cargo metadata` and a source scan (tests/sans_io.rs) keep it so.
//!
//! ## Call order (per worker wake-up)
//! 1. Feed every event with `handle_*(now, …)`: accepts, reads (through
//!    [`Engine::read_buf`] then [`Engine::handle_read`]), writes (from
//!    [`Engine::write_buf`] then [`Engine::handle_written`]), connect results,
//!    resets, config snapshots.
//! 2. Drain [`Engine::poll_action`] until `None` and perform each action.
//! 3. Arm the driver's timer at [`Engine::poll_timeout`]; when it fires call
//!    [`Engine::handle_timeout`].
//!
//! After any event on a connection the driver retries reading and writing that
//! connection's sides that it knows to be ready: the engine's buffers decide
//! what may move (a full buffer is back-pressure, an empty one nothing to write).

pub mod action;
pub mod balancer;
pub mod buffer;
pub mod config;
mod engine;
pub mod health;
pub mod ids;
pub mod model;
pub mod rng;
pub mod router;
pub mod session_record;
pub mod snapshot;
mod tcp;
pub mod time;
pub mod tls;
mod udp;

pub use action::{Action, CloseReason, ConnectError, DatagramDrop, ProbeId, Refusal, ReplyTo};
pub use engine::{Engine, EngineConfig, EngineStats};
pub use ids::{ConnId, ListenerId, SessionId, Side};
pub use session_record::SessionRecord;
pub use snapshot::{Resources, SharedState, Snapshot};
pub use time::Time;
