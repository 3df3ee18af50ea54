//! A thin tokio driver around the real `Engine` on turmoil hosts (clients,
//! Strait, upstream servers), to catch contract bugs between a driver and the
//! engine: connect results, reads into `read_buf`, writes from `write_buf`,
//! FINs, timeouts, resets, under partitions, latency, held links and an
//! upstream host that crashes and comes back.
//!
//! The shell is deliberately simple and unlike the mio driver: one task owns
//! the engine and takes events from per-socket tasks over a channel; a
//! socket's reader hands over what it read, and the engine task feeds it as
//! `read_buf` allows (back-pressure by not reading on is the mio driver's job,
//! not this shell's); a writer task stands in for the kernel send buffer.

use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;
use strait_engine::config::{ListenSpec, Protocol};
use strait_engine::{Action, ConnId, ConnectError, Engine, EngineConfig, ListenerId, Resources, Side, Snapshot, Time};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use turmoil::net::{TcpListener, TcpStream};

const PORT: u16 = 9100;

/// Connects the engine asked for and connections it accepted (all scenarios
/// in this test binary run one at a time in one test): more connects than
/// connections means retries, i.e. failover happened.
static CONNECTS: AtomicU32 = AtomicU32::new(0);
static ACCEPTS: AtomicU32 = AtomicU32::new(0);
const UPSTREAM_PORT: u16 = 80;

enum Event {
    Accepted(TcpStream, SocketAddr),
    Connected { conn: ConnId, attempt: u32, result: Result<TcpStream, ConnectError> },
    Data { conn: ConnId, side: Side, bytes: Vec<u8> },
    Eof { conn: ConnId, side: Side },
    Failed { conn: ConnId, side: Side },
}

enum WriteCmd {
    Data(Vec<u8>),
    Shutdown,
}

#[derive(Default)]
struct ConnIo {
    writers: [Option<mpsc::UnboundedSender<WriteCmd>>; 2],
    /// Read from the socket, not yet taken by the engine.
    inbound: [VecDeque<u8>; 2],
    /// The socket said EOF; passed on once `inbound` is empty.
    eof: [bool; 2],
    eof_fed: [bool; 2],
    attempt: u32,
    tasks: Vec<JoinHandle<()>>,
}

struct Shell {
    engine: Engine,
    conns: BTreeMap<ConnId, ConnIo>,
    events: mpsc::UnboundedSender<Event>,
    start: tokio::time::Instant,
}

impl Shell {
    fn now(&self) -> Time {
        Time::from_nanos(self.start.elapsed().as_nanos() as u64)
    }

