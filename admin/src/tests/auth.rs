//! Transport and access rules (spec §2.1): allowlist, keys, roles, CORS,
//! headers, dispatch errors.

use super::*;
use serde_json::json;

fn status_and_body(h: &mut Harness, headers: &[(&str, &str)], url: &str) -> (u16, Value) {
    h.call_with("GET", url, headers, "127.0.0.1", "")
}

#[test]
fn a_missing_key_is_401_missing_apikey() {
    let mut h = Harness::new();
    let (status, body) = status_and_body(&mut h, &[], "/apisix/admin/upstreams");
    assert_eq!(status, 401);
    assert_eq!(body, json!({"error_msg": "failed to check token", "description": "missing apikey"}));
}

#[test]
fn a_wrong_key_is_401_wrong_apikey() {
    let mut h = Harness::new();
    let (status, body) = status_and_body(&mut h, &[("X-API-KEY", "nope")], "/apisix/admin/upstreams");
    assert_eq!(status, 401);
    assert_eq!(body["description"], "wrong apikey");
}

#[test]
fn the_key_is_read_from_query_then_header_then_cookie() {
    let mut h = Harness::new();
    let url = format!("/apisix/admin/upstreams?api_key={ADMIN_KEY}");
    assert_eq!(status_and_body(&mut h, &[], &url).0, 200);
    let cookie = format!("a=b; x_api_key={ADMIN_KEY}");
    assert_eq!(status_and_body(&mut h, &[("Cookie", &cookie)], "/apisix/admin/upstreams").0, 200);
    // The first source present wins even when it is wrong.
    let (status, body) = status_and_body(&mut h, &[("x-api-key", ADMIN_KEY)], "/apisix/admin/upstreams?api_key=wrong");
    assert_eq!((status, body["description"].as_str()), (401, Some("wrong apikey")));
}

#[test]
fn a_viewer_may_only_get() {
    let mut h = Harness::new();
    let viewer = [("X-API-KEY", VIEWER_KEY)];
    assert_eq!(status_and_body(&mut h, &viewer, "/apisix/admin/upstreams").0, 200);
    let (status, body) =
        h.call_with("PUT", "/apisix/admin/upstreams/1", &viewer, "127.0.0.1", r#"{"nodes":{"127.0.0.1:80":1}}"#);
    assert_eq!(status, 401);
    assert_eq!(body, json!({"error_msg": "failed to check token", "description": "invalid method for role viewer"}));
    assert_eq!(h.admin.store.count("upstreams"), 0);
}

#[test]
fn keys_are_not_checked_when_not_required() {
    let mut s = settings();
    s.key_required = false;
    let mut h = Harness::with(s, ProxyMode::Stream);
    assert_eq!(status_and_body(&mut h, &[], "/apisix/admin/upstreams").0, 200);
}

#[test]
fn an_empty_configured_key_matches_nothing() {
    let mut s = settings();
    s.keys[0].key.clear();
    let mut h = Harness::with(s, ProxyMode::Stream);
    let (status, _) = status_and_body(&mut h, &[("X-API-KEY", "")], "/apisix/admin/upstreams");
    assert_eq!(status, 401);
}

#[test]
fn peers_outside_allow_admin_get_a_json_403() {
    let mut h = Harness::new();
    let (status, body) = h.call_with("GET", "/apisix/admin/upstreams", &[("X-API-KEY", ADMIN_KEY)], "10.1.2.3", "");
    assert_eq!(status, 403);
    assert_eq!(body, json!({"error_msg": "forbidden: 10.1.2.3 is not in allow_admin"}));
    let mut s = settings();
    s.allow_admin = None;
    let mut h = Harness::with(s, ProxyMode::Stream);
    let (status, _) = h.call_with("GET", "/apisix/admin/upstreams", &[("X-API-KEY", ADMIN_KEY)], "10.1.2.3", "");
    assert_eq!(status, 200, "no allowlist lets everyone in");
    let mut s = settings();
    s.allow_admin = Some(vec![]);
    let mut h = Harness::with(s, ProxyMode::Stream);
    let (status, _) = h.call_with("GET", "/apisix/admin/upstreams", &[("X-API-KEY", ADMIN_KEY)], "127.0.0.1", "");
    assert_eq!(status, 403, "an empty allowlist denies everyone");
}

#[test]
fn head_on_the_base_path_needs_no_key() {
    let mut h = Harness::new();
    let response = h.raw("HEAD", "/apisix/admin", &[], "127.0.0.1", b"");
    assert_eq!(response.status, 200);
}

#[test]
fn every_response_carries_the_common_headers() {
    let mut h = Harness::new();
    let response = h.raw("GET", "/apisix/admin/upstreams", &[], "127.0.0.1", b"");
    let header =
        |name: &str| response.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.clone());
    assert_eq!(header("Content-Type").as_deref(), Some("application/json"));
    assert_eq!(header("X-API-VERSION").as_deref(), Some("v3"));
    assert!(header("Server").unwrap().starts_with("Strait/"));
    assert_eq!(header("Access-Control-Allow-Origin").as_deref(), Some("*"));
    assert_eq!(header("Access-Control-Max-Age").as_deref(), Some("3600"));
}

