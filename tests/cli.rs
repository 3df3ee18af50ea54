//! The command line: -t/--test, --version, --help, and the shipped
//! conf/config.yaml (including admin key generation).

mod common;

use common::*;
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

const SHIPPED_CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/conf/config.yaml");

/// Writes `yaml` as config.yaml in a new temp dir.
fn config_file(yaml: &str) -> (TempDir, PathBuf) {
    let dir = TempDir::new("cli");
    let path = dir.path().join("config.yaml");
    fs::write(&path, yaml).unwrap();
    (dir, path)
}

/// Runs `strait -t -c <yaml>` expecting a refusal; returns stderr.
fn test_flag_rejects(yaml: &str) -> (String, String) {
    let (_dir, path) = config_file(yaml);
    let path_text = path.display().to_string();
    let out = run_strait(&["-t", "-c", &path_text]);
    assert_eq!(out.status.code(), Some(1), "strait -t must exit 1 on a bad config; output:\n{}", all_output(&out));
    (String::from_utf8_lossy(&out.stderr).into_owned(), path_text)
}

fn assert_names(stderr: &str, path: &str, key: &str, message: &str) {
    assert!(stderr.contains(path), "stderr does not name the file {path}:\n{stderr}");
    assert!(stderr.contains(key), "stderr does not name the key {key}:\n{stderr}");
    assert!(stderr.contains(message), "stderr does not say {message:?}:\n{stderr}");
}

#[test]
fn test_flag_accepts_a_valid_config() {
    let config = Config::new().listen(SocketAddr::new(LOCALHOST, free_port()));
    let (dir, path) = config_file(&config.yaml(&Path::new("data")));
    let path_text = path.display().to_string();
    for flag in ["-t", "--test"] {
        let out = run_strait(&[flag, "-c", &path_text]);
        let text = all_output(&out);
        assert!(out.status.success(), "strait {flag} failed:\n{text}");
        assert!(
            text.contains(&format!("strait: the configuration file {path_text} syntax is ok")),
            "{flag} output:\n{text}"
        );
        assert!(
            text.contains(&format!("strait: configuration file {path_text} test is successful")),
            "{flag} output:\n{text}"
        );
    }
    assert!(!dir.path().join("data").exists(), "-t must not create the data dir");
}

#[test]
fn test_flag_warns_about_apisix_keys_without_effect() {
    let (_dir, path) = config_file("apisix:\n  dns_resolver:\n    - 10.0.0.2\n");
    let path_text = path.display().to_string();
    let out = run_strait(&["-t", "-c", &path_text]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "a warning is not an error:\n{}", all_output(&out));
    assert!(stderr.contains(&format!("strait: warning: {path_text}: apisix.dns_resolver: not used")), "{stderr}");
}

#[test]
fn test_flag_rejects_a_port_out_of_range_naming_file_and_key() {
    let (stderr, path) = test_flag_rejects("apisix:\n  proxy_mode: stream\n  stream_proxy:\n    tcp:\n      - 70000\n");
    assert_names(
        &stderr,
        &path,
        "apisix.stream_proxy.tcp",
        "invalid stream_proxy.tcp entry: port out of range (1-65535): 70000",
    );
}

#[test]
fn test_flag_rejects_a_udp_port_out_of_range() {
    let (stderr, path) = test_flag_rejects("apisix:\n  proxy_mode: stream\n  stream_proxy:\n    udp:\n      - 0\n");
    assert_names(
        &stderr,
        &path,
        "apisix.stream_proxy.udp",
        "invalid stream_proxy.udp entry: port out of range (1-65535): 0",
    );
}

#[test]
fn test_flag_rejects_a_reversed_port_range() {
    let (stderr, path) =
        test_flag_rejects("apisix:\n  proxy_mode: stream\n  stream_proxy:\n    tcp:\n      - \"3000-2000\"\n");
    assert_names(&stderr, &path, "apisix.stream_proxy.tcp", "invalid port range (start > end): 3000-2000");
}

#[test]
fn test_flag_rejects_a_bad_listen_value_type() {
    let (stderr, path) = test_flag_rejects("apisix:\n  proxy_mode: stream\n  stream_proxy:\n    tcp:\n      - true\n");
    assert_names(&stderr, &path, "apisix.stream_proxy.tcp", "invalid port value type");
}

#[test]
fn test_flag_rejects_an_unknown_proxy_mode() {
    let (stderr, path) = test_flag_rejects("apisix:\n  proxy_mode: tcp\n");
    assert_names(&stderr, &path, "apisix.proxy_mode", "tcp");
}

