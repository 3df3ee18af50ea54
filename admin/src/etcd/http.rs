//! A small blocking HTTP/1.1 client for etcd's JSON gateway, on `std::net`.
//!
//! Why hand-written: the gateway needs four things (POST a JSON body, read a
//! `Content-Length` or chunked answer, keep the connection alive, stream a
//! chunked watch body line by line with an idle timeout), which fit in a few
//! hundred lines with no new crate and no second runtime. ureq would add eight
//! crates for the same calls and cannot be cancelled from outside.
//!
//! Endpoints (`deployment.etcd.host`) are tried in order; a connection failure
//! moves to the next one. With `user`/`password`, a token from
//! `/v3/auth/authenticate` goes in the `Authorization` header and is renewed
//! once on a 401. `https://` endpoints go through TLS ([`super::tls`]) with
//! the same HTTP code on top.

use super::gateway;
use super::tls::Conn;
use rustls::ClientConfig;
use serde_json::Value;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;
use strait_engine::config::{EtcdEndpoint, EtcdSettings};

/// Longest answer accepted from a unary call, and longest watch line: a full
/// load of 10k routes is about 9 MB (etcd.md §4), so this leaves room.
pub const BODY_BYTES_MAX: usize = 256 << 20;

/// Why a call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EtcdError {
    /// No endpoint could be reached or the connection broke.
    Transport(String),
    /// etcd answered with an error status; the text is etcd's message.
    Status { status: u16, message: String },
}

impl EtcdError {
    /// The text the Admin API shows (APISIX's wording for auth failures).
    pub fn admin_message(&self) -> String {
        match self {
            EtcdError::Status { status: 401, .. } => "insufficient credentials code: 401".into(),
            EtcdError::Status { status: 403, .. } => "etcd forbidden code: 403".into(),
            EtcdError::Status { message, .. } | EtcdError::Transport(message) => message.clone(),
        }
    }
}

impl std::fmt::Display for EtcdError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EtcdError::Transport(message) => f.write_str(message),
            EtcdError::Status { status, message } => write!(f, "etcd answered {status}: {message}"),
        }
    }
}

/// A connection to one of the configured endpoints, reused across calls.
pub struct Client {
    endpoints: Vec<EtcdEndpoint>,
    /// Index into `endpoints` of the one tried first.
    current: usize,
    timeout: Duration,
    credentials: Option<(String, String)>,
    token: Option<String>,
    connection: Option<BufReader<Conn>>,
    /// For `https://` endpoints ([`super::tls::client_config`]).
    tls: Option<Arc<ClientConfig>>,
    /// `deployment.etcd.tls.sni`: the TLS server name instead of the URL's host.
    sni: Option<String>,
}

impl Client {
    /// A client for `settings.hosts`; `tls` is required for `https://` hosts
    /// (without it they are refused at connect).
    pub fn new(settings: &EtcdSettings, tls: Option<Arc<ClientConfig>>) -> Client {
        let credentials = settings.user.clone().zip(settings.password.clone());
        Client {
            endpoints: settings.hosts.clone(),
            current: 0,
            timeout: settings.timeout,
            credentials,
            token: None,
            connection: None,
            tls,
            sni: settings.tls.sni.clone(),
        }
    }

    /// The endpoint calls go to first.
    pub fn endpoint(&self) -> &EtcdEndpoint {
        &self.endpoints[self.current]
    }

    /// POSTs `body` to `path` (`/v3/kv/range`, ...) and returns the JSON answer.
    pub fn call(&mut self, path: &str, body: &Value) -> Result<Value, EtcdError> {
        let mut renewed = false;
        loop {
            let (status, answer) = self.round_trip(path, body)?;
            if status == 401 && self.credentials.is_some() && !renewed && path != "/v3/auth/authenticate" {
                renewed = true;
                self.authenticate()?;
                continue;
            }
            return into_result(status, answer);
        }
    }

    /// Opens a watch on its own connection: the request is sent, the status
    /// read, and the body is returned as a line reader with `idle_timeout`
    /// as its read timeout.
    pub fn watch(&mut self, body: &Value, idle_timeout: Duration) -> Result<WatchStream, EtcdError> {
        if self.credentials.is_some() && self.token.is_none() {
            self.authenticate()?;
        }
        for renewed in [false, true] {
            let stream = self.connect()?;
            let mut reader = BufReader::new(stream);
            let response = send(&mut reader, self.endpoint(), "/v3/watch", body, self.token.as_deref())
                .and_then(|()| read_head(&mut reader));
            let head = match response {
                Ok(head) => head,
                Err(e) => {
                    let error = self.transport_error(&e);
                    self.rotate();
                    return Err(error);
                }
            };
            if head.status == 401 && self.credentials.is_some() && !renewed {
                self.authenticate()?;
                continue;
            }
            if head.status != 200 {
                let body = read_body(&mut reader, &head).unwrap_or_default();
                return into_result(head.status, parse_json(&body)).map(|_| unreachable!("status is not 200"));
            }
            reader.get_ref().tcp().set_read_timeout(Some(idle_timeout)).map_err(|e| self.transport_error(&e))?;
            let body: Box<dyn Read + Send> = if head.chunked {
                Box::new(Chunked::new(reader))
            } else {
                Box::new(reader.take(head.content_length.unwrap_or(u64::MAX)))
            };
            return Ok(WatchStream { lines: BufReader::with_capacity(64 * 1024, body) });
        }
        Err(EtcdError::Status { status: 401, message: "authentication failed".into() })
    }