    fn attach(&mut self, conn: ConnId, side: Side, stream: TcpStream) {
        let (mut read, mut write) = stream.into_split();
        let events = self.events.clone();
        let reader = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                match read.read(&mut buf).await {
                    Ok(0) => {
                        let _ = events.send(Event::Eof { conn, side });
                        return;
                    }
                    Ok(n) => {
                        let _ = events.send(Event::Data { conn, side, bytes: buf[..n].to_vec() });
                    }
                    Err(_) => {
                        let _ = events.send(Event::Failed { conn, side });
                        return;
                    }
                }
            }
        });
        let (tx, mut rx) = mpsc::unbounded_channel();
        let events = self.events.clone();
        let writer = tokio::spawn(async move {
            while let Some(cmd) = rx.recv().await {
                let result = match cmd {
                    WriteCmd::Data(bytes) => write.write_all(&bytes).await,
                    WriteCmd::Shutdown => write.shutdown().await,
                };
                if result.is_err() {
                    let _ = events.send(Event::Failed { conn, side });
                    return;
                }
            }
        });
        let io = self.conns.get_mut(&conn).expect("attached to a live connection");
        io.writers[side.index()] = Some(tx);
        io.tasks.push(reader);
        io.tasks.push(writer);
    }

    fn drain(&mut self) {
        while let Some(action) = self.engine.poll_action() {
            match action {
                Action::Connect { conn, addr } => {
                    CONNECTS.fetch_add(1, Ordering::SeqCst);
                    let io = self.conns.get_mut(&conn).expect("a Connect names a live connection");
                    io.attempt += 1;
                    let attempt = io.attempt;
                    let events = self.events.clone();
                    io.tasks.push(tokio::spawn(async move {
                        let result = TcpStream::connect(addr).await.map_err(|e| match e.kind() {
                            std::io::ErrorKind::ConnectionRefused => ConnectError::Refused,
                            _ => ConnectError::Other,
                        });
                        let _ = events.send(Event::Connected { conn, attempt, result });
                    }));
                }
                Action::Shutdown { conn, side } => {
                    let io = self.conns.get_mut(&conn).expect("a Shutdown names a live connection");
                    let writer = io.writers[side.index()].as_ref().expect("a FIN goes to a connected side");
                    let _ = writer.send(WriteCmd::Shutdown);
                }
                Action::Close { conn, reset: _ } => {
                    let io = self.conns.remove(&conn).expect("a Close names a live connection");
                    // Writers finish what they hold, then drop their half; readers stop now.
                    for (i, task) in io.tasks.iter().enumerate() {
                        if i % 2 == 0 || io.writers.iter().all(Option::is_none) {
                            task.abort();
                        }
                    }
                }
                other => panic!("this shell runs no UDP, probes or splice: {other:?}"),
            }
        }
    }

    /// Moves what can move on `conn`, as a driver does after any event.
    fn pump(&mut self, conn: ConnId) {
        loop {
            let mut progress = false;
            for side in Side::BOTH {
                let now = self.now();
                let Some(io) = self.conns.get_mut(&conn) else { return };
                let i = side.index();
                if !io.inbound[i].is_empty() {
                    if let Some(buf) = self.engine.read_buf(conn, side) {
                        let n = buf.len().min(io.inbound[i].len());
                        for (slot, byte) in buf.iter_mut().zip(io.inbound[i].drain(..n)) {
                            *slot = byte;
                        }
                        self.engine.handle_read(now, conn, side, n);
                        progress = true;
                    }
                } else if io.eof[i] && !io.eof_fed[i] && self.engine.read_buf(conn, side).is_some() {
                    io.eof_fed[i] = true;
                    self.engine.handle_read(now, conn, side, 0);
                    progress = true;
                }
                self.drain();
                let Some(io) = self.conns.get_mut(&conn) else { return };
                let data = self.engine.write_buf(conn, side);
                if !data.is_empty() {
                    let writer = io.writers[i].as_ref().expect("the engine writes only to a connected side");
                    let n = data.len();
                    let _ = writer.send(WriteCmd::Data(data.to_vec()));
                    self.engine.handle_written(now, conn, side, n);
                    self.drain();
                    progress = true;
                }
            }
            if !progress {
                return;
            }
        }
    }

    fn handle(&mut self, event: Event) {
        let now = self.now();
        let conn = match event {
            Event::Accepted(stream, peer) => {
                let local = stream.local_addr().expect("an accepted stream has a local address");
                match self.engine.handle_accept(now, ListenerId(0), local, peer) {
                    Ok(conn) => {
                        ACCEPTS.fetch_add(1, Ordering::SeqCst);
                        self.conns.insert(conn, ConnIo::default());
                        self.attach(conn, Side::Client, stream);
                        self.drain();
                        conn
                    }
                    Err(_) => {
                        self.drain();
                        return;
                    }
                }
            }
            Event::Connected { conn, attempt, result } => {
                let Some(io) = self.conns.get(&conn) else { return };
                if io.attempt != attempt {
                    return; // a retry replaced this attempt
                }
                match result {
                    Ok(stream) => {
                        self.engine.handle_connected(now, conn, Ok(()));
                        if self.conns.contains_key(&conn) {
                            self.attach(conn, Side::Upstream, stream);
                        }
                    }
                    Err(e) => self.engine.handle_connected(now, conn, Err(e)),
                }
                self.drain();
                conn
            }
            Event::Data { conn, side, bytes } => {
                let Some(io) = self.conns.get_mut(&conn) else { return };
                io.inbound[side.index()].extend(bytes);
                conn
            }
            Event::Eof { conn, side } => {
                let Some(io) = self.conns.get_mut(&conn) else { return };
                io.eof[side.index()] = true;
                conn
            }
            Event::Failed { conn, side } => {
                self.engine.handle_reset(now, conn, side);
                self.drain();
                conn
            }
        };
        self.pump(conn);
    }
}

