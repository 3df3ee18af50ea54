//! The stream access log: a line per finished connection or session in the
//! configured format. Each worker appends through its own descriptor opened
//! with O_APPEND, one write(2) per flush of whole lines, so lines of several
//! workers interleave but never mix. Lines wait in a buffer of at most 16 KiB
//! for at most 3 s (APISIX writes the stream log with `buffer=16384 flush=3`).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use strait_engine::config::{LogPiece, LogVar, Protocol};
use strait_engine::{SessionRecord, Time};

const BUFFER_BYTES: usize = 16 * 1024;
const FLUSH_AFTER: Duration = Duration::from_secs(3);

pub struct AccessLog {
    path: PathBuf,
    file: File,
    format: Vec<LogPiece>,
    buffer: Vec<u8>,
    /// When the oldest buffered line was written.
    oldest: Option<Time>,
}

impl AccessLog {
    /// Opens (creating it, and its folder) the log file for appending.
    pub fn open(path: &Path, format: Vec<LogPiece>) -> io::Result<AccessLog> {
        let file = open_for_append(path)?;
        Ok(AccessLog { path: path.to_path_buf(), file, format, buffer: Vec::with_capacity(BUFFER_BYTES), oldest: None })
    }

    pub fn write(&mut self, now: Time, record: &SessionRecord) {
        render(&self.format, record, SystemTime::now(), &mut self.buffer);
        self.buffer.push(b'\n');
        self.oldest.get_or_insert(now);
        if self.buffer.len() >= BUFFER_BYTES {
            self.flush();
        }
    }

    /// When buffered lines must be written out, if any wait.
    pub fn flush_deadline(&self) -> Option<Time> {
        self.oldest.map(|t| t + FLUSH_AFTER)
    }

    pub fn flush(&mut self) {
        if !self.buffer.is_empty() {
            if let Err(e) = self.file.write_all(&self.buffer) {
                // A full disk must not stop the proxy: the lines are dropped and said so.
                log::error!(
                    "access log {}: {e}; {} bytes of log lines dropped",
                    self.path.display(),
                    self.buffer.len()
                );
            }
            self.buffer.clear();
        }
        self.oldest = None;
    }

    /// After log rotation (SIGUSR1): buffered lines go to the old file, new ones to a new file at the path.
    pub fn reopen(&mut self) {
        self.flush();
        match open_for_append(&self.path) {
            Ok(file) => self.file = file,
            Err(e) => {
                log::error!("access log {}: cannot reopen: {e}; still writing to the old file", self.path.display())
            }
        }
    }
}

impl Drop for AccessLog {
    fn drop(&mut self) {
        self.flush();
    }
}

fn open_for_append(path: &Path) -> io::Result<File> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    OpenOptions::new().append(true).create(true).mode(0o644).open(path)
}

/// Appends one line (without its newline) for `record` to `out`.
pub fn render(format: &[LogPiece], record: &SessionRecord, wall: SystemTime, out: &mut Vec<u8>) {
    use std::io::Write as _;
    for piece in format {
        let var = match piece {
            LogPiece::Text(text) => {
                out.extend_from_slice(text.as_bytes());
                continue;
            }
            LogPiece::Var(var) => *var,
        };
        // Writes into a Vec cannot fail.
        let _ = match var {
            LogVar::RemoteAddr => write!(out, "{}", record.peer.ip()),
            LogVar::RemotePort => write!(out, "{}", record.peer.port()),
            LogVar::ServerAddr => write!(out, "{}", record.local.ip()),
            LogVar::ServerPort => write!(out, "{}", record.local.port()),
            LogVar::Protocol => out.write_all(if record.protocol == Protocol::Udp { b"UDP" } else { b"TCP" }),
            LogVar::Status => write!(out, "{}", record.status),
            LogVar::BytesSent | LogVar::UpstreamBytesReceived => write!(out, "{}", record.bytes_from_upstream),
            LogVar::BytesReceived | LogVar::UpstreamBytesSent => write!(out, "{}", record.bytes_from_client),
            LogVar::UpstreamAddr => match record.upstream {
                Some(addr) => write!(out, "{addr}"),
                None => out.write_all(b"-"),
            },
            LogVar::SessionTime => {
                write!(out, "{}.{:03}", record.duration.as_secs(), record.duration.subsec_millis())
            }
            LogVar::TimeLocal => write_time_local(out, wall),
            LogVar::TimeIso8601 => write_time_iso8601(out, wall),
            LogVar::Msec => {
                let since = wall.duration_since(UNIX_EPOCH).unwrap_or_default();
                write!(out, "{}.{:03}", since.as_secs(), since.subsec_millis())
            }
            LogVar::RouteId if record.route_id.is_empty() => out.write_all(b"-"),
            LogVar::RouteId => out.write_all(record.route_id.as_bytes()),
        };
    }
}

