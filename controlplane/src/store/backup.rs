//! Backups and restores of the redb store.
//!
//! **Backup** ([`copy_database`]): one read transaction of the live store
//! (a consistent snapshot: every write acknowledged before it began, none
//! after) copied table by table into a fresh redb database kept in memory
//! ([`VecBackend`]), whose bytes are a complete `control.redb` file. The
//! node keeps serving: redb readers never block writers. Nothing touches
//! the data directory, so a backup works on a full disk.
//!
//! **Restore** ([`restore`], offline): the backup is copied next to the
//! store, opened with every page checked, migrated, and every record
//! decoded; only then is the current file (damaged or not) renamed
//! `control.redb.replaced-<unix seconds>` and the copy renamed into place.
//! A store held open by a running node is refused. The admin credential's
//! hash is set from the caller (the data directory's current
//! `admin.token`), so a restore never brings back a rotated-out admin token.
//!
//! Invariants: a backup holds signing keys and credential hashes (never
//! tokens): it is written 0600 and is as secret as the store; a restore
//! either puts a checked store in place or leaves the directory as it was
//! (plus, at most, the copy it was checking).

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use redb::{
    Database, Key, ReadTransaction, ReadableDatabase as _, ReadableTable as _, StorageBackend,
    TableDefinition, Value, WriteTransaction,
};

use super::redb_store::{
    CREDENTIALS, IN_USE, META, POLICIES, PRINCIPAL_CREDENTIALS, PRINCIPAL_NAMES, PRINCIPALS,
    SECRETS, SETTINGS, STORE_FILE, TENANT_NAMES, TENANT_POLICIES, TENANT_PRINCIPALS, TENANTS,
};
use super::{RedbStore, Store as _, StoreError};

/// A redb storage backend in memory whose bytes stay reachable after the
/// database is dropped.
#[derive(Default, Clone)]
pub(crate) struct VecBackend(Arc<RwLock<Vec<u8>>>);

impl std::fmt::Debug for VecBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let len = self.0.read().unwrap_or_else(PoisonError::into_inner).len();
        f.debug_struct("VecBackend").field("len", &len).finish()
    }
}

fn out_of_range() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidInput, "out of range")
}

impl StorageBackend for VecBackend {
    fn len(&self) -> Result<u64, std::io::Error> {
        Ok(self.0.read().unwrap_or_else(PoisonError::into_inner).len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        let bytes = self.0.read().unwrap_or_else(PoisonError::into_inner);
        let start = usize::try_from(offset).map_err(|_| out_of_range())?;
        let end = start.checked_add(out.len()).ok_or_else(out_of_range)?;
        out.copy_from_slice(bytes.get(start..end).ok_or_else(out_of_range)?);
        Ok(())
    }

    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        let len = usize::try_from(len).map_err(|_| out_of_range())?;
        self.0
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .resize(len, 0);
        Ok(())
    }

    fn sync_data(&self) -> Result<(), std::io::Error> {
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        let mut bytes = self.0.write().unwrap_or_else(PoisonError::into_inner);
        let start = usize::try_from(offset).map_err(|_| out_of_range())?;
        let end = start.checked_add(data.len()).ok_or_else(out_of_range)?;
        bytes
            .get_mut(start..end)
            .ok_or_else(out_of_range)?
            .copy_from_slice(data);
        Ok(())
    }
}

/// Copies every row of table `def` from `from` into `to`.
fn copy_table<K: Key + 'static, V: Value + 'static>(
    from: &ReadTransaction,
    to: &WriteTransaction,
    def: TableDefinition<K, V>,
) -> Result<(), StoreError> {
    let src = from.open_table(def)?;
    let mut dst = to.open_table(def)?;
    for row in src.iter()? {
        let (k, v) = row?;
        dst.insert(k.value(), v.value())?;
    }
    Ok(())
}

/// A consistent copy of `db`, as the bytes of a redb file.
pub(crate) fn copy_database(db: &Database) -> Result<Vec<u8>, StoreError> {
    let backend = VecBackend::default();
    let bytes = backend.0.clone();
    let out = redb::Builder::new().create_with_backend(backend)?;
    let from = db.begin_read()?;
    let to = out.begin_write()?;
    copy_table(&from, &to, META)?;
    copy_table(&from, &to, SECRETS)?;
    copy_table(&from, &to, SETTINGS)?;
    copy_table(&from, &to, TENANT_NAMES)?;
    copy_table(&from, &to, PRINCIPAL_NAMES)?;
    copy_table(&from, &to, TENANT_PRINCIPALS)?;
    copy_table(&from, &to, PRINCIPAL_CREDENTIALS)?;
    copy_table(&from, &to, TENANT_POLICIES)?;
    for def in [TENANTS, PRINCIPALS, CREDENTIALS, POLICIES] {
        copy_table(&from, &to, def)?;
    }
    to.commit()?;
    drop(from);
    drop(out);
    let copy = std::mem::take(&mut *bytes.write().unwrap_or_else(PoisonError::into_inner));
    Ok(copy)
}

