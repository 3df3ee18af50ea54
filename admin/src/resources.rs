//! The method handlers for `/apisix/admin/<resource>[/<id>[/<sub/path>]]`
//! (spec §2.2-§2.7). Every write follows one path: check, store durably,
//! publish the new set to the data plane, answer. A write that is refused at
//! any step changes nothing.

use crate::dispatch::{Admin, Target, OBJECTS_PER_TYPE_MAX};
use crate::envelope::{self, Response};
use crate::kind::Kind;
use crate::patch;
use crate::request::Request;
use crate::validate::{check_conf, wrong_id_not_needed, IdRule};
use serde_json::{Map, Value};
use strait_engine::model::json::id_string;

impl Admin {
    pub(crate) fn get(&self, target: &Target<'_>, request: &Request<'_>) -> Response {
        if target.sub_path.is_some() {
            return Response::not_found();
        }
        let Some(id) = target.id else {
            return crate::list::list(&self.store, target.kind, request);
        };
        match self.store.get(target.kind.segment(), id) {
            Some(entry) => {
                Response::json(200, envelope::node(target.kind.segment(), id, entry, shown(target.kind, &entry.value)))
            }
            None => Response::key_not_found(),
        }
    }

    pub(crate) fn put(&mut self, target: &Target<'_>, body: Option<Value>) -> Response {
        if target.sub_path.is_some() {
            return Response::not_found();
        }
        let checked = match check_conf(target.kind, body, IdRule::Required(target.id), false, &self.store) {
            Ok(checked) => checked,
            Err(refused) => return refused,
        };
        let id = checked.id.expect("IdRule::Required yields an id");
        let previous = self.store.get(target.kind.segment(), &id).and_then(|e| e.value.get("create_time").cloned());
        let now = self.now();
        let mut value = checked.value;
        // A replace keeps the original create_time (spec §2.2).
        let status = if previous.is_some() { 200 } else { 201 };
        value.insert("create_time".into(), previous.unwrap_or_else(|| Value::from(now)));
        value.insert("update_time".into(), Value::from(now));
        self.write(target.kind, &id, value, status)
    }

    pub(crate) fn post(&mut self, target: &Target<'_>, body: Option<Value>) -> Response {
        if target.id.is_some() {
            return wrong_id_not_needed(target.kind);
        }
        let checked = match check_conf(target.kind, body, IdRule::Forbidden, false, &self.store) {
            Ok(checked) => checked,
            Err(refused) => return refused,
        };
        let id = self.store.next_generated_id(target.kind.segment());
        let now = self.now();
        let mut value = checked.value;
        value.insert("id".into(), Value::String(id.clone()));
        value.insert("create_time".into(), Value::from(now));
        value.insert("update_time".into(), Value::from(now));
        self.write(target.kind, &id, value, 201)
    }

    pub(crate) fn delete(&mut self, target: &Target<'_>, request: &Request<'_>) -> Response {
        let Some(id) = target.id else {
            return Response::error(400, format!("missing {} id", target.kind.label()));
        };
        if target.sub_path.is_some() {
            return Response::not_found();
        }
        if self.store.get(target.kind.segment(), id).is_none() {
            return Response::key_not_found();
        }
        // Only exactly `force=true` forces (spec §2.5).
        if request.arg("force").as_deref() != Some("true") {
            if let Some(user) = self.user_of(target.kind, id) {
                return Response::error(400, user);
            }
        }
        match self.store.delete(target.kind.segment(), id) {
            Ok(_) => {
                self.publish();
                envelope::deleted(target.kind.segment(), id)
            }
            Err(e) => store_failed(e),
        }
    }

    pub(crate) fn patch(&mut self, target: &Target<'_>, body: Option<Value>) -> Response {
        let Some(id) = target.id else {
            return Response::error(400, format!("missing {} id", target.kind.label()));
        };
        let Some(patch_body) = body.filter(|b| !b.is_null()) else {
            return Response::error(400, "missing new configuration");
        };
        if target.sub_path.is_none() && !patch_body.is_object() {
            return Response::error(400, "invalid configuration");
        }
        let Some(entry) = self.store.get(target.kind.segment(), id) else {
            return Response::key_not_found();
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
        let checked = match check_conf(target.kind, Some(value), IdRule::Required(Some(id)), true, &self.store) {
            Ok(checked) => checked,
            Err(refused) => return refused,
        };
        self.write(target.kind, id, checked.value, 200)
    }

    /// Stores, publishes, answers; the response goes out only after both.
    fn write(&mut self, kind: Kind, id: &str, value: Map<String, Value>, status: u16) -> Response {
        let creating = self.store.get(kind.segment(), id).is_none();
        if creating && self.store.count(kind.segment()) >= OBJECTS_PER_TYPE_MAX {
            return Response::error(
                400,
                format!("too many {}: at most {OBJECTS_PER_TYPE_MAX} are allowed, delete some first", kind.segment()),
            );
        }
        let value = Value::Object(value);
        match self.store.put(kind.segment(), id, value.clone()) {
            Ok(_) => {
                self.publish();
                envelope::written(status, kind.segment(), id, &shown(kind, &value))
            }
            Err(e) => store_failed(e),
        }
    }

    /// Which object still names `(kind, id)`, as APISIX's refusal text.
    /// Unlike APISIX, stream routes are checked for upstreams too (spec §8.3).
    fn user_of(&self, kind: Kind, id: &str) -> Option<String> {
        let uses = |users: Kind, field: &str| {
            self.store
                .list(users.segment())
                .find(|(_, e)| e.value.get(field).and_then(id_string).as_deref() == Some(id))
                .map(|(user, _)| user.clone())
        };
        match kind {
            Kind::Upstreams => {
                if let Some(route) = uses(Kind::StreamRoutes, "upstream_id") {
                    return Some(format!("can not delete this upstream, stream_route [{route}] is still using it now"));
                }
                uses(Kind::Services, "upstream_id")
                    .map(|service| format!("can not delete this upstream, service [{service}] is still using it now"))
            }
            Kind::Services => uses(Kind::StreamRoutes, "service_id").map(|route| {
                format!("can not delete this service directly, stream_route [{route}] is still using it now")
            }),
            Kind::StreamRoutes | Kind::Ssls => None,
        }
    }
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

fn store_failed(error: crate::store::StoreError) -> Response {
    log::error!("admin write not stored: {error}");
    Response::error(503, error.to_string())
}
