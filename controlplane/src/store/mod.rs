//! The control plane's durable state, behind the [`Store`] trait.
//!
//! The store owns tenants (with their ed25519 signing keys and placement),
//! principals, credentials (bearer token hashes, never tokens) and policies,
//! the steering set through the API, the id counters, the last configuration
//! epoch and the admin credential's hash.
//! [`RedbStore`] is the embedded implementation (`<data_dir>/control.redb`);
//! the trait exists so a Postgres backend can follow.
//!
//! Invariants every implementation keeps:
//! - every method is one transaction: it happens entirely or not at all, and
//!   a method that returns `Ok` after a write has made that write durable
//!   (it survives `kill -9` and power loss);
//! - ids are allocated from counters in the store and never reused, and
//!   principal ids are unique across tenants;
//! - tenant names are unique; principal names are unique within a tenant;
//! - every record's `version` increases by one on each change; a non-zero
//!   `expected_version` that differs fails with
//!   [`StoreError::VersionMismatch`] and changes nothing;
//! - deleting a tenant deletes its principals, credentials and policies;
//!   deleting a principal deletes its credentials and the policies that
//!   target it by id.
//!
//! - a storage error (disk full, failed write) never ends the process: the
//!   store reports [`StoreError::Backend`] until [`Store::recover`] reopens
//!   it; opening checks every page of the file, and a file that does not
//!   check out is [`StoreError::Corrupt`], never a panic;
//! - [`Store::refresh`] never leaves a mirror older than the store: a store
//!   that patches mirrors records what each write touched *after* it
//!   committed (a refresh that misses it reads it on the next call) and
//!   says "everything" when it cannot tell (bulk imports, cascading
//!   deletes, a reopen).
//!
//! The store checks consistency (existence, uniqueness, versions, which
//! tenant a record belongs to); request syntax (names, patterns, quotas) is
//! checked by the services before they call it.

mod backup;
mod records;
mod redb_store;
#[cfg(test)]
pub(crate) mod tests;

use std::collections::BTreeMap;
use std::fmt;

use arqonbus_proto::control::{
    AffinityRule, Credential, CredentialKind, Policy, Principal, Quotas, Tenant,
};

pub(crate) use self::backup::chunks as backup_chunks;
pub use self::backup::{CHUNK_BYTES, RestoreReport, restore, write_backup};
pub use self::redb_store::{RedbStore, SCHEMA_VERSION, STORE_FILE, StoreHealth};

/// Why a store operation failed. The first four are the caller's fault (the
/// request names something absent, taken or stale) and map to gRPC codes;
/// the rest are the store's, and a retry may help only with
/// [`StoreError::Backend`].
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The record does not exist.
    #[error("{what} {key} not found")]
    NotFound {
        /// What kind of record ("tenant", "principal", …).
        what: &'static str,
        /// Its id or name, as the request gave it.
        key: String,
    },
    /// A record with this name already exists.
    #[error("{what} {name:?} already exists")]
    AlreadyExists {
        /// What kind of record.
        what: &'static str,
        /// The name.
        name: String,
    },
    /// The record changed since the caller read it.
    #[error("{what} {id} is at version {actual}, not {expected}")]
    VersionMismatch {
        /// What kind of record.
        what: &'static str,
        /// Its id.
        id: u64,
        /// The version the caller expected.
        expected: u64,
        /// The version it is at.
        actual: u64,
    },
    /// The request is inconsistent with the stored records (for example, it
    /// moves a policy to another tenant).
    #[error("{field}: {reason}")]
    Invalid {
        /// The offending request field.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A stored record cannot be decoded or is inconsistent. The store is
    /// damaged: this needs an operator, not a retry.
    #[error("corrupt record {table}/{key}: {reason}")]
    Corrupt {
        /// The table.
        table: &'static str,
        /// The record's key.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// The store was written by a newer version of ArqonBus.
    #[error(
        "the store's schema version is {found}, newer than this binary supports ({supported}); \
         run a newer arqonbus or restore a backup"
    )]
    SchemaTooNew {
        /// The version on disk.
        found: u64,
        /// The newest version this code knows.
        supported: u64,
    },
    /// The storage engine failed (I/O error, disk full, lock held by another
    /// process). A retry may help.
    #[error("store unavailable: {0}")]
    Backend(String),
    /// Minting a credential's token failed (no randomness, unusable key).
    #[error("cannot mint token: {0}")]
    Mint(String),
}

