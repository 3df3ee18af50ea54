//! Issue 3 point 9: SIGKILL during a stream of admin writes loses no
//! acknowledged write (the embedded store commits before it answers).

mod common;

use common::*;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

fn start_on(data: &Path) -> Strait {
    let config = Config::new();
    let dir = TempDir::new("sigkill");
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, config.yaml(data)).unwrap();
    Strait::spawn(dir, config, path)
}

#[test]
fn sigkill_during_a_stream_of_writes_loses_no_acknowledged_write() {
    let data = TempDir::new("sigkill-data");
    let strait = start_on(&data.path().join("store"));
    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (acknowledged, stop) = (Arc::clone(&acknowledged), Arc::clone(&stop));
        let (admin, key) = (strait.config.admin, strait.config.admin_key.clone());
        std::thread::spawn(move || {
            for i in 0.. {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let body = format!(r#"{{"nodes": {{"127.0.0.1:{}": 1}}}}"#, 1000 + i % 60000);
                let path = format!("/apisix/admin/upstreams/u{i}");
                // A connection cut by the kill is not an acknowledgement (the
                // harness panics on it; the message printed is expected).
                let answered = std::panic::catch_unwind(|| http(admin, "PUT", &path, Some(&key), Some(&body)).status);
                match answered {
                    Ok(201) => acknowledged.lock().unwrap().push(format!("u{i}")),
                    _ => break,
                }
            }
        })
    };
    wait_until("some writes are acknowledged", || acknowledged.lock().unwrap().len() >= 20);
    strait.signal(libc::SIGKILL);
    stop.store(true, Ordering::SeqCst);
    let _ = writer.join();
    drop(strait);

    let restarted = start_on(&data.path().join("store"));
    let acknowledged = acknowledged.lock().unwrap().clone();
    for id in &acknowledged {
        let (status, body) = restarted.api("GET", &format!("/apisix/admin/upstreams/{id}"), None);
        assert_eq!(status, 200, "acknowledged upstream {id} lost after SIGKILL: {body}");
    }
    eprintln!("{} acknowledged writes, all present after SIGKILL", acknowledged.len());
}
