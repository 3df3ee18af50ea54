//! Resource behaviour (spec §2.2-§2.7): envelopes, ids, validation messages,
//! references, PATCH, lists, and what a refused write leaves behind.

use super::*;
use serde_json::json;

const UPSTREAM: &str = r#"{"nodes":{"127.0.0.1:1995":1},"type":"roundrobin"}"#;

fn error_msg(h: &mut Harness, method: &str, url: &str, body: &str) -> (u16, String) {
    let (status, json) = h.call(method, url, body);
    (status, json["error_msg"].as_str().unwrap_or_default().to_string())
}

#[test]
fn put_creates_with_201_and_replaces_with_200_keeping_create_time() {
    let mut h = Harness::new();
    let (status, body) = h.call("PUT", "/apisix/admin/upstreams/1", UPSTREAM);
    assert_eq!(status, 201);
    assert_eq!(
        body,
        json!({"key": "/apisix/upstreams/1", "value": {
            "nodes": {"127.0.0.1:1995": 1}, "type": "roundrobin",
            "id": "1", "create_time": NOW, "update_time": NOW}})
    );
    h.admin.clock = || NOW + 5;
    let (status, body) = h.call("PUT", "/apisix/admin/upstreams/1", UPSTREAM);
    assert_eq!(status, 200);
    assert_eq!(body["value"]["create_time"], NOW);
    assert_eq!(body["value"]["update_time"], NOW + 5);
    assert_eq!(h.publications(), 2, "every acknowledged write is published");
}

#[test]
fn no_defaults_are_injected_into_the_stored_value() {
    let mut h = Harness::new();
    h.call("PUT", "/apisix/admin/stream_routes/1", r#"{"upstream":{"nodes":{"127.0.0.1:1995":1}}}"#);
    let (status, body) = h.call("GET", "/apisix/admin/stream_routes/1", "");
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"key": "/apisix/stream_routes/1", "value": {
            "upstream": {"nodes": {"127.0.0.1:1995": 1}},
            "id": "1", "create_time": NOW, "update_time": NOW},
            "createdIndex": 1, "modifiedIndex": 1})
    );
}