/// The Strait host: an accept task and the engine task.
async fn strait(upstreams: Vec<IpAddr>) -> turmoil::Result {
    let nodes: serde_json::Map<String, serde_json::Value> =
        upstreams.iter().map(|ip| (SocketAddr::new(*ip, UPSTREAM_PORT).to_string(), serde_json::json!(1))).collect();
    let resources = Resources {
        stream_routes: vec![(
            "1".into(),
            serde_json::json!({"upstream": {"nodes": nodes, "retries": 1,
                                            "timeout": {"connect": 0.5, "send": 5, "read": 5}}}),
        )],
        ..Resources::default()
    };
    let (snapshot, warnings) = Snapshot::build(1, &resources, &mut |_| Vec::new());
    assert!(warnings.is_empty(), "{warnings:?}");
    let listen = ListenSpec {
        protocol: Protocol::Tcp,
        addr: SocketAddr::from(([0, 0, 0, 0], PORT)),
        tls: false,
        tls_passthrough: false,
        proxy_protocol: false,
    };
    let config = EngineConfig { buffer_bytes: 1024, ..EngineConfig::default() };
    let engine = Engine::new(vec![listen], Arc::new(snapshot), config);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let listener = TcpListener::bind(("0.0.0.0", PORT)).await?;
    let accepted = tx.clone();
    tokio::spawn(async move {
        while let Ok((stream, peer)) = listener.accept().await {
            let _ = accepted.send(Event::Accepted(stream, peer));
        }
    });
    let mut shell = Shell { engine, conns: BTreeMap::new(), events: tx, start: tokio::time::Instant::now() };
    loop {
        let deadline = shell.engine.poll_timeout();
        let sleep = async {
            match deadline {
                Some(t) => tokio::time::sleep_until(shell.start + Duration::from_nanos(t.as_nanos())).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            event = rx.recv() => shell.handle(event.expect("the shell holds a sender")),
            () = sleep => {
                let now = shell.now();
                shell.engine.handle_timeout(now);
                shell.drain();
                let ids: Vec<ConnId> = shell.conns.keys().copied().collect();
                for id in ids {
                    shell.pump(id);
                }
            }
        }
    }
}

/// An upstream server: says its name, then echoes until EOF, then closes.
async fn upstream(name: &'static str) -> turmoil::Result {
    let listener = TcpListener::bind(("0.0.0.0", UPSTREAM_PORT)).await?;
    loop {
        let (mut stream, _) = listener.accept().await?;
        tokio::spawn(async move {
            let _ = stream.write_all(format!("{name}\n").as_bytes()).await;
            let mut buf = vec![0u8; 2048];
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if stream.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                }
            }
            let _ = stream.shutdown().await;
        });
    }
}

/// One proxied connection: sends `len` pattern bytes in chunks, half-closes,
/// and reads the node's name, the whole echo in order, then EOF.
async fn echo_through_strait(k: u32, len: usize) -> Result<String, String> {
    let stream = TcpStream::connect(("strait", PORT)).await.map_err(|e| format!("connect: {e}"))?;
    let data: Vec<u8> = (0..len).map(|i| (i as u32).wrapping_mul(2_654_435_761).wrapping_add(k) as u8).collect();
    let (mut read, mut write) = stream.into_split();
    let sender = tokio::spawn(async move {
        for chunk in data.chunks(1000) {
            write.write_all(chunk).await.map_err(|e| format!("send: {e}"))?;
        }
        write.shutdown().await.map_err(|e| format!("shutdown: {e}"))?;
        Ok::<_, String>(data)
    });
    let mut got = Vec::new();
    read.read_to_end(&mut got).await.map_err(|e| format!("read: {e}"))?;
    let data = sender.await.map_err(|e| e.to_string())??;
    let newline = got.iter().position(|&b| b == b'\n').ok_or_else(|| format!("no banner in {} bytes", got.len()))?;
    let name = String::from_utf8_lossy(&got[..newline]).to_string();
    let echo = &got[newline + 1..];
    if echo != data.as_slice() {
        return Err(format!(
            "byte integrity: sent {} bytes, echo has {} (first difference at {:?})",
            data.len(),
            echo.len(),
            echo.iter().zip(&data).position(|(a, b)| a != b)
        ));
    }
    Ok(name)
}