/// What [`restore`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreReport {
    /// Where the file that was replaced went (`None`: there was none).
    pub replaced: Option<PathBuf>,
    /// Tenants in the restored store.
    pub tenants: usize,
    /// Principals in the restored store.
    pub principals: usize,
    /// Credentials in the restored store.
    pub credentials: usize,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |e| StoreError::Backend(format!("{}: {e}", path.display()))
}

/// Replaces `<data_dir>/control.redb` with the backup at `backup`, after
/// checking it whole (see the module documentation). `admin_hash`, when
/// given, becomes the restored store's admin credential hash. The node
/// must be stopped.
pub fn restore(
    backup: &Path,
    data_dir: &Path,
    admin_hash: Option<[u8; 32]>,
) -> Result<RestoreReport, StoreError> {
    let target = data_dir.join(STORE_FILE);
    let in_use = |e: &StoreError| matches!(e, StoreError::Backend(m) if m.ends_with(IN_USE));
    // A running node holds the file's lock: refuse rather than pull the
    // file from under it. A damaged or empty file is what a restore is for.
    if std::fs::metadata(&target).is_ok_and(|m| m.len() > 0) {
        match RedbStore::open_file(&target) {
            Err(e) if in_use(&e) => return Err(e),
            _ => {}
        }
    }
    let bytes = std::fs::read(backup).map_err(io(backup))?;
    let staging = data_dir.join(format!("{STORE_FILE}.restoring"));
    let _ = std::fs::remove_file(&staging);
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&staging)
            .map_err(io(&staging))?;
        f.write_all(&bytes)
            .and_then(|()| f.sync_all())
            .map_err(io(&staging))?;
    }
    let checked = (|| {
        let store = RedbStore::open_file(&staging)?;
        let contents = store.load()?;
        if let Some(hash) = admin_hash {
            store.set_admin_token_hash(hash)?;
        }
        Ok::<_, StoreError>(contents)
    })();
    let contents = match checked {
        Ok(c) => c,
        Err(e) => {
            let _ = std::fs::remove_file(&staging);
            return Err(match e {
                too_new @ StoreError::SchemaTooNew { .. } => too_new,
                StoreError::Corrupt { reason, .. } => StoreError::Corrupt {
                    table: "(backup)",
                    key: backup.display().to_string(),
                    reason,
                },
                other => StoreError::Corrupt {
                    table: "(backup)",
                    key: backup.display().to_string(),
                    reason: other.to_string(),
                },
            });
        }
    };
    let replaced = if target.exists() {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let aside = data_dir.join(format!("{STORE_FILE}.replaced-{secs}"));
        std::fs::rename(&target, &aside).map_err(io(&target))?;
        Some(aside)
    } else {
        None
    };
    std::fs::rename(&staging, &target).map_err(io(&target))?;
    std::fs::File::open(data_dir)
        .and_then(|d| d.sync_all())
        .map_err(io(data_dir))?;
    Ok(RestoreReport {
        replaced,
        tenants: contents.tenants.len(),
        principals: contents.principals.len(),
        credentials: contents.credentials.len(),
    })
}

/// Writes backup bytes to `path` (0600, created exclusively, synced).
pub fn write_backup(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io(path))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(io(path))
}

/// Bytes per [`BackupChunk`]: well under gRPC's default 4 MiB message limit.
pub const CHUNK_BYTES: usize = 1 << 20;

/// A backup as the chunks `NodeService.Backup` streams: the first carries
/// the size and SHA-256 of the whole file.
pub(crate) fn chunks(bytes: &[u8]) -> Vec<arqonbus_proto::control::BackupChunk> {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out: Vec<_> = bytes
        .chunks(CHUNK_BYTES)
        .map(|c| arqonbus_proto::control::BackupChunk {
            data: c.to_vec(),
            ..Default::default()
        })
        .collect();
    if out.is_empty() {
        out.push(arqonbus_proto::control::BackupChunk::default());
    }
    if let Some(first) = out.first_mut() {
        first.total_bytes = bytes.len() as u64;
        first.sha256 = hex::encode(digest.as_ref());
    }
    out
}
