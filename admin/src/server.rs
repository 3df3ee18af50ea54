//! The tiny_http side: turn a socket request into a [`Request`], hand it to
//! the handler, write the [`Response`]. One thread serves requests one at a
//! time, which makes the admin thread the store's only writer.

use crate::dispatch::{Admin, BODY_BYTES_MAX};
use crate::envelope::Response;
use crate::request::Request;
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

/// The running Admin API. Dropping it without [`AdminHandle::stop`] leaves
/// the thread serving until the process exits.
pub struct AdminHandle {
    local_addr: SocketAddr,
    server: Arc<tiny_http::Server>,
    stopping: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl AdminHandle {
    /// The bound address (useful when listening on port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Unblocks the admin thread and waits for it to finish the request in hand.
    pub fn stop(mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.server.unblock();
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                log::error!("the admin thread panicked");
            }
        }
    }
}

pub fn spawn(listen: SocketAddr, mut admin: Admin) -> std::io::Result<AdminHandle> {
    let server = tiny_http::Server::http(listen)
        .map_err(|e| std::io::Error::other(format!("admin API cannot listen on {listen}: {e}")))?;
    let local_addr = server.server_addr().to_ip().expect("bound to an IP address above");
    let server = Arc::new(server);
    let stopping = Arc::new(AtomicBool::new(false));
    let thread = {
        let server = Arc::clone(&server);
        let stopping = Arc::clone(&stopping);
        std::thread::Builder::new().name("strait-admin".into()).spawn(move || serve(&server, &stopping, &mut admin))?
    };
    log::info!("admin API listening on http://{local_addr}/apisix/admin");
    Ok(AdminHandle { local_addr, server, stopping, thread: Some(thread) })
}

fn serve(server: &tiny_http::Server, stopping: &AtomicBool, admin: &mut Admin) {
    while !stopping.load(Ordering::SeqCst) {
        match server.recv() {
            Ok(request) => answer(request, admin),
            // recv fails both when unblocked and on accept errors; only the
            // first ends the loop (checked at the top).
            Err(e) if !stopping.load(Ordering::SeqCst) => {
                log::warn!("admin API: {e}");
            }
            Err(_) => {}
        }
    }
}

fn answer(mut request: tiny_http::Request, admin: &mut Admin) {
    let method = request.method().as_str().to_ascii_uppercase();
    let url = request.url().to_string();
    let (path, query) = url.split_once('?').unwrap_or((&url, ""));
    let headers: Vec<(String, String)> =
        request.headers().iter().map(|h| (h.field.as_str().to_string(), h.value.as_str().to_string())).collect();
    let peer = request.remote_addr().map(|a| a.ip()).unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    // Read one byte past the limit so an oversized body is seen as such
    // without ever holding more than the limit in memory.
    let mut body = Vec::new();
    let read = request.as_reader().take(BODY_BYTES_MAX as u64 + 1).read_to_end(&mut body);
    let response = match read {
        Ok(_) => admin.handle(&Request { method: &method, path, query, headers: &headers, peer, body: &body }),
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
