//! TLS for TCP connections, with rustls driven through its buffer API: the
//! engine hands rustls ciphertext it read into its own buffers
//! (`read_tls`), takes plaintext out (`reader`), puts plaintext in (`writer`)
//! and collects ciphertext for the driver to write (`write_tls`). No socket is
//! ever in rustls's hands and the driver knows nothing of TLS.
//!
//! - `client_hello`: the pure ClientHello parser that reads the SNI before any
//!   TLS state exists (routing, certificate choice, passthrough).
//! - `certs`: the per-snapshot certificate store built from `/ssls` objects:
//!   one `Arc<ServerConfig>` per server ssl, found by SNI; client certificates
//!   for upstream mTLS by id.
//! - `server`: termination: rustls's `Acceptor` checks the ClientHello and
//!   starts a `ServerConnection` with the config the SNI chose.
//! - `upstream`: origination: the `ClientConfig` of an upstream with
//!   `scheme: tls`, built once per snapshot.
//! - `layer`: one side's TLS session and its two ciphertext buffers, and the
//!   pump that moves bytes between them and the plaintext flows.
//!
//! Sans-IO: rustls draws handshake randomness from the crypto provider and
//! reads wall-clock time (certificate validity, ticket lifetimes) from its
//! time provider. Both come from [`TlsEnv`], which the binary passes in with
//! the shared state, so a simulator can substitute deterministic ones.

pub mod certs;
pub mod client_hello;
pub(crate) mod layer;
pub(crate) mod server;
pub mod upstream;

use rustls::crypto::CryptoProvider;
use rustls::time_provider::TimeProvider;
use std::sync::Arc;
use std::time::Duration;

/// The most ClientHello bytes buffered before the SNI is known. Real
/// ClientHellos are under 2 KiB (post-quantum key shares bring them near
/// 1.5 KiB more); 16 KiB is one full TLS record.
pub const CLIENT_HELLO_BYTES_MAX: usize = 16 * 1024;

/// `strait.tls.handshake_timeout`'s default: from accept to the end of the
/// client handshake (and from connect to the end of an upstream handshake).
/// nginx's `ssl_handshake_timeout` is 60 s; a stalled client holds a slot, so
/// Strait waits 10 s, plenty for any real client on a slow link.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The server name sent to a TLS upstream when the client sent none (APISIX's).
pub const UPSTREAM_DEFAULT_SNI: &str = "apisix_backend";

/// Where TLS gets its randomness, its wall-clock time and the system's roots.
#[derive(Clone, Debug)]
pub struct TlsEnv {
    pub provider: Arc<CryptoProvider>,
    pub time: Arc<dyn TimeProvider>,
    /// PEM bundle of trusted roots for upstreams with `tls.verify: true` and no
    /// `tls.ca_certs`. Read by the binary (the engine reads no files).
    pub system_roots_pem: Option<Arc<str>>,
}

impl Default for TlsEnv {
    fn default() -> TlsEnv {
        TlsEnv {
            provider: Arc::new(rustls::crypto::ring::default_provider()),
            time: Arc::new(rustls::time_provider::DefaultTimeProvider),
            system_roots_pem: None,
        }
    }
}

/// The TLS alert description of a refused handshake (RFC 8446 §6.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refuse {
    /// No server name and no `fallback_sni`; or no certificate for the name.
    UnrecognizedName,
    HandshakeFailure,
}

impl Refuse {
    /// A fatal alert record in the clear, as sent before any keys exist.
    pub(crate) fn alert_record(self) -> [u8; 7] {
        let description = match self {
            Refuse::UnrecognizedName => 112,
            Refuse::HandshakeFailure => 40,
        };
        [21, 3, 3, 0, 2, 2, description]
    }
}
