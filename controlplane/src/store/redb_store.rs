//! [`RedbStore`]: the embedded [`Store`] in `<data_dir>/control.redb`.
//!
//! Layout: one redb table per record kind, `u64` id → prost-encoded record
//! (`records.rs`); `meta` (`&str` → `u64`) holds the schema version, the id
//! counters (`next_*_id`, the next id to hand out), the last configuration
//! epoch and one-time markers (`marker:<name>`); `secrets` (`&str` → bytes)
//! holds the admin token's SHA-256; `settings` (`&str` → prost-encoded
//! record, schema 2) holds node-wide settings changed through the API, so
//! far only `steering`. Schema 3 adds two indexes, written in the same
//! transaction as the records they index: `tenant_names` (name → id) and
//! `principal_names` ((tenant id, name) → id). A name is checked, and a
//! tenant's principals listed, without reading every record. Schema 4 adds
//! three owner indexes, keys only, kept likewise: `tenant_principals`
//! (tenant, principal), `principal_credentials` (tenant, principal,
//! credential) and `tenant_policies` (tenant, policy). A delete finds what
//! it cascades to, and a listing finds a tenant's or principal's records,
//! by a range of one index: what it costs follows the tenant it touches,
//! not the size of the store.
//!
//! A tenant's placement lives in its record (the API's `Tenant.placement`):
//! a record written before placement existed decodes with it empty, which
//! reads as `home`.
//!
//! Durability: every write transaction commits with
//! [`Durability::Immediate`] (redb fsyncs before `commit` returns), so a
//! method that returned `Ok` survives `kill -9`. redb's copy-on-write B-trees
//! keep the file consistent whatever the moment of the crash.
//!
//! Schema: [`MIGRATIONS`] is an ordered list; opening runs the pending ones
//! and records [`SCHEMA_VERSION`] in one write transaction, and refuses a
//! file whose version is newer than this code.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError, RwLock};

use arqonbus_core::auth::CredentialHash;
use arqonbus_proto::control::{
    Credential, CredentialKind, Policy, Principal, Quotas, Tenant, policy::Target,
};
use prost::Message as _;
use redb::{
    Database, Durability, ReadableDatabase as _, ReadableTable, Table, TableDefinition,
    WriteTransaction,
};

use super::records::{
    StoredCredential, StoredPolicy, StoredPrincipal, StoredSteering, StoredTenant,
};
use super::{
    Changes, CredentialRecord, ImportReport, ImportTenant, Issued, MintContext, MintFn,
    NewCredential, NewPrincipal, NewTenant, SigningKey, SteeringRecord, Store, StoreContents,
    StoreError, TenantChange, TenantRecord,
};

/// The store's file name in the data directory.
pub const STORE_FILE: &str = "control.redb";

pub(crate) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
pub(crate) const SECRETS: TableDefinition<&str, &[u8]> = TableDefinition::new("secrets");
pub(crate) const TENANTS: TableDefinition<u64, &[u8]> = TableDefinition::new("tenants");
pub(crate) const PRINCIPALS: TableDefinition<u64, &[u8]> = TableDefinition::new("principals");
pub(crate) const CREDENTIALS: TableDefinition<u64, &[u8]> = TableDefinition::new("credentials");
pub(crate) const POLICIES: TableDefinition<u64, &[u8]> = TableDefinition::new("policies");
pub(crate) const SETTINGS: TableDefinition<&str, &[u8]> = TableDefinition::new("settings");
/// Schema 3: tenant name → tenant id, kept with every tenant written or removed.
pub(crate) const TENANT_NAMES: TableDefinition<&str, u64> = TableDefinition::new("tenant_names");
/// Schema 3: (tenant id, principal name) → principal id, kept likewise.
pub(crate) const PRINCIPAL_NAMES: TableDefinition<(u64, &str), u64> =
    TableDefinition::new("principal_names");
/// Schema 4: (tenant id, principal id), one row per principal.
pub(crate) const TENANT_PRINCIPALS: TableDefinition<(u64, u64), ()> =
    TableDefinition::new("tenant_principals");
/// Schema 4: (tenant id, principal id, credential id), one row per
/// credential.
pub(crate) const PRINCIPAL_CREDENTIALS: TableDefinition<(u64, u64, u64), ()> =
    TableDefinition::new("principal_credentials");
/// Schema 4: (tenant id, policy id), one row per policy.
pub(crate) const TENANT_POLICIES: TableDefinition<(u64, u64), ()> =
    TableDefinition::new("tenant_policies");

const SCHEMA_KEY: &str = "schema_version";
const NEXT_TENANT: &str = "next_tenant_id";
const NEXT_PRINCIPAL: &str = "next_principal_id";
const NEXT_CREDENTIAL: &str = "next_credential_id";
const NEXT_POLICY: &str = "next_policy_id";
const LAST_EPOCH: &str = "last_epoch";
const ADMIN_HASH: &str = "admin_token_sha256";
const STEERING: &str = "steering";

/// One schema step: `run` brings a store from `version - 1` to `version`.
#[derive(Clone, Copy)]
pub(crate) struct Migration {
    /// The version after this step.
    pub(crate) version: u64,
    /// What it does, for logs.
    pub(crate) description: &'static str,
    /// The step, inside the opening write transaction.
    pub(crate) run: fn(&WriteTransaction) -> Result<(), StoreError>,
}

/// Every schema step, oldest first. Append only: a released step is never
/// changed.
pub(crate) const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "tables for tenants, principals, credentials, policies; id counters",
        run: migrate_v1,
    },
    Migration {
        version: 2,
        description: "settings table (steering set through the control API)",
        run: migrate_v2,
    },
    Migration {
        version: 3,
        description: "name indexes for tenants and principals",
        run: migrate_v3,
    },
    Migration {
        version: 4,
        description: "owner indexes for principals, credentials and policies",
        run: migrate_v4,
    },
];

/// The schema version this code writes.
pub const SCHEMA_VERSION: u64 = MIGRATIONS.len() as u64;

pub(crate) fn migrate_v1(txn: &WriteTransaction) -> Result<(), StoreError> {
    // Opening a table in a write transaction creates it.
    txn.open_table(TENANTS)?;
    txn.open_table(PRINCIPALS)?;
    txn.open_table(CREDENTIALS)?;
    txn.open_table(POLICIES)?;
    txn.open_table(SECRETS)?;
    let mut meta = txn.open_table(META)?;
    for key in [NEXT_TENANT, NEXT_PRINCIPAL, NEXT_CREDENTIAL, NEXT_POLICY] {
        if meta.get(key)?.is_none() {
            meta.insert(key, 1)?;
        }
    }
    if meta.get(LAST_EPOCH)?.is_none() {
        meta.insert(LAST_EPOCH, 0)?;
    }
    Ok(())
}

pub(crate) fn migrate_v2(txn: &WriteTransaction) -> Result<(), StoreError> {
    txn.open_table(SETTINGS)?;
    Ok(())
}

/// Indexes every tenant by name and every principal by (tenant, name), so
/// a write checks a name with one lookup instead of reading every record.
/// The API never let two records share a name; should a file hold such a
/// pair anyway, the lower id keeps the name and a warning says so.
pub(crate) fn migrate_v3(txn: &WriteTransaction) -> Result<(), StoreError> {
    let mut names = txn.open_table(TENANT_NAMES)?;
    for t in scan(&txn.open_table(TENANTS)?, decode_tenant)? {
        if let Some(first) = tenant_name_taken(&names, &t.tenant.name)? {
            tracing::warn!(
                tenant = t.tenant.id,
                other = first,
                "two tenants share a name; the lower id keeps it"
            );
        } else {
            names.insert(t.tenant.name.as_str(), t.tenant.id)?;
        }
    }
    let mut names = txn.open_table(PRINCIPAL_NAMES)?;
    for p in scan(&txn.open_table(PRINCIPALS)?, decode_principal)? {
        if let Some(first) = principal_name_taken(&names, p.tenant_id, &p.name)? {
            tracing::warn!(
                principal = p.id,
                other = first,
                "two principals of a tenant share a name; the lower id keeps it"
            );
        } else {
            names.insert((p.tenant_id, p.name.as_str()), p.id)?;
        }
    }
    Ok(())
}