/// The local time of `wall`, broken down, and its offset from UTC as sign, hours, minutes.
fn local_time(wall: SystemTime) -> (libc::tm, char, i64, i64) {
    let seconds = wall.duration_since(UNIX_EPOCH).map(|d| d.as_secs() as libc::time_t).unwrap_or(0);
    // SAFETY: an all-zero tm is a valid value; localtime_r fills it from `seconds`
    // and touches nothing else (the _r variant keeps no shared state).
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    unsafe { libc::localtime_r(&seconds, &mut tm) };
    let offset = tm.tm_gmtoff;
    let sign = if offset < 0 { '-' } else { '+' };
    (tm, sign, offset.abs() / 3600, offset.abs() % 3600 / 60)
}

const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];

/// nginx's `$time_local`: `27/Nov/2026:04:40:00 +0000`.
fn write_time_local(out: &mut Vec<u8>, wall: SystemTime) -> io::Result<()> {
    let (tm, sign, hours, minutes) = local_time(wall);
    let month = MONTHS[tm.tm_mon.clamp(0, 11) as usize];
    let (day, year, hour, min, sec) = (tm.tm_mday, tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
    write!(out, "{day:02}/{month}/{year}:{hour:02}:{min:02}:{sec:02} {sign}{hours:02}{minutes:02}")
}

/// nginx's `$time_iso8601`: `2026-11-27T04:40:00+00:00`.
fn write_time_iso8601(out: &mut Vec<u8>, wall: SystemTime) -> io::Result<()> {
    let (tm, sign, hours, minutes) = local_time(wall);
    let (year, month, day) = (tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday);
    let (hour, min, sec) = (tm.tm_hour, tm.tm_min, tm.tm_sec);
    write!(out, "{year}-{month:02}-{day:02}T{hour:02}:{min:02}:{sec:02}{sign}{hours:02}:{minutes:02}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use strait_engine::config::{parse_format, DEFAULT_FORMAT};

    fn record() -> SessionRecord {
        SessionRecord {
            protocol: Protocol::Tcp,
            peer: "[2001:db8::7]:4567".parse().unwrap(),
            local: "127.0.0.1:9100".parse().unwrap(),
            route_id: "r1".into(),
            upstream: Some("10.0.0.1:80".parse().unwrap()),
            status: 502,
            bytes_from_client: 12,
            bytes_from_upstream: 3456,
            duration: Duration::from_millis(61_025),
        }
    }

    fn line(format: &str, record: &SessionRecord, wall: SystemTime) -> String {
        let mut out = Vec::new();
        render(&parse_format(format).unwrap(), record, wall, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn every_variable_renders_as_nginx_writes_it() {
        let wall = UNIX_EPOCH + Duration::from_millis(1_764_218_400_123);
        let format = "$remote_addr $remote_port $server_addr $server_port $protocol $status $bytes_sent \
                      $bytes_received $upstream_addr $upstream_bytes_sent $upstream_bytes_received \
                      $session_time $msec $route_id";
        assert_eq!(
            line(format, &record(), wall),
            "2001:db8::7 4567 127.0.0.1 9100 TCP 502 3456 12 10.0.0.1:80 12 3456 61.025 1764218400.123 r1"
        );
        let none = SessionRecord { upstream: None, route_id: String::new(), protocol: Protocol::Udp, ..record() };
        assert_eq!(line("$protocol $upstream_addr $route_id", &none, wall), "UDP - -");
    }

    #[test]
    fn times_have_nginx_shapes() {
        let wall = UNIX_EPOCH + Duration::from_secs(1_764_218_400);
        let local = line("$time_local", &record(), wall);
        // 27/Nov/2025:04:40:00 +0000 in UTC; the shape holds in any zone.
        assert_eq!(local.len(), 26, "{local}");
        assert!(local.contains("/Nov/2025:"), "{local}");
        let iso = line("$time_iso8601", &record(), wall);
        assert_eq!(iso.len(), 25, "{iso}");
        assert!(iso.starts_with("2025-11-2"), "{iso}");
        let default = line(DEFAULT_FORMAT, &record(), wall);
        assert!(default.starts_with("2001:db8::7 ["), "{default}");
        assert!(default.ends_with("] TCP 502 3456 12 61.025"), "{default}");
    }
}
