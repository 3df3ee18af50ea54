//! config.yaml keys for TLS: `apisix.ssl.fallback_sni` (spec §1.7) and
//! Strait's `strait.tls.handshake_timeout`.

use std::time::Duration;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsSettings {
    /// `apisix.ssl.fallback_sni`: lower-cased, trailing dot removed.
    pub fallback_sni: Option<String>,
    /// `strait.tls.handshake_timeout` (default 10 s; nginx's ssl_handshake_timeout is 60 s).
    pub handshake_timeout: Duration,
}

impl Default for TlsSettings {
    fn default() -> TlsSettings {
        TlsSettings { fallback_sni: None, handshake_timeout: crate::tls::DEFAULT_HANDSHAKE_TIMEOUT }
    }
}

/// `fallback_sni` as the data plane uses it, or why it is not a host name.
pub(crate) fn parse_fallback_sni(text: &str) -> Result<String, String> {
    let name = text.trim_end_matches('.').to_ascii_lowercase();
    let valid = !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
    if valid {
        Ok(name)
    } else {
        Err(format!("must be a host name, got \"{text}\""))
    }
}
