//! Standalone mode (APISIX's `data_plane` + `config_provider: yaml`): the
//! objects come from `conf/apisix.yaml` beside config.yaml, re-read when its
//! modification time changes (polled every second), and the Admin API only
//! reads.
//!
//! The file holds lists under `stream_routes`, `upstreams`, `services` and
//! `ssls`, and must end with `#END` (APISIX's guard against reading a file
//! still being written). Items without an `id` get `arr_<1-based index>`.
//! Other top-level keys (`routes`, `plugin_metadata`, ...) are ignored.
//!
//! Unlike APISIX, which drops invalid items one by one, a file with any
//! invalid item is refused whole and the last good config stays in force:
//! an edit either applies completely or not at all, and the log says why.

use crate::config_store::{Cond, ConfigStore, PutOutcome};
use crate::kind::Kind;
use crate::store::{Entry, StoreError};
use serde_json::Value;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// How often the file's modification time is checked (APISIX: 1 s).
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Every object of one version of the file, in file order.
pub type Objects = Vec<(Kind, String, Value)>;

/// Reads and checks the whole file.
pub fn load(path: &Path) -> Result<Objects, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    parse(&text).map_err(|e| match e {
        ParseError::NoEndFlag => format!("missing valid end flag in file {}", path.display()),
        ParseError::Invalid(reason) => format!("{}: {reason}", path.display()),
    })
}

#[derive(Debug, PartialEq)]
pub enum ParseError {
    NoEndFlag,
    Invalid(String),
}

pub fn parse(text: &str) -> Result<Objects, ParseError> {
    if !text.trim_end().ends_with("#END") {
        return Err(ParseError::NoEndFlag);
    }
    let root: Value = serde_yaml::from_str(text).map_err(|e| ParseError::Invalid(format!("invalid YAML: {e}")))?;
    let root = match root {
        Value::Null => return Ok(Vec::new()),
        Value::Object(root) => root,
        _ => return Err(ParseError::Invalid("the top level must be a mapping of lists".into())),
    };
    let mut objects = Vec::new();
    for kind in Kind::ALL {
        let items = match root.get(kind.segment()) {
            None | Some(Value::Null) => continue,
            Some(Value::Array(items)) => items,
            Some(_) => return Err(ParseError::Invalid(format!("{} must be a list", kind.segment()))),
        };
        let mut seen = HashSet::new();
        for (index, item) in items.iter().enumerate() {
            let id = match item.get("id") {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Number(n)) => n.to_string(),
                None => format!("arr_{}", index + 1),
                Some(other) => {
                    return Err(ParseError::Invalid(format!(
                        "failed to check item data of [{}] err: id must be a string or a number, got {other}",
                        kind.segment()
                    )))
                }
            };
            if !seen.insert(id.clone()) {
                return Err(ParseError::Invalid(format!("{} has two items with id {id}", kind.segment())));
            }
            // File mode, as APISIX: an unknown plugin makes the item invalid.
            let value = crate::etcd::check_value(kind, &id, item.clone(), false).map_err(|e| {
                ParseError::Invalid(format!("failed to check item data of [{}] id {id} err: {e}", kind.segment()))
            })?;
            objects.push((kind, id, value));
        }
    }
    Ok(objects)
}

/// What the Admin API reads in standalone mode: the file's current objects.
#[derive(Clone, Default)]
pub struct FileObjects {
    current: Arc<Mutex<(u64, Objects)>>,
}

impl FileObjects {
    pub fn new(objects: Objects) -> FileObjects {
        FileObjects { current: Arc::new(Mutex::new((1, objects))) }
    }

    fn replace(&self, objects: Objects) {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        *current = (current.0 + 1, objects);
    }

    pub fn resources(&self) -> strait_engine::Resources {
        let current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        crate::etcd::resources_of(current.1.iter().cloned())
    }
}

impl ConfigStore for FileObjects {
    fn get(&mut self, kind: &str, id: &str) -> Result<Option<Entry>, StoreError> {
        Ok(self.list(kind)?.into_iter().find(|(i, _)| i == id).map(|(_, e)| e))
    }

    fn list(&mut self, kind: &str) -> Result<Vec<(String, Entry)>, StoreError> {
        let current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        let generation = current.0;
        let mut list: Vec<(String, Entry)> = current
            .1
            .iter()
            .filter(|(k, _, _)| k.segment() == kind)
            .map(|(_, id, value)| {
                (id.clone(), Entry { value: value.clone(), created_index: generation, modified_index: generation })
            })
            .collect();
        list.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        Ok(list)
    }

    fn put(&mut self, _: &str, _: &str, _: Value, _: Cond, _: Option<u64>) -> Result<PutOutcome, StoreError> {
        Err(StoreError::Unavailable("standalone mode: the configuration is read from the YAML file".into()))
    }

    fn delete(&mut self, _: &str, _: &str) -> Result<Option<u64>, StoreError> {
        Err(StoreError::Unavailable("standalone mode: the configuration is read from the YAML file".into()))
    }

    fn next_id(&mut self, _: &str) -> Result<String, StoreError> {
        Err(StoreError::Unavailable("standalone mode: the configuration is read from the YAML file".into()))
    }

    fn resources(&mut self) -> Result<strait_engine::Resources, StoreError> {
        Ok(FileObjects::resources(self))
    }
}

/// Polls `path` every second on its own thread; a changed file that checks
/// out replaces `objects` and is handed to `publish`; one that does not is
/// logged and the last good config stays.
pub fn spawn_watcher(
    path: PathBuf,
    objects: FileObjects,
    mut publish: Box<dyn FnMut(&strait_engine::Resources) + Send>,
) -> std::io::Result<()> {
    let mut seen = stamp(&path);
    std::thread::Builder::new().name("strait-standalone".into()).spawn(move || loop {
        std::thread::sleep(POLL_INTERVAL);
        let now = stamp(&path);
        if now == seen {
            continue;
        }
        seen = now;
        match load(&path) {
            Ok(new) => {
                log::info!("{}: reloaded ({} objects)", path.display(), new.len());
                objects.replace(new);
                publish(&objects.resources());
            }
            Err(reason) => log::error!("{reason}; keeping the last good configuration"),
        }
    })?;
    Ok(())
}

/// Modification time and length: a change to either is a new file.
fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apisix_example_with_the_end_flag_parses_and_ids_default_to_arr_n() {
        let objects = parse(
            "stream_routes:\n  - server_port: 1985\n    upstream_id: 1\nupstreams:\n  - id: 1\n    nodes:\n      \"127.0.0.1:1995\": 1\n    type: roundrobin\nroutes: [{uri: /}]\n#END\n",
        )
        .unwrap();
        assert_eq!(objects.len(), 2);
        assert_eq!((objects[0].0, objects[0].1.as_str()), (Kind::StreamRoutes, "arr_1"));
        assert_eq!(objects[1].1, "1");
    }

    #[test]
    fn a_file_without_the_end_flag_is_refused() {
        assert_eq!(parse("stream_routes: []\n"), Err(ParseError::NoEndFlag));
        let err = load(Path::new("/nonexistent/apisix.yaml")).unwrap_err();
        assert!(err.contains("cannot read"), "{err}");
    }

    #[test]
    fn one_invalid_item_refuses_the_whole_file() {
        let err = parse("upstreams:\n  - id: 1\n    nodes: {\"a:1\": 1}\n    type: nope\n#END").unwrap_err();
        let ParseError::Invalid(reason) = err else { panic!("invalid expected") };
        assert!(reason.starts_with("failed to check item data of [upstreams] id 1 err:"), "{reason}");
    }
}
