//! The certificate store of one config snapshot, built from the `/ssls`
//! objects (spec §3.4, §4.6.1): one `Arc<ServerConfig>` per enabled server
//! ssl, found by SNI — exact name first, then a wildcard covering exactly one
//! more label (`*.x.com` covers `a.x.com`, not `a.b.x.com`), `*` last — and
//! the client certificates (`type: client`) upstream mTLS refers to by id.
//!
//! Everything expensive (PEM parsing, key loading, verifier building) happens
//! here, once per snapshot; a handshake only looks a name up.

use super::TlsEnv;
use crate::model::{Ssl, SslClient, SslType};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;

/// A client certificate chain and its key, for upstream mTLS.
#[derive(Debug)]
pub struct ClientCert {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

#[derive(Default)]
pub struct CertStore {
    /// Index into `servers` by exact lower-cased name.
    exact: HashMap<String, usize>,
    /// Index into `servers` by the suffix of a one-label wildcard (`x.com` for `*.x.com`).
    wildcard: HashMap<String, usize>,
    star: Option<usize>,
    servers: Vec<(String, Arc<ServerConfig>)>,
    clients: HashMap<String, Arc<ClientCert>>,
}

impl CertStore {
    /// Builds the store; objects that fail to load are left out and reported.
    pub fn build(ssls: &[(String, Value)], env: &TlsEnv, warnings: &mut Vec<String>) -> CertStore {
        let mut store = CertStore::default();
        let mut sorted: Vec<&(String, Value)> = ssls.iter().collect();
        // Key order, as for stream routes: the first object naming an SNI wins.
        sorted.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        for (id, value) in sorted {
            let ssl = match Ssl::from_json(value) {
                Ok(ssl) => ssl,
                Err(e) => {
                    warnings.push(format!("skipped invalid ssl [{id}]: {e}"));
                    continue;
                }
            };
            match ssl.ssl_type {
                SslType::Client => match client_cert(&ssl.cert, &ssl.key, env) {
                    Ok(cert) => {
                        store.clients.insert(id.clone(), Arc::new(cert));
                    }
                    Err(e) => warnings.push(format!("skipped ssl [{id}]: {e}")),
                },
                SslType::Server if !ssl.enabled => {}
                SslType::Server => match server_config(&ssl, env) {
                    Ok(config) => store.add_server(id, &ssl.snis, config),
                    Err(e) => warnings.push(format!("skipped ssl [{id}]: {e}")),
                },
            }
        }
        store
    }

    fn add_server(&mut self, id: &str, snis: &[String], config: Arc<ServerConfig>) {
        let index = self.servers.len();
        self.servers.push((id.to_string(), config));
        for sni in snis {
            if sni == "*" {
                self.star.get_or_insert(index);
            } else if let Some(suffix) = sni.strip_prefix("*.") {
                self.wildcard.entry(suffix.to_string()).or_insert(index);
            } else {
                self.exact.entry(sni.clone()).or_insert(index);
            }
        }
    }

    /// The ssl id and server config for a (lower-cased) server name.
    pub fn find(&self, sni: &str) -> Option<(&str, &Arc<ServerConfig>)> {
        let index = self
            .exact
            .get(sni)
            .or_else(|| sni.split_once('.').and_then(|(_, parent)| self.wildcard.get(parent)))
            .or(self.star.as_ref())?;
        let (id, config) = &self.servers[*index];
        Some((id, config))
    }

    /// A `type: client` ssl object's certificate, for `tls.client_cert_id`.
    pub fn client(&self, id: &str) -> Option<&Arc<ClientCert>> {
        self.clients.get(id)
    }

    pub fn is_empty(&self) -> bool {
        self.servers.is_empty()
    }
}

/// Parses a PEM chain (leaf first).
pub(crate) fn pem_chain(pem: &str, what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    if pem.starts_with('$') {
        return Err(format!("{what}: secret references are not supported by Strait yet"));
    }
    let chain = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("failed to parse {what}: {e}"))?;
    if chain.is_empty() {
        return Err(format!("failed to parse {what}: no PEM certificate found"));
    }
    // PEM decoding accepts any base64; the leaf must also be a certificate.
    webpki::EndEntityCert::try_from(&chain[0]).map_err(|e| format!("failed to parse {what}: {e:?}"))?;
    Ok(chain)
}

pub(crate) fn pem_key(pem: &str, what: &str) -> Result<PrivateKeyDer<'static>, String> {
    if !pem.trim_start().starts_with("---") {
        // APISIX's at-rest encryption (spec §4.9) stores base64 AES-CBC text here.
        return Err(format!(
            "failed to parse {what}: not PEM (encrypted keys and secret references are not supported by Strait yet)"
        ));
    }
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| format!("failed to parse {what}: {e}"))
}

fn client_cert(cert: &str, key: &str, env: &TlsEnv) -> Result<ClientCert, String> {
    // Loaded once to check the pair belongs together; the connection loads its own copy.
    certified_key(cert, key, env, "")?;
    Ok(ClientCert { chain: pem_chain(cert, "cert")?, key: pem_key(key, "key")? })
}

