//! Harness for Strait's end-to-end tests: every test starts the real `strait`
//! binary with a config.yaml of its own (free loopback ports, an explicit admin
//! key, a private data dir) and talks to it over real sockets.
//!
//! Rules the helpers keep so that no test can hang or collide:
//! - every socket they hand out has read and write timeouts ([`IO_TIMEOUT`]);
//! - every wait is a poll with a deadline ([`wait_until`]), never a bare sleep;
//! - ports come from the kernel (bind to port 0) and are never handed out twice
//!   in one test process;
//! - a [`Strait`] is SIGKILLed when dropped, and on a failing test its stderr is
//!   printed and its temp dir kept for a post-mortem.
#![allow(dead_code)]

use serde_json::Value;
use std::collections::HashSet;
use std::fs;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The binary under test, built by cargo for this test run.
pub const BIN: &str = env!("CARGO_BIN_EXE_strait");
/// Longest any single blocking socket read or write may take.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest any poll for a condition (readiness, a route taking effect) may take.
pub const WAIT: Duration = Duration::from_secs(10);
/// How often a poll re-checks its condition.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

pub const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
pub const LOCALHOST_V6: IpAddr = IpAddr::V6(Ipv6Addr::LOCALHOST);

// ---------------------------------------------------------------------------
// Polling

/// Polls `condition` until it returns true; panics naming `what` after [`WAIT`].
pub fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    wait_until_for(what, WAIT, &mut condition)
}

pub fn wait_until_for(what: &str, limit: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    loop {
        if condition() {
            return;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {limit:?} waiting until {what}");
        }
        thread::sleep(POLL_INTERVAL);
    }
}

// ---------------------------------------------------------------------------
// Ports and temp dirs

fn taken_ports() -> &'static Mutex<HashSet<u16>> {
    static TAKEN: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    TAKEN.get_or_init(Default::default)
}

fn free_port_on(ip: IpAddr) -> u16 {
    loop {
        let listener = TcpListener::bind((ip, 0)).expect("bind a free port");
        let port = listener.local_addr().expect("local addr").port();
        // A UDP socket on the same port must be free too (udp listeners).
        let udp_free = std::net::UdpSocket::bind((ip, port)).is_ok();
        if udp_free && taken_ports().lock().unwrap().insert(port) {
            return port;
        }
    }
}

