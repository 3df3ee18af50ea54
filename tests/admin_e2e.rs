//! The Admin API end to end: the seed's curl examples sent byte for byte, the
//! APISIX v3 envelopes, auth, and routes that use an upstream by id.

mod common;

use common::*;
use serde_json::{json, Value};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

const ROUTES: &str = "/apisix/admin/stream_routes";

fn proxy() -> (Strait, SocketAddr) {
    let listen = SocketAddr::new(LOCALHOST, free_port());
    (Strait::start(Config::new().listen(listen)), listen)
}

/// The body of a curl `-d '...'`, sent as is.
fn put_raw(strait: &Strait, path: &str, body: &str) -> (u16, Value) {
    http_json(strait.config.admin, "PUT", path, Some(&strait.config.admin_key), Some(body))
}

#[test]
fn seed_remote_addr_example_proxies_clients_from_that_address() {
    let echo = Upstream::echo();
    let (strait, listen) = proxy();
    // The seed's first example; its node 127.0.0.1:1995 is our echo server.
    let body = r#"
{
    "remote_addr": "127.0.0.1",
    "upstream": {
        "nodes": {
            "127.0.0.1:1995": 1
        },
        "type": "roundrobin"
    }
}"#
    .replace("127.0.0.1:1995", &echo.addr.to_string());
    let (status, answer) = put_raw(&strait, "/apisix/admin/stream_routes/1", &body);
    assert_eq!(status, 201, "{answer}");
    assert_eq!(answer["value"]["remote_addr"], "127.0.0.1");

    wait_echo(listen);
    let other = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
    expect_closed_without_bytes(&mut connect_from(other, listen));
}

#[test]
fn seed_server_addr_and_port_example_proxies_only_that_address_and_port() {
    let echo = Upstream::echo();
    let port_2000 = free_port();
    let port_other = free_port();
    let strait = Strait::start(Config::new().listen_port(port_other).listen(SocketAddr::new(LOCALHOST, port_2000)));
    let body = r#"
{
    "server_addr": "127.0.0.1",
    "server_port": 2000,
    "upstream": {
        "nodes": {
            "127.0.0.1:1995": 1
        },
        "type": "roundrobin"
    }
}"#
    .replace("127.0.0.1:1995", &echo.addr.to_string())
    .replace("2000", &port_2000.to_string());
    let (status, answer) = put_raw(&strait, "/apisix/admin/stream_routes/1", &body);
    assert_eq!(status, 201, "{answer}");

    wait_echo(SocketAddr::new(LOCALHOST, port_2000));
    expect_closed_without_bytes(&mut connect(SocketAddr::new(LOCALHOST, port_other)));
}

fn assert_envelope(answer: &Value, id: &str) {
    assert_eq!(answer["key"], format!("/apisix/stream_routes/{id}"), "{answer}");
    assert_eq!(answer["value"]["id"], id, "{answer}");
    assert!(answer["value"]["create_time"].is_u64(), "create_time is integer seconds: {answer}");
    assert!(answer["value"]["update_time"].is_u64(), "update_time is integer seconds: {answer}");
}

#[test]
fn put_creates_a_route_with_201_and_the_v3_envelope() {
    let (strait, _) = proxy();
    let route = json!({"server_port": 2000, "upstream": {"type": "roundrobin", "nodes": {"127.0.0.1:1995": 1}}});
    let (status, answer) = strait.api("PUT", &format!("{ROUTES}/1"), Some(&route));
    assert_eq!(status, 201, "{answer}");
    assert_envelope(&answer, "1");
    assert_eq!(answer["value"]["create_time"], answer["value"]["update_time"]);
    assert_eq!(answer["value"]["server_port"], 2000);
    assert_eq!(answer["value"]["upstream"], route["upstream"], "stored as sent");
}

#[test]
fn put_replacing_a_route_answers_200_and_keeps_create_time() {
    let (strait, _) = proxy();
    let first = json!({"server_port": 2000, "upstream": {"type": "roundrobin", "nodes": {"127.0.0.1:1995": 1}}});
    let (status, created) = strait.api("PUT", &format!("{ROUTES}/r1"), Some(&first));
    assert_eq!(status, 201, "{created}");
    let second = json!({"server_port": 2001, "upstream": {"type": "roundrobin", "nodes": {"127.0.0.1:1996": 1}}});
    let (status, replaced) = strait.api("PUT", &format!("{ROUTES}/r1"), Some(&second));
    assert_eq!(status, 200, "{replaced}");
    assert_envelope(&replaced, "r1");
    assert_eq!(replaced["value"]["server_port"], 2001);
    assert_eq!(replaced["value"]["create_time"], created["value"]["create_time"]);
    assert!(replaced["value"]["update_time"].as_u64() >= created["value"]["update_time"].as_u64());
}

#[test]
fn get_returns_the_stored_route() {
    let (strait, _) = proxy();
    let route =
        json!({"remote_addr": "10.0.0.0/8", "upstream": {"type": "roundrobin", "nodes": {"127.0.0.1:1995": 1}}});
    strait.put_route("7", route.clone());
    let (status, answer) = strait.api("GET", &format!("{ROUTES}/7"), None);
    assert_eq!(status, 200, "{answer}");
    assert_envelope(&answer, "7");
    assert_eq!(answer["value"]["remote_addr"], "10.0.0.0/8");
    assert_eq!(answer["value"]["upstream"], route["upstream"]);
}