/// Checks an ssl object as the Admin API must before storing it: its shape,
/// then every certificate and key parsing and each key belonging to its
/// certificate, `client.ca` and `ssl_protocols` (APISIX's messages: `failed to
/// parse cert: ...`, `failed to handle cert-key pair[i]: ...`).
pub fn check_ssl(value: &Value, env: &TlsEnv) -> Result<(), String> {
    let ssl = Ssl::from_json(value)?;
    match ssl.ssl_type {
        SslType::Client => client_cert(&ssl.cert, &ssl.key, env).map(drop),
        SslType::Server => server_config(&ssl, env).map(drop),
    }
}

fn certified_key(cert: &str, key: &str, env: &TlsEnv, what: &str) -> Result<Arc<CertifiedKey>, String> {
    let chain = pem_chain(cert, &format!("{what}cert"))?;
    let key = pem_key(key, &format!("{what}key"))?;
    let signing =
        env.provider.key_provider.load_private_key(key).map_err(|e| format!("failed to parse {what}key: {e}"))?;
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        // Unknown: the provider cannot tell (it is then left to the handshake).
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Ok(Arc::new(certified)),
        Err(_) => Err(format!("failed to parse {what}key: the key does not belong to the certificate")),
    }
}

/// One server ssl object as a rustls config: its certificate pairs, its
/// protocol versions and, with `client.ca`, a verifier requiring client certificates.
fn server_config(ssl: &Ssl, env: &TlsEnv) -> Result<Arc<ServerConfig>, String> {
    let mut keys = vec![certified_key(&ssl.cert, &ssl.key, env, "")?];
    for (index, (cert, key)) in ssl.certs.iter().zip(&ssl.keys).enumerate() {
        keys.push(
            certified_key(cert, key, env, "")
                .map_err(|e| format!("failed to handle cert-key pair[{}]: {e}", index + 1))?,
        );
    }
    let mut versions: Vec<&'static rustls::SupportedProtocolVersion> = Vec::new();
    for name in &ssl.ssl_protocols {
        match name.as_str() {
            "TLSv1.2" => versions.push(&rustls::version::TLS12),
            "TLSv1.3" => versions.push(&rustls::version::TLS13),
            // rustls has no TLS 1.1 (deprecated by RFC 8996): it is left out.
            _ => {}
        }
    }
    if ssl.ssl_protocols.is_empty() {
        versions = vec![&rustls::version::TLS13, &rustls::version::TLS12];
    }
    if versions.is_empty() {
        return Err("ssl_protocols names no version Strait supports (TLSv1.2, TLSv1.3)".into());
    }
    let builder = ServerConfig::builder_with_details(env.provider.clone(), env.time.clone())
        .with_protocol_versions(&versions)
        .map_err(|e| format!("ssl_protocols: {e}"))?;
    let builder = match &ssl.client {
        None => builder.with_no_client_auth(),
        Some(client) => builder.with_client_cert_verifier(client_verifier(client, env)?),
    };
    Ok(Arc::new(builder.with_cert_resolver(Arc::new(CertPairs(keys)))))
}

fn client_verifier(client: &SslClient, env: &TlsEnv) -> Result<Arc<dyn ClientCertVerifier>, String> {
    let mut roots = RootCertStore::empty();
    for cert in pem_chain(&client.ca, "client.ca")? {
        roots.add(cert).map_err(|e| format!("failed to validate client_cert: {e}"))?;
    }
    let inner = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), env.provider.clone())
        .build()
        .map_err(|e| format!("failed to validate client_cert: {e}"))?;
    Ok(Arc::new(DepthLimited { inner, depth: client.depth }))
}

/// An ssl object's certificate pairs: the first whose key can sign with a
/// scheme the client offers (RSA and ECDSA side by side), else the first.
#[derive(Debug)]
struct CertPairs(Vec<Arc<CertifiedKey>>);

impl ResolvesServerCert for CertPairs {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let offered = hello.signature_schemes();
        self.0.iter().find(|k| k.key.choose_scheme(offered).is_some()).or(self.0.first()).cloned()
    }
}

/// `client.depth` (nginx's `ssl_verify_depth`): a client may present at most
/// `depth` certificates besides its own. With the default 1 that is a leaf the
/// CA signed directly, optionally followed by the CA itself (some clients send
/// their whole file). webpki has no such limit, so the presented chain is
/// counted before it builds the path; slightly more lenient than OpenSSL's
/// count, never stricter.
#[derive(Debug)]
struct DepthLimited {
    inner: Arc<dyn ClientCertVerifier>,
    depth: u32,
}

impl ClientCertVerifier for DepthLimited {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        // The stream subsystem fails the handshake without a client certificate (spec §4.6.1).
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        if intermediates.len() as u64 > u64::from(self.depth) {
            return Err(rustls::Error::InvalidCertificate(rustls::CertificateError::ApplicationVerificationFailure));
        }
        self.inner.verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
