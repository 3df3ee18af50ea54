//! The `ssl` object (spec §3.4): a certificate and key for TLS termination
//! (`type: server`, chosen by SNI) or upstream mTLS (`type: client`).
//!
//! Only the shape is checked here; PEM parsing belongs to whoever builds the
//! TLS configuration from it. Values that are secret references
//! (`$secret://...`, `$ENV://...`) skip the length checks, as in APISIX.

use super::json::{self, in_property, wrong_type, Object};
use serde_json::Value;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslType {
    Server,
    Client,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ssl {
    pub ssl_type: SslType,
    pub cert: String,
    pub key: String,
    /// Lower-cased, trailing dot removed (as the data plane loads them).
    pub snis: Vec<String>,
    /// `status: 0` disables the object for SNI matching.
    pub enabled: bool,
    /// Extra certificate/key pairs for the same names (e.g. RSA beside ECDSA).
    pub certs: Vec<String>,
    pub keys: Vec<String>,
    /// mTLS: clients must present a certificate chaining to `ca`.
    pub client: Option<SslClient>,
    /// `TLSv1.1`, `TLSv1.2`, `TLSv1.3`; empty = every version the server supports.
    pub ssl_protocols: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SslClient {
    /// PEM of the CA certificate(s) client certificates must chain to.
    pub ca: String,
    /// Longest accepted chain below the CA (nginx's `ssl_verify_depth`); APISIX's default is 1.
    pub depth: u32,
}

const SSL_PROPERTIES: &[&str] = &[
    "id",
    "desc",
    "labels",
    "create_time",
    "update_time",
    "type",
    "cert",
    "key",
    "sni",
    "snis",
    "certs",
    "keys",
    "client",
    "status",
    "ssl_protocols",
];

fn is_secret_ref(text: &str) -> bool {
    text.starts_with("$secret://") || text.to_ascii_lowercase().starts_with("$env://")
}

fn pem_field<'a>(object: &'a Object, name: &str, min: usize) -> Result<Option<&'a str>, String> {
    match object.get(name) {
        Some(Value::String(s)) if is_secret_ref(s) => Ok(Some(s)),
        _ => json::string_field(object, name, min, 65536),
    }
}

fn pem_list(object: &Object, name: &str, min: usize) -> Result<Option<Vec<String>>, String> {
    let Some(value) = object.get(name) else {
        return Ok(None);
    };
    let items = value.as_array().ok_or_else(|| in_property(name, wrong_type("array", value)))?;
    for (index, item) in items.iter().enumerate() {
        let mut one = Object::new();
        one.insert("item".into(), item.clone());
        pem_field(&one, "item", min).map_err(|e| {
            let inner = e.trim_start_matches("property \"item\" validation failed: ");
            in_property(name, format!("failed to validate item {}: {inner}", index + 1))
        })?;
    }
    Ok(Some(items.iter().filter_map(|i| i.as_str().map(str::to_string)).collect()))
}

fn sni_text(value: &Value) -> Result<String, String> {
    let text = value.as_str().ok_or_else(|| wrong_type("string", value))?;
    if !json::is_host_def(text) {
        return Err(format!("failed to match pattern \"^\\\\*?[0-9a-zA-Z-._\\\\[\\\\]:]+$\" with \"{text}\""));
    }
    Ok(text.trim_end_matches('.').to_ascii_lowercase())
}