/// A port free on every IPv4 address (so it also works for a bare-port
/// listener, which binds 0.0.0.0).
pub fn free_port() -> u16 {
    free_port_on(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
}

/// A port free on `[::1]`.
pub fn free_port_v6() -> u16 {
    free_port_on(LOCALHOST_V6)
}

/// An address nothing listens on: connecting to it is refused.
pub fn dead_addr() -> SocketAddr {
    SocketAddr::new(LOCALHOST, free_port())
}

/// A folder under the system temp dir, removed when dropped unless the test
/// is failing (then it is kept and its path printed).
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(label: &str) -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "strait-e2e-{label}-{}-{}-{nanos}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&path).expect("create temp dir");
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("test failed: keeping {}", self.path.display());
        } else {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

// ---------------------------------------------------------------------------
// config.yaml

/// The config.yaml a test runs Strait with. Ports are free ports; the admin
/// key is explicit so no test depends on key generation (one test does).
#[derive(Clone, Debug)]
pub struct Config {
    pub proxy_mode: String,
    /// `apisix.stream_proxy.tcp` items, already in YAML (`9100`, `"127.0.0.1:9101"`).
    pub tcp: Vec<String>,
    /// `apisix.stream_proxy.udp` items, already in YAML.
    pub udp: Vec<String>,
    pub admin: SocketAddr,
    pub admin_key: String,
    pub worker_processes: String,
    pub worker_shutdown_timeout: Option<String>,
    /// Extra `strait.*` lines, already in YAML (`splice: false`).
    pub strait: Vec<String>,
    /// Extra `apisix.*` lines, already in YAML (`dns_resolver_valid: 1`).
    pub apisix: Vec<String>,
    /// `nginx_config.stream.*` lines, already in YAML (`enable_access_log: true`).
    pub nginx_stream: Vec<String>,
}

impl Config {
    /// proxy_mode stream, no listeners yet, one worker (so balancing is exact),
    /// admin API on a free loopback port.
    pub fn new() -> Config {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        Config {
            proxy_mode: "stream".into(),
            tcp: Vec::new(),
            udp: Vec::new(),
            admin: SocketAddr::new(LOCALHOST, free_port()),
            admin_key: format!("e2eKey{:x}{}", nanos, std::process::id()),
            worker_processes: "1".into(),
            worker_shutdown_timeout: None,
            strait: Vec::new(),
            apisix: Vec::new(),
            nginx_stream: Vec::new(),
        }
    }

    /// Adds a `"ip:port"` (or `"[v6]:port"`) listener.
    pub fn listen(mut self, addr: SocketAddr) -> Config {
        self.tcp.push(format!("\"{addr}\""));
        self
    }

    /// Adds a `"ip:port"` UDP listener.
    pub fn listen_udp(mut self, addr: SocketAddr) -> Config {
        self.udp.push(format!("\"{addr}\""));
        self
    }

    /// Adds a bare-port listener (APISIX: all IPv4 interfaces).
    pub fn listen_port(mut self, port: u16) -> Config {
        self.tcp.push(port.to_string());
        self
    }

    pub fn proxy_mode(mut self, mode: &str) -> Config {
        self.proxy_mode = mode.into();
        self
    }

    pub fn workers(mut self, workers: &str) -> Config {
        self.worker_processes = workers.into();
        self
    }

    pub fn shutdown_timeout(mut self, timeout: &str) -> Config {
        self.worker_shutdown_timeout = Some(timeout.into());
        self
    }

    /// Adds an `apisix.<key>: <value>` line (`value` already in YAML).
    pub fn apisix(mut self, key: &str, value: &str) -> Config {
        self.apisix.push(format!("{key}: {value}"));
        self
    }

    /// Adds a `nginx_config.stream.<key>: <value>` line (`value` already in YAML).
    pub fn nginx_stream(mut self, key: &str, value: &str) -> Config {
        self.nginx_stream.push(format!("{key}: {value}"));
        self
    }

    /// Adds a `strait.<key>: <value>` line (`value` already in YAML).
    pub fn strait(mut self, key: &str, value: &str) -> Config {
        self.strait.push(format!("{key}: {value}"));
        self
    }

    pub fn yaml(&self, data_dir: &Path) -> String {
        let mut y = String::new();
        y.push_str("apisix:\n");
        y.push_str(&format!("  proxy_mode: \"{}\"\n", self.proxy_mode));
        for line in &self.apisix {
            y.push_str(&format!("  {line}\n"));
        }
        if !self.tcp.is_empty() || !self.udp.is_empty() {
            y.push_str("  stream_proxy:\n");
            for (key, items) in [("tcp", &self.tcp), ("udp", &self.udp)] {
                if !items.is_empty() {
                    y.push_str(&format!("    {key}:\n"));
                    for item in items {
                        y.push_str(&format!("      - {item}\n"));
                    }
                }
            }
        }
        y.push_str("deployment:\n  admin:\n    admin_key:\n");
        y.push_str(&format!("      - name: admin\n        key: \"{}\"\n        role: admin\n", self.admin_key));
        y.push_str(&format!(
            "    admin_listen:\n      ip: \"{}\"\n      port: {}\n",
            self.admin.ip(),
            self.admin.port()
        ));
        y.push_str("nginx_config:\n");
        y.push_str(&format!("  worker_processes: {}\n", self.worker_processes));
        if let Some(t) = &self.worker_shutdown_timeout {
            y.push_str(&format!("  worker_shutdown_timeout: \"{t}\"\n"));
        }
        if !self.nginx_stream.is_empty() {
            y.push_str("  stream:\n");
            for line in &self.nginx_stream {
                y.push_str(&format!("    {line}\n"));
            }
        }
        y.push_str(&format!("strait:\n  data_dir: \"{}\"\n", data_dir.display()));
        for line in &self.strait {
            y.push_str(&format!("  {line}\n"));
        }
        y
    }
}

impl Default for Config {
    fn default() -> Config {
        Config::new()
    }
}

// ---------------------------------------------------------------------------
// The binary

/// Runs `strait` with `args` to completion (for -t, --help, --version).
pub fn run_strait(args: &[&str]) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn strait");
    let deadline = Instant::now() + WAIT;
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!("strait {args:?} did not exit within {WAIT:?}");
        }
        thread::sleep(POLL_INTERVAL);
    }
    child.wait_with_output().expect("collect output")
}

