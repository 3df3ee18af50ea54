//! `GET /apisix/admin/<resource>`: filters and pagination (spec §2.2).
//!
//! Items come in key byte order (`1, 10, 2`), as etcd lists them; with paging
//! they are ordered by creation instead. `total` counts the filtered items
//! before paging.

use crate::config_store::ConfigStore;
use crate::envelope::{self, Response};
use crate::kind::Kind;
use crate::request::{query_pairs, Request};
use crate::resources::shown;
use crate::store::Entry;
use serde_json::{json, Value};

const PAGE_SIZE_MIN: usize = 10;
const PAGE_SIZE_MAX: usize = 500;

pub fn list(store: &mut dyn ConfigStore, kind: Kind, request: &Request<'_>) -> Response {
    let filters = Filters::from_request(kind, request);
    let all = match store.list(kind.segment()) {
        Ok(all) => all,
        Err(e) => return Response::error(503, e.to_string()),
    };
    let mut items: Vec<(&String, &Entry)> =
        all.iter().filter(|(_, entry)| filters.keep(&entry.value)).map(|(id, entry)| (id, entry)).collect();
    let total = items.len();

    let page = request.arg("page").and_then(|p| number(&p));
    let page_size = request.arg("page_size").and_then(|p| number(&p));
    // Paging applies only when both are numbers, as in APISIX.
    if let (Some(page), Some(page_size)) = (page, page_size) {
        if !(PAGE_SIZE_MIN as f64..=PAGE_SIZE_MAX as f64).contains(&page_size) {
            // Plain text, not JSON: APISIX's quirk, mirrored (spec §8.6).
            return Response::text(400, "page_size must be between 10 and 500");
        }
        let page_size = page_size as usize;
        let page = if page < 1.0 { 1 } else { page as usize };
        items.sort_by_key(|(_, entry)| entry.created_index);
        let start = (page - 1).saturating_mul(page_size);
        items = items.into_iter().skip(start).take(page_size).collect();
    }

    let list: Vec<Value> = items
        .into_iter()
        .map(|(id, entry)| envelope::node(kind.segment(), id, entry, shown(kind, &entry.value)))
        .collect();
    Response::json(200, json!({"list": list, "total": total}))
}

fn number(text: &str) -> Option<f64> {
    text.trim().parse::<f64>().ok().filter(|n| n.is_finite())
}

struct Filters {
    /// `filter=upstream_id%3D1`: exact string equality against the stored
    /// value, so an integer-stored `upstream_id: 1` does not match (as APISIX).
    fields: Vec<(String, String)>,
    /// `name=`: APISIX takes a PCRE; without a regex engine Strait matches it
    /// as a plain substring, which agrees for names without metacharacters.
    name: Option<String>,
    /// `label=`: the item has a label with that key.
    label: Option<String>,
}

impl Filters {
    fn from_request(kind: Kind, request: &Request<'_>) -> Filters {
        let mut fields = Vec::new();
        // Only stream routes support `filter`, and only these keys; others are ignored.
        if kind == Kind::StreamRoutes {
            if let Some(filter) = request.arg("filter") {
                fields =
                    query_pairs(&filter).into_iter().filter(|(k, _)| k == "service_id" || k == "upstream_id").collect();
            }
        }
        Filters { fields, name: request.arg("name"), label: request.arg("label") }
    }

    fn keep(&self, value: &Value) -> bool {
        let fields_ok = self.fields.iter().all(|(k, v)| value.get(k).and_then(Value::as_str) == Some(v.as_str()));
        let name_ok = self.name.as_ref().is_none_or(|wanted| {
            value.get("name").and_then(Value::as_str).is_some_and(|name| name.contains(wanted.as_str()))
        });
        let label_ok = self.label.as_ref().is_none_or(|wanted| {
            value.get("labels").and_then(Value::as_object).is_some_and(|labels| labels.contains_key(wanted))
        });
        fields_ok && name_ok && label_ok
    }
}
