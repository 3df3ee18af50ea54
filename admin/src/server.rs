//! The tiny_http side: turn a socket request into a [`Request`], hand it to
//! the handler, write the [`Response`].
//!
//! Threads: an accept thread takes requests from tiny_http and gives each a
//! short-lived body thread that reads its body (bounded); complete requests go
//! over a channel to the one admin thread, which owns the handler and the
//! store and answers them in order. The body threads exist because tiny_http
//! has no read timeout: a client that stalls mid-body must stall only its own
//! request, not every admin write. At most [`BODY_READERS_MAX`] bodies are read
//! at once; past that, requests are answered 503 at once.

use crate::config_store::ConfigStore;
use crate::dispatch::{Admin, BODY_BYTES_MAX};
use crate::envelope::Response;
use crate::request::Request;
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// Request bodies being read at once (each on its own thread).
pub const BODY_READERS_MAX: usize = 32;

/// How often the admin thread looks at the stop flag while idle.
const STOP_POLL: Duration = Duration::from_millis(100);

/// A request whose body has been read (or failed to be).
struct Pending {
    request: tiny_http::Request,
    body: std::io::Result<Vec<u8>>,
}

/// The running Admin API. Dropping it without [`AdminHandle::stop`] leaves
/// the threads serving until the process exits.
pub struct AdminHandle {
    local_addr: SocketAddr,
    server: Arc<tiny_http::Server>,
    stopping: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl AdminHandle {
    /// The bound address (useful when listening on port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting, lets the admin thread finish the request in hand, and
    /// joins both threads. Body threads stuck on a silent client are left to
    /// die with the process; they hold no state.
    pub fn stop(self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.server.unblock();
        for thread in self.threads {
            if thread.join().is_err() {
                log::error!("an admin thread panicked");
            }
        }
    }
}

pub fn spawn<S: ConfigStore + 'static>(listen: SocketAddr, admin: Admin<S>) -> std::io::Result<AdminHandle> {
    let server = tiny_http::Server::http(listen)
        .map_err(|e| std::io::Error::other(format!("admin API cannot listen on {listen}: {e}")))?;
    let local_addr = server.server_addr().to_ip().expect("bound to an IP address above");
    let server = Arc::new(server);
    let stopping = Arc::new(AtomicBool::new(false));
    let (sender, receiver) = mpsc::sync_channel::<Pending>(BODY_READERS_MAX);
    let worker = {
        let stopping = Arc::clone(&stopping);
        std::thread::Builder::new().name("strait-admin".into()).spawn(move || work(receiver, &stopping, admin))?
    };
    let accept = {
        let server = Arc::clone(&server);
        let stopping = Arc::clone(&stopping);
        std::thread::Builder::new()
            .name("strait-admin-accept".into())
            .spawn(move || accept(&server, &stopping, sender))?
    };
    log::info!("admin API listening on http://{local_addr}/apisix/admin");
    Ok(AdminHandle { local_addr, server, stopping, threads: vec![accept, worker] })
}

fn accept(server: &tiny_http::Server, stopping: &AtomicBool, sender: SyncSender<Pending>) {
    let readers = Arc::new(AtomicUsize::new(0));
    while !stopping.load(Ordering::SeqCst) {
        let request = match server.recv() {
            Ok(request) => request,
            // recv fails both when unblocked and on accept errors; only the
            // first ends the loop (checked at the top).
            Err(e) => {
                if !stopping.load(Ordering::SeqCst) {
                    log::warn!("admin API: {e}");
                }
                continue;
            }
        };
        if readers.fetch_add(1, Ordering::SeqCst) >= BODY_READERS_MAX {
            readers.fetch_sub(1, Ordering::SeqCst);
            busy(request);
            continue;
        }
        let sender = sender.clone();
        let readers_done = Arc::clone(&readers);
        let spawned = std::thread::Builder::new().name("strait-admin-body".into()).spawn(move || {
            let mut request = request;
            // One byte past the limit, so an oversized body is seen as such
            // without ever holding more than the limit in memory.
            let mut body = Vec::new();
            let read = request.as_reader().take(BODY_BYTES_MAX as u64 + 1).read_to_end(&mut body).map(|_| body);
            readers_done.fetch_sub(1, Ordering::SeqCst);
            // A send error means the admin thread is gone (stopping): drop it.
            let _ = sender.send(Pending { request, body: read });
        });
        if let Err(e) = spawned {
            readers.fetch_sub(1, Ordering::SeqCst);
            log::warn!("admin API: cannot start a body reader: {e}");
        }
    }
}

/// Too many bodies in flight: refuse rather than queue without bound.
fn busy(request: tiny_http::Request) {
    let reply = tiny_http::Response::from_data(
        serde_json::json!({"error_msg": "too many admin requests in flight, retry later"}).to_string().into_bytes(),
    )
    .with_status_code(503)
    .with_header(tiny_http::Header::from_bytes(&b"Content-Type"[..], &b"application/json"[..]).expect("valid header"));
    let _ = request.respond(reply);
}

fn work<S: ConfigStore>(receiver: Receiver<Pending>, stopping: &AtomicBool, mut admin: Admin<S>) {
    while !stopping.load(Ordering::SeqCst) {
        match receiver.recv_timeout(STOP_POLL) {
            Ok(pending) => answer(pending, &mut admin),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
}

fn answer<S: ConfigStore>(pending: Pending, admin: &mut Admin<S>) {
    let Pending { request, body } = pending;
    let method = request.method().as_str().to_ascii_uppercase();
    let url = request.url().to_string();
    let (path, query) = url.split_once('?').unwrap_or((&url, ""));
    let headers: Vec<(String, String)> =
        request.headers().iter().map(|h| (h.field.as_str().to_string(), h.value.as_str().to_string())).collect();
    let peer = request.remote_addr().map(|a| a.ip()).unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    let response = match body {
        Ok(body) => admin.handle(&Request { method: &method, path, query, headers: &headers, peer, body: &body }),
        Err(e) => admin.with_common_headers(Response::error(400, format!("invalid request body: {e}"))),
    };
    let mut reply = tiny_http::Response::from_data(response.body.into_bytes()).with_status_code(response.status);
    for (name, value) in response.headers {
        match tiny_http::Header::from_bytes(name.as_bytes(), value.as_bytes()) {
            Ok(header) => reply.add_header(header),
            Err(()) => log::warn!("admin API: dropped an invalid header {name}"),
        }
    }
    if let Err(e) = request.respond(reply) {
        log::debug!("admin API: client went away before the answer: {e}");
    }
}