/// A secret string (a token). Its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(secret: String) -> Self {
        Self(secret)
    }

    /// The secret, to hand to its owner once.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The secret, consumed.
    pub fn into_inner(self) -> String {
        self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// A tenant's ed25519 signing key, as a PKCS#8 document. Its `Debug` never
/// shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningKey(pub Vec<u8>);

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningKey(<redacted>)")
    }
}

/// A tenant with its signing key.
#[derive(Debug, Clone, PartialEq)]
pub struct TenantRecord {
    /// The tenant, as the API shows it.
    pub tenant: Tenant,
    /// Its signing key.
    pub signing_key: SigningKey,
}

/// A credential with what authenticates it.
#[derive(Debug, Clone, PartialEq)]
pub struct CredentialRecord {
    /// The credential, as the API shows it.
    pub credential: Credential,
    /// SHA-256 of a bearer token; `None` for signed credentials.
    pub token_sha256: Option<[u8; 32]>,
}

/// Everything the snapshot builder reads, from one consistent read. Maps by
/// id, so a mirror patched with one change costs that change
/// ([`Store::refresh`]) and iterates in id order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StoreContents {
    /// Every tenant, by id.
    pub tenants: BTreeMap<u64, TenantRecord>,
    /// Every principal, by id.
    pub principals: BTreeMap<u64, Principal>,
    /// Every credential (revoked and expired ones included), by id.
    pub credentials: BTreeMap<u64, CredentialRecord>,
    /// Every policy, by id.
    pub policies: BTreeMap<u64, Policy>,
    /// The steering set through the API; `None`: the configuration file's.
    pub steering: Option<SteeringRecord>,
}

/// What was written since the last [`Store::refresh`], as a store that
/// patches mirrors recorded it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// The store cannot say what changed: read everything.
    pub everything: bool,
    /// Tenants created, changed or deleted, by id.
    pub tenants: std::collections::BTreeSet<u64>,
    /// Principals likewise.
    pub principals: std::collections::BTreeSet<u64>,
    /// Credentials likewise.
    pub credentials: std::collections::BTreeSet<u64>,
    /// Policies likewise.
    pub policies: std::collections::BTreeSet<u64>,
    /// The steering set through the API.
    pub steering: bool,
}

impl Changes {
    /// Adds what `more` names.
    pub fn merge(&mut self, more: &Changes) {
        self.everything |= more.everything;
        self.tenants.extend(&more.tenants);
        self.principals.extend(&more.principals);
        self.credentials.extend(&more.credentials);
        self.policies.extend(&more.policies);
        self.steering |= more.steering;
    }
}

/// The node's steering as set through the control API (`SetSteering`).
/// Its syntax is validated by the service before it is stored; the snapshot
/// builder parses it again.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SteeringRecord {
    /// The mode's name: `hash`, `balance`, `cpu` or `affinity`.
    pub mode: String,
    /// The affinity rules, prefixes in canonical form.
    pub affinity: Vec<AffinityRule>,
    /// When it was set, Unix milliseconds.
    pub updated_at_unix_ms: i64,
}

/// What [`Store::update_tenant`] changes: each part when set.
#[derive(Debug, Clone, Default)]
pub struct TenantChange {
    /// New quotas.
    pub quotas: Option<Quotas>,
    /// New placement, canonical and validated.
    pub placement: Option<String>,
    /// New WebSocket origins, validated (empty: any).
    pub allowed_origins: Option<Vec<String>>,
}

/// A tenant to create.
#[derive(Debug, Clone)]
pub struct NewTenant {
    /// Its name (already validated).
    pub name: String,
    /// Its quotas.
    pub quotas: Quotas,
    /// Its placement in canonical form (`home`, `spread`, `shard:N`),
    /// already validated.
    pub placement: String,
    /// The origins its WebSocket clients may come from (validated); empty:
    /// any.
    pub allowed_origins: Vec<String>,
    /// Its new signing key.
    pub signing_key: SigningKey,
    /// Now, Unix milliseconds.
    pub created_at_unix_ms: i64,
}

/// A principal to create.
#[derive(Debug, Clone)]
pub struct NewPrincipal {
    /// Its tenant.
    pub tenant_id: u64,
    /// Its name (already validated).
    pub name: String,
    /// Its roles (already validated).
    pub roles: Vec<String>,
    /// Its quotas.
    pub quotas: Quotas,
    /// Now, Unix milliseconds.
    pub created_at_unix_ms: i64,
}

