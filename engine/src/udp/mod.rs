//! UDP sessions (spec §4.5): datagrams from one client address on one
//! listener form a session; its route and node are chosen on the first
//! datagram and kept until it ends. See `LIFECYCLE.md`.

pub(crate) mod session;