/// Indexes every principal, credential and policy under its owners, so a
/// cascading delete or a listing reads the records it concerns instead of
/// every record of the table. A credential is filed under its principal's
/// tenant (where a principal's delete looks), or its own when its principal
/// is gone. A record that does not decode is left out with a warning
/// rather than failing the migration (and the node's start): it can still
/// be deleted by id (`delete_policy` finds a row it lacks), and the
/// snapshot build still refuses it until then.
pub(crate) fn migrate_v4(txn: &WriteTransaction) -> Result<(), StoreError> {
    fn each<T>(
        table: &impl ReadableTable<u64, &'static [u8]>,
        what: &'static str,
        decode: Decode<T>,
        mut put: impl FnMut(T) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        for row in table.iter()? {
            let (k, v) = row?;
            match decode(k.value(), v.value()) {
                Ok(record) => put(record)?,
                Err(e) => {
                    tracing::warn!(record = what, id = k.value(), error = %e, "left out of the owner index");
                }
            }
        }
        Ok(())
    }
    let mut tenant_of = std::collections::HashMap::new();
    let mut index = txn.open_table(TENANT_PRINCIPALS)?;
    each(
        &txn.open_table(PRINCIPALS)?,
        "principal",
        decode_principal,
        |p| {
            tenant_of.insert(p.id, p.tenant_id);
            index.insert((p.tenant_id, p.id), ())?;
            Ok(())
        },
    )?;
    let mut index = txn.open_table(PRINCIPAL_CREDENTIALS)?;
    each(
        &txn.open_table(CREDENTIALS)?,
        "credential",
        decode_credential,
        |r| {
            let c = r.credential;
            let tenant = tenant_of
                .get(&c.principal_id)
                .copied()
                .unwrap_or(c.tenant_id);
            index.insert((tenant, c.principal_id, c.id), ())?;
            Ok(())
        },
    )?;
    let mut index = txn.open_table(TENANT_POLICIES)?;
    each(&txn.open_table(POLICIES)?, "policy", decode_policy, |p| {
        index.insert((p.tenant_id, p.id), ())?;
        Ok(())
    })?;
    Ok(())
}

/// The ids filed under `owner` in an index keyed (owner, id): a tenant's
/// principals ([`TENANT_PRINCIPALS`]) or policies ([`TENANT_POLICIES`]), in
/// id order.
fn owned(index: &impl ReadableTable<(u64, u64), ()>, owner: u64) -> Result<Vec<u64>, StoreError> {
    let mut ids = Vec::new();
    for row in index.range((owner, 0)..=(owner, u64::MAX))? {
        ids.push(row?.0.value().1);
    }
    Ok(ids)
}

/// Removes the records filed under `owner` in `index` (keyed (owner, id))
/// from `records`, and their index rows; returns their ids.
fn remove_owned(
    index: &mut Table<(u64, u64), ()>,
    records: &mut Table<u64, &'static [u8]>,
    owner: u64,
) -> Result<BTreeSet<u64>, StoreError> {
    let ids = owned(index, owner)?;
    for &id in &ids {
        records.remove(id)?;
    }
    index.retain_in((owner, 0)..=(owner, u64::MAX), |_, ()| false)?;
    Ok(ids.into_iter().collect())
}

/// The (principal, credential) ids of `tenant`'s credentials, or of one
/// principal's, in order ([`PRINCIPAL_CREDENTIALS`]).
fn credentials_of(
    index: &impl ReadableTable<(u64, u64, u64), ()>,
    tenant: u64,
    principal: Option<u64>,
) -> Result<Vec<(u64, u64)>, StoreError> {
    let (from, to) = match principal {
        Some(p) => ((tenant, p, 0), (tenant, p, u64::MAX)),
        None => ((tenant, 0, 0), (tenant, u64::MAX, u64::MAX)),
    };
    let mut ids = Vec::new();
    for row in index.range(from..=to)? {
        let (_, p, c) = row?.0.value();
        ids.push((p, c));
    }
    Ok(ids)
}

macro_rules! backend_errors {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Backend(e.to_string())
            }
        }
    )*};
}
backend_errors!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

/// One open redb database with the store's logic; [`RedbStore`] holds it
/// and replaces it when an I/O error forces a reopen.
#[derive(Debug)]
pub(crate) struct Db {
    pub(crate) db: Database,
}

impl Db {
    /// Reads the records named in `changes` in one read transaction and
    /// puts them in `mirror` (a record gone is removed from it).
    fn patch(&self, mirror: &mut StoreContents, changes: &Changes) -> Result<(), StoreError> {
        fn each<T>(
            table: &impl ReadableTable<u64, &'static [u8]>,
            ids: &std::collections::BTreeSet<u64>,
            decode: Decode<T>,
            map: &mut BTreeMap<u64, T>,
        ) -> Result<(), StoreError> {
            for &id in ids {
                match table.get(id)? {
                    Some(v) => map.insert(id, decode(id, v.value())?),
                    None => map.remove(&id),
                };
            }
            Ok(())
        }
        let txn = self.db.begin_read()?;
        each(
            &txn.open_table(TENANTS)?,
            &changes.tenants,
            decode_tenant,
            &mut mirror.tenants,
        )?;
        each(
            &txn.open_table(PRINCIPALS)?,
            &changes.principals,
            decode_principal,
            &mut mirror.principals,
        )?;
        each(
            &txn.open_table(CREDENTIALS)?,
            &changes.credentials,
            decode_credential,
            &mut mirror.credentials,
        )?;
        each(
            &txn.open_table(POLICIES)?,
            &changes.policies,
            decode_policy,
            &mut mirror.policies,
        )?;
        if changes.steering {
            mirror.steering = read_steering(&txn.open_table(SETTINGS)?)?;
        }
        Ok(())
    }

    /// Opens (creating if needed) the file, checks every page of it
    /// (`set_check_integrity_on_open`), and runs the pending migrations.
    /// A file that does not check out is [`StoreError::Corrupt`]; should the
    /// storage engine panic on it anyway, the panic is caught and reported
    /// the same way, so a damaged file never crashes the process.
    fn open(path: &Path, migrations: &[Migration]) -> Result<Self, StoreError> {
        let opened = std::panic::catch_unwind(|| {
            let mut builder = redb::Builder::new();
            builder.set_check_integrity_on_open(true);
            builder.create(path)
        });
        let db = match opened {
            Ok(Ok(db)) => db,
            Ok(Err(e)) => return Err(open_error(path, e)),
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown failure".to_owned());
                return Err(file_corrupt(
                    path,
                    format!("the storage engine failed reading it ({what})"),
                ));
            }
        };
        let db = Self { db };
        db.migrate(migrations)?;
        Ok(db)
    }

    /// The schema version recorded in the file.
    fn schema_version(&self) -> Result<u64, StoreError> {
        let txn = self.db.begin_read()?;
        let meta = txn.open_table(META)?;
        Ok(meta.get(SCHEMA_KEY)?.map_or(0, |v| v.value()))
    }

    fn migrate(&self, migrations: &[Migration]) -> Result<(), StoreError> {
        let supported = migrations.len() as u64;
        let txn = self.write()?;
        let found = {
            let meta = txn.open_table(META)?;
            meta.get(SCHEMA_KEY)?.map_or(0, |v| v.value())
        };
        if found > supported {
            txn.abort()?;
            return Err(StoreError::SchemaTooNew { found, supported });
        }
        if found == supported {
            txn.abort()?;
            return Ok(());
        }
        for m in migrations.iter().filter(|m| m.version > found) {
            tracing::info!(
                version = m.version,
                step = m.description,
                "migrating the control store"
            );
            (m.run)(&txn)?;
        }
        txn.open_table(META)?.insert(SCHEMA_KEY, supported)?;
        txn.commit()?;
        Ok(())
    }

    /// A write transaction that is durable when it commits.
    fn write(&self) -> Result<WriteTransaction, StoreError> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        Ok(txn)
    }
}

