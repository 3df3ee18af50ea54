//! Standalone mode (deployment.role data_plane + config_provider yaml):
//! conf/apisix.yaml beside config.yaml, over the real binary.

mod common;

use common::*;
use std::net::SocketAddr;
use std::time::Duration;

fn route_file(upstream: SocketAddr) -> String {
    format!(
        "stream_routes:\n  - upstream_id: 1\nupstreams:\n  - id: 1\n    nodes:\n      \"{upstream}\": 1\n    type: roundrobin\n#END\n"
    )
}

fn start(file: &str) -> (Strait, SocketAddr) {
    let listen = SocketAddr::new(LOCALHOST, free_port());
    let config = Config::new().listen(listen);
    let dir = TempDir::new("standalone");
    let yaml = format!(
        "apisix:\n  proxy_mode: stream\n  stream_proxy:\n    tcp:\n      - \"{listen}\"\n\
         deployment:\n  role: data_plane\n  role_data_plane:\n    config_provider: yaml\n\
         \x20 admin:\n    admin_key:\n      - name: admin\n        key: \"{}\"\n        role: admin\n\
         \x20   admin_listen:\n      ip: \"{}\"\n      port: {}\n\
         nginx_config:\n  worker_processes: 1\n",
        config.admin_key,
        config.admin.ip(),
        config.admin.port(),
    );
    std::fs::write(dir.path().join("apisix.yaml"), file).unwrap();
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, yaml).unwrap();
    (Strait::spawn(dir, config, path), listen)
}

fn quick_name(addr: SocketAddr) -> Option<String> {
    let mut stream = try_connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_millis(300))).ok()?;
    read_line(&mut stream).ok()
}

fn rewrite(strait: &Strait, text: &str) {
    // A new file renamed into place, as editors and config tools do.
    let tmp = strait.dir().join("apisix.yaml.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, strait.dir().join("apisix.yaml")).unwrap();
}

#[test]
fn a_file_with_the_end_flag_is_served() {
    let one = Upstream::named("one");
    let (_strait, listen) = start(&route_file(one.addr));
    assert_eq!(quick_name(listen).as_deref(), Some("one"));
}

#[test]
fn an_edit_applies_within_two_seconds() {
    let one = Upstream::named("one");
    let two = Upstream::named("two");
    let (strait, listen) = start(&route_file(one.addr));
    assert_eq!(quick_name(listen).as_deref(), Some("one"));
    rewrite(&strait, &route_file(two.addr));
    wait_until_for("the edit applies", Duration::from_millis(2500), || quick_name(listen).as_deref() == Some("two"));
}

#[test]
fn an_invalid_edit_keeps_the_last_good_config_and_says_why() {
    let one = Upstream::named("one");
    let (strait, listen) = start(&route_file(one.addr));
    // No #END: a half-written file.
    rewrite(&strait, &route_file(one.addr).replace("#END\n", ""));
    wait_until("the missing end flag is logged", || strait.stderr().contains("missing valid end flag in file"));
    assert_eq!(quick_name(listen).as_deref(), Some("one"));
    // An invalid item.
    rewrite(&strait, &route_file(one.addr).replace("roundrobin", "roundrobinn"));
    wait_until("the invalid item is logged", || strait.stderr().contains("failed to check item data of [upstreams]"));
    assert!(strait.stderr().contains("keeping the last good configuration"));
    assert_eq!(quick_name(listen).as_deref(), Some("one"));
}

#[test]
fn admin_writes_are_refused_and_reads_show_the_file() {
    let one = Upstream::named("one");
    let (strait, _) = start(&route_file(one.addr));
    let (status, body) = strait.api("PUT", "/apisix/admin/stream_routes/9", Some(&route_to(&[(one.addr, 1)])));
    assert_eq!(status, 403, "{body}");
    assert!(body["error_msg"].as_str().unwrap().contains("standalone mode"), "{body}");
    let (status, body) = strait.api("GET", "/apisix/admin/stream_routes/arr_1", None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["value"]["upstream_id"], 1);
}

#[test]
fn a_missing_end_flag_at_start_stops_the_start_with_the_reason() {
    let dir = TempDir::new("standalone-bad");
    std::fs::write(dir.path().join("apisix.yaml"), "stream_routes: []\n").unwrap();
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, "deployment:\n  role: data_plane\n  role_data_plane:\n    config_provider: yaml\n").unwrap();
    let out = run_strait(&["-c", path.to_str().unwrap()]);
    assert!(!out.status.success());
    let text = all_output(&out);
    assert!(text.contains("missing valid end flag in file"), "{text}");
}
