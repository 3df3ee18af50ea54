//! etcd's v3 JSON gateway as APISIX speaks it (etcd.md §2-§3): request bodies,
//! and parsed answers and watch lines.
//!
//! Traps handled here, once: keys and values are base64; int64 fields come
//! back as strings; zero values are omitted (a failed txn has no `succeeded`,
//! an empty range no `kvs`, a PUT event no `type`); the gateway silently
//! ignores misspelled fields (`TTL`, not `ttl`; `prev_kv`, not `prevkv`).

use serde_json::{json, Value};

/// One key-value as etcd returns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kv {
    pub key: String,
    pub value: Vec<u8>,
    pub create_revision: u64,
    pub mod_revision: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Delete,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    pub kv: Kv,
}

/// One line of a watch stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchMsg {
    /// Always first; `revision` is the store's revision at that moment.
    Created { revision: u64 },
    /// Events of one or more revisions, in order. The header revision is the
    /// store's current one, not the batch's last: resume from the events' own.
    Events { events: Vec<Event> },
    /// A periodic progress mark (never requested: etcd.md §3.5).
    Progress { revision: u64 },
    /// The start revision was compacted away; the stream stays open.
    Compacted { compact_revision: u64 },
    /// Cancelled for another reason (auth, permission).
    Canceled { reason: String },
    /// `{"error": ...}`: etcd is going away (SIGTERM) or refused the watch.
    Error { message: String },
}

/// An int64 field: a JSON string, a number, or absent (zero).
pub fn int(value: Option<&Value>) -> u64 {
    match value {
        Some(Value::String(s)) => s.parse().unwrap_or(0),
        Some(Value::Number(n)) => n.as_u64().unwrap_or(0),
        _ => 0,
    }
}

pub fn header_revision(answer: &Value) -> u64 {
    int(answer.get("header").and_then(|h| h.get("revision")))
}

pub fn parse_kv(value: &Value) -> Option<Kv> {
    let key = decode(value.get("key")?.as_str()?)?;
    let bytes = match value.get("value").and_then(Value::as_str) {
        Some(text) => decode(text)?,
        None => Vec::new(),
    };
    Some(Kv {
        key: String::from_utf8(key).ok()?,
        value: bytes,
        create_revision: int(value.get("create_revision")),
        mod_revision: int(value.get("mod_revision")),
    })
}

/// The `kvs` of a range answer (absent when empty).
pub fn range_kvs(answer: &Value) -> Vec<Kv> {
    answer.get("kvs").and_then(Value::as_array).map(|kvs| kvs.iter().filter_map(parse_kv).collect()).unwrap_or_default()
}

/// The end of a prefix range: the prefix with its last byte incremented
/// (`/apisix/` → `/apisix0`).
pub fn prefix_end(prefix: &str) -> String {
    let mut bytes = prefix.as_bytes().to_vec();
    while let Some(last) = bytes.pop() {
        if last < 0xff {
            bytes.push(last + 1);
            return String::from_utf8_lossy(&bytes).into_owned();
        }
    }
    "\0".into()
}

pub fn range_request(key: &str, range_end: Option<&str>) -> Value {
    let mut body = json!({"key": encode(key.as_bytes())});
    if let Some(end) = range_end {
        body["range_end"] = Value::String(encode(end.as_bytes()));
    }
    body
}

pub fn count_request(key: &str, range_end: &str) -> Value {
    json!({"key": encode(key.as_bytes()), "range_end": encode(range_end.as_bytes()), "count_only": true})
}

pub fn watch_request(key: &str, range_end: &str, start_revision: u64) -> Value {
    json!({"create_request": {
        "key": encode(key.as_bytes()),
        "range_end": encode(range_end.as_bytes()),
        "start_revision": start_revision.to_string(),
        // Periodic marks are safe; a *requested* one (progress_request) is
        // sent before the catch-up on etcd 3.4 (etcd #15220): never ask.
        "progress_notify": true,
    }})
}

/// A txn that puts `value` under `key` only if the key is absent
/// (`mod_revision: None`) or has exactly that `mod_revision`.
pub fn conditional_put(key: &str, value: &[u8], mod_revision: Option<u64>, lease: Option<u64>) -> Value {
    let key64 = encode(key.as_bytes());
    let compare = match mod_revision {
        None => json!({"key": key64, "target": "CREATE", "result": "EQUAL", "create_revision": "0"}),
        Some(rev) => json!({"key": key64, "target": "MOD", "result": "EQUAL", "mod_revision": rev.to_string()}),
    };
    let mut put = json!({"key": key64, "value": encode(value)});
    if let Some(lease) = lease {
        put["lease"] = Value::String(lease.to_string());
    }
    json!({"compare": [compare], "success": [{"request_put": put}], "failure": []})
}