/// stdout and stderr of a finished command, joined, lossy UTF-8.
pub fn all_output(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// A running `strait` process.
pub struct Strait {
    child: Option<Child>,
    pub config: Config,
    pub config_path: PathBuf,
    stderr_path: PathBuf,
    // Declared last: dropped after the process is gone.
    dir: Option<TempDir>,
}

impl Strait {
    /// Writes `config` into a new temp dir and starts Strait on it.
    pub fn start(config: Config) -> Strait {
        Strait::start_in(TempDir::new("strait"), config)
    }

    /// Starts Strait in an existing dir (a restart keeps the data dir).
    pub fn start_in(dir: TempDir, config: Config) -> Strait {
        let config_path = dir.path().join("config.yaml");
        fs::write(&config_path, config.yaml(&dir.path().join("data"))).expect("write config");
        Strait::spawn(dir, config, config_path)
    }

    /// Starts Strait on a config file already in `dir`, reaching the admin API
    /// at `config.admin` with `config.admin_key`.
    pub fn spawn(dir: TempDir, config: Config, config_path: PathBuf) -> Strait {
        let stderr_path = dir.path().join("strait.stderr");
        let stderr = fs::OpenOptions::new().create(true).append(true).open(&stderr_path).expect("open stderr log");
        let child = Command::new(BIN)
            .arg("-c")
            .arg(&config_path)
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()))
            .stdin(Stdio::null())
            .stdout(stderr.try_clone().expect("clone log handle"))
            .stderr(stderr)
            .spawn()
            .expect("spawn strait");
        let mut strait = Strait { child: Some(child), config, config_path, stderr_path, dir: Some(dir) };
        strait.wait_ready();
        strait
    }

    fn wait_ready(&mut self) {
        let admin = self.config.admin;
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.try_exit() {
                panic!("strait exited during start-up with {status}\n--- stderr ---\n{}", self.stderr());
            }
            if TcpStream::connect_timeout(&admin, Duration::from_millis(200)).is_ok() {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "strait's admin API on {admin} did not accept within {WAIT:?}\n--- stderr ---\n{}",
                    self.stderr()
                );
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.as_ref().expect("dir is kept until drop").path()
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("process handle").id() as i32
    }

    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        let rc = unsafe { libc::kill(self.pid(), signal) };
        assert_eq!(rc, 0, "kill({}, {signal}) failed", self.pid());
    }

    /// The exit status if the process has ended.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().expect("try_wait"))
    }

    /// Waits up to `limit` for the process to end.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.try_exit() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    /// SIGTERM, then waits for a clean exit; returns the dir for a restart.
    pub fn stop(mut self) -> TempDir {
        self.signal(libc::SIGTERM);
        match self.wait_exit(Duration::from_secs(30)) {
            Some(status) => assert!(
                status.success(),
                "strait exited with {status} after SIGTERM\n--- stderr ---\n{}",
                self.stderr()
            ),
            None => panic!("strait did not exit within 30 s of SIGTERM\n--- stderr ---\n{}", self.stderr()),
        }
        self.child = None;
        self.dir.take().expect("dir")
    }

    /// An admin API call with this instance's key.
    pub fn api(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let body = body.map(|b| b.to_string());
        http_json(self.config.admin, method, path, Some(&self.config.admin_key), body.as_deref())
    }

    /// PUT a stream route; panics unless the API answers 200 or 201.
    pub fn put_route(&self, id: &str, route: Value) -> Value {
        let (status, body) = self.api("PUT", &format!("/apisix/admin/stream_routes/{id}"), Some(&route));
        assert!(status == 200 || status == 201, "PUT stream route {id} answered {status}: {body}");
        body
    }

    pub fn put_upstream(&self, id: &str, upstream: Value) -> Value {
        let (status, body) = self.api("PUT", &format!("/apisix/admin/upstreams/{id}"), Some(&upstream));
        assert!(status == 200 || status == 201, "PUT upstream {id} answered {status}: {body}");
        body
    }
}

