//! Proxied TCP connections: one state machine per connection (`conn.rs`,
//! lifecycle in `LIFECYCLE.md`).

pub(crate) mod conn;