/// A credential to issue.
#[derive(Debug, Clone, Copy)]
pub struct NewCredential {
    /// Whose it is.
    pub principal_id: u64,
    /// Bearer or signed.
    pub kind: CredentialKind,
    /// Now, Unix milliseconds.
    pub created_at_unix_ms: i64,
    /// When it expires, Unix milliseconds; 0: never.
    pub expires_at_unix_ms: i64,
}

/// What [`Store::issue_credential`] tells the minting function, once the
/// credential's id is allocated.
#[derive(Debug)]
pub struct MintContext<'a> {
    /// The tenant.
    pub tenant_id: u64,
    /// The principal.
    pub principal_id: u64,
    /// The new credential's id.
    pub credential_id: u64,
    /// The tenant's signing key.
    pub signing_key: &'a SigningKey,
    /// The request.
    pub new: &'a NewCredential,
}

/// A minted token.
#[derive(Debug)]
pub struct Minted {
    /// The token, for its owner.
    pub token: Secret,
    /// What the store keeps of it: the SHA-256 for bearer tokens, nothing for
    /// signed tokens.
    pub token_sha256: Option<[u8; 32]>,
    /// First eight hex digits of the token's SHA-256.
    pub fingerprint: String,
}

/// A function that mints a credential's token inside the issuing
/// transaction (so the token can carry the credential's id).
pub type MintFn<'a> = dyn FnMut(&MintContext<'_>) -> Result<Minted, StoreError> + 'a;

/// A newly issued credential.
#[derive(Debug)]
pub struct Issued {
    /// The stored credential.
    pub credential: Credential,
    /// Its token, returned once.
    pub token: Secret,
}

/// A tenant imported from `tenants.toml` or the configuration file, with its
/// fixed ids and bearer credential hashes.
#[derive(Debug, Clone)]
pub struct ImportTenant {
    /// Its id.
    pub id: u64,
    /// Its name (validated).
    pub name: String,
    /// A signing key, used only when the tenant is created.
    pub signing_key: SigningKey,
    /// Its bearer credentials.
    pub credentials: Vec<ImportCredential>,
    /// Now, Unix milliseconds.
    pub created_at_unix_ms: i64,
    /// Its placement in canonical form, used only when it is created
    /// (empty: home).
    pub placement: String,
}

/// A bearer credential of an imported tenant.
#[derive(Debug, Clone)]
pub struct ImportCredential {
    /// Its principal's id (created when absent).
    pub principal_id: u64,
    /// Its principal's name.
    pub principal: String,
    /// SHA-256 of the token.
    pub token_sha256: [u8; 32],
}

/// What an import did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportReport {
    /// The import was skipped because its marker was already set.
    pub already_done: bool,
    /// Ids of the tenants created.
    pub created: Vec<u64>,
    /// Ids of the tenants skipped because they exist.
    pub skipped: Vec<u64>,
}

