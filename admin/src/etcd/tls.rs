//! TLS to etcd (`https://` hosts in `deployment.etcd.host`), with the engine's
//! rustls and ring provider wrapped around the blocking `TcpStream`, so the
//! HTTP code in [`super::http`] is the same over both.
//!
//! - `tls.verify: true` (APISIX's default): etcd's certificate must chain to
//!   the system CA bundle or to one of `tls.ca` (Strait's key) and the files of
//!   APISIX's `apisix.ssl.ssl_trusted_certificate`, and match the host of the
//!   URL (an IP address is checked against the certificate's IP SANs), or
//!   `tls.sni` when set.
//! - `tls.verify: false`: any certificate is accepted (the engine's
//!   [`AcceptAnyServerCertificate`], which still checks handshake signatures).
//! - `tls.cert` + `tls.key`: the client certificate for etcd's
//!   `--client-cert-auth`.
//!
//! Files are read once, at start, by [`client_config`]; a bad file stops the
//! start with a message naming the key and the file.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConnection, RootCertStore, StreamOwned};
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;
use strait_engine::config::{EtcdEndpoint, EtcdSettings};
use strait_engine::tls::upstream::AcceptAnyServerCertificate;

/// The built TLS client configuration, as handed to [`Client`](super::http::Client).
pub use rustls::ClientConfig;

/// Builds the client config for the `https://` hosts of `settings`, reading
/// the certificate files (relative paths are taken from `base_dir`, the
/// folder of config.yaml). `None` when no host uses `https://`.
/// `system_roots_pem` is the system CA bundle, read by the binary.
pub fn client_config(
    settings: &EtcdSettings,
    base_dir: &Path,
    system_roots_pem: Option<&str>,
) -> Result<Option<Arc<ClientConfig>>, String> {
    let Some(first) = settings.hosts.iter().find(|h| h.tls) else {
        return Ok(None);
    };
    build(settings, base_dir, system_roots_pem).map(Some).map_err(|e| format!("TLS to etcd {first}: {e}"))
}