impl Drop for Strait {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if child.try_wait().ok().flatten().is_none() {
                let _ = child.kill(); // SIGKILL
            }
            let _ = child.wait();
        }
        if thread::panicking() {
            eprintln!(
                "--- strait stderr ({}) ---\n{}--- end of strait stderr ---",
                self.stderr_path.display(),
                self.stderr()
            );
        }
    }
}

/// A route body sending everything to `nodes` with round robin.
pub fn route_to(nodes: &[(SocketAddr, u32)]) -> Value {
    serde_json::json!({ "upstream": upstream_of(nodes) })
}

pub fn upstream_of(nodes: &[(SocketAddr, u32)]) -> Value {
    let mut map = serde_json::Map::new();
    for (addr, weight) in nodes {
        map.insert(addr.to_string(), Value::from(*weight));
    }
    serde_json::json!({ "type": "roundrobin", "nodes": map })
}

// ---------------------------------------------------------------------------
// A tiny blocking HTTP/1.1 client for the admin API

pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// One request on a fresh connection (`Connection: close`).
pub fn http(addr: SocketAddr, method: &str, path: &str, key: Option<&str>, body: Option<&str>) -> HttpResponse {
    let mut stream = connect(addr);
    let body = body.unwrap_or("");
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(key) = key {
        request.push_str(&format!("X-API-KEY: {key}\r\n"));
    }
    if !body.is_empty() || method == "PUT" || method == "POST" || method == "PATCH" {
        request.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n", body.len()));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes()).expect("send HTTP request");
    let raw = read_to_end(&mut stream);
    parse_response(&raw)
        .unwrap_or_else(|e| panic!("bad HTTP response to {method} {path}: {e}\n{}", String::from_utf8_lossy(&raw)))
}

/// Like [`http`] but the body parsed as JSON (`Value::Null` when empty, a JSON
/// string holding the raw text when it is not JSON).
pub fn http_json(addr: SocketAddr, method: &str, path: &str, key: Option<&str>, body: Option<&str>) -> (u16, Value) {
    let response = http(addr, method, path, key, body);
    let value = if response.body.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        serde_json::from_slice(&response.body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&response.body).into_owned()))
    };
    (response.status, value)
}

fn parse_response(raw: &[u8]) -> Result<HttpResponse, String> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or("no end of headers")?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| "headers are not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().ok_or("no status line")?;
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> =
        lines.filter_map(|l| l.split_once(':')).map(|(n, v)| (n.trim().to_string(), v.trim().to_string())).collect();
    let rest = &raw[end + 4..];
    let chunked = headers
        .iter()
        .any(|(n, v)| n.eq_ignore_ascii_case("transfer-encoding") && v.to_ascii_lowercase().contains("chunked"));
    let body = if chunked {
        dechunk(rest)?
    } else if let Some((_, len)) = headers.iter().find(|(n, _)| n.eq_ignore_ascii_case("content-length")) {
        let len: usize = len.parse().map_err(|_| "bad content-length")?;
        if rest.len() < len {
            return Err(format!("body cut short: {} of {len} bytes", rest.len()));
        }
        rest[..len].to_vec()
    } else {
        rest.to_vec()
    };
    Ok(HttpResponse { status, headers, body })
}

fn dechunk(mut data: &[u8]) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n").ok_or("chunk size line not terminated")?;
        let size_text = std::str::from_utf8(&data[..line_end]).map_err(|_| "bad chunk size")?;
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| format!("bad chunk size {size_text:?}"))?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Ok(body);
        }
        if data.len() < size + 2 {
            return Err("chunk cut short".into());
        }
        body.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

// ---------------------------------------------------------------------------
// Client sockets

