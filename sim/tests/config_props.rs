//! Config JSON: parsing never panics, whatever the bytes, and every object
//! that parses round-trips (written back out and parsed again, it is equal).

use proptest::prelude::*;
use serde_json::{json, Map, Value};
use strait_engine::model::{StreamRoute, Upstream};

/// Keys the parsers look at, so random objects reach deep into them.
const KEYS: [&str; 30] = [
    "nodes",
    "type",
    "retries",
    "retry_timeout",
    "timeout",
    "connect",
    "send",
    "read",
    "scheme",
    "hash_on",
    "key",
    "checks",
    "active",
    "tls",
    "host",
    "port",
    "weight",
    "priority",
    "remote_addr",
    "server_addr",
    "server_port",
    "sni",
    "snis",
    "upstream",
    "upstream_id",
    "service_id",
    "plugins",
    "id",
    "labels",
    "name",
];
const STRINGS: [&str; 16] = [
    "roundrobin",
    "chash",
    "10.0.0.1:80",
    "[::1]:80",
    "127.0.0.1",
    "10.0.0.0/8",
    "::/0",
    "*.test.com",
    "*",
    "a",
    "",
    "1.2.3.4/40",
    "vars",
    "tcp",
    "host:0",
    "[::1]",
];

fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-3i64..70000).prop_map(Value::from),
        any::<f64>().prop_filter("JSON numbers are finite", |f| f.is_finite()).prop_map(Value::from),
        prop::sample::select(vec![0.0, 0.5, 1e-9, 1e10, 1e19, 1e20, 1e300, f64::MAX, -0.0]).prop_map(Value::from),
    ]
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        number(),
        prop::sample::select(STRINGS.to_vec()).prop_map(Value::from),
        "\\PC{0,12}".prop_map(Value::from),
    ]
}

fn any_json() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((prop::sample::select(KEYS.to_vec()), inner.clone()), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect())),
            prop::collection::vec(("[a-z0-9.:\\[\\]]{1,16}", inner), 0..4)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// An upstream that is mostly valid, with one field sometimes replaced by noise.
fn near_valid_upstream() -> impl Strategy<Value = Value> {
    (
        prop::collection::btree_map("10\\.0\\.0\\.[0-9]:[1-9][0-9]{0,4}", 0u32..10, 0..4),
        prop::option::of(0u32..5),
        prop::option::of(number()),
        prop::option::of((number(), number(), number())),
        prop::option::of((prop::sample::select(KEYS.to_vec()), leaf())),
    )
        .prop_map(|(nodes, retries, retry_timeout, timeout, noise)| {
            let mut u = Map::new();
            u.insert("nodes".into(), json!(nodes));
            if let Some(r) = retries {
                u.insert("retries".into(), json!(r));
            }
            if let Some(t) = retry_timeout {
                u.insert("retry_timeout".into(), t);
            }
            if let Some((c, s, r)) = timeout {
                u.insert("timeout".into(), json!({"connect": c, "send": s, "read": r}));
            }
            if let Some((k, v)) = noise {
                u.insert(k.to_string(), v);
            }
            Value::Object(u)
        })
}

fn upstream_to_json(u: &Upstream) -> Value {
    let nodes: Vec<Value> = u
        .nodes
        .iter()
        .map(|n| json!({"host": n.host, "port": n.port, "weight": n.weight, "priority": n.priority}))
        .collect();
    let mut o = Map::new();
    o.insert("nodes".into(), Value::Array(nodes));
    let balancer = format!("{:?}", u.balancer);
    let type_name = match balancer.as_str() {
        "RoundRobin" => "roundrobin",
        "Chash" => "chash",
        "LeastConn" => "least_conn",
        _ => "ewma",
    };
    o.insert("type".into(), json!(type_name));
    if let Some(h) = &u.hash_on {
        o.insert("hash_on".into(), json!(h));
    }
    if let Some(k) = &u.key {
        o.insert("key".into(), json!(k));
    }
    if let Some(r) = u.retries {
        o.insert("retries".into(), json!(r));
    }
    if !u.retry_timeout.is_zero() {
        o.insert("retry_timeout".into(), json!(u.retry_timeout.as_secs_f64()));
    }
    if let Some(t) = u.timeout {
        o.insert(
            "timeout".into(),
            json!({"connect": t.connect.as_secs_f64(), "send": t.send.as_secs_f64(), "read": t.read.as_secs_f64()}),
        );
    }
    if let Some(s) = &u.scheme {
        o.insert("scheme".into(), json!(s));
    }
    Value::Object(o)
}

fn route_to_json(r: &StreamRoute) -> Value {
    let ip = |m: &strait_engine::model::IpMatch| format!("{}/{}", m.network(), m.prefix_len());
    let mut o = Map::new();
    if let Some(m) = &r.remote_addr {
        o.insert("remote_addr".into(), json!(ip(m)));
    }
    if let Some(m) = &r.server_addr {
        o.insert("server_addr".into(), json!(ip(m)));
    }
    if let Some(p) = r.server_port {
        o.insert("server_port".into(), json!(p));
    }
    // `sni: "*"` keeps the pattern (only connections with an SNI match), while a
    // lone `*` in `snis` lifts the condition: one pattern goes back as `sni`.
    match r.snis.as_slice() {
        [] => {}
        [one] => {
            o.insert("sni".into(), json!(one));
        }
        many => {
            o.insert("snis".into(), json!(many));
        }
    }
    if let Some(u) = &r.upstream {
        o.insert("upstream".into(), upstream_to_json(u));
    }
    if let Some(id) = &r.upstream_id {
        o.insert("upstream_id".into(), json!(id));
    }
    if let Some(id) = &r.service_id {
        o.insert("service_id".into(), json!(id));
    }
    Value::Object(o)
}

fn check_upstream(value: &Value) -> Result<(), TestCaseError> {
    if let Ok(u) = Upstream::from_json(value) {
        let again = Upstream::from_json(&upstream_to_json(&u));
        prop_assert_eq!(again.as_ref(), Ok(&u), "upstream round-trips: {}", value);
    }
    Ok(())
}

fn check_route(value: &Value) -> Result<(), TestCaseError> {
    if let Ok(r) = StreamRoute::from_json("1", value) {
        let again = StreamRoute::from_json("1", &route_to_json(&r));
        prop_assert_eq!(again.as_ref(), Ok(&r), "route round-trips: {}", value);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_json_never_panics_and_valid_objects_round_trip(value in any_json()) {
        check_upstream(&value)?;
        check_route(&value)?;
        let wrapped = json!({"upstream": value});
        check_route(&wrapped)?;
    }

    #[test]
    fn near_valid_upstreams_never_panic_and_round_trip(value in near_valid_upstream()) {
        check_upstream(&value)?;
        check_route(&json!({"upstream": value, "server_port": 9100, "remote_addr": "10.0.0.0/8"}))?;
    }
}