#[test]
fn test_flag_rejects_a_bad_worker_processes() {
    let (stderr, path) = test_flag_rejects("nginx_config:\n  worker_processes: 0\n");
    assert_names(&stderr, &path, "nginx_config.worker_processes", "auto");
}

#[test]
fn test_flag_rejects_a_bad_worker_shutdown_timeout() {
    let (stderr, path) = test_flag_rejects("nginx_config:\n  worker_shutdown_timeout: soon\n");
    assert_names(&stderr, &path, "nginx_config.worker_shutdown_timeout", "soon");
}

#[test]
fn test_flag_rejects_an_unknown_admin_role() {
    let (stderr, path) = test_flag_rejects(
        "deployment:\n  admin:\n    admin_key:\n      - name: a\n        key: b\n        role: root\n",
    );
    assert_names(&stderr, &path, "deployment.admin.admin_key[0].role", "root");
}

#[test]
fn test_flag_rejects_a_bad_admin_port() {
    let (stderr, path) =
        test_flag_rejects("deployment:\n  admin:\n    admin_listen:\n      ip: 127.0.0.1\n      port: 99999\n");
    assert_names(&stderr, &path, "deployment.admin.admin_listen.port", "99999");
}

#[test]
fn test_flag_rejects_a_bad_allow_admin_entry() {
    let (stderr, path) = test_flag_rejects("deployment:\n  admin:\n    allow_admin:\n      - 10.0.0.0/99\n");
    assert_names(&stderr, &path, "deployment.admin.allow_admin", "10.0.0.0/99");
}

#[test]
fn test_flag_rejects_a_bad_buffer_size() {
    let (stderr, path) = test_flag_rejects("strait:\n  buffer_size: 10\n");
    assert_names(&stderr, &path, "strait.buffer_size", "10");
}

#[test]
fn test_flag_rejects_a_bad_loopback_tcp_congestion() {
    let (stderr, path) = test_flag_rejects("strait:\n  loopback_tcp_congestion: \"re no\"\n");
    assert_names(&stderr, &path, "strait.loopback_tcp_congestion", "re no");
}

#[test]
fn test_flag_rejects_invalid_yaml_naming_the_file() {
    let (stderr, path) = test_flag_rejects("apisix: [unclosed\n");
    assert!(stderr.contains(&path), "stderr does not name the file {path}:\n{stderr}");
}

#[test]
fn missing_config_file_is_an_error_naming_it() {
    let dir = TempDir::new("cli");
    let path = dir.path().join("nope.yaml").display().to_string();
    let out = run_strait(&["-t", "-c", &path]);
    assert!(!out.status.success(), "a missing config must fail:\n{}", all_output(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&path), "{}", all_output(&out));
}

#[test]
fn version_flag_prints_name_and_version() {
    let out = run_strait(&["--version"]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("strait {}", env!("CARGO_PKG_VERSION")));
}

#[test]
fn help_flag_describes_the_options() {
    let out = run_strait(&["--help"]);
    assert!(out.status.success(), "{}", all_output(&out));
    let text = all_output(&out);
    for option in ["-c", "-t", "--test", "--version", "--help"] {
        assert!(text.contains(option), "--help does not mention {option}:\n{text}");
    }
}

#[test]
fn shipped_config_passes_the_test_flag() {
    // On a copy: the shipped file must stay untouched whatever -t does.
    let (_dir, path) = config_file(&fs::read_to_string(SHIPPED_CONFIG).unwrap());
    let path_text = path.display().to_string();
    let out = run_strait(&["-t", "-c", &path_text]);
    assert!(out.status.success(), "{}", all_output(&out));
    assert!(all_output(&out).contains("test is successful"));
}

/// A copy of the shipped config.yaml with its fixed ports swapped for free
/// ones, in a temp dir. Returns the dir, the file and the admin address.
fn shipped_copy() -> (TempDir, PathBuf, SocketAddr) {
    let shipped = fs::read_to_string(SHIPPED_CONFIG).unwrap();
    let admin = SocketAddr::new(LOCALHOST, free_port());
    let mut text = shipped.clone();
    for (from, to) in [
        ("- 9100", format!("- {}", free_port())),
        ("\"127.0.0.1:9101\"", format!("\"127.0.0.1:{}\"", free_port())),
        ("- 9200", format!("- {}", free_port())),
        ("port: 9180", format!("port: {}", admin.port())),
    ] {
        assert!(text.contains(from), "the shipped config no longer has {from:?}");
        text = text.replace(from, &to);
    }
    let dir = TempDir::new("shipped");
    let path = dir.path().join("config.yaml");
    fs::write(&path, text).unwrap();
    (dir, path, admin)
}

