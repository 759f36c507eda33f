//! Tenants that come from files rather than from the API.
//!
//! - **`tenants.toml`** in the data directory (the format the server wrote
//!   before the control plane existed: `[[tenants]] id, name,
//!   [[tenants.credentials]] principal_id, principal, sha256`) is imported
//!   on the first open of the store, keeping its ids and token hashes, and
//!   never again: the import is recorded in the same transaction, even when
//!   the file is absent then. After that the store is the source of truth
//!   and the file is not read.
//! - **Seed tenants** from the configuration file ([`SeedTenant`], same
//!   shape) are inserted on every open, but only when their id is absent: a
//!   seed never overwrites what the API changed. A seed deleted through the
//!   API comes back on the next start while it stays in the file.
//!
//! Imported tenants get a fresh signing key; their credentials are bearer
//! credentials without expiry.

use std::path::{Path, PathBuf};

use arqonbus_core::placement::TenantPlacement;
use ring::rand::SystemRandom;
use ring::signature::Ed25519KeyPair;
use serde::{Deserialize, Serialize};

use crate::snapshot::now_unix_ms;
use crate::store::{ImportCredential, ImportReport, ImportTenant, SigningKey, Store, StoreError};
use crate::validate;

/// Name of the legacy tenants file in the data directory.
pub const TENANTS_FILE: &str = "tenants.toml";
/// The marker recording that `tenants.toml` was imported.
const TENANTS_FILE_MARKER: &str = "import.tenants_toml";

/// A tenant declared in a file, with its bearer credentials (hashes only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedTenant {
    /// Stable numeric id.
    pub id: u64,
    /// Unique name.
    pub name: String,
    /// Credentials of its principals.
    #[serde(default)]
    pub credentials: Vec<SeedCredential>,
}

/// A bearer credential declared in a file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedCredential {
    /// Stable numeric id of the principal (unique across tenants).
    pub principal_id: u64,
    /// The principal's name.
    pub principal: String,
    /// Lower-case hex SHA-256 of the token.
    pub sha256: String,
}

/// The shape of `tenants.toml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantsFile {
    #[serde(default)]
    tenants: Vec<SeedTenant>,
}

/// Why seed tenants could not be imported.
#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A seed is invalid; `origin` names the file or the config section.
    #[error("{origin}: {reason}")]
    Invalid {
        /// Where the seed comes from.
        origin: String,
        /// What is wrong.
        reason: String,
    },
    /// The store refused or failed.
    #[error("{origin}: {source}")]
    Store {
        /// Where the seeds come from.
        origin: String,
        /// Why.
        source: StoreError,
    },
}

/// A new ed25519 signing key (PKCS#8).
pub(crate) fn new_signing_key() -> Result<SigningKey, String> {
    Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
        .map(|doc| SigningKey(doc.as_ref().to_vec()))
        .map_err(|e| e.to_string())
}

fn to_imports(
    origin: &str,
    seeds: &[SeedTenant],
    placement: TenantPlacement,
) -> Result<Vec<ImportTenant>, SeedError> {
    let invalid = |reason: String| SeedError::Invalid {
        origin: origin.to_owned(),
        reason,
    };
    let now = now_unix_ms();
    let mut out = Vec::with_capacity(seeds.len());
    for (i, t) in seeds.iter().enumerate() {
        validate::id(&format!("tenants[{i}].id"), t.id).map_err(|e| invalid(e.to_string()))?;
        validate::name(&format!("tenants[{i}].name"), &t.name)
            .map_err(|e| invalid(e.to_string()))?;
        if seeds[..i].iter().any(|o| o.id == t.id || o.name == t.name) {
            return Err(invalid(format!(
                "tenants[{i}]: id {} or name {:?} appears twice",
                t.id, t.name
            )));
        }
        let mut credentials = Vec::with_capacity(t.credentials.len());
        for (j, c) in t.credentials.iter().enumerate() {
            let field = format!("tenants[{i}].credentials[{j}]");
            validate::id(&format!("{field}.principal_id"), c.principal_id)
                .map_err(|e| invalid(e.to_string()))?;
            validate::name(&format!("{field}.principal"), &c.principal)
                .map_err(|e| invalid(e.to_string()))?;
            let mut hash = [0u8; 32];
            hex::decode_to_slice(&c.sha256, &mut hash)
                .map_err(|e| invalid(format!("{field}.sha256: {e}")))?;
            credentials.push(ImportCredential {
                principal_id: c.principal_id,
                principal: c.principal.clone(),
                token_sha256: hash,
            });
        }
        out.push(ImportTenant {
            id: t.id,
            name: t.name.clone(),
            signing_key: new_signing_key().map_err(invalid)?,
            credentials,
            created_at_unix_ms: now,
            placement: placement.to_string(),
        });
    }
    Ok(out)
}

/// Imports `<data_dir>/tenants.toml` unless the store already did.
/// Tenants it creates get `placement`.
pub(crate) fn import_tenants_file(
    store: &dyn Store,
    data_dir: &Path,
    placement: TenantPlacement,
) -> Result<ImportReport, SeedError> {
    let path = data_dir.join(TENANTS_FILE);
    let origin = path.display().to_string();
    let seeds = match std::fs::read_to_string(&path) {
        Ok(text) => {
            toml::from_str::<TenantsFile>(&text)
                .map_err(|e| SeedError::Invalid {
                    origin: origin.clone(),
                    reason: e.to_string(),
                })?
                .tenants
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(source) => return Err(SeedError::Io { path, source }),
    };
    let imports = to_imports(&origin, &seeds, placement)?;
    let report = store
        .import_tenants(&imports, Some(TENANTS_FILE_MARKER))
        .map_err(|source| SeedError::Store {
            origin: origin.clone(),
            source,
        })?;
    if !report.already_done && !report.created.is_empty() {
        tracing::info!(
            file = %origin,
            tenants = ?report.created,
            "imported tenants and credentials into the control store"
        );
    }
    Ok(report)
}

/// Inserts the seed tenants whose id is absent.
/// Tenants it creates get `placement`.
pub(crate) fn import_seeds(
    store: &dyn Store,
    seeds: &[SeedTenant],
    placement: TenantPlacement,
) -> Result<ImportReport, SeedError> {
    let origin = "configuration tenants";
    let imports = to_imports(origin, seeds, placement)?;
    let report = store
        .import_tenants(&imports, None)
        .map_err(|source| SeedError::Store {
            origin: origin.to_owned(),
            source,
        })?;
    if !report.created.is_empty() {
        tracing::info!(tenants = ?report.created, "seeded tenants from the configuration");
    }
    Ok(report)
}