/// A whole file that cannot be trusted.
#[expect(
    clippy::needless_pass_by_value,
    reason = "callers pass temporaries; by value reads better at every call site"
)]
fn file_corrupt(path: &Path, reason: impl ToString) -> StoreError {
    StoreError::Corrupt {
        table: "(file)",
        key: path.display().to_string(),
        reason: reason.to_string(),
    }
}

/// What an error opening the file means for the operator.
fn open_error(path: &Path, e: redb::DatabaseError) -> StoreError {
    match e {
        redb::DatabaseError::Storage(redb::StorageError::Corrupted(reason)) => {
            file_corrupt(path, reason)
        }
        // "Not a redb database" and other unreadable contents.
        redb::DatabaseError::Storage(redb::StorageError::Io(e))
            if e.kind() == std::io::ErrorKind::InvalidData =>
        {
            file_corrupt(path, e)
        }
        redb::DatabaseError::DatabaseAlreadyOpen => {
            StoreError::Backend(format!("{}: {IN_USE}", path.display()))
        }
        redb::DatabaseError::UpgradeRequired(v) => file_corrupt(
            path,
            format!("not a store this version reads (file format {v})"),
        ),
        other => StoreError::Backend(format!("{}: {other}", path.display())),
    }
}

/// What an open of a file held by another process says.
pub(crate) const IN_USE: &str = "in use by another process (is the node running?)";

/// The embedded store. Cheap to share behind an `Arc`; redb serialises
/// writers and lets readers run beside them.
///
/// It survives I/O errors: a storage failure (disk full, a failed write)
/// leaves redb refusing every later call until the file is reopened, so the
/// first such error marks the store failed and wakes whoever waits in
/// [`RedbStore::failed`]; [`Store::recover`] (called on `Reload`, SIGHUP and by
/// the control plane's reopen task with backoff) closes the database and
/// opens the file again, checking every page. Every call holds a read lock
/// on the open database for its whole transaction; a reopen takes the write
/// lock, so it never pulls the file from under a call in flight.
pub struct RedbStore {
    db: RwLock<Option<Db>>,
    path: PathBuf,
    migrations: Vec<Migration>,
    health: Mutex<StoreHealth>,
    failed_notify: tokio::sync::Notify,
    /// What was written since the last [`Store::refresh`], recorded after
    /// each commit (see the trait's invariants).
    journal: Mutex<Changes>,
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore")
            .field("path", &self.path)
            .field("health", &self.health())
            .finish_non_exhaustive()
    }
}

/// The store's state, for logs, readiness and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreHealth {
    /// An I/O error closed the store and it has not been reopened since.
    pub failed: bool,
    /// Reopen attempts since the process started.
    pub reopen_attempts: u64,
    /// Successful reopens since the process started.
    pub reopens: u64,
    /// The last storage error seen (no secrets: redb's own message).
    pub last_error: Option<String>,
}

/// A read guard on the open database (tests damage records through it).
#[cfg(test)]
pub(crate) struct DbGuard<'a>(std::sync::RwLockReadGuard<'a, Option<Db>>);

#[cfg(test)]
impl std::ops::Deref for DbGuard<'_> {
    type Target = Database;
    fn deref(&self) -> &Database {
        match self.0.as_ref() {
            Some(db) => &db.db,
            // `database()` builds a guard only over an open database.
            None => unreachable!("guard over a closed store"),
        }
    }
}

impl RedbStore {
    /// Opens (creating if needed) `<data_dir>/control.redb`, checks it and
    /// runs the pending migrations.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        Self::open_file(&data_dir.join(STORE_FILE))
    }

    /// Opens (creating if needed) the store at `path`, checks and migrates it.
    pub fn open_file(path: &Path) -> Result<Self, StoreError> {
        Self::open_with(path, MIGRATIONS)
    }

    pub(crate) fn open_with(path: &Path, migrations: &[Migration]) -> Result<Self, StoreError> {
        // Signing keys and credential hashes live here: owner only, from the
        // moment the file exists (and fixed if an older file is wider).
        let owner_only =
            |e: std::io::Error| StoreError::Backend(format!("{}: {e}", path.display()));
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
            .map_err(owner_only)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(owner_only)?;
        let db = Db::open(path, migrations)?;
        Ok(Self {
            db: RwLock::new(Some(db)),
            path: path.to_owned(),
            migrations: migrations.to_vec(),
            health: Mutex::new(StoreHealth::default()),
            failed_notify: tokio::sync::Notify::new(),
            journal: Mutex::new(Changes {
                everything: true,
                ..Changes::default()
            }),
        })
    }

    /// Where the file is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The schema version recorded in the file.
    pub fn schema_version(&self) -> Result<u64, StoreError> {
        self.with(Db::schema_version)
    }

    /// The store's state now.
    pub fn health(&self) -> StoreHealth {
        self.health
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Completes once a storage error has marked the store failed (at once
    /// if it did since the last wait).
    pub async fn failed(&self) {
        self.failed_notify.notified().await;
    }

    /// Closes the database and opens the file again, checking every page.
    /// On failure the store stays closed (every call fails with
    /// [`StoreError::Backend`]) and failed.
    pub fn reopen(&self) -> Result<(), StoreError> {
        let mut slot = self.db.write().unwrap_or_else(PoisonError::into_inner);
        let attempt = {
            let mut h = self.health.lock().unwrap_or_else(PoisonError::into_inner);
            h.reopen_attempts += 1;
            h.reopen_attempts
        };
        // The old database holds the file's lock: it must be gone before
        // the file is opened again.
        drop(slot.take());
        // What a failed write left behind is unknown: mirrors read all.
        self.note(|c| c.everything = true);
        match Db::open(&self.path, &self.migrations) {
            Ok(db) => {
                *slot = Some(db);
                let mut h = self.health.lock().unwrap_or_else(PoisonError::into_inner);
                h.failed = false;
                h.reopens += 1;
                tracing::info!(attempt, path = %self.path.display(), "control store reopened");
                Ok(())
            }
            Err(e) => {
                let mut h = self.health.lock().unwrap_or_else(PoisonError::into_inner);
                h.failed = true;
                h.last_error = Some(e.to_string());
                tracing::warn!(attempt, error = %e, "control store reopen failed");
                Err(e)
            }
        }
    }

    /// The underlying database, for tests that damage records on purpose.
    #[cfg(test)]
    #[allow(dead_code, reason = "used by some test modules only")]
    pub(crate) fn database(&self) -> DbGuard<'_> {
        // Whatever the test writes through it bypasses the journal.
        self.note(|c| c.everything = true);
        let guard = self.db.read().unwrap_or_else(PoisonError::into_inner);
        assert!(guard.is_some(), "the store is closed");
        DbGuard(guard)
    }

    /// Records a write in the journal (after it committed, or failed).
    fn note(&self, change: impl FnOnce(&mut Changes)) {
        change(&mut self.journal.lock().unwrap_or_else(PoisonError::into_inner));
    }

    /// Runs a write on the open database, then records what it touched
    /// (when it committed, or whatever happened for writes named by id).
    fn write_with<T>(
        &self,
        f: impl FnOnce(&Db) -> Result<T, StoreError>,
        touched: impl FnOnce(&mut Changes, &T),
        on_error: impl FnOnce(&mut Changes),
    ) -> Result<T, StoreError> {
        let result = self.with(f);
        match &result {
            Ok(v) => self.note(|c| touched(c, v)),
            Err(_) => self.note(on_error),
        }
        result
    }

    /// Runs `f` on the open database; a storage error marks the store
    /// failed (once) and wakes the reopen task.
    fn with<T>(&self, f: impl FnOnce(&Db) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let guard = self.db.read().unwrap_or_else(PoisonError::into_inner);
        let Some(db) = guard.as_ref() else {
            let last = self.health().last_error.unwrap_or_default();
            return Err(StoreError::Backend(format!(
                "closed after an I/O error, reopening ({last})"
            )));
        };
        let result = f(db);
        if let Err(StoreError::Backend(reason)) = &result {
            let first = {
                let mut h = self.health.lock().unwrap_or_else(PoisonError::into_inner);
                let first = !h.failed;
                h.failed = true;
                h.last_error = Some(reason.clone());
                first
            };
            if first {
                tracing::error!(
                    error = %reason,
                    "control store failed: it will be reopened (node reload, SIGHUP, or by itself with backoff)"
                );
                self.failed_notify.notify_one();
            }
        }
        result
    }

    /// A consistent copy of the whole store, as the bytes of a redb file
    /// (see `backup.rs`).
    pub fn backup_bytes(&self) -> Result<Vec<u8>, StoreError> {
        self.with(|db| super::backup::copy_database(&db.db))
    }
}

