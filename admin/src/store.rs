//! The embedded config store: every Admin API object in one file, replaced
//! atomically on each write.
//!
//! Durability: a write serialises the whole state to `store.json.tmp`, fsyncs
//! it, renames it over `store.json` and fsyncs the folder. A crash (SIGKILL,
//! power loss) at any instant therefore leaves either the old or the new file,
//! never a mix; the rename is the commit point. Only after `commit` returns
//! does the caller acknowledge the write.
//!
//! Integrity: the file starts with a header line carrying the length and the
//! CRC-32 of the JSON that follows, so a torn or bit-flipped file is refused at
//! open with an error naming it rather than silently read as "empty".
//!
//! The store knows nothing of validation: it keeps JSON values under
//! `(resource type, id)` with etcd-like create/modify revisions.

use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

const FILE_NAME: &str = "store.json";
const TEMP_NAME: &str = "store.json.tmp";
const LOCK_NAME: &str = "store.lock";
const MAGIC: &str = "STRAIT-STORE";
const FORMAT_VERSION: u32 = 1;

/// One stored object with its etcd-style revisions (spec §2.2 `createdIndex`/`modifiedIndex`).
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub value: Value,
    pub created_index: u64,
    pub modified_index: u64,
}

#[derive(Clone, Debug, Default, PartialEq)]
struct State {
    /// Store-wide revision: bumped by every put and delete.
    revision: u64,
    /// Last number handed out for a POST id (spec §2.2: 20-digit ids).
    gen_id: u64,
    /// resource type (`stream_routes`, ...) -> id -> entry, in key byte order
    /// as etcd lists them.
    types: BTreeMap<String, BTreeMap<String, Entry>>,
}