impl Ssl {
    pub fn from_json(value: &Value) -> Result<Ssl, String> {
        let object = json::as_object(value)?;
        json::only_properties(object, SSL_PROPERTIES)?;
        json::check_common_fields(object)?;
        let ssl_type = match object.get("type") {
            None => SslType::Server,
            Some(Value::String(s)) if s == "server" => SslType::Server,
            Some(Value::String(s)) if s == "client" => SslType::Client,
            Some(_) => return Err(in_property("type", "matches none of the enum values".into())),
        };
        let cert = pem_field(object, "cert", 128)?;
        let key = pem_field(object, "key", 64)?;
        let mut snis = Vec::new();
        if let Some(sni) = object.get("sni") {
            snis.push(sni_text(sni).map_err(|e| in_property("sni", e))?);
        }
        if let Some(list) = object.get("snis") {
            let items = list.as_array().ok_or_else(|| in_property("snis", wrong_type("array", list)))?;
            if items.is_empty() {
                return Err(in_property("snis", "expect array to have at least 1 items".into()));
            }
            for (index, item) in items.iter().enumerate() {
                snis.push(
                    sni_text(item)
                        .map_err(|e| in_property("snis", format!("failed to validate item {}: {e}", index + 1)))?,
                );
            }
        }
        let (Some(cert), Some(key)) = (cert, key) else {
            return Err(match ssl_type {
                SslType::Server => "then clause did not match".to_string(),
                SslType::Client => "else clause did not match".to_string(),
            });
        };
        // A server certificate is found by SNI: exactly one of sni / snis.
        if ssl_type == SslType::Server && object.contains_key("sni") == object.contains_key("snis") {
            return Err("then clause did not match".into());
        }
        let certs = pem_list(object, "certs", 128)?;
        let keys = pem_list(object, "keys", 64)?;
        let (certs, keys) = (certs.unwrap_or_default(), keys.unwrap_or_default());
        if certs.len() != keys.len() {
            return Err("mismatched number of certs and keys".into());
        }
        let mut ssl_client = None;
        if let Some(client) = object.get("client") {
            let client = json::as_object(client).map_err(|e| in_property("client", e))?;
            json::only_properties(client, &["ca", "depth", "skip_mtls_uri_regex"])
                .map_err(|e| in_property("client", e))?;
            let ca = pem_field(client, "ca", 128)
                .map_err(|e| in_property("client", e))?
                .ok_or_else(|| in_property("client", "property \"ca\" is required".into()))?;
            let depth = json::integer_field(client, "depth", 0, i64::MAX).map_err(|e| in_property("client", e))?;
            ssl_client =
                Some(SslClient { ca: ca.to_string(), depth: depth.unwrap_or(1).min(i64::from(u32::MAX)) as u32 });
        }
        let enabled = json::integer_field(object, "status", 0, 1)? != Some(0);
        if let Some(list) = object.get("ssl_protocols") {
            let items = list.as_array().ok_or_else(|| in_property("ssl_protocols", wrong_type("array", list)))?;
            if items.len() > 3 {
                return Err(in_property(
                    "ssl_protocols",
                    format!("expect array to have at most 3 items, got {}", items.len()),
                ));
            }
            for (index, item) in items.iter().enumerate() {
                let known = item.as_str().is_some_and(|p| ["TLSv1.1", "TLSv1.2", "TLSv1.3"].contains(&p));
                if !known {
                    return Err(in_property(
                        "ssl_protocols",
                        format!("failed to validate item {}: matches none of the enum values", index + 1),
                    ));
                }
                if items[..index].contains(item) {
                    return Err(in_property(
                        "ssl_protocols",
                        format!(
                            "expected unique items but items {} and {} are equal",
                            items[..index].iter().position(|i| i == item).unwrap_or(0) + 1,
                            index + 1
                        ),
                    ));
                }
            }
        }
        let ssl_protocols = match object.get("ssl_protocols").and_then(Value::as_array) {
            Some(items) => items.iter().filter_map(|i| i.as_str().map(str::to_string)).collect(),
            None => Vec::new(),
        };
        Ok(Ssl {
            ssl_type,
            cert: cert.to_string(),
            key: key.to_string(),
            snis,
            enabled,
            certs,
            keys,
            client: ssl_client,
            ssl_protocols,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pem(len: usize) -> String {
        "A".repeat(len)
    }

    #[test]
    fn server_and_client_certificates_parse() {
        let s = Ssl::from_json(&json!({"cert": pem(128), "key": pem(64), "snis": ["A.test.com."]})).unwrap();
        assert_eq!(s.snis, vec!["a.test.com".to_string()]);
        assert!(s.enabled);
        let c = Ssl::from_json(&json!({"type": "client", "cert": pem(200), "key": "$ENV://KEY"})).unwrap();
        assert_eq!(c.ssl_type, SslType::Client);
    }

    #[test]
    fn invalid_certificates_say_why() {
        let cases = [
            (json!({"cert": pem(128), "key": pem(64)}), "then clause did not match"),
            (json!({"cert": pem(128), "key": pem(64), "sni": "a", "snis": ["b"]}), "then clause did not match"),
            (json!({"cert": pem(10), "key": pem(64), "sni": "a"}), "property \"cert\" validation failed: string too short, expected at least 128, got 10"),
            (json!({"cert": pem(128), "key": pem(64), "sni": "a", "certs": [pem(128)]}), "mismatched number of certs and keys"),
            (json!({"cert": pem(128), "key": pem(64), "sni": "a b"}), "property \"sni\" validation failed: failed to match pattern \"^\\\\*?[0-9a-zA-Z-._\\\\[\\\\]:]+$\" with \"a b\""),
        ];
        for (input, expected) in cases {
            assert_eq!(Ssl::from_json(&input).unwrap_err(), expected);
        }
    }
}