#[test]
fn options_answers_the_allowed_methods_when_cors_is_on() {
    let mut h = Harness::new();
    let response = h.raw("OPTIONS", "/apisix/admin/upstreams", &[], "127.0.0.1", b"");
    assert_eq!(response.status, 200);
    assert!(response
        .headers
        .iter()
        .any(|(n, v)| *n == "Access-Control-Allow-Methods" && v == "POST, GET, PUT, OPTIONS, DELETE, PATCH"));
    let mut s = settings();
    s.cors = false;
    let mut h = Harness::with(s, ProxyMode::Stream);
    let response = h.raw("OPTIONS", "/apisix/admin/upstreams", &[], "127.0.0.1", b"");
    assert_eq!(response.status, 404);
    assert!(!response.headers.iter().any(|(n, _)| n.starts_with("Access-Control")));
}

#[test]
fn unknown_resources_are_404_with_their_name() {
    let mut h = Harness::new();
    let (status, body) = h.call("GET", "/apisix/admin/routes", "");
    assert_eq!(status, 404);
    assert_eq!(body, json!({"error_msg": "Unsupported resource type: routes"}));
    assert_eq!(h.call("GET", "/apisix/adminx", "").0, 404);
    assert_eq!(h.call("TRACE", "/apisix/admin/upstreams", "").0, 404);
}

#[test]
fn stream_routes_are_refused_in_http_mode_for_every_method() {
    let mut h = Harness::with(settings(), ProxyMode::Http);
    for method in ["GET", "PUT", "POST", "DELETE", "PATCH"] {
        let (status, body) = h.call(method, "/apisix/admin/stream_routes/1", "{}");
        assert_eq!(status, 400, "{method}");
        assert_eq!(body, json!({"error_msg": "stream mode is disabled, can not add stream routes"}));
    }
    assert_eq!(h.call("GET", "/apisix/admin/upstreams", "").0, 200);
}

#[test]
fn bodies_over_the_limit_are_413() {
    let mut h = Harness::new();
    let mut body = b"{\"desc\":\"".to_vec();
    body.resize(crate::dispatch::BODY_BYTES_MAX + 1, b'a');
    let response = h.raw("PUT", "/apisix/admin/upstreams/1", &[("X-API-KEY", ADMIN_KEY)], "127.0.0.1", &body);
    assert_eq!(response.status, 413);
    let json: Value = serde_json::from_str(&response.body).unwrap();
    assert!(json["error_msg"].as_str().unwrap().contains("greater than the maximum size"));
}

#[test]
fn a_body_that_is_not_json_is_400_with_the_raw_body() {
    let mut h = Harness::new();
    let (status, body) = h.call("PUT", "/apisix/admin/upstreams/1", "{nodes");
    assert_eq!(status, 400);
    assert!(body["error_msg"].as_str().unwrap().starts_with("invalid request body: "));
    assert_eq!(body["req_body"], "{nodes");
}

#[test]
fn ttl_must_be_a_number_and_is_not_supported() {
    let mut h = Harness::new();
    let (status, body) = h.call("PUT", "/apisix/admin/upstreams/1?ttl=abc", r#"{"nodes":{}}"#);
    assert_eq!((status, body["error_msg"].as_str()), (400, Some("invalid argument ttl: should be a number")));
    let (status, _) = h.call("PUT", "/apisix/admin/upstreams/1?ttl=5", r#"{"nodes":{}}"#);
    assert_eq!(status, 400);
    assert_eq!(h.admin.store.count("upstreams"), 0);
}