pub fn parse_watch_line(line: &str) -> WatchMsg {
    let root: Value = match serde_json::from_str(line.trim()) {
        Ok(root) => root,
        Err(e) => return WatchMsg::Error { message: format!("unreadable watch line ({e}): {}", clip(line)) },
    };
    if let Some(error) = root.get("error") {
        return WatchMsg::Error { message: error_message(error) };
    }
    let Some(result) = root.get("result") else {
        return WatchMsg::Error { message: format!("watch line without result: {}", clip(line)) };
    };
    if result.get("canceled").and_then(Value::as_bool) == Some(true) {
        let compact_revision = int(result.get("compact_revision"));
        if compact_revision > 0 {
            return WatchMsg::Compacted { compact_revision };
        }
        let reason = result.get("cancel_reason").and_then(Value::as_str).unwrap_or("no reason given");
        return WatchMsg::Canceled { reason: reason.to_string() };
    }
    if result.get("created").and_then(Value::as_bool) == Some(true) {
        return WatchMsg::Created { revision: header_revision(result) };
    }
    let events: Vec<Event> = result
        .get("events")
        .and_then(Value::as_array)
        .map(|events| {
            events
                .iter()
                .filter_map(|e| {
                    let kind = match e.get("type").and_then(Value::as_str) {
                        Some("DELETE") => EventKind::Delete,
                        _ => EventKind::Put,
                    };
                    Some(Event { kind, kv: parse_kv(e.get("kv")?)? })
                })
                .collect()
        })
        .unwrap_or_default();
    if events.is_empty() {
        WatchMsg::Progress { revision: header_revision(result) }
    } else {
        WatchMsg::Events { events }
    }
}

/// etcd's text from an error body: `{"error": "...", "message": "...", "code": N}`
/// or the watch's `{"grpc_code":14,"message":"transport is closing",...}`.
pub fn error_message(error: &Value) -> String {
    if let Some(text) = error.as_str() {
        return text.to_string();
    }
    for field in ["message", "error"] {
        if let Some(text) = error.get(field).and_then(Value::as_str) {
            return text.to_string();
        }
    }
    clip(&error.to_string())
}

fn clip(text: &str) -> String {
    let text = text.trim();
    match text.char_indices().nth(200) {
        Some((at, _)) => format!("{}...", &text[..at]),
        None => text.to_string(),
    }
}

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding (what the gateway takes and gives).
pub fn encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

pub fn decode(text: &str) -> Option<Vec<u8>> {
    let text = text.trim_end_matches('=');
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0;
    for c in text.bytes() {
        let v = ALPHABET.iter().position(|&a| a == c)? as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips_and_matches_the_standard() {
        assert_eq!(encode(b"/apisix/"), "L2FwaXNpeC8=");
        assert_eq!(encode(b"ab"), "YWI=");
        assert_eq!(encode(b""), "");
        for len in 0..40u8 {
            let bytes: Vec<u8> = (0..len).map(|i| i.wrapping_mul(37)).collect();
            assert_eq!(decode(&encode(&bytes)).unwrap(), bytes);
        }
        assert_eq!(decode("not base64!"), None);
    }

    #[test]
    fn the_prefix_end_is_the_next_key_after_every_key_in_the_prefix() {
        assert_eq!(prefix_end("/apisix/"), "/apisix0");
    }

    #[test]
    fn watch_lines_as_etcd_3_4_sends_them() {
        let created = r#"{"result":{"header":{"cluster_id":"1","revision":"12","raft_term":"2"},"created":true}}"#;
        assert_eq!(parse_watch_line(created), WatchMsg::Created { revision: 12 });
        let put = format!(
            r#"{{"result":{{"header":{{"revision":"2517"}},"events":[{{"kv":{{"key":"{}","create_revision":"13","mod_revision":"13","version":"1","value":"{}"}}}},{{"type":"DELETE","kv":{{"key":"{}","mod_revision":"15"}}}}]}}}}"#,
            encode(b"/apisix/upstreams/1"),
            encode(b"{}"),
            encode(b"/apisix/upstreams/2")
        );
        let WatchMsg::Events { events } = parse_watch_line(&put) else { panic!("events expected") };
        assert_eq!(events[0].kind, EventKind::Put);
        assert_eq!((events[0].kv.mod_revision, events[0].kv.value.as_slice()), (13, &b"{}"[..]));
        assert_eq!((events[1].kind, events[1].kv.mod_revision), (EventKind::Delete, 15));
        let compacted = r#"{"result":{"header":{"cluster_id":"1","member_id":"2","raft_term":"2"},"canceled":true,"compact_revision":"15"}}"#;
        assert_eq!(parse_watch_line(compacted), WatchMsg::Compacted { compact_revision: 15 });
        let progress = r#"{"result":{"header":{"revision":"2532"}}}"#;
        assert_eq!(parse_watch_line(progress), WatchMsg::Progress { revision: 2532 });
        // SIGTERM: sent without a trailing newline.
        let closing = r#"{"error":{"grpc_code":14,"http_code":503,"message":"transport is closing","http_status":"Service Unavailable"}}"#;
        assert_eq!(parse_watch_line(closing), WatchMsg::Error { message: "transport is closing".into() });
        assert!(matches!(parse_watch_line("{\"resu"), WatchMsg::Error { .. }));
    }

    #[test]
    fn a_conditional_put_compares_what_was_read() {
        let create = conditional_put("/k", b"v", None, None);
        assert_eq!(create["compare"][0]["target"], "CREATE");
        assert_eq!(create["compare"][0]["create_revision"], "0");
        let replace = conditional_put("/k", b"v", Some(7), Some(99));
        assert_eq!(replace["compare"][0]["mod_revision"], "7");
        assert_eq!(replace["success"][0]["request_put"]["lease"], "99");
    }
}
