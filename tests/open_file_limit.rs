//! Strait raises its own open-file soft limit (as nginx's worker_rlimit_nofile
//! and HAProxy do): started with a soft limit of 256, it still proxies 300
//! concurrent connections, which need 600 descriptors.

mod common;

use common::*;
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

#[test]
fn a_low_soft_limit_does_not_cap_connections() {
    const CONNECTIONS: usize = 300;
    let hard = raise_nofile_limit(4 * CONNECTIONS as u64 + 256);
    assert!(hard >= 4 * CONNECTIONS as u64, "the test needs a hard limit of at least {}", 4 * CONNECTIONS);
    let echo = Upstream::echo();
    let listen = SocketAddr::new(LOCALHOST, free_port());
    let config = Config::new().listen(listen);
    let dir = TempDir::new("nofile");
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, config.yaml(&dir.path().join("data"))).unwrap();
    let log = std::fs::File::create(dir.path().join("strait.stderr")).unwrap();
    let mut child = unsafe {
        Command::new(BIN)
            .arg("-c")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            // The child starts with a soft limit far below what it needs.
            .pre_exec(|| {
                let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
                libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
                limit.rlim_cur = 256;
                libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
                Ok(())
            })
            .spawn()
            .unwrap()
    };
    wait_until("the admin API answers", || std::net::TcpStream::connect(config.admin).is_ok());
    let body = route_to(&[(echo.addr, 1)]).to_string();
    let (status, _) =
        http_json(config.admin, "PUT", "/apisix/admin/stream_routes/1", Some(&config.admin_key), Some(&body));
    assert!(status == 200 || status == 201);
    wait_echo(listen);
    let mut clients: Vec<_> = (0..CONNECTIONS).map(|_| connect(listen)).collect();
    for (i, client) in clients.iter_mut().enumerate() {
        client.write_all(format!("connection {i:04}\n").as_bytes()).unwrap();
    }
    for (i, client) in clients.iter_mut().enumerate() {
        assert_eq!(read_line(client).unwrap_or_else(|e| panic!("connection {i}: {e}")), format!("connection {i:04}"));
    }
    let _ = child.kill();
    let _ = child.wait();
}