/// Why the store could not be opened or written.
#[derive(Debug)]
pub enum StoreError {
    /// The file system refused (the path says which file or folder).
    Io { path: PathBuf, error: std::io::Error },
    /// The file exists but is not a complete, intact store file.
    Corrupt { path: PathBuf, reason: String },
    /// A shared store (etcd) could not do it; the text is etcd's own message
    /// (or the transport's), which the Admin API passes on as APISIX does.
    Unavailable(String),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Io { path, error } => {
                write!(f, "config store {}: {error}", path.display())
            }
            StoreError::Corrupt { path, reason } => write!(
                f,
                "config store {} is corrupt ({reason}); restore it from a backup or move it away to start empty",
                path.display()
            ),
            StoreError::Unavailable(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for StoreError {}

/// The durable store. Single writer: the admin thread owns it.
pub struct FileStore {
    dir: PathBuf,
    state: State,
    /// Held (flock) for the store's lifetime: two processes writing one
    /// folder would each overwrite the other's writes.
    _lock: File,
}

impl FileStore {
    /// Opens (creating if missing) the embedded store in `dir`. A torn/corrupt
    /// file is an error naming the file, never silently dropped.
    pub fn open(dir: &Path) -> Result<FileStore, StoreError> {
        fs::create_dir_all(dir).map_err(io_error(dir))?;
        // A folder created just now must itself be durable, or a power loss
        // could take it, and every write in it, away.
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            File::open(parent).and_then(|d| d.sync_all()).map_err(io_error(parent))?;
        }
        let lock = lock(dir)?;
        // A temp file is only ever a write that did not reach its rename: the
        // committed state is the real file, so the leftover is dropped.
        let temp = dir.join(TEMP_NAME);
        if temp.exists() {
            fs::remove_file(&temp).map_err(io_error(&temp))?;
        }
        let path = dir.join(FILE_NAME);
        let state = match fs::read(&path) {
            Ok(bytes) => decode(&bytes).map_err(|reason| StoreError::Corrupt { path: path.clone(), reason })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => State::default(),
            Err(error) => return Err(StoreError::Io { path, error }),
        };
        Ok(FileStore { dir: dir.to_path_buf(), state, _lock: lock })
    }

    /// The file holding the committed state.
    pub fn path(&self) -> PathBuf {
        self.dir.join(FILE_NAME)
    }

    /// Everything stored, for building the first snapshot at start.
    pub fn resources(&self) -> strait_engine::Resources {
        let list = |kind: &str| -> Vec<(String, Value)> {
            self.list(kind).map(|(id, entry)| (id.clone(), entry.value.clone())).collect()
        };
        strait_engine::Resources {
            stream_routes: list("stream_routes"),
            upstreams: list("upstreams"),
            services: list("services"),
            ssls: list("ssls"),
        }
    }

    pub fn get(&self, kind: &str, id: &str) -> Option<&Entry> {
        self.state.types.get(kind)?.get(id)
    }

    /// Objects of one type in key byte order.
    pub fn list<'a>(&'a self, kind: &str) -> impl Iterator<Item = (&'a String, &'a Entry)> + 'a {
        self.state.types.get(kind).into_iter().flatten()
    }

    pub fn count(&self, kind: &str) -> usize {
        self.state.types.get(kind).map_or(0, BTreeMap::len)
    }

    /// Hands out the next POST id (20 digits, zero padded), skipping ids a
    /// client already used with PUT. Nothing is persisted until the `put`
    /// that uses it commits, which also persists the counter.
    pub fn next_generated_id(&self, kind: &str) -> String {
        self.next_generated(kind).1
    }

    fn next_generated(&self, kind: &str) -> (u64, String) {
        let mut n = self.state.gen_id;
        loop {
            // Only POSTs move the counter, one step each: 2^64 of them is out of reach.
            n = n.checked_add(1).expect("fewer than 2^64 POSTs");
            let id = format!("{n:020}");
            if self.get(kind, &id).is_none() {
                return (n, id);
            }
        }
    }

    /// Stores `value` under `(kind, id)` durably. Returns the new entry. On
    /// error nothing changed, in memory or on disk.
    pub fn put(&mut self, kind: &str, id: &str, value: Value) -> Result<Entry, StoreError> {
        let previous_state = (self.state.revision, self.state.gen_id);
        let revision = self.state.revision + 1;
        // Writing the id POST would hand out next is what moves the counter.
        let (n, generated) = self.next_generated(kind);
        if generated == id {
            self.state.gen_id = n;
        }
        let objects = self.state.types.entry(kind.to_string()).or_default();
        let created_index = objects.get(id).map_or(revision, |e| e.created_index);
        let entry = Entry { value, created_index, modified_index: revision };
        let previous = objects.insert(id.to_string(), entry.clone());
        self.state.revision = revision;
        if let Err(e) = self.persist() {
            let objects = self.state.types.get_mut(kind).expect("inserted above");
            match previous {
                Some(old) => {
                    objects.insert(id.to_string(), old);
                }
                None => {
                    objects.remove(id);
                    if objects.is_empty() {
                        self.state.types.remove(kind);
                    }
                }
            }
            (self.state.revision, self.state.gen_id) = previous_state;
            return Err(e);
        }
        Ok(entry)
    }

    /// Removes `(kind, id)` durably; `Ok(None)` if it was not there (nothing written).
    pub fn delete(&mut self, kind: &str, id: &str) -> Result<Option<Entry>, StoreError> {
        let Some(objects) = self.state.types.get_mut(kind) else {
            return Ok(None);
        };
        let Some(old) = objects.remove(id) else {
            return Ok(None);
        };
        self.state.revision += 1;
        if let Err(e) = self.persist() {
            self.state.revision -= 1;
            self.state.types.get_mut(kind).expect("present above").insert(id.to_string(), old);
            return Err(e);
        }
        Ok(Some(old))
    }

    /// Writes the whole state: temp file, fsync, rename, fsync the folder.
    fn persist(&self) -> Result<(), StoreError> {
        let bytes = encode(&self.state);
        let temp = self.dir.join(TEMP_NAME);
        // 0600: the store holds private keys (ssls key/keys, upstream client_key),
        // which other local users must not read. A temp file left over by a
        // crash may carry an older mode, so it is removed first.
        let _ = fs::remove_file(&temp);
        let mut file = {
            use std::os::unix::fs::OpenOptionsExt;
            fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&temp).map_err(io_error(&temp))?
        };
        file.write_all(&bytes).map_err(io_error(&temp))?;
        file.sync_all().map_err(io_error(&temp))?;
        drop(file);
        let path = self.path();
        fs::rename(&temp, &path).map_err(io_error(&path))?;
        // The rename is only durable once the folder's entry is on disk.
        File::open(&self.dir).and_then(|d| d.sync_all()).map_err(io_error(&self.dir))?;
        Ok(())
    }

    /// The store-wide revision of the last write.
    pub(crate) fn current_revision(&self) -> u64 {
        self.state.revision
    }

    #[cfg(test)]
    pub(crate) fn revision(&self) -> u64 {
        self.state.revision
    }
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError {
    let path = path.to_path_buf();
    move |error| StoreError::Io { path, error }
}

