//! Handles the driver holds for engine-owned objects.

/// A connection handle. The generation makes a handle to a freed and reused
/// slot detectable: events for a stale handle are ignored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId {
    pub index: u32,
    pub generation: u32,
}

/// Index of a listener in the order the engine was given them (config.yaml order,
/// port ranges expanded).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ListenerId(pub u32);

/// One of the two sockets of a proxied TCP connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    Client,
    Upstream,
}

impl Side {
    pub fn other(self) -> Side {
        match self {
            Side::Client => Side::Upstream,
            Side::Upstream => Side::Client,
        }
    }

    /// 0 for the client, 1 for the upstream: for per-side arrays.
    pub fn index(self) -> usize {
        match self {
            Side::Client => 0,
            Side::Upstream => 1,
        }
    }

    pub const BOTH: [Side; 2] = [Side::Client, Side::Upstream];
}

/// A UDP session handle, with a generation like `ConnId`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId {
    pub index: u32,
    pub generation: u32,
}