// ------------------------------------------------------------ record codec

#[expect(
    clippy::needless_pass_by_value,
    reason = "callers pass ids and temporaries; by value reads better at every call site"
)]
fn corrupt(table: &'static str, key: impl ToString, reason: impl ToString) -> StoreError {
    StoreError::Corrupt {
        table,
        key: key.to_string(),
        reason: reason.to_string(),
    }
}

/// The placement of a tenant stored before placement existed.
fn default_placement() -> String {
    arqonbus_core::placement::TenantPlacement::default().to_string()
}

fn decode_tenant(key: u64, bytes: &[u8]) -> Result<TenantRecord, StoreError> {
    let r = StoredTenant::decode(bytes).map_err(|e| corrupt("tenants", key, e))?;
    let mut tenant = r
        .tenant
        .ok_or_else(|| corrupt("tenants", key, "no tenant"))?;
    if tenant.placement.is_empty() {
        tenant.placement = default_placement();
    }
    if tenant.id != key {
        return Err(corrupt(
            "tenants",
            key,
            format!("holds tenant {}", tenant.id),
        ));
    }
    Ok(TenantRecord {
        tenant,
        signing_key: SigningKey(r.signing_key_pkcs8),
    })
}

fn encode_tenant(r: &TenantRecord) -> Vec<u8> {
    StoredTenant {
        tenant: Some(r.tenant.clone()),
        signing_key_pkcs8: r.signing_key.0.clone(),
    }
    .encode_to_vec()
}

fn decode_principal(key: u64, bytes: &[u8]) -> Result<Principal, StoreError> {
    let r = StoredPrincipal::decode(bytes).map_err(|e| corrupt("principals", key, e))?;
    let p = r
        .principal
        .ok_or_else(|| corrupt("principals", key, "no principal"))?;
    if p.id != key {
        return Err(corrupt(
            "principals",
            key,
            format!("holds principal {}", p.id),
        ));
    }
    Ok(p)
}

fn encode_principal(p: &Principal) -> Vec<u8> {
    StoredPrincipal {
        principal: Some(p.clone()),
    }
    .encode_to_vec()
}

fn decode_credential(key: u64, bytes: &[u8]) -> Result<CredentialRecord, StoreError> {
    let r = StoredCredential::decode(bytes).map_err(|e| corrupt("credentials", key, e))?;
    let credential = r
        .credential
        .ok_or_else(|| corrupt("credentials", key, "no credential"))?;
    if credential.id != key {
        return Err(corrupt(
            "credentials",
            key,
            format!("holds credential {}", credential.id),
        ));
    }
    let token_sha256 = if r.token_sha256.is_empty() {
        None
    } else {
        Some(
            <[u8; 32]>::try_from(r.token_sha256.as_slice())
                .map_err(|_| corrupt("credentials", key, "token hash is not 32 bytes"))?,
        )
    };
    Ok(CredentialRecord {
        credential,
        token_sha256,
    })
}

fn encode_credential(r: &CredentialRecord) -> Vec<u8> {
    StoredCredential {
        credential: Some(r.credential.clone()),
        token_sha256: r.token_sha256.map(Vec::from).unwrap_or_default(),
    }
    .encode_to_vec()
}

fn decode_policy(key: u64, bytes: &[u8]) -> Result<Policy, StoreError> {
    let r = StoredPolicy::decode(bytes).map_err(|e| corrupt("policies", key, e))?;
    let p = r
        .policy
        .ok_or_else(|| corrupt("policies", key, "no policy"))?;
    if p.id != key {
        return Err(corrupt("policies", key, format!("holds policy {}", p.id)));
    }
    Ok(p)
}

fn encode_policy(p: &Policy) -> Vec<u8> {
    StoredPolicy {
        policy: Some(p.clone()),
    }
    .encode_to_vec()
}

fn decode_steering(bytes: &[u8]) -> Result<SteeringRecord, StoreError> {
    let r = StoredSteering::decode(bytes).map_err(|e| corrupt("settings", STEERING, e))?;
    Ok(SteeringRecord {
        mode: r.mode,
        affinity: r.affinity,
        updated_at_unix_ms: r.updated_at_unix_ms,
    })
}

fn encode_steering(s: &SteeringRecord) -> Vec<u8> {
    StoredSteering {
        mode: s.mode.clone(),
        affinity: s.affinity.clone(),
        updated_at_unix_ms: s.updated_at_unix_ms,
    }
    .encode_to_vec()
}

fn read_steering(
    settings: &impl ReadableTable<&'static str, &'static [u8]>,
) -> Result<Option<SteeringRecord>, StoreError> {
    match settings.get(STEERING)? {
        Some(v) => decode_steering(v.value()).map(Some),
        None => Ok(None),
    }
}

type Decode<T> = fn(u64, &[u8]) -> Result<T, StoreError>;

/// Every record of a table, decoded, by id.
fn scan_map<T>(
    table: &impl ReadableTable<u64, &'static [u8]>,
    decode: Decode<T>,
) -> Result<BTreeMap<u64, T>, StoreError> {
    let mut out = BTreeMap::new();
    for row in table.iter()? {
        let (k, v) = row?;
        let id = k.value();
        out.insert(id, decode(id, v.value())?);
    }
    Ok(out)
}

/// Every record of a table, decoded, in id order.
fn scan<T>(
    table: &impl ReadableTable<u64, &'static [u8]>,
    decode: Decode<T>,
) -> Result<Vec<T>, StoreError> {
    let mut out = Vec::new();
    for row in table.iter()? {
        let (k, v) = row?;
        out.push(decode(k.value(), v.value())?);
    }
    Ok(out)
}

fn get<T>(
    table: &impl ReadableTable<u64, &'static [u8]>,
    id: u64,
    decode: Decode<T>,
) -> Result<Option<T>, StoreError> {
    match table.get(id)? {
        Some(v) => decode(id, v.value()).map(Some),
        None => Ok(None),
    }
}

#[expect(
    clippy::needless_pass_by_value,
    reason = "callers pass ids and temporaries; by value reads better at every call site"
)]
fn not_found(what: &'static str, key: impl ToString) -> StoreError {
    StoreError::NotFound {
        what,
        key: key.to_string(),
    }
}

