//! The seed's MySQL example with a real MariaDB server and the real `mariadb`
//! client: listeners `9100` and `127.0.0.1:9101` (free ports here), a route
//! with `server_addr: 127.0.0.1` and `server_port: 9101` to the database.
//!
//! Needs Debian's mariadb-server and mariadb-client. Without them the test
//! prints a skip line and passes, unless STRAIT_REQUIRE_EXTERNAL=1 (as in CI),
//! where a missing server is a failure.

mod common;

use common::*;
use serde_json::json;
use std::fs;
use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"])
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.is_file());
    found
}

/// The three MariaDB programs, or None (after deciding skip vs failure).
fn mariadb_programs() -> Option<(PathBuf, PathBuf, PathBuf)> {
    let found = (find_program("mariadb-install-db"), find_program("mariadbd"), find_program("mariadb"));
    match found {
        (Some(install), Some(server), Some(client)) => Some((install, server, client)),
        _ => {
            if std::env::var("STRAIT_REQUIRE_EXTERNAL").as_deref() == Ok("1") {
                panic!("STRAIT_REQUIRE_EXTERNAL=1 but mariadb-install-db, mariadbd or mariadb is missing (apt-get install mariadb-server mariadb-client)");
            }
            eprintln!(
                "SKIPPED mysql_example: mariadbd is not installed (apt-get install mariadb-server mariadb-client)"
            );
            None
        }
    }
}

/// A private mariadbd on a free loopback port, killed when dropped.
struct MariaDb {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl MariaDb {
    fn start(install: &Path, server: &Path, dir: &Path) -> MariaDb {
        let data = dir.join("data");
        let as_root = unsafe { libc::geteuid() } == 0;
        let mut setup = Command::new(install);
        setup
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .arg("--auth-root-authentication-method=normal")
            .arg("--skip-test-db");
        if as_root {
            setup.arg("--user=root");
        }
        let out = setup.output().expect("run mariadb-install-db");
        assert!(out.status.success(), "mariadb-install-db failed:\n{}", all_output(&out));

        let port = free_port();
        let log = dir.join("mariadbd.err");
        let mut command = Command::new(server);
        command
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--socket={}", dir.join("mysqld.sock").display()))
            .arg(format!("--pid-file={}", dir.join("mysqld.pid").display()))
            .arg(format!("--log-error={}", log.display()))
            .arg(format!("--port={port}"))
            .arg("--bind-address=127.0.0.1")
            .arg("--skip-grant-tables")
            .arg("--skip-name-resolve")
            .arg("--innodb-buffer-pool-size=16M")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if as_root {
            command.arg("--user=root");
        }
        let child = command.spawn().expect("spawn mariadbd");
        let mut db = MariaDb { child, port, log };
        let addr = db.addr();
        wait_until_for("mariadbd accepts connections", Duration::from_secs(60), || {
            if let Ok(Some(status)) = db.child.try_wait() {
                panic!("mariadbd exited with {status}:\n{}", fs::read_to_string(&db.log).unwrap_or_default());
            }
            // Ready when it greets: the handshake starts with protocol version 10.
            try_connect(addr)
                .and_then(|mut s| {
                    let mut header = [0u8; 5];
                    s.read_exact(&mut header).map(|_| header[4] == 10)
                })
                .unwrap_or(false)
        });
        db
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::new(LOCALHOST, self.port)
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- mariadbd log ---\n{}", fs::read_to_string(&self.log).unwrap_or_default());
        }
    }
}

/// `mariadb --host=127.0.0.1 --port=<port> -u root -e <sql>` (batch mode).
fn mariadb_client(client: &Path, port: u16, sql: &str) -> Output {
    Command::new(client)
        .arg("--no-defaults")
        .arg("--host=127.0.0.1")
        .arg(format!("--port={port}"))
        .arg("--connect-timeout=10")
        .args(["-u", "root", "-e", sql])
        .stdin(Stdio::null())
        .output()
        .expect("run the mariadb client")
}

#[test]
fn mysql_example_from_the_seed_works_through_strait() {
    let Some((install, server, client)) = mariadb_programs() else { return };
    let db_dir = TempDir::new("mariadb");
    let db = MariaDb::start(&install, &server, db_dir.path());

    // config.yaml as in the seed: a bare port (the seed's 9100) and
    // "127.0.0.1:<port>" (the seed's 9101).
    let port_9100 = free_port();
    let port_9101 = free_port();
    let strait = Strait::start(Config::new().listen_port(port_9100).listen(SocketAddr::new(LOCALHOST, port_9101)));
    strait.put_route(
        "1",
        json!({
            "server_addr": "127.0.0.1",
            "server_port": port_9101,
            "upstream": {
                "nodes": {db.addr().to_string(): 1},
                "type": "roundrobin"
            }
        }),
    );
    let proxied = SocketAddr::new(LOCALHOST, port_9101);
    wait_until("MariaDB greets through the route", || {
        try_connect(proxied)
            .and_then(|mut s| {
                let mut header = [0u8; 5];
                s.read_exact(&mut header).map(|_| header[4] == 10)
            })
            .unwrap_or(false)
    });

    // Matching port: the client logs in and runs queries, exactly as directly.
    let sql = "select 1; select version();";
    let direct = mariadb_client(&client, db.port, sql);
    assert!(direct.status.success(), "direct to MariaDB:\n{}", all_output(&direct));
    let through = mariadb_client(&client, port_9101, sql);
    assert!(through.status.success(), "through strait:\n{}", all_output(&through));
    let text = String::from_utf8_lossy(&through.stdout);
    assert!(text.lines().any(|l| l == "1"), "select 1 through strait:\n{text}");
    assert!(text.contains("MariaDB"), "select version() through strait:\n{text}");
    assert_eq!(through.stdout, direct.stdout, "same answers through strait as directly");

    // The other listener matches no route: the client loses the connection
    // while waiting for the server's greeting.
    let refused = mariadb_client(&client, port_9100, "select 1");
    assert!(!refused.status.success(), "port {port_9100} must not reach MariaDB:\n{}", all_output(&refused));
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("Lost connection") && err.contains("reading initial communication packet"),
        "expected ERROR 2013 Lost connection ... reading initial communication packet, got:\n{err}"
    );
}