fn build(
    settings: &EtcdSettings,
    base_dir: &Path,
    system_roots_pem: Option<&str>,
) -> Result<Arc<ClientConfig>, String> {
    let tls = &settings.tls;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = if tls.verify {
        let mut roots = RootCertStore::empty();
        if let Some(pem) = system_roots_pem {
            // A bundle may hold a certificate webpki cannot use; the others still count.
            let certs = CertificateDer::pem_slice_iter(pem.as_bytes()).filter_map(Result::ok);
            roots.add_parsable_certificates(certs);
        }
        for file in &tls.ca {
            let path = base_dir.join(file);
            let (added, _) = roots.add_parsable_certificates(read_certs(&path, "deployment.etcd.tls.ca")?);
            if added == 0 {
                return Err(format!("deployment.etcd.tls.ca {}: no usable CA certificate", path.display()));
            }
        }
        if roots.is_empty() {
            return Err("deployment.etcd.tls.verify is true but no CA is trusted: no system CA bundle was found \
                 and deployment.etcd.tls.ca is not set"
                .into());
        }
        builder.with_root_certificates(roots)
    } else {
        log::warn!("deployment.etcd.tls.verify is false: etcd's certificate is not verified");
        let verifier = AcceptAnyServerCertificate::new(provider.signature_verification_algorithms);
        builder.dangerous().with_custom_certificate_verifier(Arc::new(verifier))
    };
    let config = match (&tls.cert, &tls.key) {
        (Some(cert), Some(key)) => {
            let cert_path = base_dir.join(cert);
            let key_path = base_dir.join(key);
            let chain = read_certs(&cert_path, "deployment.etcd.tls.cert")?;
            let key = read_key(&key_path)?;
            builder.with_client_auth_cert(chain, key).map_err(|e| {
                format!(
                    "deployment.etcd.tls.key {} does not go with deployment.etcd.tls.cert {}: {e}",
                    key_path.display(),
                    cert_path.display()
                )
            })?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

fn read_file(path: &Path, what: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{what}: cannot read {}: {e}", path.display()))
}

fn read_certs(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = read_file(path, what)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{what} {}: not a PEM certificate file: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{what} {}: no PEM certificate found", path.display()));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let pem = read_file(path, "deployment.etcd.tls.key")?;
    PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| format!("deployment.etcd.tls.key {}: no usable PEM private key: {e}", path.display()))
}

/// A connection to etcd, in the clear or over TLS.
pub(crate) enum Conn {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Conn {
    /// Wraps a connected `tcp` in TLS and completes the handshake (within the
    /// socket's timeouts), so that certificate errors surface at connect.
    pub(crate) fn tls(
        config: &Arc<ClientConfig>,
        sni: Option<&str>,
        endpoint: &EtcdEndpoint,
        mut tcp: TcpStream,
    ) -> io::Result<Conn> {
        let name = sni.unwrap_or(&endpoint.host);
        let server_name = ServerName::try_from(name.to_string()).map_err(|_| {
            io::Error::new(io::ErrorKind::InvalidInput, format!("{name:?} is not a valid TLS server name"))
        })?;
        let mut connection = ClientConnection::new(Arc::clone(config), server_name).map_err(io::Error::other)?;
        while connection.is_handshaking() {
            if let Err(e) = connection.complete_io(&mut tcp) {
                return Err(handshake_error(e));
            }
        }
        Ok(Conn::Tls(Box::new(StreamOwned::new(connection, tcp))))
    }

    /// The socket, for timeouts.
    pub(crate) fn tcp(&self) -> &TcpStream {
        match self {
            Conn::Plain(tcp) => tcp,
            Conn::Tls(stream) => stream.get_ref(),
        }
    }
}

/// A handshake failure in words an operator can act on.
fn handshake_error(error: io::Error) -> io::Error {
    let kind = error.kind();
    let hint = match error.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) {
        Some(rustls::Error::InvalidCertificate(_)) => {
            " (etcd's certificate was not accepted: set deployment.etcd.tls.ca to the CA that signed it, \
             check that it names this host, or set deployment.etcd.tls.verify: false)"
        }
        Some(rustls::Error::AlertReceived(_)) => {
            " (etcd refused the handshake: does it want a client \
             certificate (deployment.etcd.tls.cert and key) signed by its --trusted-ca-file?)"
        }
        _ if matches!(kind, io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
            return io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out")
        }
        _ => "",
    };
    io::Error::new(kind, format!("TLS handshake failed: {error}{hint}"))
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Plain(tcp) => tcp.read(buf),
            Conn::Tls(stream) => stream.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Plain(tcp) => tcp.write(buf),
            Conn::Tls(stream) => stream.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Conn::Plain(tcp) => tcp.flush(),
            Conn::Tls(stream) => stream.flush(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::http::{Client, EtcdError};
    use super::*;
    use rustls::server::WebPkiClientVerifier;
    use rustls::{ServerConfig, ServerConnection};
    use std::io::{BufRead, BufReader};
    use std::net::{SocketAddr, TcpListener};
    use std::path::PathBuf;
    use std::time::Duration;

    struct Ca {
        cert: rcgen::Certificate,
        key: rcgen::KeyPair,
    }

    struct Leaf {
        cert_pem: String,
        key_pem: String,
    }

    impl Ca {
        fn new(name: &str) -> Ca {
            let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            params.distinguished_name.push(rcgen::DnType::CommonName, name);
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
            let key = rcgen::KeyPair::generate().unwrap();
            Ca { cert: params.self_signed(&key).unwrap(), key }
        }

        fn issue(&self, names: &[&str], usage: rcgen::ExtendedKeyUsagePurpose) -> Leaf {
            let mut params =
                rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
            params.extended_key_usages = vec![usage];
            let key = rcgen::KeyPair::generate().unwrap();
            let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
            Leaf { cert_pem: cert.pem(), key_pem: key.serialize_pem() }
        }
    }

    /// A temp dir with the PEM files a config names, removed on drop.
    struct Files(PathBuf);

    impl Files {
        fn new() -> Files {
            static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
            let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let dir = std::env::temp_dir().join(format!("strait-etcd-tls-{}-{n}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            Files(dir)
        }

        fn write(&self, name: &str, text: &str) -> String {
            std::fs::write(self.0.join(name), text).unwrap();
            name.to_string()
        }
    }

    impl Drop for Files {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// An HTTPS server answering every request on one connection with a
    /// gateway-like JSON body; with `client_ca`, it requires a client
    /// certificate signed by it.
    fn https_server(leaf: &Leaf, client_ca: Option<&Ca>) -> SocketAddr {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder =
            ServerConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions().unwrap();
        let builder = match client_ca {
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                roots.add(ca.cert.der().clone()).unwrap();
                let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).build().unwrap();
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let chain = CertificateDer::pem_slice_iter(leaf.cert_pem.as_bytes()).collect::<Result<Vec<_>, _>>().unwrap();
        let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
        let config = Arc::new(builder.with_single_cert(chain, key).unwrap());
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for socket in listener.incoming() {
                let Ok(socket) = socket else { return };
                let config = Arc::clone(&config);
                std::thread::spawn(move || {
                    let connection = ServerConnection::new(config).unwrap();
                    let mut reader = BufReader::new(StreamOwned::new(connection, socket));
                    loop {
                        let mut length = 0;
                        loop {
                            let mut line = String::new();
                            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                                return;
                            }
                            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                                length = v.trim().parse().unwrap();
                            }
                            if line == "\r\n" {
                                break;
                            }
                        }
                        let mut body = vec![0; length];
                        if reader.read_exact(&mut body).is_err() {
                            return;
                        }
                        let answer = r#"{"header":{"revision":"5"}}"#;
                        let response = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{answer}", answer.len());
                        if reader.get_mut().write_all(response.as_bytes()).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    fn settings(addr: SocketAddr, host: &str, tls: strait_engine::config::EtcdTls) -> EtcdSettings {
        EtcdSettings {
            hosts: vec![EtcdEndpoint { tls: true, host: host.into(), port: addr.port() }],
            timeout: Duration::from_secs(5),
            tls,
            ..EtcdSettings::default()
        }
    }

    fn call(settings: &EtcdSettings, files: &Files) -> Result<serde_json::Value, EtcdError> {
        let config = client_config(settings, &files.0, None).unwrap();
        Client::new(settings, config).call("/v3/kv/range", &serde_json::json!({"key": "Lw=="}))
    }

    fn tls(files: &Files, ca: Option<&Ca>, client: Option<&Leaf>) -> strait_engine::config::EtcdTls {
        strait_engine::config::EtcdTls {
            verify: true,
            ca: ca.map(|ca| files.write("ca.pem", &ca.cert.pem())).into_iter().collect(),
            cert: client.map(|c| files.write("client.pem", &c.cert_pem)),
            key: client.map(|c| files.write("client.key", &c.key_pem)),
            sni: None,
        }
    }

    #[test]
    fn an_ip_host_is_verified_against_the_ca_and_the_client_certificate_is_presented() {
        let ca = Ca::new("etcd ca");
        let server = ca.issue(&["127.0.0.1"], rcgen::ExtendedKeyUsagePurpose::ServerAuth);
        let client = ca.issue(&["strait"], rcgen::ExtendedKeyUsagePurpose::ClientAuth);
        let addr = https_server(&server, Some(&ca));
        let files = Files::new();
        let settings = settings(addr, "127.0.0.1", tls(&files, Some(&ca), Some(&client)));
        let answer = call(&settings, &files).expect("verified mTLS call");
        assert_eq!(answer["header"]["revision"], "5");
    }

    #[test]
    fn an_unknown_ca_fails_the_handshake_naming_the_host_and_the_remedy() {
        let ca = Ca::new("etcd ca");
        let other = Ca::new("someone else");
        let addr = https_server(&ca.issue(&["127.0.0.1"], rcgen::ExtendedKeyUsagePurpose::ServerAuth), None);
        let files = Files::new();
        let settings = settings(addr, "127.0.0.1", tls(&files, Some(&other), None));
        let EtcdError::Transport(message) = call(&settings, &files).unwrap_err() else { panic!("transport error") };
        assert!(message.contains(&format!("https://127.0.0.1:{}", addr.port())), "{message}");
        assert!(message.contains("TLS handshake failed: invalid peer certificate"), "{message}");
        assert!(message.contains("deployment.etcd.tls.ca"), "{message}");
    }

    #[test]
    fn verify_false_accepts_any_certificate() {
        let ca = Ca::new("etcd ca");
        let addr = https_server(&ca.issue(&["somewhere.else"], rcgen::ExtendedKeyUsagePurpose::ServerAuth), None);
        let files = Files::new();
        let settings = settings(addr, "127.0.0.1", strait_engine::config::EtcdTls::default());
        assert!(!settings.tls.verify);
        call(&settings, &files).expect("no verification");
    }

    #[test]
    fn the_name_checked_is_the_url_host_or_tls_sni() {
        let ca = Ca::new("etcd ca");
        let addr = https_server(&ca.issue(&["etcd.internal"], rcgen::ExtendedKeyUsagePurpose::ServerAuth), None);
        let files = Files::new();
        let mut settings = settings(addr, "127.0.0.1", tls(&files, Some(&ca), None));
        let error = call(&settings, &files).unwrap_err().to_string();
        assert!(error.contains("certificate not valid for name \"127.0.0.1\""), "{error}");
        settings.tls.sni = Some("etcd.internal".into());
        call(&settings, &files).expect("the certificate names tls.sni");
    }

    #[test]
    fn a_server_wanting_a_client_certificate_refuses_a_client_without_one() {
        let ca = Ca::new("etcd ca");
        let addr = https_server(&ca.issue(&["127.0.0.1"], rcgen::ExtendedKeyUsagePurpose::ServerAuth), Some(&ca));
        let files = Files::new();
        let settings = settings(addr, "127.0.0.1", tls(&files, Some(&ca), None));
        let error = call(&settings, &files).unwrap_err().to_string();
        assert!(error.contains(&format!("https://127.0.0.1:{}", addr.port())), "{error}");
    }

    #[test]
    fn bad_files_stop_the_start_naming_the_key_and_the_file() {
        let files = Files::new();
        let addr: SocketAddr = "127.0.0.1:2379".parse().unwrap();
        let mut tls = tls(&files, None, None);
        tls.ca = vec!["missing-ca.pem".into()];
        let error = client_config(&settings(addr, "127.0.0.1", tls.clone()), &files.0, None).unwrap_err();
        assert!(
            error.starts_with("TLS to etcd https://127.0.0.1:2379: deployment.etcd.tls.ca: cannot read "),
            "{error}"
        );
        assert!(error.contains("missing-ca.pem"), "{error}");

        tls.ca = vec![files.write("junk.pem", "not a certificate")];
        let error = client_config(&settings(addr, "127.0.0.1", tls.clone()), &files.0, None).unwrap_err();
        assert!(error.contains("junk.pem: no PEM certificate found"), "{error}");

        tls.ca.clear();
        let error = client_config(&settings(addr, "127.0.0.1", tls.clone()), &files.0, None).unwrap_err();
        assert!(error.contains("no CA is trusted"), "{error}");

        let ca = Ca::new("etcd ca");
        let client = ca.issue(&["strait"], rcgen::ExtendedKeyUsagePurpose::ClientAuth);
        tls.ca = vec![files.write("ca.pem", &ca.cert.pem())];
        tls.cert = Some(files.write("client.pem", &client.cert_pem));
        tls.key = Some(files.write("client.key", &client.cert_pem));
        let error = client_config(&settings(addr, "127.0.0.1", tls.clone()), &files.0, None).unwrap_err();
        assert!(error.contains("deployment.etcd.tls.key") && error.contains("client.key"), "{error}");

        // Plain http:// hosts need no TLS and read no files.
        let mut plain = settings(addr, "127.0.0.1", tls);
        plain.hosts[0].tls = false;
        assert!(client_config(&plain, &files.0, None).unwrap().is_none());
    }

    #[test]
    fn the_system_bundle_is_trusted_when_verifying() {
        let ca = Ca::new("system ca");
        let files = Files::new();
        let addr = https_server(&ca.issue(&["127.0.0.1"], rcgen::ExtendedKeyUsagePurpose::ServerAuth), None);
        let settings = settings(addr, "127.0.0.1", tls(&files, None, None));
        let bundle = format!("junk that is not PEM\n{}", ca.cert.pem());
        let config = client_config(&settings, &files.0, Some(&bundle)).unwrap();
        Client::new(&settings, config).call("/v3/kv/range", &serde_json::json!({})).expect("system roots trusted");
    }
}