fn check_version(
    what: &'static str,
    id: u64,
    expected: u64,
    actual: u64,
) -> Result<(), StoreError> {
    if expected != 0 && expected != actual {
        return Err(StoreError::VersionMismatch {
            what,
            id,
            expected,
            actual,
        });
    }
    Ok(())
}

/// Hands out the counter's next id.
fn allocate(meta: &mut Table<&str, u64>, counter: &str) -> Result<u64, StoreError> {
    let id = meta.get(counter)?.map_or(1, |v| v.value());
    let next = id
        .checked_add(1)
        .ok_or_else(|| corrupt("meta", counter, "counter exhausted"))?;
    meta.insert(counter, next)?;
    Ok(id)
}

/// Makes sure the counter never hands out `id` again.
fn reserve(meta: &mut Table<&str, u64>, counter: &str, id: u64) -> Result<(), StoreError> {
    let next = meta.get(counter)?.map_or(1, |v| v.value());
    if id >= next {
        meta.insert(counter, id.saturating_add(1))?;
    }
    Ok(())
}

/// The tenant holding `name`, from the name index.
fn tenant_name_taken(
    names: &impl ReadableTable<&'static str, u64>,
    name: &str,
) -> Result<Option<u64>, StoreError> {
    Ok(names.get(name)?.map(|v| v.value()))
}