fn with_timeouts(stream: TcpStream) -> TcpStream {
    stream.set_read_timeout(Some(IO_TIMEOUT)).expect("set read timeout");
    stream.set_write_timeout(Some(IO_TIMEOUT)).expect("set write timeout");
    stream
}

/// Connects (panicking on failure) with read/write timeouts set.
pub fn connect(addr: SocketAddr) -> TcpStream {
    try_connect(addr).unwrap_or_else(|e| panic!("connect to {addr}: {e}"))
}

pub fn try_connect(addr: SocketAddr) -> io::Result<TcpStream> {
    TcpStream::connect_timeout(&addr, IO_TIMEOUT).map(with_timeouts)
}

/// Connects from a chosen source address (e.g. 127.0.0.2: all of 127/8 is
/// loopback on Linux), to exercise `remote_addr` filters.
pub fn connect_from(source: IpAddr, addr: SocketAddr) -> TcpStream {
    try_connect_from(source, addr).unwrap_or_else(|e| panic!("connect {source} -> {addr}: {e}"))
}

pub fn try_connect_from(source: IpAddr, addr: SocketAddr) -> io::Result<TcpStream> {
    let domain = socket2::Domain::for_address(addr);
    let socket = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    socket.bind(&SocketAddr::new(source, 0).into())?;
    socket.connect_timeout(&addr.into(), IO_TIMEOUT)?;
    Ok(with_timeouts(socket.into()))
}

/// Closes `stream` with a TCP reset (SO_LINGER 0) instead of a FIN.
pub fn reset(stream: TcpStream) {
    let socket = socket2::Socket::from(stream);
    socket.set_linger(Some(Duration::ZERO)).expect("SO_LINGER 0");
    drop(socket);
}

/// Reads until EOF; panics on timeout or error.
pub fn read_to_end(stream: &mut TcpStream) -> Vec<u8> {
    let mut data = Vec::new();
    stream.read_to_end(&mut data).unwrap_or_else(|e| panic!("read to EOF failed after {} bytes: {e}", data.len()));
    data
}

/// Reads exactly `n` bytes; panics on EOF, timeout or error.
pub fn read_exact(stream: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut data = vec![0; n];
    stream.read_exact(&mut data).unwrap_or_else(|e| panic!("reading {n} bytes: {e}"));
    data
}

/// Reads one `\n`-terminated line (without the `\n`), byte by byte so nothing
/// after it is consumed.
pub fn read_line(stream: &mut TcpStream) -> io::Result<String> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match stream.read(&mut byte)? {
            0 => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("EOF after {:?}", String::from_utf8_lossy(&line)),
                ))
            }
            _ if byte[0] == b'\n' => return Ok(String::from_utf8_lossy(&line).into_owned()),
            _ => line.push(byte[0]),
        }
    }
}

/// What the far end did to a connection that is expected to be closed.
#[derive(Debug, PartialEq, Eq)]
pub enum Closed {
    /// FIN without a byte.
    Eof,
    /// RST without a byte.
    Reset,
}

/// Asserts that the peer closes `stream` without writing a single byte.
pub fn expect_closed_without_bytes(stream: &mut TcpStream) -> Closed {
    let mut buf = [0u8; 256];
    match stream.read(&mut buf) {
        Ok(0) => Closed::Eof,
        Ok(n) => panic!(
            "expected the connection to be closed without a byte, got {n} bytes: {:?}",
            String::from_utf8_lossy(&buf[..n])
        ),
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => Closed::Reset,
        Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
            panic!("expected the connection to be closed, but it was still open after {IO_TIMEOUT:?}")
        }
        Err(e) => panic!("expected a clean close or reset, got {e}"),
    }
}

/// True when a new connection to `addr` is closed by the proxy without a
/// byte (no route matches); false when it stays open for a short while or
/// data arrives (a route is still in force). For polling.
pub fn closes_without_bytes(addr: SocketAddr) -> bool {
    let Ok(mut stream) = try_connect(addr) else { return false };
    stream.set_read_timeout(Some(Duration::from_millis(300))).expect("set read timeout");
    let mut buf = [0u8; 16];
    match stream.read(&mut buf) {
        Ok(0) => true,
        Err(e) => e.kind() == io::ErrorKind::ConnectionReset,
        Ok(_) => false,
    }
}

