//! The sockets of one proxied TCP connection and what the driver knows of
//! their readiness (edge-triggered: a flag stays set until an operation
//! returns `WouldBlock`).

use mio::net::TcpStream;
use strait_engine::{ConnId, Side};

#[derive(Clone, Copy, Default, Debug)]
pub struct Readiness {
    pub readable: bool,
    pub writable: bool,
    /// The peer's FIN has been seen by epoll (EPOLLRDHUP): read until 0.
    pub read_closed: bool,
}

pub struct ConnIo {
    pub id: ConnId,
    pub sockets: [Option<TcpStream>; 2],
    pub ready: [Readiness; 2],
    /// An upstream connect is in flight.
    pub connecting: bool,
    /// The engine handed the byte moving to the driver (splice).
    pub spliced: bool,
    /// Spliced only, by source side: the pipe holding bytes not yet written on.
    pub pipes: [Option<crate::splice::Pipe>; 2],
    /// Spliced only, by source side: the source sent FIN.
    pub eof: [bool; 2],
    /// Spliced only, by source side: the FIN has been reported to the engine.
    pub fin_reported: [bool; 2],
    /// By side: the tag of the current socket's token (see `conn_token`).
    pub tags: [u16; 2],
    /// By side: the peer is this host (see `congestion.rs`).
    pub loopback: [bool; 2],
}

impl ConnIo {
    pub fn new(id: ConnId, client: TcpStream, client_tag: u16, client_is_loopback: bool) -> ConnIo {
        ConnIo {
            id,
            sockets: [Some(client), None],
            ready: Default::default(),
            connecting: false,
            spliced: false,
            pipes: [None, None],
            eof: [false; 2],
            fin_reported: [false; 2],
            tags: [client_tag, 0],
            loopback: [client_is_loopback, false],
        }
    }

    pub fn socket(&mut self, side: Side) -> Option<&mut TcpStream> {
        self.sockets[side.index()].as_mut()
    }
}

/// mio tokens: listeners first, then two per connection slot (each carrying a
/// tag, below), then (from `SESSION_TOKEN_BASE`) one per UDP session slot.
pub const WAKER_TOKEN: mio::Token = mio::Token(usize::MAX - 1);

/// A connection token's tag sits above its slot and side (slots are u32, so
/// slot * 2 + side + listeners stays below 2^34). The tag names one socket
/// registration of the slot: an event fetched for a socket that has since
/// been replaced (upstream retry) or whose slot was reused carries an old tag
/// and is dropped, so a writable event on a connecting socket can be trusted
/// without asking getpeername whether it is really connected (nginx's
/// "instance" bit, widened).
const TAG_SHIFT: u32 = 34;
const TAG_MASK: usize = 0xffff;

pub fn conn_token(listeners: usize, id: ConnId, side: Side, tag: u16) -> mio::Token {
    mio::Token((listeners + id.index as usize * 2 + side.index()) | (tag as usize) << TAG_SHIFT)
}

/// The connection slot, side and tag a token stands for.
pub fn token_conn(listeners: usize, token: mio::Token) -> (usize, Side, u16) {
    let tag = ((token.0 >> TAG_SHIFT) & TAG_MASK) as u16;
    let offset = (token.0 & ((1 << TAG_SHIFT) - 1)) - listeners;
    let side = if offset.is_multiple_of(2) { Side::Client } else { Side::Upstream };
    (offset / 2, side, tag)
}

/// Connection tokens (tag included) stay below this.
pub const SESSION_TOKEN_BASE: usize = 1 << 52;

pub fn session_token(id: strait_engine::SessionId) -> mio::Token {
    mio::Token(SESSION_TOKEN_BASE + id.index as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_tokens_carry_slot_side_and_tag_and_stay_below_sessions() {
        for (index, side, tag) in [(0, Side::Client, 0), (7, Side::Upstream, 1), (u32::MAX, Side::Upstream, u16::MAX)] {
            let id = ConnId { index, generation: 3 };
            let token = conn_token(5, id, side, tag);
            assert_eq!(token_conn(5, token), (index as usize, side, tag));
            assert!(token.0 < SESSION_TOKEN_BASE);
        }
        // Same slot and side, another registration: a different token.
        let id = ConnId { index: 9, generation: 0 };
        assert_ne!(conn_token(2, id, Side::Upstream, 4), conn_token(2, id, Side::Upstream, 5));
    }
}