/// Takes `store.lock` exclusively (flock, released when the file closes).
fn lock(dir: &Path) -> Result<File, StoreError> {
    use std::os::fd::AsRawFd;
    let path = dir.join(LOCK_NAME);
    let file = fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(io_error(&path))?;
    // SAFETY: flock on a descriptor owned by `file`, which outlives the call.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let error = std::io::Error::last_os_error();
        let error = if error.kind() == std::io::ErrorKind::WouldBlock {
            std::io::Error::other("the store is in use by another Strait process (or another FileStore in this one)")
        } else {
            error
        };
        return Err(StoreError::Io { path, error });
    }
    Ok(file)
}

fn encode(state: &State) -> Vec<u8> {
    let mut types = Map::new();
    for (kind, objects) in &state.types {
        let mut list = Map::new();
        for (id, entry) in objects {
            list.insert(
                id.clone(),
                json!({
                    "value": entry.value,
                    "created_index": entry.created_index,
                    "modified_index": entry.modified_index,
                }),
            );
        }
        types.insert(kind.clone(), Value::Object(list));
    }
    let body = json!({
        "revision": state.revision,
        "gen_id": state.gen_id,
        "types": types,
    })
    .to_string();
    let crc = crc32fast::hash(body.as_bytes());
    let mut out = format!("{MAGIC} {FORMAT_VERSION} {crc:08x} {}\n", body.len()).into_bytes();
    out.extend_from_slice(body.as_bytes());
    out
}