/// One echo round trip on a new connection; Err if the proxy closed it or
/// answered something else (used to poll for a route taking effect).
pub fn try_echo(addr: SocketAddr, payload: &[u8]) -> io::Result<()> {
    let mut stream = try_connect(addr)?;
    stream.write_all(payload)?;
    let mut back = vec![0; payload.len()];
    stream.read_exact(&mut back)?;
    if back == payload {
        Ok(())
    } else {
        Err(io::Error::new(io::ErrorKind::InvalidData, "echo differs"))
    }
}

/// Polls until `addr` echoes through a route.
pub fn wait_echo(addr: SocketAddr) {
    wait_until(&format!("{addr} echoes through a route"), || try_echo(addr, b"probe").is_ok());
}

/// Connects and reads the first line the upstream sends (a [`Upstream::named`]
/// server's name); Err if the proxy closed the connection instead.
pub fn try_name(addr: SocketAddr) -> io::Result<String> {
    let mut stream = try_connect(addr)?;
    read_line(&mut stream)
}

/// Polls until a new connection to `addr` reaches the upstream named `name`.
pub fn wait_name(addr: SocketAddr, name: &str) {
    wait_until(&format!("{addr} reaches upstream {name:?}"), || try_name(addr).map(|n| n == name).unwrap_or(false));
}

// ---------------------------------------------------------------------------
// Upstream servers

/// Counters an upstream server keeps.
#[derive(Default)]
pub struct Stats {
    pub accepted: AtomicUsize,
    pub open: AtomicUsize,
    pub bytes_in: AtomicU64,
}

/// A thread-per-connection TCP server; stops accepting when dropped.
pub struct Upstream {
    pub addr: SocketAddr,
    pub stats: Arc<Stats>,
    stop: Arc<AtomicBool>,
}

