//! PATCH semantics (spec §2.5): a JSON merge-patch for `PATCH /<res>/<id>`,
//! and a replace-at-path for `PATCH /<res>/<id>/<sub/path>`.

use serde_json::{Map, Value};

/// RFC 7386 merge-patch, as APISIX's `core.table.merge` behaves: objects merge
/// recursively, `null` deletes the key, anything else (arrays included)
/// replaces the old value wholesale.
pub fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let target = target.as_object_mut().expect("made an object above");
    for (key, value) in patch {
        if value.is_null() {
            target.remove(key);
        } else {
            merge(target.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

/// Replaces the value at `sub_path` (segments separated by `/`) with `value`.
/// Missing intermediate objects are created; a non-object on the way is an
/// error naming the path up to it: `invalid sub-path: /<path>`.
pub fn replace_at(target: &mut Value, sub_path: &str, value: Value) -> Result<(), String> {
    let segments: Vec<&str> = sub_path.split('/').collect();
    let (last, parents) = segments.split_last().expect("split yields one item at least");
    let mut node = target;
    for (depth, segment) in parents.iter().enumerate() {
        let Value::Object(object) = node else {
            return Err(invalid(&segments[..depth]));
        };
        node = object.entry(segment.to_string()).or_insert_with(|| Value::Object(Map::new()));
    }
    let Value::Object(object) = node else {
        return Err(invalid(parents));
    };
    if last.is_empty() {
        // `a/b/` (a trailing slash) names `a/b` itself. APISIX would replace
        // the whole object here, which is never what a client means.
        *node = value;
    } else {
        object.insert(last.to_string(), value);
    }
    Ok(())
}

fn invalid(segments: &[&str]) -> String {
    format!("invalid sub-path: /{}", segments.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_merges_objects_deletes_nulls_and_replaces_arrays() {
        let mut doc = json!({
            "nodes": {"127.0.0.1:1980": 1, "127.0.0.1:1981": 1},
            "type": "roundrobin",
            "labels": {"a": "1"},
            "list": [1, 2, 3],
        });
        merge(
            &mut doc,
            &json!({
                "nodes": {"127.0.0.1:1980": null, "127.0.0.1:1982": 2},
                "labels": null,
                "list": [9],
                "retries": 1,
            }),
        );
        assert_eq!(
            doc,
            json!({
                "nodes": {"127.0.0.1:1981": 1, "127.0.0.1:1982": 2},
                "type": "roundrobin",
                "list": [9],
                "retries": 1,
            })
        );
    }

    #[test]
    fn merge_patch_replaces_a_scalar_with_an_object() {
        let mut doc = json!({"timeout": 5});
        merge(&mut doc, &json!({"timeout": {"connect": 1, "gone": null}}));
        assert_eq!(doc, json!({"timeout": {"connect": 1}}));
    }

    #[test]
    fn sub_path_replaces_exactly_that_value() {
        let mut doc = json!({"nodes": {"a:1": 1}, "type": "roundrobin"});
        replace_at(&mut doc, "nodes", json!({"b:2": 1})).unwrap();
        assert_eq!(doc, json!({"nodes": {"b:2": 1}, "type": "roundrobin"}));
        replace_at(&mut doc, "timeout/connect", json!(3)).unwrap();
        assert_eq!(doc["timeout"], json!({"connect": 3}));
    }

    #[test]
    fn sub_path_through_a_scalar_is_invalid() {
        let mut doc = json!({"retries": 1});
        assert_eq!(replace_at(&mut doc, "retries/x", json!(1)).unwrap_err(), "invalid sub-path: /retries");
        assert_eq!(replace_at(&mut doc, "a/b/retries/c/d", json!(1)), Ok(()), "missing intermediates become objects");
        let mut doc = json!({"a": {"b": [1]}});
        assert_eq!(replace_at(&mut doc, "a/b/c", json!(1)).unwrap_err(), "invalid sub-path: /a/b");
    }
}
