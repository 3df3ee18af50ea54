//! UDP in the simulator: clients on the UDP listeners send datagrams, nodes
//! answer (or send ICMP port unreachable, or nothing), sessions end by idle
//! timeout, by `proxy_responses` or by an upstream error.
//!
//! Checked: a datagram of a known flow stays in its session (and so on its
//! node); a new flow is routed as the reference matcher says, or dropped when
//! unroutable, past the session limit or while shutting down; a reply reaches
//! only its own session's client; a session ends for idleness only after its
//! idle timeout of quiet, and by then at the latest; every session ends.

use super::{Event, Sim, LOCAL_V4, LOCAL_V6, MS, PEER_IPS};
use crate::invariants::ExpectedUpstream;
use crate::models::NodeBehaviour;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use strait_engine::router::MatchInput;
use strait_engine::snapshot::ResolvedUpstream;
use strait_engine::{DatagramDrop, ListenerId, Refusal, ReplyTo, SessionId, Time};

/// The UDP listeners' indexes in the simulator's listener list.
const UDP_LISTENERS: [u32; 2] = [3, 4];
/// Largest datagram a client sends.
const DATAGRAM_MAX: u64 = 1500;

pub(super) struct SimSession {
    pub listener: ListenerId,
    pub peer: SocketAddr,
    /// The address the client sent to: replies must leave from it.
    pub local: SocketAddr,
    pub resolved: Arc<ResolvedUpstream>,
    pub node: SocketAddr,
    pub last_activity: Time,
    pub idle_timeout: Duration,
    /// Replies left before the session must end; `None` = unlimited.
    pub responses_left: Option<u32>,
}

/// Why the simulator expects the next `UdpClose`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ending {
    Responses,
    Error,
}

#[derive(Default)]
pub(super) struct UdpWorld {
    pub sessions: BTreeMap<SessionId, SimSession>,
    by_flow: BTreeMap<(ListenerId, SocketAddr), SessionId>,
    /// A session the engine just opened, until its `UdpConnect` is seen.
    opening: Option<(SessionId, ListenerId, SocketAddr, SocketAddr, ExpectedUpstream, Arc<ResolvedUpstream>)>,
    /// A session the engine must end in the call being made, and why.
    ending: Option<(SessionId, Ending)>,
}

impl Sim {
    pub(super) fn udp_client_sends(&mut self) {
        let li = self.rng.pick_copy(&UDP_LISTENERS);
        let listener = ListenerId(li);
        let client = self.rng.below(self.swarm.udp_clients);
        let peer_ip = PEER_IPS[client as usize % PEER_IPS.len()];
        let peer = SocketAddr::new(peer_ip.parse().expect("literal"), 5000 + client as u16);
        let spec_v4 = self.listeners[li as usize].addr.is_ipv4();
        let local_ip = if spec_v4 { self.rng.pick_copy(&LOCAL_V4) } else { self.rng.pick_copy(&LOCAL_V6) };
        let local = SocketAddr::new(local_ip.parse().expect("literal"), self.listeners[li as usize].addr.port());
        let len = self.rng.skewed(DATAGRAM_MAX) as usize;

        let existing = self.udp.by_flow.get(&(listener, peer)).copied();
        let snapshot = self.engine.snapshot().clone();
        let input =
            MatchInput { server_addr: local.ip(), server_port: local.port(), remote_addr: peer.ip(), sni: None };
        let expected: Result<Option<(ExpectedUpstream, Arc<ResolvedUpstream>)>, DatagramDrop> = if existing.is_some() {
            Ok(None)
        } else if self.shutting_down {
            Err(DatagramDrop::NotAccepting)
        } else if self.udp.sessions.len() >= self.swarm.udp_sessions_max {
            Err(DatagramDrop::TooManySessions)
        } else {
            match self.expected_route(&snapshot, &input) {
                Err(Refusal::NoRoute) => Err(DatagramDrop::NoRoute),
                Err(_) => Err(DatagramDrop::NoUpstream),
                Ok((e, up)) if self.may_find_none(&e, &up, &[]) => Err(DatagramDrop::NoUpstream),
                Ok(found) => Ok(Some(found)),
            }
        };
        let result = self.engine.handle_client_datagram(self.now, listener, local, peer, len);
        self.ev("udp_in", &[u64::from(li), client, len as u64]);
        match (result, expected) {
            (Ok(id), Ok(None)) => {
                assert_eq!(Some(id), existing, "a datagram of a known flow stays in its session");
                self.drain_actions();
                let session = self.udp.sessions.get_mut(&id).expect("a known flow's session is live");
                session.last_activity = self.now;
                self.send_upstream(id);
            }
            (Ok(id), Ok(Some((e, up)))) => {
                assert!(!self.udp.sessions.contains_key(&id), "a new session gets an id no live session has");
                self.udp.opening = Some((id, listener, peer, local, e, up));
                self.drain_actions();
                assert!(self.udp.opening.is_none(), "a new session asks for its UdpConnect at once");
                self.stats.udp_sessions += 1;
                self.send_upstream(id);
            }
            (Err(got), Err(want)) if got == want => {
                self.stats.udp_dropped += 1;
                self.drain_actions(); // a drop asks for nothing: an action here fails its check
            }
            (result, expected) => panic!(
                "every datagram is routed as the reference matcher says (or dropped): {peer} -> {local} on listener \
                 {li}: engine {result:?}, expected {:?}",
                expected.map(|found| found.map(|(e, _)| e.key))
            ),
        }
    }