impl Upstream {
    /// Serves every connection with `handler` on its own thread.
    pub fn spawn<F>(bind: SocketAddr, handler: F) -> Upstream
    where
        F: Fn(TcpStream, &Stats) + Send + Sync + 'static,
    {
        let listener = listen_with_backlog(bind).unwrap_or_else(|e| panic!("upstream bind {bind}: {e}"));
        let addr = listener.local_addr().expect("local addr");
        let stats = Arc::new(Stats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let handler = Arc::new(handler);
        {
            let stats = stats.clone();
            let stop = stop.clone();
            thread::Builder::new()
                .name(format!("upstream {addr}"))
                .spawn(move || {
                    for conn in listener.incoming() {
                        if stop.load(Ordering::SeqCst) {
                            break;
                        }
                        let Ok(conn) = conn else { continue };
                        // Upstream sockets time out too, so no thread lingers.
                        let _ = conn.set_read_timeout(Some(Duration::from_secs(60)));
                        let _ = conn.set_write_timeout(Some(Duration::from_secs(60)));
                        stats.accepted.fetch_add(1, Ordering::SeqCst);
                        stats.open.fetch_add(1, Ordering::SeqCst);
                        let stats = stats.clone();
                        let handler = handler.clone();
                        let spawned = thread::Builder::new().stack_size(256 * 1024).spawn(move || {
                            handler(conn, &stats);
                            stats.open.fetch_sub(1, Ordering::SeqCst);
                        });
                        if spawned.is_err() {
                            eprintln!("upstream {addr}: could not spawn a connection thread");
                        }
                    }
                })
                .expect("spawn upstream accept thread");
        }
        Upstream { addr, stats, stop }
    }

    /// Echoes every byte back; on EOF shuts down its write half and ends.
    pub fn echo() -> Upstream {
        Upstream::echo_on(SocketAddr::new(LOCALHOST, 0))
    }

    pub fn echo_on(bind: SocketAddr) -> Upstream {
        Upstream::spawn(bind, |mut conn, stats| echo_loop(&mut conn, stats))
    }

    /// Server-first: writes `greeting` as soon as it accepts, then echoes.
    pub fn greeter(greeting: &[u8]) -> Upstream {
        let greeting = greeting.to_vec();
        Upstream::spawn(SocketAddr::new(LOCALHOST, 0), move |mut conn, stats| {
            if conn.write_all(&greeting).is_ok() {
                echo_loop(&mut conn, stats);
            }
        })
    }

    /// Says its own name (`name\n`) on accept, then echoes: tells a client
    /// which node served it.
    pub fn named(name: &str) -> Upstream {
        Upstream::greeter(format!("{name}\n").as_bytes())
    }

    pub fn accepted(&self) -> usize {
        self.stats.accepted.load(Ordering::SeqCst)
    }

    pub fn open(&self) -> usize {
        self.stats.open.load(Ordering::SeqCst)
    }

    pub fn bytes_in(&self) -> u64 {
        self.stats.bytes_in.load(Ordering::SeqCst)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag and closes the listener.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
    }
}

/// std's listeners queue only 128 connections; tests open hundreds at once,
/// and an overflowing queue delays connections by SYN-ACK retransmits.
fn listen_with_backlog(bind: SocketAddr) -> io::Result<TcpListener> {
    let socket =
        socket2::Socket::new(socket2::Domain::for_address(bind), socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    // As std's TcpListener::bind: a node brought back on its old port must not
    // trip over that port's TIME_WAIT connections.
    socket.set_reuse_address(true)?;
    socket.bind(&bind.into())?;
    socket.listen(2048)?;
    Ok(socket.into())
}

fn echo_loop(conn: &mut TcpStream, stats: &Stats) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match conn.read(&mut buf) {
            Ok(0) => {
                let _ = conn.shutdown(Shutdown::Write);
                return;
            }
            Ok(n) => {
                stats.bytes_in.fetch_add(n as u64, Ordering::SeqCst);
                if conn.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(_) => return,
        }
    }
}

// ---------------------------------------------------------------------------
// Bulk data: a deterministic byte stream checked byte for byte

/// Byte `offset` of the stream `seed` (splitmix64 per 8-byte block), so any
/// chunking of the stream produces and checks the same bytes.
pub fn pattern_fill(seed: u64, offset: u64, buf: &mut [u8]) {
    for (i, byte) in buf.iter_mut().enumerate() {
        let position = offset + i as u64;
        let block = splitmix64(seed ^ (position / 8).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        *byte = (block >> ((position % 8) * 8)) as u8;
    }
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Writes `len` bytes of stream `seed`.
pub fn write_pattern(stream: &mut TcpStream, seed: u64, len: u64) -> io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut sent = 0u64;
    while sent < len {
        let n = buf.len().min((len - sent) as usize);
        pattern_fill(seed, sent, &mut buf[..n]);
        stream.write_all(&buf[..n])?;
        sent += n as u64;
    }
    Ok(())
}

/// Reads until EOF and checks every byte against stream `seed`. Returns the
/// number of bytes read, or where and how the stream went wrong.
pub fn read_pattern_to_eof(stream: &mut TcpStream, seed: u64) -> Result<u64, String> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut want = vec![0u8; 64 * 1024];
    let mut received = 0u64;
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) => return Ok(received),
            Ok(n) => n,
            Err(e) => return Err(format!("read failed after {received} bytes: {e}")),
        };
        pattern_fill(seed, received, &mut want[..n]);
        if let Some(i) = (0..n).find(|&i| buf[i] != want[i]) {
            return Err(format!(
                "byte {} differs: got {:#04x}, expected {:#04x}",
                received + i as u64,
                buf[i],
                want[i]
            ));
        }
        received += n as u64;
    }
}

/// Raises this process's open-file soft limit to at least `want` (children
/// inherit it), as far as the hard limit allows. Returns the new soft limit.
pub fn raise_nofile_limit(want: u64) -> u64 {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit write/read the struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 0;
        }
        if (limit.rlim_cur as u64) < want {
            limit.rlim_cur = (want as libc::rlim_t).min(limit.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
    }
    limit.rlim_cur as u64
}
