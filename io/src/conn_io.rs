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
}

impl ConnIo {
    pub fn new(id: ConnId, client: TcpStream) -> ConnIo {
        ConnIo {
            id,
            sockets: [Some(client), None],
            ready: Default::default(),
            connecting: false,
            spliced: false,
            pipes: [None, None],
            eof: [false; 2],
            fin_reported: [false; 2],
        }
    }

    pub fn socket(&mut self, side: Side) -> Option<&mut TcpStream> {
        self.sockets[side.index()].as_mut()
    }
}

/// mio tokens: listeners first, then two per connection slot, then (from
/// `SESSION_TOKEN_BASE`) one per UDP session slot.
pub const WAKER_TOKEN: mio::Token = mio::Token(usize::MAX - 1);

pub fn conn_token(listeners: usize, id: ConnId, side: Side) -> mio::Token {
    mio::Token(listeners + id.index as usize * 2 + side.index())
}

/// The connection slot and side a token stands for.
pub fn token_conn(listeners: usize, token: mio::Token) -> (usize, Side) {
    let offset = token.0 - listeners;
    let side = if offset % 2 == 0 { Side::Client } else { Side::Upstream };
    (offset / 2, side)
}

/// Connection tokens stay far below this (slots are u32, two tokens each, on 64-bit).
pub const SESSION_TOKEN_BASE: usize = 1 << 40;

pub fn session_token(id: strait_engine::SessionId) -> mio::Token {
    mio::Token(SESSION_TOKEN_BASE + id.index as usize)
}
