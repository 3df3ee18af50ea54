//! The method handlers for `/apisix/admin/<resource>[/<id>[/<sub/path>]]`
//! (spec §2.2-§2.7). Every write follows one path: check, store durably,
//! publish the new set to the data plane, answer. A write that is refused at
//! any step changes nothing.

use crate::config_store::{Cond, ConfigStore, PutOutcome};
use crate::dispatch::{Admin, Target, OBJECTS_PER_TYPE_MAX};
use crate::envelope::{self, Response};
use crate::kind::Kind;
use crate::patch;
use crate::request::Request;
use crate::store::StoreError;
use crate::validate::{check_conf, wrong_id_not_needed, IdRule};
use serde_json::{Map, Value};
use strait_engine::model::json::id_string;

impl<S: ConfigStore> Admin<S> {
    pub(crate) fn get(&mut self, target: &Target<'_>, request: &Request<'_>) -> Response {
        if target.sub_path.is_some() {
            return Response::not_found();
        }
        let Some(id) = target.id else {
            return crate::list::list(&mut self.store, target.kind, request);
        };
        match self.store.get(target.kind.segment(), id) {
            Ok(Some(entry)) => {
                Response::json(200, envelope::node(target.kind.segment(), id, &entry, shown(target.kind, &entry.value)))
            }
            Ok(None) => Response::key_not_found(),
            Err(e) => store_failed(e),
        }
    }

    /// PUT: 201 when the key was absent, 200 when it replaced one. The write
    /// is conditional on what was read, so a concurrent writer (another node
    /// on the same etcd) can never turn a create into a silent replace.
    pub(crate) fn put(&mut self, target: &Target<'_>, body: Option<Value>, ttl: Option<u64>) -> Response {
        if target.sub_path.is_some() {
            return Response::not_found();
        }
        let checked = match check_conf(target.kind, body, IdRule::Required(target.id), false, &mut self.store) {
            Ok(checked) => checked,
            Err(refused) => return refused,
        };
        let id = checked.id.expect("IdRule::Required yields an id");
        for _ in 0..PUT_ATTEMPTS {
            let current = match self.store.get(target.kind.segment(), &id) {
                Ok(current) => current,
                Err(e) => return store_failed(e),
            };
            let now = self.now();
            let mut value = checked.value.clone();
            // A replace keeps the original create_time (spec §2.2).
            let create_time = current.as_ref().and_then(|e| e.value.get("create_time").cloned());
            value.insert("create_time".into(), create_time.unwrap_or_else(|| Value::from(now)));
            value.insert("update_time".into(), Value::from(now));
            let (status, cond) = match &current {
                Some(entry) => (200, Cond::ModRevision(entry.modified_index)),
                None => (201, Cond::Absent),
            };
            match self.write(target.kind, &id, value, cond, ttl, status) {
                Written::Answer(response) => return response,
                Written::Conflict => continue,
            }
        }
        value_changed()
    }

    pub(crate) fn post(&mut self, target: &Target<'_>, body: Option<Value>, ttl: Option<u64>) -> Response {
        if target.id.is_some() {
            return wrong_id_not_needed(target.kind);
        }
        let checked = match check_conf(target.kind, body, IdRule::Forbidden, false, &mut self.store) {
            Ok(checked) => checked,
            Err(refused) => return refused,
        };
        for _ in 0..PUT_ATTEMPTS {
            let id = match self.store.next_id(target.kind.segment()) {
                Ok(id) => id,
                Err(e) => return store_failed(e),
            };
            let now = self.now();
            let mut value = checked.value.clone();
            value.insert("id".into(), Value::String(id.clone()));
            value.insert("create_time".into(), Value::from(now));
            value.insert("update_time".into(), Value::from(now));
            // A client may have PUT this very id meanwhile: take the next one.
            match self.write(target.kind, &id, value, Cond::Absent, ttl, 201) {
                Written::Answer(response) => return response,
                Written::Conflict => continue,
            }
        }
        value_changed()
    }

    pub(crate) fn delete(&mut self, target: &Target<'_>, request: &Request<'_>) -> Response {
        let Some(id) = target.id else {
            return Response::error(400, format!("missing {} id", target.kind.label()));
        };
        if target.sub_path.is_some() {
            return Response::not_found();
        }
        match self.store.get(target.kind.segment(), id) {
            Ok(Some(_)) => {}
            Ok(None) => return Response::key_not_found(),
            Err(e) => return store_failed(e),
        }
        // Only exactly `force=true` forces (spec §2.5).
        if request.arg("force").as_deref() != Some("true") {
            match self.user_of(target.kind, id) {
                Ok(Some(user)) => return Response::error(400, user),
                Ok(None) => {}
                Err(e) => return store_failed(e),
            }
        }
        match self.store.delete(target.kind.segment(), id) {
            Ok(Some(revision)) => {
                self.committed(revision);
                envelope::deleted(target.kind.segment(), id)
            }
            // Removed by someone else between the read and the delete.
            Ok(None) => Response::key_not_found(),
            Err(e) => store_failed(e),
        }
    }

