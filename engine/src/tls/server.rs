//! TLS termination: rustls's `Acceptor` reads the ClientHello again (the SNI
//! was already found by `client_hello::peek_sni`, which chose the route and
//! the ssl object's config), checks that both readings agree, and starts the
//! `ServerConnection` with that config.

use crate::buffer::RingBuffer;
use rustls::server::{Accepted, Acceptor};
use rustls::{ServerConfig, ServerConnection};
use std::sync::Arc;

/// What feeding the acceptor came to.
pub(crate) enum AcceptStep {
    /// The ClientHello is not complete in rustls's eyes yet.
    NeedMore,
    Open(ServerConnection),
    /// Refused; any alert rustls had for the client is in `cipher_out`.
    Failed(String),
}

/// Feeds buffered ciphertext to the acceptor until it has the ClientHello.
pub(crate) fn accept(
    acceptor: &mut Acceptor,
    config: &Arc<ServerConfig>,
    expected_sni: Option<&str>,
    cipher_in: &mut RingBuffer,
    cipher_out: &mut RingBuffer,
) -> AcceptStep {
    loop {
        if cipher_in.is_empty() {
            return AcceptStep::NeedMore;
        }
        let mut data = cipher_in.data();
        match acceptor.read_tls(&mut data) {
            Ok(n) => cipher_in.consume(n),
            Err(e) => return AcceptStep::Failed(format!("reading the ClientHello: {e}")),
        }
        match acceptor.accept() {
            Ok(None) => continue,
            Ok(Some(accepted)) => return start(accepted, config, expected_sni, cipher_out),
            Err((error, mut alert)) => {
                let _ = alert.write(&mut super::layer::RingWriter(cipher_out));
                return AcceptStep::Failed(error.to_string());
            }
        }
    }
}

fn start(
    accepted: Accepted,
    config: &Arc<ServerConfig>,
    expected_sni: Option<&str>,
    cipher_out: &mut RingBuffer,
) -> AcceptStep {
    let sni = accepted.client_hello().server_name().map(|s| s.trim_end_matches('.').to_ascii_lowercase());
    // Without SNI the name was fallback_sni, which rustls cannot know.
    if sni.is_some() && sni.as_deref() != expected_sni {
        return AcceptStep::Failed(format!(
            "ClientHello server name {sni:?} differs from the one read before ({expected_sni:?})"
        ));
    }
    match accepted.into_connection(config.clone()) {
        Ok(connection) => AcceptStep::Open(connection),
        Err((error, mut alert)) => {
            let _ = alert.write(&mut super::layer::RingWriter(cipher_out));
            AcceptStep::Failed(error.to_string())
        }
    }
}