#[test]
fn put_to_the_collection_takes_the_id_from_the_body_and_keeps_its_type() {
    let mut h = Harness::new();
    let (status, body) = h.call("PUT", "/apisix/admin/upstreams", r#"{"id":1,"nodes":{"127.0.0.1:1995":1}}"#);
    assert_eq!(status, 201);
    assert_eq!(body["key"], "/apisix/upstreams/1");
    assert_eq!(body["value"]["id"], 1);
}

#[test]
fn post_generates_twenty_digit_ids() {
    let mut h = Harness::new();
    let (status, first) = h.call("POST", "/apisix/admin/upstreams", UPSTREAM);
    assert_eq!(status, 201);
    let (_, second) = h.call("POST", "/apisix/admin/upstreams", UPSTREAM);
    assert_eq!(first["value"]["id"], "00000000000000000001");
    assert_eq!(second["key"], "/apisix/upstreams/00000000000000000002");
    // The counter lives in the store: a restart does not reuse ids.
    let (_dir, store) = h.reopen();
    assert_eq!(store.next_generated_id("upstreams"), "00000000000000000003");
}

#[test]
fn write_validation_uses_apisix_texts() {
    let mut h = Harness::new();
    let cases: &[(&str, &str, &str, &str)] = &[
        ("PUT", "/apisix/admin/upstreams/1", "", "missing configurations"),
        ("POST", "/apisix/admin/upstreams", "", "missing configurations"),
        ("PUT", "/apisix/admin/upstreams", UPSTREAM, "missing upstream id"),
        ("PUT", "/apisix/admin/stream_routes", "{}", "missing stream route id"),
        ("PUT", "/apisix/admin/upstreams/1", r#"{"id":"2","nodes":{}}"#, "wrong upstream id"),
        ("POST", "/apisix/admin/upstreams/1", UPSTREAM, "wrong upstream id, do not need it"),
        ("POST", "/apisix/admin/services", r#"{"id":"1"}"#, "wrong service id, do not need it"),
        (
            "PUT",
            "/apisix/admin/upstreams/1",
            r#"{"nodes":{},"create_time":1}"#,
            "the property is forbidden:  create_time",
        ),
        (
            "PUT",
            "/apisix/admin/stream_routes/1",
            r#"{"upstream":{"nodes":{},"update_time":1}}"#,
            "the property is forbidden:  upstream.update_time",
        ),
        (
            "PUT",
            "/apisix/admin/upstreams/*invalid",
            UPSTREAM,
            "invalid configuration: property \"id\" validation failed: object matches none of the required",
        ),
        (
            "PUT",
            "/apisix/admin/upstreams",
            r#"{"id":-100,"nodes":{}}"#,
            "invalid configuration: property \"id\" validation failed: object matches none of the required",
        ),
        ("PUT", "/apisix/admin/stream_routes/1", r#"{"remote_addr":":/8"}"#, "invalid remote_addr: :/8"),
        ("PUT", "/apisix/admin/stream_routes/1", r#"{"server_addr":"1.2.3.4/40"}"#, "invalid server_addr: 1.2.3.4/40"),
        (
            "PUT",
            "/apisix/admin/stream_routes/1",
            r#"{"server_port":0}"#,
            "invalid configuration: property \"server_port\" validation failed: expected 0 to be at least 1",
        ),
        ("PUT", "/apisix/admin/stream_routes/1", r#"{"plugins":{"limit-conn":{}}}"#, "unknown plugin [limit-conn]"),
        ("PUT", "/apisix/admin/upstreams/1", r#"{"nodes":{"a:1":1},"type":"chash"}"#, "missing key"),
        (
            "PUT",
            "/apisix/admin/upstreams/1",
            r#"{"nodes":{},"foo":1}"#,
            "invalid configuration: additional properties forbidden, found foo",
        ),
        ("PUT", "/apisix/admin/upstreams/1", "[1]", "invalid configuration: wrong type: expected object, got array"),
        ("PUT", "/apisix/admin/services/1", r#"{"plugins":{"x":{}}}"#, "unknown plugin [x]"),
    ];
    for (method, url, body, expected) in cases {
        assert_eq!(error_msg(&mut h, method, url, body), (400, expected.to_string()), "{method} {url} {body}");
    }
    assert_eq!(h.publications(), 0);
    assert_eq!(h.admin.store.revision(), 0, "refused writes store nothing");
}

#[test]
fn references_must_exist_at_write_time() {
    let mut h = Harness::new();
    assert_eq!(
        error_msg(&mut h, "PUT", "/apisix/admin/stream_routes/1", r#"{"upstream_id":"9"}"#),
        (400, "failed to fetch upstream info by upstream id [9], response code: 404".into())
    );
    assert_eq!(
        error_msg(&mut h, "PUT", "/apisix/admin/stream_routes/1", r#"{"service_id":9}"#),
        (400, "failed to fetch service info by service id [9], response code: 404".into())
    );
    assert_eq!(
        error_msg(&mut h, "PUT", "/apisix/admin/services/1", r#"{"upstream_id":"9"}"#),
        (400, "failed to fetch upstream info by upstream id [9], response code: 404".into())
    );
    assert_eq!(
        error_msg(&mut h, "PUT", "/apisix/admin/upstreams/1", r#"{"nodes":{},"tls":{"client_cert_id":"7"}}"#),
        (400, "failed to fetch ssl info by ssl id [7], response code: 404".into())
    );
    h.call("PUT", "/apisix/admin/upstreams/9", UPSTREAM);
    h.call("PUT", "/apisix/admin/services/9", r#"{"upstream_id":"9"}"#);
    assert_eq!(h.call("PUT", "/apisix/admin/stream_routes/1", r#"{"upstream_id":9,"service_id":"9"}"#).0, 201);
}

#[test]
fn deleting_a_referenced_upstream_or_service_is_refused_unless_forced() {
    let mut h = Harness::new();
    h.call("PUT", "/apisix/admin/upstreams/u", UPSTREAM);
    h.call("PUT", "/apisix/admin/services/s", r#"{"upstream_id":"u"}"#);
    h.call("PUT", "/apisix/admin/stream_routes/r", r#"{"upstream_id":"u","service_id":"s"}"#);
    assert_eq!(
        error_msg(&mut h, "DELETE", "/apisix/admin/upstreams/u", ""),
        (400, "can not delete this upstream, stream_route [r] is still using it now".into())
    );
    assert_eq!(
        error_msg(&mut h, "DELETE", "/apisix/admin/services/s", ""),
        (400, "can not delete this service directly, stream_route [r] is still using it now".into())
    );
    assert_eq!(error_msg(&mut h, "DELETE", "/apisix/admin/upstreams/u?force=anyvalue", "").0, 400);
    let (status, body) = h.call("DELETE", "/apisix/admin/stream_routes/r", "");
    assert_eq!(status, 200);
    assert_eq!(body, json!({"deleted": "1", "key": "/apisix/stream_routes/r"}));
    assert_eq!(
        error_msg(&mut h, "DELETE", "/apisix/admin/upstreams/u", ""),
        (400, "can not delete this upstream, service [s] is still using it now".into())
    );
    assert_eq!(h.call("DELETE", "/apisix/admin/upstreams/u?force=true", "").0, 200);
    assert!(h.published.lock().unwrap().last().unwrap().upstreams.is_empty());
}

#[test]
fn missing_keys_are_404_key_not_found() {
    let mut h = Harness::new();
    for method in ["GET", "DELETE", "PATCH"] {
        let (status, body) = h.call(method, "/apisix/admin/upstreams/nope", r#"{"retries":1}"#);
        assert_eq!((status, body), (404, json!({"message": "Key not found"})), "{method}");
    }
    assert_eq!(error_msg(&mut h, "DELETE", "/apisix/admin/upstreams", ""), (400, "missing upstream id".into()));
}

#[test]
fn patch_merges_and_revalidates() {
    let mut h = Harness::new();
    h.call("PUT", "/apisix/admin/upstreams/1", r#"{"nodes":{"127.0.0.1:1980":1,"127.0.0.1:1981":1},"desc":"d"}"#);
    h.admin.clock = || NOW + 9;
    let (status, body) = h.call(
        "PATCH",
        "/apisix/admin/upstreams/1",
        r#"{"nodes":{"127.0.0.1:1980":null,"127.0.0.1:1982":2},"desc":null,"retries":1}"#,
    );
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"key": "/apisix/upstreams/1", "value": {
            "nodes": {"127.0.0.1:1981": 1, "127.0.0.1:1982": 2}, "retries": 1,
            "id": "1", "create_time": NOW, "update_time": NOW + 9}})
    );
    let (status, msg) = error_msg(&mut h, "PATCH", "/apisix/admin/upstreams/1", r#"{"retries":-1}"#);
    assert_eq!(status, 400);
    assert_eq!(msg, "invalid configuration: property \"retries\" validation failed: expected -1 to be at least 0");
    assert_eq!(error_msg(&mut h, "PATCH", "/apisix/admin/upstreams/1", "[1]"), (400, "invalid configuration".into()));
    assert_eq!(error_msg(&mut h, "PATCH", "/apisix/admin/upstreams/1", ""), (400, "missing new configuration".into()));
    assert_eq!(error_msg(&mut h, "PATCH", "/apisix/admin/upstreams", "{}"), (400, "missing upstream id".into()));
    assert_eq!(
        error_msg(&mut h, "PATCH", "/apisix/admin/upstreams/1", r#"{"id":"2"}"#),
        (400, "wrong upstream id".into())
    );
}

#[test]
fn patch_on_a_sub_path_replaces_that_value() {
    let mut h = Harness::new();
    h.call("PUT", "/apisix/admin/upstreams/1", r#"{"nodes":{"127.0.0.1:1980":1},"retries":1}"#);
    let (status, body) = h.call("PATCH", "/apisix/admin/upstreams/1/nodes", r#"{"127.0.0.1:1982":1}"#);
    assert_eq!(status, 200);
    assert_eq!(body["value"]["nodes"], json!({"127.0.0.1:1982": 1}));
    assert_eq!(
        error_msg(&mut h, "PATCH", "/apisix/admin/upstreams/1/retries/x", "1"),
        (400, "invalid sub-path: /retries".into())
    );
}

#[test]
fn patch_works_on_stream_routes_too() {
    let mut h = Harness::new();
    h.call("PUT", "/apisix/admin/stream_routes/1", r#"{"server_port":9100}"#);
    let (status, body) = h.call("PATCH", "/apisix/admin/stream_routes/1", r#"{"server_port":9101}"#);
    assert_eq!(status, 200);
    assert_eq!(body["value"]["server_port"], 9101);
    assert_eq!(
        error_msg(&mut h, "PATCH", "/apisix/admin/stream_routes/1", r#"{"upstream_id":"x"}"#),
        (400, "failed to fetch upstream info by upstream id [x], response code: 404".into())
    );
}

#[test]
fn lists_come_in_key_order_with_revisions() {
    let mut h = Harness::new();
    for id in ["2", "10", "1"] {
        h.call("PUT", &format!("/apisix/admin/upstreams/{id}"), UPSTREAM);
    }
    let (status, body) = h.call("GET", "/apisix/admin/upstreams", "");
    assert_eq!(status, 200);
    assert_eq!(body["total"], 3);
    let keys: Vec<&str> = body["list"].as_array().unwrap().iter().map(|i| i["key"].as_str().unwrap()).collect();
    assert_eq!(keys, ["/apisix/upstreams/1", "/apisix/upstreams/10", "/apisix/upstreams/2"]);
    assert_eq!(body["list"][0]["createdIndex"], 3);
    let (_, empty) = h.call("GET", "/apisix/admin/services", "");
    assert_eq!(empty, json!({"list": [], "total": 0}));
}

#[test]
fn pagination_follows_creation_order_and_checks_page_size() {
    let mut h = Harness::new();
    for n in (1..=12).rev() {
        h.call("PUT", &format!("/apisix/admin/upstreams/u{n}"), UPSTREAM);
    }
    let (status, body) = h.call("GET", "/apisix/admin/upstreams?page=2&page_size=10", "");
    assert_eq!(status, 200);
    assert_eq!(body["total"], 12);
    let keys: Vec<&str> = body["list"].as_array().unwrap().iter().map(|i| i["key"].as_str().unwrap()).collect();
    assert_eq!(keys, ["/apisix/upstreams/u2", "/apisix/upstreams/u1"]);
    let (_, first) = h.call("GET", "/apisix/admin/upstreams?page=0&page_size=10", "");
    assert_eq!(first["list"][0]["key"], "/apisix/upstreams/u12", "page < 1 is page 1");
    let response =
        h.raw("GET", "/apisix/admin/upstreams?page=1&page_size=5", &[("X-API-KEY", ADMIN_KEY)], "127.0.0.1", b"");
    assert_eq!((response.status, response.body.as_str()), (400, "page_size must be between 10 and 500"));
    let (_, all) = h.call("GET", "/apisix/admin/upstreams?page=x&page_size=5", "");
    assert_eq!(all["list"].as_array().unwrap().len(), 12, "paging needs both numbers");
}

#[test]
fn stream_routes_filter_by_upstream_and_service_id_as_strings() {
    let mut h = Harness::new();
    h.call("PUT", "/apisix/admin/upstreams/1", UPSTREAM);
    h.call("PUT", "/apisix/admin/stream_routes/a", r#"{"upstream_id":"1"}"#);
    h.call("PUT", "/apisix/admin/stream_routes/b", r#"{"upstream_id":1}"#);
    h.call("PUT", "/apisix/admin/stream_routes/c", "{}");
    let (_, body) = h.call("GET", "/apisix/admin/stream_routes?filter=upstream_id%3D1", "");
    assert_eq!(body["total"], 1);
    assert_eq!(body["list"][0]["key"], "/apisix/stream_routes/a");
    let (_, body) = h.call("GET", "/apisix/admin/stream_routes?filter=other%3D1", "");
    assert_eq!(body["total"], 3, "unsupported filter keys are ignored");
}

#[test]
fn ssls_are_stored_but_their_keys_never_shown() {
    let mut h = Harness::new();
    let (cert, key) = self_signed("test.com");
    let ssl = json!({"cert": cert, "key": key, "sni": "test.com"});
    let (status, body) = h.call("PUT", "/apisix/admin/ssls/1", &ssl.to_string());
    assert_eq!(status, 201, "{body}");
    assert!(body["value"].get("key").is_none());
    let (_, body) = h.call("GET", "/apisix/admin/ssls/1", "");
    assert_eq!(body["value"]["sni"], "test.com");
    assert!(body["value"].get("key").is_none());
    let (_, list) = h.call("GET", "/apisix/admin/ssls", "");
    assert!(list["list"][0]["value"].get("key").is_none());
    assert_eq!(h.admin.store.get("ssls", "1").unwrap().value["key"], key);
    assert_eq!(
        error_msg(&mut h, "PUT", "/apisix/admin/ssls/2", r#"{"cert":"x"}"#).1,
        "invalid configuration: property \"cert\" validation failed: string too short, expected at least 128, got 1"
    );
    // Certificates and keys must parse and belong together.
    let garbage = json!({"cert": format!("-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n", "A".repeat(130)), "key": key, "sni": "test.com"});
    let (status, message) = error_msg(&mut h, "PUT", "/apisix/admin/ssls/3", &garbage.to_string());
    assert_eq!(status, 400);
    assert!(message.starts_with("failed to parse cert"), "{message}");
    let (_, other_key) = self_signed("other.com");
    let mismatched = json!({"cert": cert, "key": other_key, "sni": "test.com"});
    assert_eq!(
        error_msg(&mut h, "PUT", "/apisix/admin/ssls/3", &mismatched.to_string()),
        (400, "failed to parse key: the key does not belong to the certificate".into())
    );
    assert!(h.admin.store.get("ssls", "3").is_none(), "a refused write stores nothing");
    // An upstream's client certificate must be an ssl of type client.
    assert_eq!(
        error_msg(&mut h, "PUT", "/apisix/admin/upstreams/1", r#"{"nodes":{},"tls":{"client_cert_id":"1"}}"#),
        (400, "failed to fetch ssl info by ssl id [1], wrong ssl type".into())
    );
}

#[test]
fn published_resources_hold_everything_but_ssls() {
    let mut h = Harness::new();
    h.call("PUT", "/apisix/admin/upstreams/1", UPSTREAM);
    h.call("PUT", "/apisix/admin/services/1", r#"{"upstream_id":"1"}"#);
    h.call("PUT", "/apisix/admin/stream_routes/1", r#"{"service_id":"1"}"#);
    let last = h.published.lock().unwrap().last().unwrap().clone();
    assert_eq!(last.upstreams.len(), 1);
    assert_eq!(last.services.len(), 1);
    assert_eq!(last.stream_routes[0].1["service_id"], "1");
    let (_dir, store) = h.reopen();
    let reopened = store.resources();
    assert_eq!(reopened.stream_routes, last.stream_routes);
}

#[test]
fn a_write_the_disk_refuses_is_503_and_changes_nothing() {
    let mut h = Harness::new();
    h.call("PUT", "/apisix/admin/upstreams/1", UPSTREAM);
    std::fs::create_dir(h.dir.path().join("store.json.tmp")).unwrap();
    let (status, body) = h.call("PUT", "/apisix/admin/upstreams/2", UPSTREAM);
    assert_eq!(status, 503);
    assert!(body["error_msg"].as_str().unwrap().contains("store.json.tmp"));
    assert_eq!(h.call("GET", "/apisix/admin/upstreams/2", "").0, 404);
    assert_eq!(h.publications(), 1, "nothing is published for a failed write");
}

/// A self-signed certificate and its key, PEM.
fn self_signed(name: &str) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap().self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}
