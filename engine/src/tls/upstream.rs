//! TLS to upstream nodes (`scheme: tls`, spec §4.7): one `ClientConfig` per
//! upstream per snapshot. The server name sent is the client's SNI when the
//! client spoke TLS with one, else APISIX's `apisix_backend`
//! ([`super::UPSTREAM_DEFAULT_SNI`]).
//!
//! APISIX never verifies an L4 upstream's certificate; Strait keeps that
//! default (`tls.verify: false`, with [`AcceptAnyServerCertificate`]) and
//! verifies against `tls.ca_certs` or the system's roots when `verify: true`.

use super::certs::{pem_chain, pem_key, CertStore};
use super::TlsEnv;
use crate::model::UpstreamTls;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::sync::Arc;

/// Builds the client config of an upstream with `scheme: tls`.
pub fn client_config(tls: Option<&UpstreamTls>, certs: &CertStore, env: &TlsEnv) -> Result<Arc<ClientConfig>, String> {
    let default = UpstreamTls::default();
    let tls = tls.unwrap_or(&default);
    let builder = ClientConfig::builder_with_details(env.provider.clone(), env.time.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls: {e}"))?;
    let builder = if tls.verify {
        let pem = match (&tls.ca_certs, &env.system_roots_pem) {
            (Some(pem), _) => pem.as_str(),
            (None, Some(pem)) => pem,
            (None, None) => {
                return Err("tls.verify is true but no tls.ca_certs is set and no system CA bundle was found".into())
            }
        };
        let mut roots = RootCertStore::empty();
        let (added, _ignored) = roots.add_parsable_certificates(pem_chain(pem, "tls.ca_certs")?);
        if added == 0 {
            return Err("tls.ca_certs: no usable CA certificate".into());
        }
        builder.with_root_certificates(roots)
    } else {
        builder.dangerous().with_custom_certificate_verifier(Arc::new(AcceptAnyServerCertificate::new(
            env.provider.signature_verification_algorithms,
        )))
    };
    let config = match (&tls.client_cert, &tls.client_key, &tls.client_cert_id) {
        (Some(cert), Some(key), _) => builder
            .with_client_auth_cert(pem_chain(cert, "tls.client_cert")?, pem_key(key, "tls.client_key")?)
            .map_err(|e| format!("tls.client_key: {e}"))?,
        (_, _, Some(id)) => {
            let client =
                certs.client(id).ok_or_else(|| format!("tls.client_cert_id: no ssl of type client with id {id}"))?;
            builder
                .with_client_auth_cert(client.chain.clone(), client.key.clone_key())
                .map_err(|e| format!("tls.client_cert_id [{id}]: {e}"))?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// The server name for an upstream handshake.
pub(crate) fn server_name(client_sni: Option<&str>) -> ServerName<'static> {
    client_sni.and_then(|sni| ServerName::try_from(sni.to_string()).ok()).unwrap_or_else(|| {
        ServerName::try_from(super::UPSTREAM_DEFAULT_SNI).expect("apisix_backend is a valid DNS name")
    })
}

/// Accepts whatever certificate the upstream presents (APISIX's L4 behaviour,
/// `tls.verify: false`). The handshake signatures are still checked, so the
/// peer must hold the key of the certificate it sent; who that is, is not.
#[derive(Debug)]
pub struct AcceptAnyServerCertificate(WebPkiSupportedAlgorithms);

impl AcceptAnyServerCertificate {
    /// Checks handshake signatures with `algorithms` (the provider's).
    pub fn new(algorithms: WebPkiSupportedAlgorithms) -> AcceptAnyServerCertificate {
        AcceptAnyServerCertificate(algorithms)
    }
}

impl ServerCertVerifier for AcceptAnyServerCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}