#[test]
fn list_returns_every_route_and_the_total() {
    let (strait, _) = proxy();
    let (status, empty) = strait.api("GET", ROUTES, None);
    assert_eq!(status, 200, "{empty}");
    assert_eq!(empty, json!({"list": [], "total": 0}));

    for id in ["1", "2"] {
        strait.put_route(id, route_to(&[(dead_addr(), 1)]));
    }
    let (status, list) = strait.api("GET", ROUTES, None);
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["total"], 2, "{list}");
    let mut keys: Vec<&str> = list["list"]
        .as_array()
        .expect("list is an array")
        .iter()
        .map(|item| item["key"].as_str().expect("each item has its key"))
        .collect();
    keys.sort();
    assert_eq!(keys, ["/apisix/stream_routes/1", "/apisix/stream_routes/2"]);
}

#[test]
fn delete_removes_the_route_and_then_get_is_404_key_not_found() {
    let echo = Upstream::echo();
    let (strait, listen) = proxy();
    strait.put_route("1", route_to(&[(echo.addr, 1)]));
    wait_echo(listen);

    let (status, answer) = strait.api("DELETE", &format!("{ROUTES}/1"), None);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["key"], "/apisix/stream_routes/1", "{answer}");

    let (status, answer) = strait.api("GET", &format!("{ROUTES}/1"), None);
    assert_eq!((status, answer), (404, json!({"message": "Key not found"})));
    let (status, answer) = strait.api("DELETE", &format!("{ROUTES}/1"), None);
    assert_eq!((status, answer), (404, json!({"message": "Key not found"})));
    wait_until("the deleted route stops matching", || closes_without_bytes(listen));
}

#[test]
fn requests_without_the_api_key_are_401() {
    let (strait, _) = proxy();
    let admin = strait.config.admin;
    let route = route_to(&[(dead_addr(), 1)]).to_string();
    let (status, _) = http_json(admin, "GET", ROUTES, None, None);
    assert_eq!(status, 401);
    let (status, _) = http_json(admin, "PUT", &format!("{ROUTES}/1"), None, Some(&route));
    assert_eq!(status, 401);
    let (status, _) = http_json(admin, "PUT", &format!("{ROUTES}/1"), Some("not-the-key"), Some(&route));
    assert_eq!(status, 401);
    // Nothing was written.
    let (status, _) = strait.api("GET", &format!("{ROUTES}/1"), None);
    assert_eq!(status, 404);
}

#[test]
fn invalid_route_is_refused_with_400_and_the_reason() {
    let (strait, _) = proxy();
    let (status, answer) = strait.api("PUT", &format!("{ROUTES}/1"), Some(&json!({"server_port": 0})));
    assert_eq!(status, 400, "{answer}");
    assert_eq!(
        answer["error_msg"],
        "invalid configuration: property \"server_port\" validation failed: expected 0 to be at least 1"
    );
}

#[test]
fn unknown_balancer_type_is_refused() {
    let (strait, _) = proxy();
    let route = json!({"upstream": {"type": "roundrobn", "nodes": {"127.0.0.1:1995": 1}}});
    let (status, answer) = strait.api("PUT", &format!("{ROUTES}/1"), Some(&route));
    assert_eq!(status, 400, "{answer}");
    let message = answer["error_msg"].as_str().unwrap_or_default();
    assert!(message.contains("matches none of the enum values"), "{answer}");
}

#[test]
fn stream_route_can_use_an_upstream_by_id() {
    let first = Upstream::named("first");
    let second = Upstream::named("second");
    let (strait, listen) = proxy();
    strait.put_upstream("1", upstream_of(&[(first.addr, 1)]));
    strait.put_route("1", json!({"upstream_id": "1"}));
    wait_name(listen, "first");
    // Changing the upstream object redirects routes that use it.
    strait.put_upstream("1", upstream_of(&[(second.addr, 1)]));
    wait_name(listen, "second");
}

#[test]
fn route_with_a_missing_upstream_id_is_refused() {
    let (strait, _) = proxy();
    let (status, answer) = strait.api("PUT", &format!("{ROUTES}/1"), Some(&json!({"upstream_id": "9"})));
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["error_msg"], "failed to fetch upstream info by upstream id [9], response code: 404");
}

#[test]
fn proxy_mode_http_refuses_stream_routes() {
    let strait = Strait::start(Config::new().proxy_mode("http"));
    let route = route_to(&[(dead_addr(), 1)]);
    let (status, answer) = strait.api("PUT", &format!("{ROUTES}/1"), Some(&route));
    assert_eq!((status, answer), (400, json!({"error_msg": "stream mode is disabled, can not add stream routes"})));
}

#[test]
fn proxy_mode_http_refuses_listing_stream_routes_too() {
    let strait = Strait::start(Config::new().proxy_mode("http"));
    let (status, answer) = strait.api("GET", ROUTES, None);
    assert_eq!((status, answer), (400, json!({"error_msg": "stream mode is disabled, can not add stream routes"})));
}

#[test]
fn proxy_mode_http_and_stream_accepts_stream_routes() {
    let echo = Upstream::echo();
    let listen = SocketAddr::new(LOCALHOST, free_port());
    let strait = Strait::start(Config::new().proxy_mode("http&stream").listen(listen));
    strait.put_route("1", route_to(&[(echo.addr, 1)]));
    wait_echo(listen);
}