fn run_scenario(seed: u64) {
    let mut sim = turmoil::Builder::new()
        .rng_seed(seed)
        .simulation_duration(Duration::from_secs(120))
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(Duration::from_millis(20))
        .build();
    sim.host("up1", || upstream("up1"));
    sim.host("up2", || upstream("up2"));
    sim.host("strait", || async { strait(vec![turmoil::lookup("up1"), turmoil::lookup("up2")]).await });
    let phase = Arc::new(AtomicU32::new(0));
    let client_phase = phase.clone();
    sim.client("client", async move {
        let wait_for = |want: u32| {
            let phase = client_phase.clone();
            async move {
                while phase.load(Ordering::SeqCst) != want {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        };
        // 1. Both nodes up: round robin over both, every byte echoed in order.
        let mut names = Vec::new();
        for k in 0..6 {
            names.push(echo_through_strait(k, 3000 + 1000 * k as usize).await?);
        }
        assert!(names.contains(&"up1".to_string()) && names.contains(&"up2".to_string()), "{names:?}");
        client_phase.store(1, Ordering::SeqCst);
        wait_for(2).await;
        // 2. up1 crashed: every connection fails over to up2 (a refused or
        //    timed-out connect is retried on the other node).
        for k in 10..16 {
            let name = echo_through_strait(k, 5000).await?;
            assert_eq!(name, "up2", "failover to the node still up");
        }
        client_phase.store(3, Ordering::SeqCst);
        wait_for(4).await;
        // 3. up1 back (bounced), the link to up2 held for a while: bytes still
        //    arrive whole, and both nodes serve again.
        let mut names = Vec::new();
        for k in 20..26 {
            names.push(echo_through_strait(k, 4000).await?);
        }
        assert!(names.contains(&"up1".to_string()), "the bounced node serves again: {names:?}");
        client_phase.store(5, Ordering::SeqCst);
        wait_for(6).await;
        // 4. strait partitioned from up2: up1 serves everything.
        for k in 30..34 {
            assert_eq!(echo_through_strait(k, 2000).await?, "up1", "a partitioned node is failed over");
        }
        Ok(())
    });
    let mut held_at = None;
    let retries = || CONNECTS.load(Ordering::SeqCst) - ACCEPTS.load(Ordering::SeqCst);
    let mut retries_at = [0; 8];
    loop {
        let done = sim.step().unwrap_or_else(|e| panic!("turmoil seed {seed}: {e}"));
        let now_phase = phase.load(Ordering::SeqCst) as usize;
        if retries_at[now_phase] == 0 {
            retries_at[now_phase] = retries() + 1;
        }
        match now_phase {
            1 => {
                sim.crash("up1");
                phase.store(2, Ordering::SeqCst);
            }
            3 => {
                sim.bounce("up1");
                sim.hold("strait", "up2");
                held_at = Some(sim.elapsed());
                phase.store(4, Ordering::SeqCst);
            }
            4 if held_at.is_some_and(|at| sim.elapsed() > at + Duration::from_millis(300)) => {
                // Messages held on the link are delivered now, late but whole.
                sim.release("strait", "up2");
                held_at = None;
            }
            5 => {
                sim.partition("strait", "up2");
                phase.store(6, Ordering::SeqCst);
            }
            _ => {}
        }
        if done {
            break;
        }
    }
    assert_eq!(phase.load(Ordering::SeqCst), 6, "seed {seed}: the client went through every phase");
    // retries_at[p] = 1 + retries when phase p began.
    assert!(retries_at[3] > retries_at[2], "seed {seed}: the crash of up1 was failed over by retries");
    assert!(retries() + 1 > retries_at[6], "seed {seed}: the partition from up2 was failed over by retries");
}

#[test]
fn failover_and_byte_integrity_under_crash_bounce_hold_and_partition() {
    for seed in [1, 2, 3] {
        run_scenario(seed);
    }
}