    fn authenticate(&mut self) -> Result<(), EtcdError> {
        let Some((name, password)) = self.credentials.clone() else {
            return Ok(());
        };
        self.token = None;
        let answer = self.call("/v3/auth/authenticate", &serde_json::json!({"name": name, "password": password}))?;
        let token = answer.get("token").and_then(Value::as_str).ok_or_else(|| EtcdError::Status {
            status: 401,
            message: "etcd gave no token for deployment.etcd.user".into(),
        })?;
        self.token = Some(token.to_string());
        Ok(())
    }

    /// One request and answer, retried once on a fresh connection when a
    /// kept-alive one turns out to be closed, and on the next endpoint when
    /// one cannot be reached.
    fn round_trip(&mut self, path: &str, body: &Value) -> Result<(u16, Value), EtcdError> {
        let mut last = None;
        for _ in 0..self.endpoints.len() + 1 {
            let reused = self.connection.is_some();
            let mut reader = match self.connection.take() {
                Some(reader) => reader,
                None => BufReader::new(self.connect()?),
            };
            let result = send(&mut reader, self.endpoint(), path, body, self.token.as_deref())
                .and_then(|()| read_head(&mut reader))
                .and_then(|head| read_body(&mut reader, &head).map(|body| (head, body)));
            match result {
                Ok((head, body)) => {
                    if !head.close {
                        self.connection = Some(reader);
                    }
                    return Ok((head.status, parse_json(&body)));
                }
                Err(e) => {
                    let error = self.transport_error(&e);
                    if !reused {
                        self.rotate();
                    }
                    last = Some(error);
                }
            }
        }
        Err(last.unwrap_or_else(|| EtcdError::Transport("no etcd endpoint configured".into())))
    }

    /// Connects to the current endpoint, or the next ones in order.
    fn connect(&mut self) -> Result<Conn, EtcdError> {
        let mut errors = Vec::new();
        for _ in 0..self.endpoints.len() {
            let endpoint = self.endpoint().clone();
            let connected = connect_to(&endpoint, self.timeout).and_then(|tcp| match (endpoint.tls, &self.tls) {
                (false, _) => Ok(Conn::Plain(tcp)),
                (true, Some(config)) => Conn::tls(config, self.sni.as_deref(), &endpoint, tcp),
                (true, None) => Err(io::Error::other("https:// endpoint but no TLS client configuration was built")),
            });
            match connected {
                Ok(stream) => return Ok(stream),
                Err(e) => {
                    errors.push(format!("{endpoint}: {e}"));
                    self.rotate();
                }
            }
        }
        Err(EtcdError::Transport(format!("cannot reach etcd ({})", errors.join("; "))))
    }

    fn rotate(&mut self) {
        self.connection = None;
        self.current = (self.current + 1) % self.endpoints.len();
    }

    fn transport_error(&self, error: &io::Error) -> EtcdError {
        let what = match error.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => format!("timed out after {:?}", self.timeout),
            _ => error.to_string(),
        };
        EtcdError::Transport(format!("etcd {}: {what}", self.endpoint()))
    }
}

fn connect_to(endpoint: &EtcdEndpoint, timeout: Duration) -> io::Result<TcpStream> {
    let mut last = io::Error::other("the host name resolved to no address");
    for addr in (endpoint.host.as_str(), endpoint.port).to_socket_addrs()? {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(stream) => {
                stream.set_nodelay(true)?;
                stream.set_read_timeout(Some(timeout))?;
                stream.set_write_timeout(Some(timeout))?;
                return Ok(stream);
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

fn into_result(status: u16, answer: Value) -> Result<Value, EtcdError> {
    if status == 200 {
        return Ok(answer);
    }
    let message = match &answer {
        Value::Null => format!("HTTP {status}"),
        other => gateway::error_message(other),
    };
    Err(EtcdError::Status { status, message })
}

fn parse_json(body: &[u8]) -> Value {
    // A non-JSON body (the gateway's plain-text refusals) is kept as a string.
    serde_json::from_slice(body).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).trim().to_string()))
}