/// The control plane's durable state. See the module documentation for the
/// invariants every implementation keeps. Methods block (they may wait for
/// the disk): async callers use `spawn_blocking`.
pub trait Store: Send + Sync + fmt::Debug + 'static {
    /// Creates a tenant with the next tenant id, at version 1.
    fn create_tenant(&self, new: NewTenant) -> Result<Tenant, StoreError>;
    /// A tenant by id.
    fn tenant(&self, id: u64) -> Result<Tenant, StoreError>;
    /// A tenant by name.
    fn tenant_by_name(&self, name: &str) -> Result<Tenant, StoreError>;
    /// Every tenant, by id.
    fn list_tenants(&self) -> Result<Vec<Tenant>, StoreError>;
    /// Applies `change` to a tenant (each part when set) and bumps its
    /// version.
    fn update_tenant(
        &self,
        id: u64,
        expected_version: u64,
        change: TenantChange,
    ) -> Result<Tenant, StoreError>;
    /// Deletes a tenant with its principals, credentials and policies.
    fn delete_tenant(&self, id: u64) -> Result<(), StoreError>;

    /// Creates a principal in an existing tenant, at version 1.
    fn create_principal(&self, new: NewPrincipal) -> Result<Principal, StoreError>;
    /// A principal by id.
    fn principal(&self, id: u64) -> Result<Principal, StoreError>;
    /// The principals of an existing tenant, by id.
    fn list_principals(&self, tenant_id: u64) -> Result<Vec<Principal>, StoreError>;
    /// Replaces a principal's roles, and its quotas when set.
    fn update_principal(
        &self,
        id: u64,
        expected_version: u64,
        roles: Vec<String>,
        quotas: Option<Quotas>,
    ) -> Result<Principal, StoreError>;
    /// Deletes a principal, its credentials and the policies targeting it.
    fn delete_principal(&self, id: u64) -> Result<(), StoreError>;

    /// Allocates a credential id, calls `mint` with it and stores the
    /// credential, in one transaction.
    fn issue_credential(
        &self,
        new: NewCredential,
        mint: &mut MintFn<'_>,
    ) -> Result<Issued, StoreError>;
    /// The credentials of an existing tenant, optionally of one of its
    /// principals, by id.
    fn list_credentials(
        &self,
        tenant_id: u64,
        principal_id: Option<u64>,
    ) -> Result<Vec<Credential>, StoreError>;
    /// Marks a credential revoked at `now_unix_ms`. Returns the credential
    /// and whether it changed (false: it was already revoked).
    fn revoke_credential(
        &self,
        id: u64,
        now_unix_ms: i64,
    ) -> Result<(Credential, bool), StoreError>;

    /// Creates (`policy.id == 0`) or replaces a policy. Its patterns are
    /// already validated; the store checks its tenant and target exist.
    fn put_policy(&self, policy: Policy, expected_version: u64) -> Result<Policy, StoreError>;
    /// The policies of an existing tenant, by id.
    fn list_policies(&self, tenant_id: u64) -> Result<Vec<Policy>, StoreError>;
    /// Deletes a policy. Works on a record that no longer decodes, so an
    /// operator can remove what makes the node fail closed.
    fn delete_policy(&self, id: u64) -> Result<(), StoreError>;

    /// Everything, from one consistent read. Fails with
    /// [`StoreError::Corrupt`] if any record does not decode.
    fn load(&self) -> Result<StoreContents, StoreError>;
    /// Brings `mirror` (what an earlier call left there) up to date with
    /// the store. A store that records its writes reads only the records
    /// written since the last call; otherwise, or when `mirror` is `None`,
    /// it reads everything ([`Store::load`]). Returns the contents now in
    /// `mirror` and what changed since the last call (`None`: it read
    /// everything, anything may have). On error `mirror` is `None`, so the
    /// next call reads everything. One caller at a time (the snapshot
    /// publisher).
    fn refresh<'m>(
        &self,
        mirror: &'m mut Option<StoreContents>,
    ) -> Result<(&'m StoreContents, Option<Changes>), StoreError> {
        *mirror = None;
        Ok((mirror.insert(self.load()?), None))
    }
    /// Allocates the next configuration epoch: greater than every epoch
    /// allocated before and at least `at_least`. Durable.
    fn next_epoch(&self, at_least: u64) -> Result<u64, StoreError>;
    /// Inserts the tenants whose id is absent, with their principals and
    /// bearer credentials. With `once`, does nothing if the marker `once` is
    /// already recorded, and records it otherwise (in the same transaction).
    fn import_tenants(
        &self,
        tenants: &[ImportTenant],
        once: Option<&str>,
    ) -> Result<ImportReport, StoreError>;
    /// The steering set through the API, if it ever was.
    fn steering(&self) -> Result<Option<SteeringRecord>, StoreError>;
    /// Replaces the steering set through the API. Durable.
    fn set_steering(&self, steering: &SteeringRecord) -> Result<(), StoreError>;
    /// SHA-256 of the admin token, once created.
    fn admin_token_hash(&self) -> Result<Option<[u8; 32]>, StoreError>;
    /// Records the admin token's SHA-256.
    fn set_admin_token_hash(&self, hash: [u8; 32]) -> Result<(), StoreError>;
    /// Reopens the store if a storage error closed it; `Ok(true)`: it was
    /// reopened, `Ok(false)`: nothing to do. Stores that never close
    /// answer `Ok(false)`.
    fn recover(&self) -> Result<bool, StoreError> {
        Ok(false)
    }
    /// A consistent copy of the whole store while it serves, in the
    /// implementation's own file format (a redb file for [`RedbStore`]).
    fn backup(&self) -> Result<Vec<u8>, StoreError> {
        Err(StoreError::Backend("this store cannot make backups".into()))
    }
}
