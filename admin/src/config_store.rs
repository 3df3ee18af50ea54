//! The store the Admin API writes through, with etcd's semantics so the
//! handlers are written once for both implementations: the embedded
//! [`FileStore`](crate::FileStore) (the default) and
//! [`EtcdStore`](crate::etcd::EtcdStore) (several nodes, APISIX's key layout).
//!
//! Every object carries etcd's `create_revision`/`mod_revision` (the
//! `createdIndex`/`modifiedIndex` of spec §2.2), and every write is
//! conditional, so a PUT can tell 201 from 200 and a PATCH can detect a
//! concurrent write without a read-then-write race: the condition is checked
//! by the store in the same step as the write (an etcd txn; the file store's
//! single writer).

use crate::store::{Entry, StoreError};
use serde_json::Value;

/// When a put may go ahead.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cond {
    /// The key must not exist (create).
    Absent,
    /// The key must exist with exactly this `mod_revision` (replace what was read).
    ModRevision(u64),
}

/// What a store write did.
#[derive(Clone, Debug, PartialEq)]
pub enum PutOutcome {
    /// Written at this store revision.
    Done { revision: u64 },
    /// The condition failed: the key was written (or removed) by someone else
    /// since it was read. Nothing changed.
    Conflict,
}

/// The store behind the Admin API. Methods take `&mut self` because reading
/// etcd needs the admin thread's own connection.
pub trait ConfigStore: Send {
    /// One object.
    fn get(&mut self, kind: &str, id: &str) -> Result<Option<Entry>, StoreError>;

    /// Objects of one type, in key byte order (as etcd lists them).
    fn list(&mut self, kind: &str) -> Result<Vec<(String, Entry)>, StoreError>;

    /// How many objects of one type exist.
    fn count(&mut self, kind: &str) -> Result<usize, StoreError> {
        self.list(kind).map(|list| list.len())
    }

    /// Writes `value` under `(kind, id)` if `cond` holds. `ttl` (seconds)
    /// makes the object expire; only stores that say [`supports_ttl`]
    /// accept it.
    ///
    /// [`supports_ttl`]: ConfigStore::supports_ttl
    fn put(
        &mut self,
        kind: &str,
        id: &str,
        value: Value,
        cond: Cond,
        ttl: Option<u64>,
    ) -> Result<PutOutcome, StoreError>;

    /// Removes `(kind, id)`; `Ok(None)` when it was not there, else the
    /// revision of the delete.
    fn delete(&mut self, kind: &str, id: &str) -> Result<Option<u64>, StoreError>;

    /// An id for POST: 20 digits, zero padded, never handed out before.
    fn next_id(&mut self, kind: &str) -> Result<String, StoreError>;

    /// Whether `?ttl=` can be honoured (etcd leases); the file store has no expiry.
    fn supports_ttl(&self) -> bool {
        false
    }

    /// Everything stored, for a publisher that builds snapshots from the store
    /// itself (the embedded store; with etcd the node's syncer publishes).
    fn resources(&mut self) -> Result<strait_engine::Resources, StoreError>;
}

impl<T: ConfigStore + ?Sized> ConfigStore for Box<T> {
    fn get(&mut self, kind: &str, id: &str) -> Result<Option<Entry>, StoreError> {
        (**self).get(kind, id)
    }
    fn list(&mut self, kind: &str) -> Result<Vec<(String, Entry)>, StoreError> {
        (**self).list(kind)
    }
    fn count(&mut self, kind: &str) -> Result<usize, StoreError> {
        (**self).count(kind)
    }
    fn put(
        &mut self,
        kind: &str,
        id: &str,
        value: Value,
        cond: Cond,
        ttl: Option<u64>,
    ) -> Result<PutOutcome, StoreError> {
        (**self).put(kind, id, value, cond, ttl)
    }
    fn delete(&mut self, kind: &str, id: &str) -> Result<Option<u64>, StoreError> {
        (**self).delete(kind, id)
    }
    fn next_id(&mut self, kind: &str) -> Result<String, StoreError> {
        (**self).next_id(kind)
    }
    fn supports_ttl(&self) -> bool {
        (**self).supports_ttl()
    }
    fn resources(&mut self) -> Result<strait_engine::Resources, StoreError> {
        (**self).resources()
    }
}

impl ConfigStore for crate::FileStore {
    fn get(&mut self, kind: &str, id: &str) -> Result<Option<Entry>, StoreError> {
        Ok(crate::FileStore::get(self, kind, id).cloned())
    }

    fn list(&mut self, kind: &str) -> Result<Vec<(String, Entry)>, StoreError> {
        Ok(crate::FileStore::list(self, kind).map(|(id, e)| (id.clone(), e.clone())).collect())
    }

    fn count(&mut self, kind: &str) -> Result<usize, StoreError> {
        Ok(crate::FileStore::count(self, kind))
    }

    fn put(
        &mut self,
        kind: &str,
        id: &str,
        value: Value,
        cond: Cond,
        ttl: Option<u64>,
    ) -> Result<PutOutcome, StoreError> {
        if ttl.is_some() {
            return Err(StoreError::Unavailable("the embedded store has no expiry (ttl)".into()));
        }
        // The admin thread is the only writer, so a condition that held when
        // the handler read the key still holds; checking keeps the contract.
        let current = crate::FileStore::get(self, kind, id).map(|e| e.modified_index);
        let holds = match cond {
            Cond::Absent => current.is_none(),
            Cond::ModRevision(rev) => current == Some(rev),
        };
        if !holds {
            return Ok(PutOutcome::Conflict);
        }
        let entry = crate::FileStore::put(self, kind, id, value)?;
        Ok(PutOutcome::Done { revision: entry.modified_index })
    }

    fn delete(&mut self, kind: &str, id: &str) -> Result<Option<u64>, StoreError> {
        Ok(crate::FileStore::delete(self, kind, id)?.map(|_| self.current_revision()))
    }

    fn next_id(&mut self, kind: &str) -> Result<String, StoreError> {
        Ok(self.next_generated_id(kind))
    }

    fn resources(&mut self) -> Result<strait_engine::Resources, StoreError> {
        Ok(crate::FileStore::resources(self))
    }
}
