//! Active health probes: a TCP connect per `Action::Probe`, its outcome
//! reported back to the engine, the socket closed either way. The engine
//! owns the schedule and the timeout (`Action::ProbeCancel`).

use crate::worker::Worker;
use mio::net::TcpStream;
use mio::Interest;
use std::io::ErrorKind;
use std::net::SocketAddr;
use strait_engine::ProbeId;

/// Probe tokens start here (sessions use `1 << 52`).
pub const PROBE_TOKEN_BASE: usize = 1 << 53;

pub struct ProbeIo {
    pub id: ProbeId,
    pub socket: TcpStream,
}

impl Worker {
    pub(crate) fn probe_start(&mut self, id: ProbeId, addr: SocketAddr) {
        let token = mio::Token(PROBE_TOKEN_BASE + id.index as usize);
        let started = TcpStream::connect(addr).and_then(|mut socket| {
            self.poll.registry().register(&mut socket, token, Interest::WRITABLE)?;
            Ok(socket)
        });
        match started {
            Ok(socket) => {
                let slot = id.index as usize;
                if slot >= self.probes.len() {
                    self.probes.resize_with(slot + 1, || None);
                }
                self.probes[slot] = Some(ProbeIo { id, socket });
            }
            Err(e) => {
                let now = self.clock.now();
                self.engine.handle_probe_result(now, id, Err(crate::worker::connect_error(&e)));
            }
        }
    }

    /// The probe socket became writable or failed: the connect is decided.
    pub(crate) fn on_probe(&mut self, slot: usize) {
        let Some(Some(probe)) = self.probes.get_mut(slot) else { return };
        let outcome = match probe.socket.take_error() {
            Ok(Some(e)) | Err(e) => Err(crate::worker::connect_error(&e)),
            Ok(None) => match probe.socket.peer_addr() {
                Ok(_) => Ok(()),
                Err(e) if e.kind() == ErrorKind::NotConnected => return,
                Err(e) => Err(crate::worker::connect_error(&e)),
            },
        };
        let id = probe.id;
        self.probe_cancel(id);
        let now = self.clock.now();
        self.engine.handle_probe_result(now, id, outcome);
    }

    pub(crate) fn probe_cancel(&mut self, id: ProbeId) {
        if let Some(entry) = self.probes.get_mut(id.index as usize) {
            if entry.as_ref().is_some_and(|p| p.id == id) {
                if let Some(mut probe) = entry.take() {
                    let _ = self.poll.registry().deregister(&mut probe.socket);
                }
            }
        }
    }
}
