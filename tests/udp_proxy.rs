//! UDP proxying end to end: datagrams through a stream route to a UDP upstream
//! and the replies back to the right client.

mod common;

use common::*;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

/// A UDP server answering every datagram with `<name>:<datagram>`.
struct UdpEcho {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl UdpEcho {
    fn start(name: &'static str) -> UdpEcho {
        let socket = UdpSocket::bind((LOCALHOST, 0)).unwrap();
        socket.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        let addr = socket.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !stopped.load(Ordering::SeqCst) {
                if let Ok((n, peer)) = socket.recv_from(&mut buf) {
                    let mut reply = format!("{name}:").into_bytes();
                    reply.extend_from_slice(&buf[..n]);
                    let _ = socket.send_to(&reply, peer);
                }
            }
        });
        UdpEcho { addr, stop }
    }
}

impl Drop for UdpEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn udp_client() -> UdpSocket {
    let socket = UdpSocket::bind((LOCALHOST, 0)).unwrap();
    socket.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    socket
}

/// Sends `payload` to `to` and returns the reply (None on a lost datagram).
fn ask(socket: &UdpSocket, to: SocketAddr, payload: &[u8]) -> Option<Vec<u8>> {
    socket.send_to(payload, to).ok()?;
    let mut buf = [0u8; 2048];
    let (n, from) = socket.recv_from(&mut buf).ok()?;
    assert_eq!(from, to, "the reply comes from the proxy's listener address");
    Some(buf[..n].to_vec())
}

fn udp_proxy_to(echo: &UdpEcho) -> (Strait, SocketAddr) {
    let listen = SocketAddr::new(LOCALHOST, free_port());
    let strait = Strait::start(Config::new().listen_udp(listen));
    strait.put_route("1", route_to(&[(echo.addr, 1)]));
    (strait, listen)
}

#[test]
fn udp_datagrams_round_trip_through_a_route() {
    let echo = UdpEcho::start("u");
    let (_strait, listen) = udp_proxy_to(&echo);
    let client = udp_client();
    wait_until("a datagram is answered through the route", || {
        ask(&client, listen, b"probe").is_some_and(|r| r == b"u:probe")
    });
    for i in 0..10 {
        let payload = format!("datagram {i}");
        let reply = ask(&client, listen, payload.as_bytes()).expect("loopback does not lose datagrams");
        assert_eq!(reply, format!("u:{payload}").into_bytes());
    }
}

#[test]
fn udp_replies_go_back_to_the_client_that_asked() {
    let echo = UdpEcho::start("u");
    let (_strait, listen) = udp_proxy_to(&echo);
    let first = udp_client();
    let second = udp_client();
    wait_until("a datagram is answered through the route", || ask(&first, listen, b"probe").is_some());
    assert!(ask(&second, listen, b"probe").is_some());

    first.send_to(b"from first", listen).unwrap();
    second.send_to(b"from second", listen).unwrap();
    let mut buf = [0u8; 2048];
    let (n, _) = second.recv_from(&mut buf).expect("second gets its reply");
    assert_eq!(&buf[..n], b"u:from second");
    let (n, _) = first.recv_from(&mut buf).expect("first gets its reply");
    assert_eq!(&buf[..n], b"u:from first");
}

/// A UDP node answering `<name>:<source port it saw>:<datagram>`: the source
/// port names the proxy's session socket, so equal ports mean one session.
fn tagging_node(name: &'static str) -> SocketAddr {
    let socket = UdpSocket::bind((LOCALHOST, 0)).unwrap();
    let addr = socket.local_addr().unwrap();
    thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((n, peer)) = socket.recv_from(&mut buf) {
            let mut reply = format!("{name}:{}:", peer.port()).into_bytes();
            reply.extend_from_slice(&buf[..n]);
            let _ = socket.send_to(&reply, peer);
        }
    });
    addr
}

#[test]
fn with_two_reuseport_workers_each_client_stays_in_one_session() {
    let (a, b) = (tagging_node("a"), tagging_node("b"));
    let listen = SocketAddr::new(LOCALHOST, free_port());
    let strait = Strait::start(Config::new().listen_udp(listen).workers("2"));
    strait.put_route("1", route_to(&[(a, 1), (b, 1)]));
    let probe = udp_client();
    wait_until("a datagram is answered through the route", || ask(&probe, listen, b"probe").is_some());
    let handles: Vec<_> = (0..30)
        .map(|i| {
            thread::spawn(move || {
                let client = udp_client();
                let mut session: Option<String> = None;
                for j in 0..5 {
                    let payload = format!("client {i} datagram {j}");
                    let reply = ask(&client, listen, payload.as_bytes()).expect("loopback does not lose datagrams");
                    let text = String::from_utf8(reply).unwrap();
                    let (tag, echoed) = text.rsplit_once(":client").unwrap();
                    assert_eq!(format!("client{echoed}"), payload, "a client only gets its own replies");
                    // Node and session socket are the same for every datagram of a client:
                    // the kernel keeps its flow on one worker, and that worker on one session.
                    assert_eq!(session.get_or_insert_with(|| tag.to_string()), tag, "client {i}");
                }
            })
        })
        .collect();
    for handle in handles {
        handle.join().unwrap();
    }
}