    /// PATCH: a compare-and-swap on the `mod_revision` that was read; a lost
    /// race answers APISIX's 503 "value changed before overwritten".
    pub(crate) fn patch(&mut self, target: &Target<'_>, body: Option<Value>, ttl: Option<u64>) -> Response {
        let Some(id) = target.id else {
            return Response::error(400, format!("missing {} id", target.kind.label()));
        };
        let Some(patch_body) = body.filter(|b| !b.is_null()) else {
            return Response::error(400, "missing new configuration");
        };
        if target.sub_path.is_none() && !patch_body.is_object() {
            return Response::error(400, "invalid configuration");
        }
        let entry = match self.store.get(target.kind.segment(), id) {
            Ok(Some(entry)) => entry,
            Ok(None) => return Response::key_not_found(),
            Err(e) => return store_failed(e),
        };
        let mut value = entry.value.clone();
        let now = self.now();
        match target.sub_path {
            Some(sub_path) => {
                if let Err(message) = patch::replace_at(&mut value, sub_path, patch_body) {
                    return Response::error(400, message);
                }
                set_if_object(&mut value, "update_time", now);
            }
            None => {
                // update_time is refreshed unless the patch sets it (spec §2.5).
                let sets_update_time = patch_body.get("update_time").is_some();
                patch::merge(&mut value, &patch_body);
                if !sets_update_time {
                    set_if_object(&mut value, "update_time", now);
                }
            }
        }
        if value.get("create_time").is_none() {
            set_if_object(&mut value, "create_time", now);
        }
        let checked = match check_conf(target.kind, Some(value), IdRule::Required(Some(id)), true, &mut self.store) {
            Ok(checked) => checked,
            Err(refused) => return refused,
        };
        match self.write(target.kind, id, checked.value, Cond::ModRevision(entry.modified_index), ttl, 200) {
            Written::Answer(response) => response,
            Written::Conflict => value_changed(),
        }
    }

    /// Stores if `cond` holds, makes the write reach the workers, answers;
    /// the response goes out only after both.
    fn write(
        &mut self,
        kind: Kind,
        id: &str,
        value: Map<String, Value>,
        cond: Cond,
        ttl: Option<u64>,
        status: u16,
    ) -> Written {
        if cond == Cond::Absent {
            match self.store.count(kind.segment()) {
                Ok(count) if count >= OBJECTS_PER_TYPE_MAX => {
                    return Written::Answer(Response::error(
                        400,
                        format!(
                            "too many {}: at most {OBJECTS_PER_TYPE_MAX} are allowed, delete some first",
                            kind.segment()
                        ),
                    ))
                }
                Ok(_) => {}
                Err(e) => return Written::Answer(store_failed(e)),
            }
        }
        let value = Value::Object(value);
        match self.store.put(kind.segment(), id, value.clone(), cond, ttl) {
            Ok(PutOutcome::Done { revision }) => {
                self.committed(revision);
                Written::Answer(envelope::written(status, kind.segment(), id, &shown(kind, &value)))
            }
            Ok(PutOutcome::Conflict) => Written::Conflict,
            Err(e) => Written::Answer(store_failed(e)),
        }
    }

    /// Which object still names `(kind, id)`, as APISIX's refusal text.
    /// Unlike APISIX, stream routes are checked for upstreams too (spec §8.3).
    fn user_of(&mut self, kind: Kind, id: &str) -> Result<Option<String>, StoreError> {
        let mut uses = |users: Kind, field: &str| -> Result<Option<String>, StoreError> {
            Ok(self
                .store
                .list(users.segment())?
                .into_iter()
                .find(|(_, e)| e.value.get(field).and_then(id_string).as_deref() == Some(id))
                .map(|(user, _)| user))
        };
        Ok(match kind {
            Kind::Upstreams => {
                if let Some(route) = uses(Kind::StreamRoutes, "upstream_id")? {
                    return Ok(Some(format!(
                        "can not delete this upstream, stream_route [{route}] is still using it now"
                    )));
                }
                uses(Kind::Services, "upstream_id")?
                    .map(|service| format!("can not delete this upstream, service [{service}] is still using it now"))
            }
            Kind::Services => uses(Kind::StreamRoutes, "service_id")?.map(|route| {
                format!("can not delete this service directly, stream_route [{route}] is still using it now")
            }),
            Kind::StreamRoutes | Kind::Ssls => None,
        })
    }
}

/// Attempts of a conditional PUT/POST before giving up on a key that keeps
/// changing under it.
const PUT_ATTEMPTS: usize = 3;

enum Written {
    Answer(Response),
    /// The store's condition failed: re-read and try again, or give up.
    Conflict,
}

/// APISIX's answer to a lost compare-and-swap.
fn value_changed() -> Response {
    Response::error(503, "value changed before overwritten")
}

fn set_if_object(value: &mut Value, name: &str, now: u64) {
    if let Some(object) = value.as_object_mut() {
        object.insert(name.into(), Value::from(now));
    }
}

/// The value as clients may see it: private keys never leave (spec §2.2).
pub(crate) fn shown(kind: Kind, value: &Value) -> Value {
    let mut value = value.clone();
    if kind == Kind::Ssls {
        if let Some(object) = value.as_object_mut() {
            object.remove("key");
            object.remove("keys");
        }
    }
    value
}

fn store_failed(error: StoreError) -> Response {
    log::error!("admin write not stored: {error}");
    Response::error(503, error.to_string())
}