fn decode(bytes: &[u8]) -> Result<State, String> {
    let newline = bytes.iter().position(|&b| b == b'\n').ok_or("no header line")?;
    let header = std::str::from_utf8(&bytes[..newline]).map_err(|_| "header is not text")?;
    let fields: Vec<&str> = header.split(' ').collect();
    let [magic, version, crc, len] = fields[..] else {
        return Err(format!("bad header {header:?}"));
    };
    if magic != MAGIC {
        return Err(format!("not a Strait store file (header {header:?})"));
    }
    if version != FORMAT_VERSION.to_string() {
        return Err(format!("unsupported format version {version}"));
    }
    let crc = u32::from_str_radix(crc, 16).map_err(|_| format!("bad checksum field {crc:?}"))?;
    let len: usize = len.parse().map_err(|_| format!("bad length field {len:?}"))?;
    let body = &bytes[newline + 1..];
    if body.len() != len {
        return Err(format!("truncated or extended: header says {len} bytes, file has {}", body.len()));
    }
    let actual = crc32fast::hash(body);
    if actual != crc {
        return Err(format!("checksum mismatch: header says {crc:08x}, content has {actual:08x}"));
    }
    let root: Value = serde_json::from_slice(body).map_err(|e| format!("invalid JSON: {e}"))?;
    let number = |name: &str| root.get(name).and_then(Value::as_u64).ok_or(format!("missing {name}"));
    let mut state = State { revision: number("revision")?, gen_id: number("gen_id")?, types: BTreeMap::new() };
    let types = root.get("types").and_then(Value::as_object).ok_or("missing types")?;
    for (kind, objects) in types {
        let objects = objects.as_object().ok_or(format!("{kind} is not an object"))?;
        let mut map = BTreeMap::new();
        for (id, entry) in objects {
            let index =
                |name: &str| entry.get(name).and_then(Value::as_u64).ok_or(format!("{kind}/{id}: missing {name}"));
            let value = entry.get("value").cloned().ok_or(format!("{kind}/{id}: missing value"))?;
            map.insert(
                id.clone(),
                Entry { value, created_index: index("created_index")?, modified_index: index("modified_index")? },
            );
        }
        state.types.insert(kind.clone(), map);
    }
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TempDir;

    #[test]
    fn the_store_file_is_readable_by_its_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = TempDir::new("store-mode");
        let mut store = FileStore::open(dir.path()).unwrap();
        store.put("ssls", "1", json!({"key": "-----BEGIN PRIVATE KEY-----"})).unwrap();
        let mode = fs::metadata(store.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "private keys are stored mode 0600");
    }

    #[test]
    fn a_write_survives_reopening() {
        let dir = TempDir::new("store-roundtrip");
        let mut store = FileStore::open(dir.path()).unwrap();
        store.put("upstreams", "1", json!({"nodes": {"127.0.0.1:80": 1}})).unwrap();
        store.put("stream_routes", "r", json!({"upstream_id": "1"})).unwrap();
        let entry = store.put("upstreams", "1", json!({"nodes": {}})).unwrap();
        assert_eq!((entry.created_index, entry.modified_index), (1, 3));
        store.put("services", "s", json!({})).unwrap();
        store.delete("services", "s").unwrap();
        let id = store.next_generated_id("upstreams");
        store.put("upstreams", &id, json!({"nodes": {}})).unwrap();

        let state = store.state.clone();
        drop(store);
        let reopened = FileStore::open(dir.path()).unwrap();
        assert_eq!(reopened.state, state);
        let resources = reopened.resources();
        assert_eq!(resources.upstreams.len(), 2);
        assert_eq!(resources.stream_routes[0].0, "r");
        assert!(resources.services.is_empty());
        assert_eq!(reopened.next_generated_id("upstreams"), "00000000000000000002", "the POST counter is persisted");
    }

    #[test]
    fn a_flipped_byte_is_detected_at_open_and_names_the_file() {
        let dir = TempDir::new("store-corrupt");
        let mut store = FileStore::open(dir.path()).unwrap();
        store.put("upstreams", "1", json!({"nodes": {"a:1": 1}})).unwrap();
        let path = store.path();
        drop(store);
        let mut bytes = fs::read(&path).unwrap();
        let last = bytes.len() - 3;
        bytes[last] ^= 0x01;
        fs::write(&path, &bytes).unwrap();
        let err = FileStore::open(dir.path()).err().expect("corrupt store must not open");
        let text = err.to_string();
        assert!(text.contains(&path.display().to_string()), "{text}");
        assert!(text.contains("checksum mismatch"), "{text}");
    }

    #[test]
    fn a_torn_file_is_detected_at_open() {
        let dir = TempDir::new("store-torn");
        let mut store = FileStore::open(dir.path()).unwrap();
        store.put("upstreams", "1", json!({"nodes": {"a:1": 1}})).unwrap();
        let path = store.path();
        drop(store);
        let bytes = fs::read(&path).unwrap();
        fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
        let err = FileStore::open(dir.path()).err().unwrap().to_string();
        assert!(err.contains("truncated"), "{err}");
    }

    #[test]
    fn a_leftover_temp_file_is_ignored() {
        let dir = TempDir::new("store-temp");
        let mut store = FileStore::open(dir.path()).unwrap();
        store.put("upstreams", "1", json!({"nodes": {}})).unwrap();
        drop(store);
        fs::write(dir.path().join(TEMP_NAME), b"half a wri").unwrap();
        let reopened = FileStore::open(dir.path()).unwrap();
        assert_eq!(reopened.count("upstreams"), 1);
        assert!(!dir.path().join(TEMP_NAME).exists());
    }

    #[test]
    fn a_store_in_use_is_not_opened_twice() {
        let dir = TempDir::new("store-lock");
        let store = FileStore::open(dir.path()).unwrap();
        let err = FileStore::open(dir.path()).err().expect("the folder is locked").to_string();
        assert!(err.contains("in use by another Strait process"), "{err}");
        drop(store);
        assert!(FileStore::open(dir.path()).is_ok(), "the lock goes with the store");
    }

    #[test]
    fn a_failed_write_changes_nothing() {
        let dir = TempDir::new("store-failed");
        let mut store = FileStore::open(dir.path()).unwrap();
        store.put("upstreams", "1", json!({"nodes": {}})).unwrap();
        let before = store.state.clone();
        // A folder where the temp file should go makes File::create fail.
        fs::create_dir(dir.path().join(TEMP_NAME)).unwrap();
        assert!(store.put("upstreams", "2", json!({"nodes": {}})).is_err());
        assert!(store.put("upstreams", "1", json!({"x": 1})).is_err());
        assert!(store.delete("upstreams", "1").is_err());
        assert_eq!(store.state, before);
    }
}
