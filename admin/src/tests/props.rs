//! Whatever a client sends, the handler answers (no panic) and a refused
//! write leaves the store as it was.

use super::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        (-1e6f64..1e6).prop_map(Value::from),
        "[a-z0-9_.:/*-]{0,12}".prop_map(Value::from),
        prop::sample::select(vec![
            "nodes",
            "upstream",
            "upstream_id",
            "service_id",
            "remote_addr",
            "127.0.0.1:80",
            "create_time",
            "id",
            "1",
            "type",
            "chash",
            "timeout",
            "tls",
            "client_cert_id",
        ])
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        let key = prop::sample::select(vec![
            "id",
            "nodes",
            "type",
            "upstream",
            "upstream_id",
            "service_id",
            "remote_addr",
            "server_addr",
            "server_port",
            "sni",
            "snis",
            "plugins",
            "retries",
            "timeout",
            "connect",
            "send",
            "read",
            "127.0.0.1:1980",
            "labels",
            "name",
            "desc",
            "tls",
            "client_cert_id",
            "checks",
            "active",
            "cert",
            "key",
            "create_time",
            "hash_on",
        ])
        .prop_map(str::to_string);
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map(key, inner, 0..5).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn request() -> impl Strategy<Value = (String, String, Vec<u8>)> {
    let method = prop::sample::select(vec!["GET", "PUT", "POST", "DELETE", "PATCH"]);
    let path = prop::sample::select(vec![
        "/apisix/admin/stream_routes",
        "/apisix/admin/stream_routes/1",
        "/apisix/admin/upstreams",
        "/apisix/admin/upstreams/1",
        "/apisix/admin/upstreams/1/nodes",
        "/apisix/admin/upstreams/1/a/b",
        "/apisix/admin/services/1",
        "/apisix/admin/ssls/1",
        "/apisix/admin/stream_routes/1?force=true",
        "/apisix/admin/upstreams?page=1&page_size=10",
    ]);
    let body =
        prop_oneof![json_value().prop_map(|v| v.to_string().into_bytes()), prop::collection::vec(any::<u8>(), 0..40),];
    (method, path, body).prop_map(|(m, p, b)| (m.to_string(), p.to_string(), b))
}

#[test]
fn arbitrary_requests_never_panic_and_refusals_change_nothing() {
    let mut h = Harness::new();
    // Something to reference, delete and patch.
    h.call("PUT", "/apisix/admin/upstreams/1", r#"{"nodes":{"127.0.0.1:1980":1}}"#);
    h.call("PUT", "/apisix/admin/stream_routes/1", r#"{"upstream_id":"1"}"#);
    let mut runner = TestRunner::new(Config { cases: 400, failure_persistence: None, ..Config::default() });
    let harness = std::cell::RefCell::new(h);
    runner
        .run(&request(), |(method, url, body)| {
            let mut h = harness.borrow_mut();
            let before = h.admin.store.revision();
            let response = h.raw(&method, &url, &[("X-API-KEY", ADMIN_KEY)], "127.0.0.1", &body);
            prop_assert!(response.status >= 200 && response.status < 600);
            if response.status >= 400 {
                prop_assert_eq!(h.admin.store.revision(), before, "a refused write stored something");
            }
            // Every stored object must still be valid for the engine.
            let resources = h.admin.store.resources();
            for (id, value) in &resources.stream_routes {
                prop_assert!(strait_engine::model::StreamRoute::from_json(id, value).is_ok());
            }
            for (_, value) in &resources.upstreams {
                prop_assert!(strait_engine::model::Upstream::from_json(value).is_ok());
            }
            Ok(())
        })
        .unwrap();
}