fn send(
    reader: &mut BufReader<Conn>,
    endpoint: &EtcdEndpoint,
    path: &str,
    body: &Value,
    token: Option<&str>,
) -> io::Result<()> {
    let body = body.to_string();
    let host = if endpoint.host.contains(':') { format!("[{}]", endpoint.host) } else { endpoint.host.clone() };
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}:{}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        endpoint.port,
        body.len()
    );
    if let Some(token) = token {
        request.push_str(&format!("Authorization: {token}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(&body);
    let conn = reader.get_mut();
    conn.write_all(request.as_bytes())?;
    conn.flush()
}

struct Head {
    status: u16,
    chunked: bool,
    content_length: Option<u64>,
    close: bool,
}

fn read_head(reader: &mut impl BufRead) -> io::Result<Head> {
    let status_line = read_line(reader)?;
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("bad status line {status_line:?}")))?;
    let mut head = Head { status, chunked: false, content_length: None, close: false };
    loop {
        let line = read_line(reader)?;
        if line.is_empty() {
            return Ok(head);
        }
        let Some((name, value)) = line.split_once(':') else { continue };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "transfer-encoding" => head.chunked = value.eq_ignore_ascii_case("chunked"),
            "content-length" => head.content_length = value.parse().ok(),
            "connection" => head.close = value.eq_ignore_ascii_case("close"),
            _ => {}
        }
    }
}

fn read_body(reader: &mut BufReader<Conn>, head: &Head) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    let limit = BODY_BYTES_MAX as u64 + 1;
    if head.chunked {
        Chunked::new(&mut *reader).take(limit).read_to_end(&mut body)?;
    } else if let Some(length) = head.content_length {
        reader.take(length.min(limit)).read_to_end(&mut body)?;
        if (body.len() as u64) < length.min(limit) {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "etcd closed the connection mid-answer"));
        }
    } else {
        reader.take(limit).read_to_end(&mut body)?;
    }
    if body.len() > BODY_BYTES_MAX {
        return Err(io::Error::other(format!("etcd's answer is larger than {BODY_BYTES_MAX} bytes")));
    }
    Ok(body)
}

/// A CRLF-terminated header line, without the CRLF; bounded.
fn read_line(reader: &mut impl BufRead) -> io::Result<String> {
    let mut line = Vec::new();
    reader.take(16 * 1024).read_until(b'\n', &mut line)?;
    if line.last() != Some(&b'\n') {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "etcd closed the connection"));
    }
    Ok(String::from_utf8_lossy(&line).trim_end_matches(['\r', '\n']).to_string())
}

/// Decodes a chunked body; EOF at the terminating zero-size chunk.
struct Chunked<R> {
    inner: R,
    remaining: u64,
    done: bool,
}

impl<R: BufRead> Chunked<R> {
    fn new(inner: R) -> Chunked<R> {
        Chunked { inner, remaining: 0, done: false }
    }
}

impl<R: BufRead> Read for Chunked<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.done || buf.is_empty() {
            return Ok(0);
        }
        if self.remaining == 0 {
            let line = read_line(&mut self.inner)?;
            let size = line.split(';').next().unwrap_or("").trim();
            let size = u64::from_str_radix(size, 16)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, format!("bad chunk size {line:?}")))?;
            if size == 0 {
                // Trailers, then the empty line.
                while !read_line(&mut self.inner)?.is_empty() {}
                self.done = true;
                return Ok(0);
            }
            self.remaining = size;
        }
        let want = buf.len().min(self.remaining as usize);
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "etcd closed the connection mid-chunk"));
        }
        self.remaining -= n as u64;
        if self.remaining == 0 && !read_line(&mut self.inner)?.is_empty() {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "chunk not followed by CRLF"));
        }
        Ok(n)
    }
}

/// An open watch: one JSON message per line.
pub struct WatchStream {
    lines: BufReader<Box<dyn Read + Send>>,
}

impl WatchStream {
    /// The next line; `Ok(None)` at the end of the body. A last line without
    /// its newline (etcd's SIGTERM error) is returned as a line.
    pub fn next_line(&mut self) -> io::Result<Option<String>> {
        let mut line = Vec::new();
        let n = (&mut self.lines).take(BODY_BYTES_MAX as u64).read_until(b'\n', &mut line)?;
        if n == 0 {
            return Ok(None);
        }
        Ok(Some(String::from_utf8_lossy(&line).into_owned()))
    }

    /// Whether more of the stream is already buffered: when not, a burst of
    /// events has ended and it is time to publish.
    pub fn has_buffered(&self) -> bool {
        !self.lines.buffer().is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunked_body_is_decoded_across_chunk_boundaries() {
        let wire = b"5\r\nhello\r\n7;ext=1\r\n world\n\r\n0\r\nTrailer: x\r\n\r\nNEXT";
        let mut reader = &wire[..];
        let mut body = String::new();
        Chunked::new(&mut reader).read_to_string(&mut body).unwrap();
        assert_eq!(body, "hello world\n");
        assert_eq!(reader, b"NEXT", "the next answer on a kept-alive connection is left alone");
    }

    #[test]
    fn a_chunked_body_cut_short_is_an_error_not_an_end() {
        let wire = b"a\r\nhello";
        let mut body = Vec::new();
        let err = Chunked::new(&wire[..]).read_to_end(&mut body).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn auth_failures_use_apisix_wording() {
        assert_eq!(
            EtcdError::Status { status: 401, message: "x".into() }.admin_message(),
            "insufficient credentials code: 401"
        );
        assert_eq!(EtcdError::Transport("etcd down".into()).admin_message(), "etcd down");
    }
}
