//! [`EtcdStore`]: the Admin API's store on etcd, with APISIX's keys and values
//! (`<prefix>/<type>/<id>` → the object's JSON with `id`, `create_time`,
//! `update_time`, no defaults injected), so APISIX's tools and Strait nodes
//! can drive one another's etcd.

use super::gateway::{self, Kv};
use super::http::{Client, EtcdError};
use crate::config_store::{Cond, ConfigStore, PutOutcome};
use crate::kind::Kind;
use crate::store::{Entry, StoreError};
use rustls::ClientConfig;
use serde_json::{json, Value};
use std::sync::Arc;
use strait_engine::config::EtcdSettings;

/// The admin thread's connection to etcd. Reads go to etcd, never to this
/// node's cache, so an Admin GET shows etcd's state at once.
pub struct EtcdStore {
    client: Client,
    prefix: String,
}

impl EtcdStore {
    /// `tls`: from [`client_config`](super::tls::client_config), for `https://` hosts.
    pub fn new(settings: &EtcdSettings, tls: Option<Arc<ClientConfig>>) -> EtcdStore {
        EtcdStore { client: Client::new(settings, tls), prefix: settings.prefix.clone() }
    }

    fn key(&self, kind: &str, id: &str) -> String {
        format!("{}/{kind}/{id}", self.prefix)
    }

    fn call(&mut self, path: &str, body: &Value) -> Result<Value, StoreError> {
        self.client.call(path, body).map_err(unavailable)
    }
}

fn unavailable(error: EtcdError) -> StoreError {
    log::warn!("etcd call from the Admin API failed: {error}");
    StoreError::Unavailable(error.admin_message())
}

/// A stored value as an [`Entry`]; `None` for what is not an object (the
/// `init_dir` placeholders `apisix init` writes, foreign data).
fn entry(kv: &Kv) -> Option<Entry> {
    let value: Value = serde_json::from_slice(&kv.value).ok().filter(Value::is_object)?;
    Some(Entry { value, created_index: kv.create_revision, modified_index: kv.mod_revision })
}

impl ConfigStore for EtcdStore {
    fn get(&mut self, kind: &str, id: &str) -> Result<Option<Entry>, StoreError> {
        let answer = self.call("/v3/kv/range", &gateway::range_request(&self.key(kind, id), None))?;
        Ok(gateway::range_kvs(&answer).first().and_then(entry))
    }

    fn list(&mut self, kind: &str) -> Result<Vec<(String, Entry)>, StoreError> {
        let folder = self.key(kind, "");
        let answer =
            self.call("/v3/kv/range", &gateway::range_request(&folder, Some(&gateway::prefix_end(&folder))))?;
        Ok(gateway::range_kvs(&answer)
            .iter()
            .filter_map(|kv| {
                let id = kv.key.strip_prefix(&folder)?;
                if id.is_empty() || id.contains('/') {
                    return None;
                }
                Some((id.to_string(), entry(kv)?))
            })
            .collect())
    }

    fn count(&mut self, kind: &str) -> Result<usize, StoreError> {
        let folder = self.key(kind, "");
        let answer = self.call("/v3/kv/range", &gateway::count_request(&folder, &gateway::prefix_end(&folder)))?;
        Ok(gateway::int(answer.get("count")) as usize)
    }

    fn put(
        &mut self,
        kind: &str,
        id: &str,
        value: Value,
        cond: Cond,
        ttl: Option<u64>,
    ) -> Result<PutOutcome, StoreError> {
        let lease = match ttl {
            // The field is `TTL`: the gateway silently ignores `ttl` and grants 2 s.
            Some(ttl) => {
                let answer = self.call("/v3/lease/grant", &json!({"TTL": ttl.to_string()}))?;
                Some(gateway::int(answer.get("ID")))
            }
            None => None,
        };
        let expected = match cond {
            Cond::Absent => None,
            Cond::ModRevision(rev) => Some(rev),
        };
        let body = gateway::conditional_put(&self.key(kind, id), value.to_string().as_bytes(), expected, lease);
        let answer = self.call("/v3/kv/txn", &body)?;
        // A failed compare has no `succeeded` field at all (zero values are omitted).
        if answer.get("succeeded").and_then(Value::as_bool) == Some(true) {
            Ok(PutOutcome::Done { revision: gateway::header_revision(&answer) })
        } else {
            Ok(PutOutcome::Conflict)
        }
    }

    fn delete(&mut self, kind: &str, id: &str) -> Result<Option<u64>, StoreError> {
        let answer = self.call("/v3/kv/deleterange", &gateway::range_request(&self.key(kind, id), None))?;
        Ok((gateway::int(answer.get("deleted")) > 0).then(|| gateway::header_revision(&answer)))
    }

    /// APISIX's POST id: the revision of a put to `<prefix>/gen_id`, 20 digits.
    fn next_id(&mut self, _kind: &str) -> Result<String, StoreError> {
        let key = format!("{}/gen_id", self.prefix);
        let body = json!({"key": gateway::encode(key.as_bytes()), "value": gateway::encode(b"1")});
        let answer = self.call("/v3/kv/put", &body)?;
        let revision = gateway::header_revision(&answer);
        if revision == 0 {
            return Err(StoreError::Unavailable("etcd answered a put without a revision".into()));
        }
        Ok(format!("{revision:020}"))
    }

    fn supports_ttl(&self) -> bool {
        true
    }

    fn resources(&mut self) -> Result<strait_engine::Resources, StoreError> {
        let mut objects = Vec::new();
        for kind in Kind::ALL {
            objects.extend(self.list(kind.segment())?.into_iter().map(|(id, e)| (kind, id, e.value)));
        }
        Ok(super::resources_of(objects))
    }
}
