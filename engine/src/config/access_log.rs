//! The stream access log's settings, under APISIX's keys
//! `nginx_config.stream.{enable_access_log, access_log, access_log_format,
//! access_log_format_escape}`, and its format parsed once into pieces.

use super::yaml::{error, lookup, show, ConfigError};
use serde_yaml::Value;

/// APISIX's default stream log format.
pub const DEFAULT_FORMAT: &str =
    "$remote_addr [$time_local] $protocol $status $bytes_sent $bytes_received $session_time";
const DEFAULT_PATH: &str = "logs/access_stream.log";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessLogSettings {
    /// As written; a relative path is taken from the config file's folder.
    pub path: String,
    pub format: Vec<LogPiece>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogPiece {
    Text(String),
    Var(LogVar),
}

/// The variables of nginx's stream log module (and APISIX's `$route_id`) that
/// Strait knows at the end of a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogVar {
    RemoteAddr,
    RemotePort,
    ServerAddr,
    ServerPort,
    Protocol,
    Status,
    /// Bytes sent to the client.
    BytesSent,
    /// Bytes received from the client.
    BytesReceived,
    UpstreamAddr,
    UpstreamBytesSent,
    UpstreamBytesReceived,
    SessionTime,
    TimeLocal,
    TimeIso8601,
    Msec,
    RouteId,
}

const VARIABLES: [(&str, LogVar); 16] = [
    ("remote_addr", LogVar::RemoteAddr),
    ("remote_port", LogVar::RemotePort),
    ("server_addr", LogVar::ServerAddr),
    ("server_port", LogVar::ServerPort),
    ("protocol", LogVar::Protocol),
    ("status", LogVar::Status),
    ("bytes_sent", LogVar::BytesSent),
    ("bytes_received", LogVar::BytesReceived),
    ("upstream_addr", LogVar::UpstreamAddr),
    ("upstream_bytes_sent", LogVar::UpstreamBytesSent),
    ("upstream_bytes_received", LogVar::UpstreamBytesReceived),
    ("session_time", LogVar::SessionTime),
    ("time_local", LogVar::TimeLocal),
    ("time_iso8601", LogVar::TimeIso8601),
    ("msec", LogVar::Msec),
    ("route_id", LogVar::RouteId),
];

/// `None` when `enable_access_log` is not true.
pub(super) fn parse(root: &Value) -> Result<Option<AccessLogSettings>, ConfigError> {
    let key = "nginx_config.stream.enable_access_log";
    match lookup(root, key) {
        None | Some(Value::Null) | Some(Value::Bool(false)) => return Ok(None),
        Some(Value::Bool(true)) => {}
        Some(other) => return Err(error(key, format!("must be a boolean, got {}", show(other)))),
    }
    let key = "nginx_config.stream.access_log";
    let path = match lookup(root, key) {
        None | Some(Value::Null) => DEFAULT_PATH.to_string(),
        Some(Value::String(s)) if !s.trim().is_empty() => s.trim().to_string(),
        Some(other) => return Err(error(key, format!("must be a file path, got {}", show(other)))),
    };
    let key = "nginx_config.stream.access_log_format";
    let format = match lookup(root, key) {
        None | Some(Value::Null) => DEFAULT_FORMAT.to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => return Err(error(key, format!("must be a string, got {}", show(other)))),
    };
    let format = parse_format(&format).map_err(|m| error(key, m))?;
    // Every value Strait logs is an address, a number or a route id (letters,
    // digits, `-_.`): nothing either escaping would change, so both are accepted.
    let key = "nginx_config.stream.access_log_format_escape";
    match lookup(root, key) {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if s == "default" || s == "json" => {}
        Some(other) => return Err(error(key, format!("must be \"default\" or \"json\", got {}", show(other)))),
    }
    Ok(Some(AccessLogSettings { path, format }))
}

/// Splits a format into text and `$variable` / `${variable}` pieces.
pub fn parse_format(format: &str) -> Result<Vec<LogPiece>, String> {
    let mut pieces = Vec::new();
    let mut text = String::new();
    let mut rest = format;
    while let Some(dollar) = rest.find('$') {
        text.push_str(&rest[..dollar]);
        rest = &rest[dollar + 1..];
        let (name, after) = if let Some(braced) = rest.strip_prefix('{') {
            let end = braced.find('}').ok_or_else(|| format!("unclosed \"${{\" in {format:?}"))?;
            (&braced[..end], &braced[end + 1..])
        } else {
            let end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(rest.len());
            (&rest[..end], &rest[end..])
        };
        if name.is_empty() {
            return Err(format!("a \"$\" without a variable name in {format:?}"));
        }
        let var = VARIABLES
            .iter()
            .find(|(known, _)| *known == name)
            .map(|(_, var)| *var)
            .ok_or_else(|| format!("unknown \"{name}\" variable"))?;
        if !text.is_empty() {
            pieces.push(LogPiece::Text(std::mem::take(&mut text)));
        }
        pieces.push(LogPiece::Var(var));
        rest = after;
    }
    text.push_str(rest);
    if !text.is_empty() {
        pieces.push(LogPiece::Text(text));
    }
    Ok(pieces)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_split_into_text_and_variables() {
        let pieces = parse_format("$remote_addr [${time_local}] x$status").unwrap();
        assert_eq!(
            pieces,
            [
                LogPiece::Var(LogVar::RemoteAddr),
                LogPiece::Text(" [".into()),
                LogPiece::Var(LogVar::TimeLocal),
                LogPiece::Text("] x".into()),
                LogPiece::Var(LogVar::Status),
            ]
        );
        assert!(parse_format(DEFAULT_FORMAT).is_ok());
        assert_eq!(parse_format("$nope").unwrap_err(), "unknown \"nope\" variable");
        assert!(parse_format("${status").is_err());
        assert!(parse_format("cost: $ 5").is_err());
        assert_eq!(parse_format("plain").unwrap(), [LogPiece::Text("plain".into())]);
    }

    #[test]
    fn off_unless_enabled_and_errors_name_the_key() {
        let parse_text = |t: &str| parse(&serde_yaml::from_str(t).unwrap());
        assert_eq!(parse_text("a: 1").unwrap(), None);
        let on = parse_text("nginx_config: {stream: {enable_access_log: true}}").unwrap().unwrap();
        assert_eq!(on.path, DEFAULT_PATH);
        let bad = parse_text("nginx_config: {stream: {enable_access_log: true, access_log_format: '$x'}}");
        assert_eq!(bad.unwrap_err().key, "nginx_config.stream.access_log_format");
        let bad = parse_text("nginx_config: {stream: {enable_access_log: yes please}}");
        assert_eq!(bad.unwrap_err().key, "nginx_config.stream.enable_access_log");
        let bad = parse_text("nginx_config: {stream: {enable_access_log: true, access_log_format_escape: xml}}");
        assert_eq!(bad.unwrap_err().key, "nginx_config.stream.access_log_format_escape");
    }
}
