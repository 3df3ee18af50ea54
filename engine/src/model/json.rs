//! Small helpers that read a JSON object field by field and phrase failures the
//! way APISIX's jsonschema validator does.

use serde_json::{Map, Value};

pub type Object = Map<String, Value>;

pub fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

pub fn wrong_type(expected: &str, value: &Value) -> String {
    format!("wrong type: expected {expected}, got {}", type_name(value))
}

/// Wraps an inner failure as APISIX nests property errors.
pub fn in_property(name: &str, inner: String) -> String {
    format!("property \"{name}\" validation failed: {inner}")
}

pub fn as_object<'a>(value: &'a Value) -> Result<&'a Object, String> {
    value.as_object().ok_or_else(|| wrong_type("object", value))
}

/// Rejects properties outside `allowed` (`additionalProperties: false`).
pub fn only_properties(object: &Object, allowed: &[&str]) -> Result<(), String> {
    // Report in a stable (sorted) order so the message does not depend on hashing.
    let mut unknown: Vec<&String> = object.keys().filter(|k| !allowed.contains(&k.as_str())).collect();
    unknown.sort();
    match unknown.first() {
        Some(name) => Err(format!("additional properties forbidden, found {name}")),
        None => Ok(()),
    }
}

pub fn string_field<'a>(object: &'a Object, name: &str, min: usize, max: usize) -> Result<Option<&'a str>, String> {
    let Some(value) = object.get(name) else {
        return Ok(None);
    };
    let text = value.as_str().ok_or_else(|| in_property(name, wrong_type("string", value)))?;
    let chars = text.chars().count();
    if chars < min {
        return Err(in_property(name, format!("string too short, expected at least {min}, got {chars}")));
    }
    if chars > max {
        return Err(in_property(name, format!("string too long, expected at most {max}, got {chars}")));
    }
    Ok(Some(text))
}

pub fn integer_field(object: &Object, name: &str, min: i64, max: i64) -> Result<Option<i64>, String> {
    let Some(value) = object.get(name) else {
        return Ok(None);
    };
    let number = value
        .as_i64()
        .filter(|_| value.is_i64() || value.is_u64())
        .ok_or_else(|| in_property(name, wrong_type("integer", value)))?;
    if number < min {
        return Err(in_property(name, format!("expected {number} to be at least {min}")));
    }
    if number > max {
        return Err(in_property(name, format!("expected {number} to be at most {max}")));
    }
    Ok(Some(number))
}

/// A number that must be strictly greater than `exclusive_min`.
pub fn number_above(object: &Object, name: &str, exclusive_min: f64) -> Result<Option<f64>, String> {
    let Some(value) = object.get(name) else {
        return Ok(None);
    };
    let number = value.as_f64().ok_or_else(|| in_property(name, wrong_type("number", value)))?;
    if number <= exclusive_min {
        return Err(in_property(
            name,
            format!("expected {} to be greater than {exclusive_min}", display_number(value)),
        ));
    }
    Ok(Some(number))
}

pub fn number_at_least(object: &Object, name: &str, min: f64) -> Result<Option<f64>, String> {
    let Some(value) = object.get(name) else {
        return Ok(None);
    };
    let number = value.as_f64().ok_or_else(|| in_property(name, wrong_type("number", value)))?;
    if number < min {
        return Err(in_property(name, format!("expected {} to be at least {min}", display_number(value))));
    }
    Ok(Some(number))
}

fn display_number(value: &Value) -> String {
    value.to_string()
}

/// The shared `id` definition: a string of 1..64 of `[a-zA-Z0-9-_.]`, or an integer ≥ 1.
pub fn check_id_value(value: &Value) -> Result<(), String> {
    let ok = match value {
        Value::String(s) => {
            (1..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        }
        Value::Number(n) => n.as_u64().is_some_and(|n| n >= 1),
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err("object matches none of the required".to_string())
    }
}

/// The id as the string used in keys: `"1"` for both `"1"` and `1`.
pub fn id_string(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Checks the fields every id-bearing object shares: id, name, desc, labels, timestamps.
pub fn check_common_fields(object: &Object) -> Result<(), String> {
    for name in ["upstream_id", "service_id", "id"] {
        if let Some(value) = object.get(name) {
            check_id_value(value).map_err(|e| in_property(name, e))?;
        }
    }
    string_field(object, "name", 1, 256)?;
    string_field(object, "desc", 0, 256)?;
    if let Some(labels) = object.get("labels") {
        let labels = as_object(labels).map_err(|e| in_property("labels", e))?;
        for (key, value) in labels {
            let text =
                value.as_str().ok_or_else(|| in_property("labels", in_property(key, wrong_type("string", value))))?;
            if text.is_empty() || text.len() > 256 || text.chars().any(char::is_whitespace) {
                return Err(in_property(
                    "labels",
                    in_property(key, format!("failed to match pattern \"^\\\\S+$\" with \"{text}\"")),
                ));
            }
        }
    }
    integer_field(object, "create_time", i64::MIN, i64::MAX)?;
    integer_field(object, "update_time", i64::MIN, i64::MAX)?;
    Ok(())
}

/// The `host_def` pattern: `^\*$|^\*?[0-9a-zA-Z-._\[\]:]+$`.
pub fn is_host_def(text: &str) -> bool {
    if text == "*" {
        return true;
    }
    let rest = text.strip_prefix('*').unwrap_or(text);
    !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._[]:".contains(&b))
}
