//! One side's TLS session (`ServerConnection` toward a client that speaks TLS
//! to Strait, `ClientConnection` toward a `scheme: tls` upstream) with its two
//! ciphertext buffers.
//!
//! The driver reads that side's socket into `cipher_in` and writes that side's
//! socket from `cipher_out`, exactly as it does with plaintext flows; it never
//! learns the bytes are TLS. [`TlsLayer::pump`] moves bytes between rustls and
//! the plaintext flows: ciphertext in → `read_tls` → `process_new_packets` →
//! plaintext into the flow *from* this side; plaintext from the flow *to* this
//! side → `writer` → `write_tls` → `cipher_out`.
//!
//! Bounds: `cipher_in` and `cipher_out` are pool buffers (taken while bytes are
//! in them, like flows); rustls is fed only while it `wants_read` (its received
//! plaintext is bounded by rustls) and its outgoing buffers are capped with
//! `set_buffer_limit`. A full plaintext flow stops `read_tls`, a full
//! `cipher_in` stops the driver's reads: back-pressure end to end.

use super::server::{self, AcceptStep};
use crate::buffer::{BufferPool, RingBuffer};
use crate::tcp::conn::Flow;
use rustls::server::Acceptor;
use rustls::{Connection, ServerConfig};
use std::io::{self, Read, Write};
use std::sync::Arc;

/// `io::Write` into a ring: as much as fits, `WouldBlock` when full.
pub(crate) struct RingWriter<'a>(pub &'a mut RingBuffer);

impl Write for RingWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.0.push(buf) {
            0 if !buf.is_empty() => Err(io::ErrorKind::WouldBlock.into()),
            n => Ok(n),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

enum Session {
    /// Termination, before rustls has read the ClientHello.
    Accepting {
        acceptor: Box<Acceptor>,
        config: Arc<ServerConfig>,
        expected_sni: Option<String>,
    },
    Open(Box<Connection>),
    /// The handshake or a record failed; only the alert in `cipher_out` is left.
    Failed,
}

pub(crate) struct TlsLayer {
    session: Session,
    pub cipher_in: Option<RingBuffer>,
    pub cipher_out: Option<RingBuffer>,
    /// This side's TCP FIN has been read.
    pub eof_in: bool,
    /// ... and passed on to rustls.
    eof_fed: bool,
    /// The flow toward this side ended and close_notify was queued.
    pub close_notify_sent: bool,
    buffer_limit: usize,
}

/// What a pump found out.
pub(crate) struct Pumped {
    /// The handshake is complete (it may have been for a while).
    pub handshake_done: bool,
}

impl TlsLayer {
    /// A server session that starts with rustls's Acceptor; `hello` holds the
    /// ClientHello bytes already read (they become `cipher_in`).
    pub fn accepting(
        config: Arc<ServerConfig>,
        expected_sni: Option<String>,
        hello: Option<RingBuffer>,
        buffer_limit: usize,
    ) -> TlsLayer {
        TlsLayer {
            session: Session::Accepting { acceptor: Box::default(), config, expected_sni },
            cipher_in: hello,
            cipher_out: None,
            eof_in: false,
            eof_fed: false,
            close_notify_sent: false,
            buffer_limit,
        }
    }

    /// A client session toward an upstream; its ClientHello is queued at the first pump.
    pub fn client(connection: rustls::ClientConnection, buffer_limit: usize) -> TlsLayer {
        let mut connection = Connection::Client(connection);
        connection.set_buffer_limit(Some(buffer_limit));
        TlsLayer {
            session: Session::Open(Box::new(connection)),
            cipher_in: None,
            cipher_out: None,
            eof_in: false,
            eof_fed: false,
            close_notify_sent: false,
            buffer_limit,
        }
    }

    pub fn is_failed(&self) -> bool {
        matches!(self.session, Session::Failed)
    }

