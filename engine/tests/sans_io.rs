//! The engine stays sans-IO: no I/O crate among its dependencies and no clock,
//! socket, thread or file access in its source. This runs in CI with the
//! rest of `cargo test`.

use std::path::Path;
use std::process::Command;

#[test]
fn engine_depends_on_no_io_crate() {
    let output = Command::new(env!("CARGO"))
        .args(["tree", "-p", "strait-engine", "-e", "normal", "--prefix", "none", "--offline"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo tree runs");
    assert!(output.status.success(), "cargo tree failed: {}", String::from_utf8_lossy(&output.stderr));
    let tree = String::from_utf8_lossy(&output.stdout);
    for forbidden in ["mio ", "tokio ", "socket2 ", "tiny_http ", "turmoil ", "ureq "] {
        assert!(
            !tree.lines().any(|l| l.starts_with(forbidden)),
            "strait-engine must not depend on {forbidden}:\n{tree}"
        );
    }
}

/// libc may come in only as the crypto provider's OS randomness (ring →
/// getrandom), which the engine reaches through the injectable provider
/// (`tls::TlsEnv`), never directly.
#[test]
fn libc_comes_only_through_the_crypto_providers_randomness() {
    let output = Command::new(env!("CARGO"))
        .args(["tree", "-p", "strait-engine", "-e", "normal", "-i", "libc", "--prefix", "none", "--offline"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo tree runs");
    let tree = String::from_utf8_lossy(&output.stdout);
    let allowed = ["libc ", "getrandom ", "ring ", "rustls ", "rustls-webpki ", "strait-engine "];
    for line in tree.lines().filter(|l| !l.trim().is_empty()) {
        assert!(
            allowed.iter().any(|a| line.starts_with(a)),
            "libc reaches strait-engine through {line} (only ring's getrandom may bring it):\n{tree}"
        );
    }
}

#[test]
fn engine_source_reads_no_clock_and_opens_no_socket() {
    let forbidden = [
        "Instant::now",
        "SystemTime",
        "std::net::TcpStream",
        "std::net::TcpListener",
        "std::net::UdpSocket",
        "std::thread",
        "std::fs",
        "thread_rng",
        "std::env::var",
    ];
    let mut offenders = Vec::new();
    scan(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), &forbidden, &mut offenders);
    assert!(offenders.is_empty(), "sans-IO rule broken: {offenders:#?}");
}

fn scan(dir: &Path, forbidden: &[&str], offenders: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            scan(&path, forbidden, offenders);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).unwrap();
            for (number, line) in text.lines().enumerate() {
                let code = line.split("//").next().unwrap_or("");
                for word in forbidden {
                    if code.contains(word) {
                        offenders.push(format!("{}:{}: {word}", path.display(), number + 1));
                    }
                }
            }
        }
    }
}