    /// The proxy sends a client's datagram through the session's socket: the
    /// node model decides what comes back.
    fn send_upstream(&mut self, id: SessionId) {
        self.stats.udp_datagrams_up += 1;
        let node = self.udp.sessions[&id].node;
        let latency = self.rng.range(0, self.swarm.latency_max_us) * 1000;
        match self.nodes.get(&node) {
            Some(NodeBehaviour::Up) => {
                for i in 0..self.rng.range(0, self.swarm.udp_replies_max) {
                    self.schedule(latency + i * MS, Event::UdpReply { session: id });
                }
            }
            None | Some(NodeBehaviour::Refuses) | Some(NodeBehaviour::Unreachable) => {
                self.schedule(latency, Event::UdpError { session: id });
            }
            Some(NodeBehaviour::BlackHole) => {}
        }
    }

    pub(super) fn udp_upstream_sends(&mut self) {
        let ids: Vec<SessionId> = self.udp.sessions.keys().copied().collect();
        if ids.is_empty() {
            return;
        }
        let id = self.rng.pick_copy(&ids);
        self.udp_reply(id);
    }

    /// A datagram from the session's node reaches the proxy. For an ended
    /// session the driver would have closed the socket; it is fed anyway, and
    /// the engine must see the id is stale.
    pub(super) fn udp_reply(&mut self, id: SessionId) {
        let now = self.now;
        let reply = self.engine.handle_upstream_datagram(now, id, 100);
        self.ev("udp_reply", &[u64::from(id.index), u64::from(id.generation), u64::from(reply.is_some())]);
        let Some(session) = self.udp.sessions.get_mut(&id) else {
            assert_eq!(reply, None, "a datagram on an ended session is not delivered to anyone");
            self.drain_actions();
            return;
        };
        assert_eq!(
            reply,
            Some(ReplyTo { listener: session.listener, peer: session.peer, local: session.local }),
            "a client only ever gets replies from its own session"
        );
        self.stats.udp_replies += 1;
        session.last_activity = now;
        let last = session.responses_left.is_some_and(|left| left == 1);
        if let Some(left) = session.responses_left.as_mut() {
            *left -= 1;
        }
        if last {
            self.udp.ending = Some((id, Ending::Responses));
        }
        self.drain_actions();
        assert_eq!(
            self.udp.sessions.contains_key(&id),
            !last,
            "a session ends with its proxy_responses-th reply, not before"
        );
    }

    /// ICMP port unreachable on the session's socket.
    pub(super) fn udp_error(&mut self, id: SessionId) {
        let live = self.udp.sessions.contains_key(&id);
        if live {
            self.udp.ending = Some((id, Ending::Error));
        }
        self.ev("udp_error", &[u64::from(id.index), u64::from(id.generation)]);
        self.engine.handle_upstream_error(self.now, id);
        self.drain_actions();
        assert!(!self.udp.sessions.contains_key(&id), "an upstream error ends the session");
    }

    pub(super) fn on_udp_connect(&mut self, id: SessionId, addr: SocketAddr) {
        self.ev("udp_connect", &[u64::from(id.index), u64::from(id.generation)]);
        let (opened, listener, peer, local, expected, resolved) =
            self.udp.opening.take().expect("a UdpConnect follows the datagram that opened its session");
        assert_eq!(opened, id, "the UdpConnect names the session just opened");
        let index = expected.addrs.iter().position(|a| *a == addr).unwrap_or_else(|| {
            panic!("a session goes only to nodes of its route's upstream: {addr} not in {:?}", expected.addrs)
        });
        self.check_pick(&resolved, &[], index, "a session");
        // The engine's round robin state is per upstream, shared by TCP and UDP.
        self.wrr.pick(&expected, index, false);
        let idle_timeout = expected.udp_idle_timeout.unwrap_or(Duration::from_secs(self.swarm.udp_idle_timeout_s));
        let responses = expected.proxy_responses.unwrap_or(self.swarm.udp_proxy_responses);
        let session = SimSession {
            listener,
            peer,
            local,
            resolved,
            node: addr,
            last_activity: self.now,
            idle_timeout,
            responses_left: (responses > 0).then_some(responses),
        };
        self.udp.sessions.insert(id, session);
        self.udp.by_flow.insert((listener, peer), id);
    }

    pub(super) fn on_udp_close(&mut self, id: SessionId) {
        self.ev("udp_close", &[u64::from(id.index), u64::from(id.generation)]);
        let session = self.udp.sessions.remove(&id).expect("a UdpClose names a live session");
        self.udp.by_flow.remove(&(session.listener, session.peer));
        match self.udp.ending.take() {
            Some((ending, why)) if ending == id => match why {
                Ending::Responses => self.stats.udp_response_closes += 1,
                Ending::Error => self.stats.udp_error_closes += 1,
            },
            other => {
                assert_eq!(other, None, "the session that had to end is the one that ended");
                if !self.aborting {
                    assert!(
                        self.now >= session.last_activity + session.idle_timeout,
                        "a session is closed for idleness only after its idle timeout of quiet (quiet for {:?} of {:?})",
                        self.now - session.last_activity,
                        session.idle_timeout
                    );
                    self.stats.udp_idle_closes += 1;
                }
            }
        }
    }

    /// A session quiet for its idle timeout has been closed by now.
    pub(super) fn check_sessions_expire(&self) {
        for (id, s) in &self.udp.sessions {
            assert!(
                self.now < s.last_activity + s.idle_timeout,
                "a session quiet for its idle timeout is closed by then ({id:?}, quiet for {:?} of {:?})",
                self.now - s.last_activity,
                s.idle_timeout
            );
        }
    }
}