    pub fn read_buf<'a>(&'a mut self, pool: &mut BufferPool) -> Option<&'a mut [u8]> {
        if self.eof_in || self.is_failed() {
            return None;
        }
        let free = self.cipher_in.get_or_insert_with(|| pool.take()).free_mut();
        (!free.is_empty()).then_some(free)
    }

    pub fn on_read(&mut self, n: usize) {
        if n == 0 {
            self.eof_in = true;
        } else {
            self.cipher_in.as_mut().expect("a read fills the buffer read_buf handed out").commit(n);
        }
    }

    pub fn on_read_blocked(&mut self, pool: &mut BufferPool) {
        release_if_empty(pool, &mut self.cipher_in);
    }

    pub fn write_buf(&self) -> &[u8] {
        self.cipher_out.as_ref().map_or(&[], RingBuffer::data)
    }

    pub fn on_written(&mut self, pool: &mut BufferPool, n: usize) {
        self.cipher_out.as_mut().expect("a write drains the buffer write_buf handed out").consume(n);
        release_if_empty(pool, &mut self.cipher_out);
    }

    /// Nothing is left to write toward this side: no ciphertext queued in
    /// rustls or in `cipher_out`.
    pub fn output_drained(&self) -> bool {
        let queued = match &self.session {
            Session::Open(c) => c.wants_write(),
            _ => false,
        };
        !queued && self.cipher_out.as_ref().is_none_or(RingBuffer::is_empty)
    }

    /// Moves everything that can move. `from_peer` is the plaintext flow of
    /// bytes this side sent; `to_peer` the flow of bytes bound for it. `Err`
    /// = the session failed (an alert for the peer may wait in `cipher_out`).
    pub fn pump(&mut self, pool: &mut BufferPool, from_peer: &mut Flow, to_peer: &mut Flow) -> Result<Pumped, String> {
        let result = self.pump_inner(pool, from_peer, to_peer);
        if result.is_err() {
            self.session = Session::Failed;
            // The peer's further bytes are of no use.
            if let Some(buffer) = self.cipher_in.take() {
                pool.give_back(buffer);
            }
        }
        release_if_empty(pool, &mut self.cipher_in);
        release_if_empty(pool, &mut self.cipher_out);
        release_if_empty(pool, &mut from_peer.buffer);
        release_if_empty(pool, &mut to_peer.buffer);
        result
    }

    fn pump_inner(
        &mut self,
        pool: &mut BufferPool,
        from_peer: &mut Flow,
        to_peer: &mut Flow,
    ) -> Result<Pumped, String> {
        if let Session::Accepting { acceptor, config, expected_sni } = &mut self.session {
            let Some(cipher_in) = self.cipher_in.as_mut() else {
                return Ok(Pumped { handshake_done: false });
            };
            let cipher_out = self.cipher_out.get_or_insert_with(|| pool.take());
            match server::accept(acceptor, config, expected_sni.as_deref(), cipher_in, cipher_out) {
                AcceptStep::NeedMore => {
                    if self.eof_in {
                        return Err("the client closed during the ClientHello".into());
                    }
                    return Ok(Pumped { handshake_done: false });
                }
                AcceptStep::Failed(why) => return Err(why),
                AcceptStep::Open(connection) => {
                    let mut connection = Connection::Server(connection);
                    connection.set_buffer_limit(Some(self.buffer_limit));
                    self.session = Session::Open(Box::new(connection));
                }
            }
        }
        let Session::Open(connection) = &mut self.session else {
            return Err("the TLS session has failed".into());
        };
        let connection = &mut **connection;
        loop {
            let mut moved = false;
            // Ciphertext in.
            while connection.wants_read() {
                let Some(cipher_in) = self.cipher_in.as_mut().filter(|b| !b.is_empty()) else {
                    break;
                };
                let mut data = cipher_in.data();
                let n = connection.read_tls(&mut data).map_err(|e| format!("read_tls: {e}"))?;
                cipher_in.consume(n);
                if let Err(error) = connection.process_new_packets() {
                    flush(connection, &mut self.cipher_out, pool);
                    return Err(error.to_string());
                }
                moved |= n > 0;
                if n == 0 {
                    break;
                }
            }
            if self.eof_in && !self.eof_fed && self.cipher_in.as_ref().is_none_or(RingBuffer::is_empty) {
                self.eof_fed = true;
                let _ = connection.read_tls(&mut io::empty());
                if let Err(error) = connection.process_new_packets() {
                    return Err(error.to_string());
                }
                moved = true;
            }
            // Plaintext out to the flow from this side.
            while !from_peer.eof {
                let buffer = from_peer.buffer.get_or_insert_with(|| pool.take());
                let free = buffer.free_mut();
                if free.is_empty() {
                    break;
                }
                match connection.reader().read(free) {
                    Ok(0) => from_peer.eof = true,
                    Ok(n) => {
                        buffer.commit(n);
                        from_peer.bytes += n as u64;
                        moved = true;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    // The peer closed without close_notify: treated as its FIN
                    // (many clients never send one; the bytes before it stand).
                    Err(_) => from_peer.eof = true,
                }
            }
            if !moved {
                break;
            }
        }
        // Plaintext bound for this side in.
        if let Some(buffer) = to_peer.buffer.as_mut() {
            while !buffer.is_empty() {
                let n = connection.writer().write(buffer.data()).map_err(|e| format!("writer: {e}"))?;
                if n == 0 {
                    break;
                }
                buffer.consume(n);
            }
        }
        if to_peer.eof && to_peer.pending() == 0 && !self.close_notify_sent {
            self.close_notify_sent = true;
            connection.send_close_notify();
        }
        flush(connection, &mut self.cipher_out, pool);
        Ok(Pumped { handshake_done: !connection.is_handshaking() })
    }
}

/// Ciphertext rustls has queued → `cipher_out`, as much as fits.
fn flush(connection: &mut Connection, cipher_out: &mut Option<RingBuffer>, pool: &mut BufferPool) {
    while connection.wants_write() {
        let out = cipher_out.get_or_insert_with(|| pool.take());
        if out.is_full() {
            break;
        }
        match connection.write_tls(&mut RingWriter(out)) {
            Ok(n) if n > 0 => {}
            _ => break,
        }
    }
}

fn release_if_empty(pool: &mut BufferPool, slot: &mut Option<RingBuffer>) {
    if slot.as_ref().is_some_and(RingBuffer::is_empty) {
        pool.give_back(slot.take().expect("checked above"));
    }
}

impl TlsLayer {
    /// Buffers this layer holds (for the engine's invariant checks).
    pub fn buffers_held(&self) -> usize {
        usize::from(self.cipher_in.is_some()) + usize::from(self.cipher_out.is_some())
    }

    pub fn release_buffers(&mut self, pool: &mut BufferPool) {
        for slot in [&mut self.cipher_in, &mut self.cipher_out] {
            if let Some(buffer) = slot.take() {
                pool.give_back(buffer);
            }
        }
    }
}