fn written_admin_key(path: &Path) -> String {
    wait_until("a key is written into config.yaml", || {
        fs::read_to_string(path).is_ok_and(|t| !t.contains("key: \"\""))
    });
    let text = fs::read_to_string(path).unwrap();
    let doc: serde_yaml::Value = serde_yaml::from_str(&text)
        .unwrap_or_else(|e| panic!("config.yaml is no longer valid YAML after the key was written: {e}\n{text}"));
    doc["deployment"]["admin"]["admin_key"][0]["key"]
        .as_str()
        .unwrap_or_else(|| panic!("no deployment.admin.admin_key[0].key in:\n{text}"))
        .to_string()
}

/// Starts Strait on a shipped copy; returns it with the key it wrote back.
fn start_shipped(dir: TempDir, path: PathBuf, admin: SocketAddr) -> (Strait, String) {
    let mut config = Config::new();
    config.admin = admin;
    let strait = Strait::spawn(dir, config, path.clone());
    let key = written_admin_key(&path);
    (strait, key)
}

#[test]
fn empty_admin_key_is_generated_and_written_back_into_config_yaml() {
    let (dir, path, admin) = shipped_copy();
    let (strait, key) = start_shipped(dir, path.clone(), admin);

    assert_eq!(key.len(), 32, "generated key {key:?}");
    assert!(key.chars().all(|c| c.is_ascii_alphabetic()), "generated key {key:?}");
    // The rest of the file survives the write.
    let doc: serde_yaml::Value = serde_yaml::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(doc["apisix"]["proxy_mode"].as_str(), Some("stream"));
    assert_eq!(doc["apisix"]["stream_proxy"]["tcp"].as_sequence().map(|s| s.len()), Some(2));

    let (status, body) = http_json(admin, "GET", "/apisix/admin/stream_routes", Some(&key), None);
    assert_eq!(status, 200, "the written key opens the Admin API: {body}");
    let (status, _) = http_json(admin, "GET", "/apisix/admin/stream_routes", Some("wrong"), None);
    assert_eq!(status, 401);
    drop(strait);
}

#[test]
fn readme_commands_read_the_generated_admin_key() {
    let (dir, path, admin) = shipped_copy();
    let (_strait, key) = start_shipped(dir, path.clone(), admin);
    let conf_dir = path.parent().unwrap().to_path_buf();
    // The commands the README gives, run from a folder holding conf/config.yaml.
    let work = conf_dir.join("work");
    fs::create_dir_all(work.join("conf")).unwrap();
    fs::copy(&path, work.join("conf/config.yaml")).unwrap();
    let run = |script: &str| {
        let out = Command::new("bash")
            .arg("-c")
            .arg(format!("{script}\nprintf '%s' \"$admin_key\""))
            .current_dir(&work)
            .output()
            .expect("run bash");
        assert!(out.status.success(), "{script}: {}", all_output(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let sed = run(
        r#"admin_key=$(grep -m1 -E '^[ -]*key:' conf/config.yaml | sed -E 's/^[ -]*key: *"?([A-Za-z0-9]*)"?.*/\1/')"#,
    );
    assert_eq!(sed, key, "the README's grep/sed line");
    let has_yq = Command::new("yq").arg("--version").output().map(|o| o.status.success()).unwrap_or(false);
    if has_yq {
        let yq = run(r#"admin_key=$(yq '.deployment.admin.admin_key[0].key' conf/config.yaml | sed 's/"//g')"#);
        assert_eq!(yq, key, "the README's yq line");
    } else {
        eprintln!("yq is not installed: checked only the grep/sed line");
    }
}

#[test]
fn generated_admin_key_is_kept_across_restarts() {
    let (dir, path, admin) = shipped_copy();
    let (strait, first) = start_shipped(dir, path.clone(), admin);
    let dir = strait.stop();
    let (_strait, second) = start_shipped(dir, path, admin);
    assert_eq!(first, second, "a written key is used, not replaced, on the next start");
    let (status, _) = http_json(admin, "GET", "/apisix/admin/stream_routes", Some(&second), None);
    assert_eq!(status, 200);
}