/// The principal of `tenant_id` holding `name`, from the name index.
fn principal_name_taken(
    names: &impl ReadableTable<(u64, &'static str), u64>,
    tenant_id: u64,
    name: &str,
) -> Result<Option<u64>, StoreError> {
    Ok(names.get((tenant_id, name))?.map(|v| v.value()))
}

/// Ids of `tenant_id`'s principals, in name order, from the name index.
fn principal_ids(
    names: &impl ReadableTable<(u64, &'static str), u64>,
    tenant_id: u64,
) -> Result<Vec<u64>, StoreError> {
    let mut ids = Vec::new();
    for row in names.range((tenant_id, "")..)? {
        let (k, v) = row?;
        if k.value().0 != tenant_id {
            break;
        }
        ids.push(v.value());
    }
    Ok(ids)
}

fn require_tenant(
    tenants: &impl ReadableTable<u64, &'static [u8]>,
    id: u64,
) -> Result<TenantRecord, StoreError> {
    get(tenants, id, decode_tenant)?.ok_or_else(|| not_found("tenant", id))
}

fn require_principal(
    principals: &impl ReadableTable<u64, &'static [u8]>,
    id: u64,
) -> Result<Principal, StoreError> {
    get(principals, id, decode_principal)?.ok_or_else(|| not_found("principal", id))
}

impl Db {
    /// Deletes tenant `id` with its principals, credentials and policies;
    /// returns every record removed. The owner indexes name them: nothing
    /// else is read.
    fn delete_tenant_cascade(&self, id: u64) -> Result<Changes, StoreError> {
        let txn = self.write()?;
        let removed = {
            let mut tenants = txn.open_table(TENANTS)?;
            let Some(record) = tenants.remove(id)?.map(|v| decode_tenant(id, v.value())) else {
                return Err(not_found("tenant", id));
            };
            txn.open_table(TENANT_NAMES)?
                .remove(record?.tenant.name.as_str())?;
            txn.open_table(PRINCIPAL_NAMES)?
                .retain_in((id, "")..(id.saturating_add(1), ""), |_, _| false)?;
            let mut changes = Changes {
                tenants: [id].into(),
                ..Changes::default()
            };
            changes.principals = remove_owned(
                &mut txn.open_table(TENANT_PRINCIPALS)?,
                &mut txn.open_table(PRINCIPALS)?,
                id,
            )?;
            let mut index = txn.open_table(PRINCIPAL_CREDENTIALS)?;
            let mut credentials = txn.open_table(CREDENTIALS)?;
            for (_, c) in credentials_of(&index, id, None)? {
                credentials.remove(c)?;
                changes.credentials.insert(c);
            }
            index.retain_in((id, 0, 0)..=(id, u64::MAX, u64::MAX), |_, ()| false)?;
            changes.policies = remove_owned(
                &mut txn.open_table(TENANT_POLICIES)?,
                &mut txn.open_table(POLICIES)?,
                id,
            )?;
            changes
        };
        txn.commit()?;
        Ok(removed)
    }

    /// Deletes principal `id` with its credentials and the policies that
    /// target it; returns every record removed. The owner indexes name its
    /// credentials and its tenant's policies: nothing else is read.
    fn delete_principal_cascade(&self, id: u64) -> Result<Changes, StoreError> {
        let txn = self.write()?;
        let removed = {
            let Some(p) = txn
                .open_table(PRINCIPALS)?
                .remove(id)?
                .map(|v| decode_principal(id, v.value()))
            else {
                return Err(not_found("principal", id));
            };
            let p = p?;
            let tenant = p.tenant_id;
            txn.open_table(PRINCIPAL_NAMES)?
                .remove((tenant, p.name.as_str()))?;
            txn.open_table(TENANT_PRINCIPALS)?.remove((tenant, id))?;
            let mut changes = Changes {
                principals: [id].into(),
                ..Changes::default()
            };
            let mut index = txn.open_table(PRINCIPAL_CREDENTIALS)?;
            let mut credentials = txn.open_table(CREDENTIALS)?;
            for (_, c) in credentials_of(&index, tenant, Some(id))? {
                credentials.remove(c)?;
                index.remove((tenant, id, c))?;
                changes.credentials.insert(c);
            }
            let mut index = txn.open_table(TENANT_POLICIES)?;
            let mut policies = txn.open_table(POLICIES)?;
            for pid in owned(&index, tenant)? {
                let doomed = get(&policies, pid, decode_policy)?
                    .is_some_and(|policy| policy.target == Some(Target::PrincipalId(id)));
                if doomed {
                    policies.remove(pid)?;
                    index.remove((tenant, pid))?;
                    changes.policies.insert(pid);
                }
            }
            changes
        };
        txn.commit()?;
        Ok(removed)
    }
}

impl Store for Db {
    fn create_tenant(&self, new: NewTenant) -> Result<Tenant, StoreError> {
        let txn = self.write()?;
        let tenant = {
            let mut tenants = txn.open_table(TENANTS)?;
            let mut names = txn.open_table(TENANT_NAMES)?;
            if tenant_name_taken(&names, &new.name)?.is_some() {
                return Err(StoreError::AlreadyExists {
                    what: "tenant",
                    name: new.name,
                });
            }
            let id = allocate(&mut txn.open_table(META)?, NEXT_TENANT)?;
            names.insert(new.name.as_str(), id)?;
            let record = TenantRecord {
                tenant: Tenant {
                    id,
                    name: new.name,
                    quotas: Some(new.quotas),
                    created_at_unix_ms: new.created_at_unix_ms,
                    version: 1,
                    placement: new.placement,
                    allowed_origins: new.allowed_origins,
                },
                signing_key: new.signing_key,
            };
            tenants.insert(id, encode_tenant(&record).as_slice())?;
            record.tenant
        };
        txn.commit()?;
        Ok(tenant)
    }

    fn tenant(&self, id: u64) -> Result<Tenant, StoreError> {
        let txn = self.db.begin_read()?;
        Ok(require_tenant(&txn.open_table(TENANTS)?, id)?.tenant)
    }

    fn tenant_by_name(&self, name: &str) -> Result<Tenant, StoreError> {
        let txn = self.db.begin_read()?;
        let id = tenant_name_taken(&txn.open_table(TENANT_NAMES)?, name)?
            .ok_or_else(|| not_found("tenant", format!("{name:?}")))?;
        Ok(require_tenant(&txn.open_table(TENANTS)?, id)?.tenant)
    }

    fn list_tenants(&self) -> Result<Vec<Tenant>, StoreError> {
        let txn = self.db.begin_read()?;
        Ok(scan(&txn.open_table(TENANTS)?, decode_tenant)?
            .into_iter()
            .map(|r| r.tenant)
            .collect())
    }

    fn update_tenant(
        &self,
        id: u64,
        expected_version: u64,
        change: TenantChange,
    ) -> Result<Tenant, StoreError> {
        let txn = self.write()?;
        let tenant = {
            let mut tenants = txn.open_table(TENANTS)?;
            let mut record = require_tenant(&tenants, id)?;
            check_version("tenant", id, expected_version, record.tenant.version)?;
            if let Some(q) = change.quotas {
                record.tenant.quotas = Some(q);
            }
            if let Some(p) = change.placement {
                record.tenant.placement = p;
            }
            if let Some(o) = change.allowed_origins {
                record.tenant.allowed_origins = o;
            }
            record.tenant.version += 1;
            tenants.insert(id, encode_tenant(&record).as_slice())?;
            record.tenant
        };
        txn.commit()?;
        Ok(tenant)
    }

    fn delete_tenant(&self, id: u64) -> Result<(), StoreError> {
        self.delete_tenant_cascade(id).map(drop)
    }

    fn create_principal(&self, new: NewPrincipal) -> Result<Principal, StoreError> {
        let txn = self.write()?;
        let principal = {
            require_tenant(&txn.open_table(TENANTS)?, new.tenant_id)?;
            let mut principals = txn.open_table(PRINCIPALS)?;
            let mut names = txn.open_table(PRINCIPAL_NAMES)?;
            if principal_name_taken(&names, new.tenant_id, &new.name)?.is_some() {
                return Err(StoreError::AlreadyExists {
                    what: "principal",
                    name: new.name,
                });
            }
            let id = allocate(&mut txn.open_table(META)?, NEXT_PRINCIPAL)?;
            names.insert((new.tenant_id, new.name.as_str()), id)?;
            let p = Principal {
                id,
                tenant_id: new.tenant_id,
                name: new.name,
                roles: new.roles,
                quotas: Some(new.quotas),
                created_at_unix_ms: new.created_at_unix_ms,
                version: 1,
            };
            principals.insert(id, encode_principal(&p).as_slice())?;
            txn.open_table(TENANT_PRINCIPALS)?
                .insert((p.tenant_id, id), ())?;
            p
        };
        txn.commit()?;
        Ok(principal)
    }

    fn principal(&self, id: u64) -> Result<Principal, StoreError> {
        let txn = self.db.begin_read()?;
        require_principal(&txn.open_table(PRINCIPALS)?, id)
    }

    fn list_principals(&self, tenant_id: u64) -> Result<Vec<Principal>, StoreError> {
        let txn = self.db.begin_read()?;
        require_tenant(&txn.open_table(TENANTS)?, tenant_id)?;
        let principals = txn.open_table(PRINCIPALS)?;
        let mut ids = principal_ids(&txn.open_table(PRINCIPAL_NAMES)?, tenant_id)?;
        ids.sort_unstable();
        ids.into_iter()
            .map(|id| require_principal(&principals, id))
            .collect()
    }

    fn update_principal(
        &self,
        id: u64,
        expected_version: u64,
        roles: Vec<String>,
        quotas: Option<Quotas>,
    ) -> Result<Principal, StoreError> {
        let txn = self.write()?;
        let principal = {
            let mut principals = txn.open_table(PRINCIPALS)?;
            let mut p = require_principal(&principals, id)?;
            check_version("principal", id, expected_version, p.version)?;
            p.roles = roles;
            if let Some(q) = quotas {
                p.quotas = Some(q);
            }
            p.version += 1;
            principals.insert(id, encode_principal(&p).as_slice())?;
            p
        };
        txn.commit()?;
        Ok(principal)
    }

    fn delete_principal(&self, id: u64) -> Result<(), StoreError> {
        self.delete_principal_cascade(id).map(drop)
    }

    fn issue_credential(
        &self,
        new: NewCredential,
        mint: &mut MintFn<'_>,
    ) -> Result<Issued, StoreError> {
        let txn = self.write()?;
        let issued = {
            let principal = require_principal(&txn.open_table(PRINCIPALS)?, new.principal_id)?;
            let tenant = require_tenant(&txn.open_table(TENANTS)?, principal.tenant_id)?;
            let id = allocate(&mut txn.open_table(META)?, NEXT_CREDENTIAL)?;
            let minted = mint(&MintContext {
                tenant_id: tenant.tenant.id,
                principal_id: principal.id,
                credential_id: id,
                signing_key: &tenant.signing_key,
                new: &new,
            })?;
            let record = CredentialRecord {
                credential: Credential {
                    id,
                    tenant_id: tenant.tenant.id,
                    principal_id: principal.id,
                    kind: new.kind.into(),
                    created_at_unix_ms: new.created_at_unix_ms,
                    expires_at_unix_ms: new.expires_at_unix_ms,
                    revoked: false,
                    revoked_at_unix_ms: 0,
                    fingerprint: minted.fingerprint,
                },
                token_sha256: minted.token_sha256,
            };
            txn.open_table(CREDENTIALS)?
                .insert(id, encode_credential(&record).as_slice())?;
            txn.open_table(PRINCIPAL_CREDENTIALS)?
                .insert((tenant.tenant.id, principal.id, id), ())?;
            Issued {
                credential: record.credential,
                token: minted.token,
            }
        };
        txn.commit()?;
        Ok(issued)
    }

    fn list_credentials(
        &self,
        tenant_id: u64,
        principal_id: Option<u64>,
    ) -> Result<Vec<Credential>, StoreError> {
        let txn = self.db.begin_read()?;
        require_tenant(&txn.open_table(TENANTS)?, tenant_id)?;
        if let Some(pid) = principal_id {
            let p = require_principal(&txn.open_table(PRINCIPALS)?, pid)?;
            if p.tenant_id != tenant_id {
                return Err(not_found(
                    "principal",
                    format!("{pid} in tenant {tenant_id}"),
                ));
            }
        }
        let table = txn.open_table(CREDENTIALS)?;
        let mut out = Vec::new();
        for (_, id) in credentials_of(
            &txn.open_table(PRINCIPAL_CREDENTIALS)?,
            tenant_id,
            principal_id,
        )? {
            let c = get(&table, id, decode_credential)?.ok_or_else(|| {
                corrupt("principal_credentials", id, "indexes a missing credential")
            })?;
            out.push(c.credential);
        }
        // In id order, as a scan of the table gave them.
        out.sort_unstable_by_key(|c| c.id);
        Ok(out)
    }

    fn revoke_credential(
        &self,
        id: u64,
        now_unix_ms: i64,
    ) -> Result<(Credential, bool), StoreError> {
        let txn = self.write()?;
        let mut record = {
            let table = txn.open_table(CREDENTIALS)?;
            get(&table, id, decode_credential)?.ok_or_else(|| not_found("credential", id))?
        };
        if record.credential.revoked {
            txn.abort()?;
            return Ok((record.credential, false));
        }
        record.credential.revoked = true;
        record.credential.revoked_at_unix_ms = now_unix_ms;
        txn.open_table(CREDENTIALS)?
            .insert(id, encode_credential(&record).as_slice())?;
        txn.commit()?;
        Ok((record.credential, true))
    }

    fn put_policy(&self, mut policy: Policy, expected_version: u64) -> Result<Policy, StoreError> {
        let txn = self.write()?;
        {
            require_tenant(&txn.open_table(TENANTS)?, policy.tenant_id)?;
            if let Some(Target::PrincipalId(pid)) = policy.target {
                let p = require_principal(&txn.open_table(PRINCIPALS)?, pid)?;
                if p.tenant_id != policy.tenant_id {
                    return Err(not_found(
                        "principal",
                        format!("{pid} in tenant {}", policy.tenant_id),
                    ));
                }
            }
            let mut policies = txn.open_table(POLICIES)?;
            if policy.id == 0 {
                policy.id = allocate(&mut txn.open_table(META)?, NEXT_POLICY)?;
                policy.version = 1;
            } else {
                let old = get(&policies, policy.id, decode_policy)?
                    .ok_or_else(|| not_found("policy", policy.id))?;
                if old.tenant_id != policy.tenant_id {
                    return Err(StoreError::Invalid {
                        field: "policy.tenant_id",
                        reason: format!(
                            "policy {} belongs to tenant {}; a policy cannot move",
                            policy.id, old.tenant_id
                        ),
                    });
                }
                check_version("policy", policy.id, expected_version, old.version)?;
                policy.version = old.version + 1;
            }
            policies.insert(policy.id, encode_policy(&policy).as_slice())?;
            txn.open_table(TENANT_POLICIES)?
                .insert((policy.tenant_id, policy.id), ())?;
        }
        txn.commit()?;
        Ok(policy)
    }

    fn list_policies(&self, tenant_id: u64) -> Result<Vec<Policy>, StoreError> {
        let txn = self.db.begin_read()?;
        require_tenant(&txn.open_table(TENANTS)?, tenant_id)?;
        let table = txn.open_table(POLICIES)?;
        let mut out = Vec::new();
        for id in owned(&txn.open_table(TENANT_POLICIES)?, tenant_id)? {
            out.push(
                get(&table, id, decode_policy)?
                    .ok_or_else(|| corrupt("tenant_policies", id, "indexes a missing policy"))?,
            );
        }
        Ok(out)
    }

    fn delete_policy(&self, id: u64) -> Result<(), StoreError> {
        let txn = self.write()?;
        {
            let Some(policy) = txn
                .open_table(POLICIES)?
                .remove(id)?
                .map(|v| decode_policy(id, v.value()))
            else {
                return Err(not_found("policy", id));
            };
            let mut index = txn.open_table(TENANT_POLICIES)?;
            match policy {
                Ok(p) => {
                    index.remove((p.tenant_id, id))?;
                }
                // A corrupt record can still be deleted (the repair for it);
                // its tenant unknown, the index is searched for its row.
                Err(_) => index.retain(|(_, p), ()| p != id)?,
            }
        }
        txn.commit()?;
        Ok(())
    }

    fn load(&self) -> Result<StoreContents, StoreError> {
        let txn = self.db.begin_read()?;
        Ok(StoreContents {
            tenants: scan_map(&txn.open_table(TENANTS)?, decode_tenant)?,
            principals: scan_map(&txn.open_table(PRINCIPALS)?, decode_principal)?,
            credentials: scan_map(&txn.open_table(CREDENTIALS)?, decode_credential)?,
            policies: scan_map(&txn.open_table(POLICIES)?, decode_policy)?,
            steering: read_steering(&txn.open_table(SETTINGS)?)?,
        })
    }

    fn next_epoch(&self, at_least: u64) -> Result<u64, StoreError> {
        let txn = self.write()?;
        let epoch = {
            let mut meta = txn.open_table(META)?;
            let last = meta.get(LAST_EPOCH)?.map_or(0, |v| v.value());
            let epoch = last.saturating_add(1).max(at_least);
            meta.insert(LAST_EPOCH, epoch)?;
            epoch
        };
        txn.commit()?;
        Ok(epoch)
    }

    fn import_tenants(
        &self,
        imports: &[ImportTenant],
        once: Option<&str>,
    ) -> Result<ImportReport, StoreError> {
        let marker = once.map(|m| format!("marker:{m}"));
        let txn = self.write()?;
        if let Some(m) = &marker {
            let done = txn.open_table(META)?.get(m.as_str())?.is_some();
            if done {
                txn.abort()?;
                return Ok(ImportReport {
                    already_done: true,
                    ..ImportReport::default()
                });
            }
        }
        let mut report = ImportReport::default();
        {
            let mut meta = txn.open_table(META)?;
            if let Some(m) = &marker {
                meta.insert(m.as_str(), 1)?;
            }
            let mut tenants = txn.open_table(TENANTS)?;
            let mut tenant_names = txn.open_table(TENANT_NAMES)?;
            let mut principals = txn.open_table(PRINCIPALS)?;
            let mut principal_names = txn.open_table(PRINCIPAL_NAMES)?;
            let mut credentials = txn.open_table(CREDENTIALS)?;
            let mut tenant_principals = txn.open_table(TENANT_PRINCIPALS)?;
            let mut credential_index = txn.open_table(PRINCIPAL_CREDENTIALS)?;
            for t in imports {
                if tenants.get(t.id)?.is_some() {
                    report.skipped.push(t.id);
                    continue;
                }
                if let Some(other) = tenant_name_taken(&tenant_names, &t.name)? {
                    return Err(StoreError::Invalid {
                        field: "tenants.name",
                        reason: format!(
                            "tenant {} is named {:?} like tenant {other}",
                            t.id, t.name
                        ),
                    });
                }
                reserve(&mut meta, NEXT_TENANT, t.id)?;
                let record = TenantRecord {
                    tenant: Tenant {
                        id: t.id,
                        name: t.name.clone(),
                        quotas: Some(Quotas::default()),
                        created_at_unix_ms: t.created_at_unix_ms,
                        version: 1,
                        placement: if t.placement.is_empty() {
                            default_placement()
                        } else {
                            t.placement.clone()
                        },
                        // Seeds from files carry no origins: any.
                        allowed_origins: Vec::new(),
                    },
                    signing_key: t.signing_key.clone(),
                };
                tenants.insert(t.id, encode_tenant(&record).as_slice())?;
                tenant_names.insert(t.name.as_str(), t.id)?;
                for c in &t.credentials {
                    match get(&principals, c.principal_id, decode_principal)? {
                        Some(p) if p.tenant_id != t.id => {
                            return Err(StoreError::Invalid {
                                field: "tenants.credentials.principal_id",
                                reason: format!(
                                    "principal {} of tenant {} already belongs to tenant {}",
                                    c.principal_id, t.id, p.tenant_id
                                ),
                            });
                        }
                        Some(_) => {}
                        None => {
                            if let Some(other) =
                                principal_name_taken(&principal_names, t.id, &c.principal)?
                            {
                                return Err(StoreError::Invalid {
                                    field: "tenants.credentials.principal",
                                    reason: format!(
                                        "principal {} is named {:?} like principal {other}",
                                        c.principal_id, c.principal
                                    ),
                                });
                            }
                            reserve(&mut meta, NEXT_PRINCIPAL, c.principal_id)?;
                            let p = Principal {
                                id: c.principal_id,
                                tenant_id: t.id,
                                name: c.principal.clone(),
                                roles: Vec::new(),
                                quotas: Some(Quotas::default()),
                                created_at_unix_ms: t.created_at_unix_ms,
                                version: 1,
                            };
                            principals.insert(p.id, encode_principal(&p).as_slice())?;
                            principal_names.insert((t.id, p.name.as_str()), p.id)?;
                            tenant_principals.insert((t.id, p.id), ())?;
                        }
                    }
                    let id = allocate(&mut meta, NEXT_CREDENTIAL)?;
                    let record = CredentialRecord {
                        credential: Credential {
                            id,
                            tenant_id: t.id,
                            principal_id: c.principal_id,
                            kind: CredentialKind::Bearer.into(),
                            created_at_unix_ms: t.created_at_unix_ms,
                            expires_at_unix_ms: 0,
                            revoked: false,
                            revoked_at_unix_ms: 0,
                            fingerprint: CredentialHash(c.token_sha256).fingerprint(),
                        },
                        token_sha256: Some(c.token_sha256),
                    };
                    credentials.insert(id, encode_credential(&record).as_slice())?;
                    credential_index.insert((t.id, c.principal_id, id), ())?;
                }
                report.created.push(t.id);
            }
        }
        txn.commit()?;
        Ok(report)
    }

    fn steering(&self) -> Result<Option<SteeringRecord>, StoreError> {
        let txn = self.db.begin_read()?;
        read_steering(&txn.open_table(SETTINGS)?)
    }

    fn set_steering(&self, steering: &SteeringRecord) -> Result<(), StoreError> {
        let txn = self.write()?;
        txn.open_table(SETTINGS)?
            .insert(STEERING, encode_steering(steering).as_slice())?;
        txn.commit()?;
        Ok(())
    }

    fn admin_token_hash(&self) -> Result<Option<[u8; 32]>, StoreError> {
        let txn = self.db.begin_read()?;
        let secrets = txn.open_table(SECRETS)?;
        match secrets.get(ADMIN_HASH)? {
            None => Ok(None),
            Some(v) => <[u8; 32]>::try_from(v.value())
                .map(Some)
                .map_err(|_| corrupt("secrets", ADMIN_HASH, "not 32 bytes")),
        }
    }

    fn set_admin_token_hash(&self, hash: [u8; 32]) -> Result<(), StoreError> {
        let txn = self.write()?;
        txn.open_table(SECRETS)?
            .insert(ADMIN_HASH, hash.as_slice())?;
        txn.commit()?;
        Ok(())
    }
}

impl Store for RedbStore {
    fn create_tenant(&self, new: NewTenant) -> Result<Tenant, StoreError> {
        self.write_with(
            |db| db.create_tenant(new),
            |c, t| {
                c.tenants.insert(t.id);
            },
            |_| {},
        )
    }
    fn tenant(&self, id: u64) -> Result<Tenant, StoreError> {
        self.with(|db| db.tenant(id))
    }
    fn tenant_by_name(&self, name: &str) -> Result<Tenant, StoreError> {
        self.with(|db| db.tenant_by_name(name))
    }
    fn list_tenants(&self) -> Result<Vec<Tenant>, StoreError> {
        self.with(Db::list_tenants)
    }
    fn update_tenant(
        &self,
        id: u64,
        expected_version: u64,
        change: TenantChange,
    ) -> Result<Tenant, StoreError> {
        let touch = |c: &mut Changes| {
            c.tenants.insert(id);
        };
        self.write_with(
            |db| db.update_tenant(id, expected_version, change),
            |c, _| touch(c),
            touch,
        )
    }
    fn delete_tenant(&self, id: u64) -> Result<(), StoreError> {
        // Its principals, credentials and policies go with it.
        self.write_with(
            |db| db.delete_tenant_cascade(id),
            Changes::merge,
            |c| c.everything = true,
        )
        .map(drop)
    }
    fn create_principal(&self, new: NewPrincipal) -> Result<Principal, StoreError> {
        self.write_with(
            |db| db.create_principal(new),
            |c, p| {
                c.principals.insert(p.id);
            },
            |_| {},
        )
    }
    fn principal(&self, id: u64) -> Result<Principal, StoreError> {
        self.with(|db| db.principal(id))
    }
    fn list_principals(&self, tenant_id: u64) -> Result<Vec<Principal>, StoreError> {
        self.with(|db| db.list_principals(tenant_id))
    }
    fn update_principal(
        &self,
        id: u64,
        expected_version: u64,
        roles: Vec<String>,
        quotas: Option<Quotas>,
    ) -> Result<Principal, StoreError> {
        let touch = |c: &mut Changes| {
            c.principals.insert(id);
        };
        self.write_with(
            |db| db.update_principal(id, expected_version, roles, quotas),
            |c, _| touch(c),
            touch,
        )
    }
    fn delete_principal(&self, id: u64) -> Result<(), StoreError> {
        // Its credentials and the policies that target it go with it.
        self.write_with(
            |db| db.delete_principal_cascade(id),
            Changes::merge,
            |c| c.everything = true,
        )
        .map(drop)
    }
    fn issue_credential(
        &self,
        new: NewCredential,
        mint: &mut MintFn<'_>,
    ) -> Result<Issued, StoreError> {
        self.write_with(
            |db| db.issue_credential(new, mint),
            |c, issued| {
                c.credentials.insert(issued.credential.id);
            },
            |_| {},
        )
    }
    fn list_credentials(
        &self,
        tenant_id: u64,
        principal_id: Option<u64>,
    ) -> Result<Vec<Credential>, StoreError> {
        self.with(|db| db.list_credentials(tenant_id, principal_id))
    }
    fn revoke_credential(
        &self,
        id: u64,
        now_unix_ms: i64,
    ) -> Result<(Credential, bool), StoreError> {
        let touch = |c: &mut Changes| {
            c.credentials.insert(id);
        };
        self.write_with(
            |db| db.revoke_credential(id, now_unix_ms),
            |c, _| touch(c),
            touch,
        )
    }
    fn put_policy(&self, policy: Policy, expected_version: u64) -> Result<Policy, StoreError> {
        // A new policy's id is known only once stored.
        let named = policy.id;
        self.write_with(
            |db| db.put_policy(policy, expected_version),
            |c, p| {
                c.policies.insert(p.id);
            },
            |c| {
                if named != 0 {
                    c.policies.insert(named);
                }
            },
        )
    }
    fn list_policies(&self, tenant_id: u64) -> Result<Vec<Policy>, StoreError> {
        self.with(|db| db.list_policies(tenant_id))
    }
    fn delete_policy(&self, id: u64) -> Result<(), StoreError> {
        let touch = |c: &mut Changes| {
            c.policies.insert(id);
        };
        self.write_with(|db| db.delete_policy(id), |c, ()| touch(c), touch)
    }
    fn load(&self) -> Result<StoreContents, StoreError> {
        self.with(Db::load)
    }
    fn refresh<'m>(
        &self,
        mirror: &'m mut Option<StoreContents>,
    ) -> Result<(&'m StoreContents, Option<Changes>), StoreError> {
        // Taken before the read: a write that commits after this is read
        // now or, being recorded after its commit, on the next call.
        let changes =
            std::mem::take(&mut *self.journal.lock().unwrap_or_else(PoisonError::into_inner));
        match mirror.take() {
            Some(mut m) if !changes.everything => {
                self.with(|db| db.patch(&mut m, &changes))?;
                Ok((mirror.insert(m), Some(changes)))
            }
            _ => Ok((mirror.insert(self.load()?), None)),
        }
    }
    fn next_epoch(&self, at_least: u64) -> Result<u64, StoreError> {
        self.with(|db| db.next_epoch(at_least))
    }
    fn import_tenants(
        &self,
        tenants: &[ImportTenant],
        once: Option<&str>,
    ) -> Result<ImportReport, StoreError> {
        self.write_with(
            |db| db.import_tenants(tenants, once),
            |c, _| c.everything = true,
            |c| c.everything = true,
        )
    }
    fn steering(&self) -> Result<Option<SteeringRecord>, StoreError> {
        self.with(Db::steering)
    }
    fn set_steering(&self, steering: &SteeringRecord) -> Result<(), StoreError> {
        self.write_with(
            |db| db.set_steering(steering),
            |c, ()| c.steering = true,
            |c| c.steering = true,
        )
    }
    fn admin_token_hash(&self) -> Result<Option<[u8; 32]>, StoreError> {
        self.with(Db::admin_token_hash)
    }
    fn set_admin_token_hash(&self, hash: [u8; 32]) -> Result<(), StoreError> {
        self.with(|db| db.set_admin_token_hash(hash))
    }
    fn recover(&self) -> Result<bool, StoreError> {
        if !self.health().failed {
            return Ok(false);
        }
        self.reopen().map(|()| true)
    }
    fn backup(&self) -> Result<Vec<u8>, StoreError> {
        self.backup_bytes()
    }
}
