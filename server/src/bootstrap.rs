//! First start and every start: the data directory, tenants and credentials.
//!
//! On first start the data directory (mode 0700) gets `tenants.toml` with a
//! bootstrap tenant (`default`, id 1) whose one credential is a fresh random
//! token. Only the token's SHA-256 is stored in `tenants.toml`; the token
//! itself is written once to `credentials/bootstrap.token` (mode 0600) and
//! never logged. There is no default password: without that file, or a
//! credential declared in the config file, nothing can connect.
//!
//! Every start merges the tenants of `tenants.toml` with those of the config
//! file into one immutable [`ConfigSnapshot`] for the data plane.
//!
//! Damage and loss are never silent ([`check_data_dir`], run by
//! `arqonbus serve` before anything is created): a node is *initialised*
//! once any of `tenants.toml`, `tls/ca.pem`, `tls/ca.key`, `control.redb` or
//! `credentials/admin.token` exists, and an initialised node refuses to
//! start when a file its configuration needs is missing or empty
//! ([`BootstrapError::Damaged`], naming the file and the command that
//! recovers it); the contents are checked where they are read (`tls.rs`,
//! the control plane). Re-creating is explicit: [`recreate_missing`]
//! (`arqonbus serve --recreate-missing`) makes a new CA, an empty store or
//! a new admin token for exactly what is missing, and logs each at warn.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arqonbus_core::auth::{CredentialHash, TOKEN_PREFIX};
use arqonbus_core::limits::Limits;
use arqonbus_core::placement::TenantPlacement;
use arqonbus_core::policy::Permissions;
use arqonbus_core::snapshot::{
    ConfigSnapshot, CredentialEntry, PrincipalEntry, Quotas, TenantEntry,
};
use arqonbus_core::{CredentialId, PrincipalId, TenantId};
use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::config::{ConfigError, CredentialConfig, TenantConfig, validate_tenants};
use crate::tls::write_file;

/// Name of the tenants file in the data directory.
pub const TENANTS_FILE: &str = "tenants.toml";
/// Where the bootstrap credential is written, relative to the data directory.
pub const BOOTSTRAP_TOKEN: &str = "credentials/bootstrap.token";

/// Why the data directory could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    /// A file or directory could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// `tenants.toml` is not valid.
    #[error("{path}: {reason}")]
    Tenants {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The tenants of the file and of the config collide.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The system random source failed.
    #[error("no randomness available: {0}")]
    Random(String),
    /// A file an initialised node needs is missing or empty.
    #[error("{path} {reason}, but this node was initialised ({evidence} exists): {recovery}")]
    Damaged {
        /// The file.
        path: PathBuf,
        /// "is missing" or "is empty".
        reason: &'static str,
        /// A file showing the node was initialised.
        evidence: PathBuf,
        /// The command that recovers.
        recovery: &'static str,
    },
    /// `--recreate-missing` could not re-create something.
    #[error("re-creating {what}: {reason}")]
    Recreate {
        /// What.
        what: &'static str,
        /// Why not.
        reason: String,
    },
}

/// The files whose presence shows a node was initialised, relative to the
/// data directory.
pub const INITIALISED_BY: [&str; 5] = [
    TENANTS_FILE,
    "tls/ca.pem",
    "tls/ca.key",
    arqonbus_controlplane::store::STORE_FILE,
    arqonbus_controlplane::admin::ADMIN_TOKEN_FILE,
];

const RESTORE_OR_RECREATE: &str = "restore it from a backup, or re-create it on purpose with \
     `arqonbus serve --recreate-missing`";
const RESTORE_STORE: &str = "restore the store with `arqonbus restore --from BACKUP`, or start \
     with an empty store on purpose with `arqonbus serve --recreate-missing`";
const NEW_CA: &str = "restore it from a backup, or create a new CA on purpose with `arqonbus \
     serve --recreate-missing` (every client then needs the new ca.pem)";
const NEW_ADMIN: &str = "write a new admin credential with `arqonbus admin rotate-token` (node \
     stopped), or restore the file";

/// Whether `path` is missing or empty (`None`: present with content).
fn absence(path: &Path) -> Option<&'static str> {
    match std::fs::metadata(path) {
        Ok(m) if m.len() == 0 => Some("is empty"),
        Ok(_) => None,
        Err(_) => Some("is missing"),
    }
}

/// What an initialised node needs under `config`, with each one's recovery.
fn needed(config: &crate::config::Config) -> Vec<(&'static str, &'static str)> {
    let mut files = Vec::new();
    if !config.control.enabled {
        files.push((TENANTS_FILE, RESTORE_OR_RECREATE));
    }
    if config.tls.cert.is_none() || config.tls.key.is_none() {
        files.push(("tls/ca.pem", NEW_CA));
        files.push(("tls/ca.key", NEW_CA));
    }
    if config.control.enabled {
        files.push((arqonbus_controlplane::store::STORE_FILE, RESTORE_STORE));
        files.push((arqonbus_controlplane::admin::ADMIN_TOKEN_FILE, NEW_ADMIN));
    }
    files
}

/// Refuses to start an initialised node that lacks a file its
/// configuration needs (see the module documentation). A data directory
/// with none of [`INITIALISED_BY`] is a first start and passes.
pub fn check_data_dir(config: &crate::config::Config) -> Result<(), BootstrapError> {
    let dir = &config.data_dir;
    let Some(evidence) = INITIALISED_BY
        .iter()
        .map(|f| dir.join(f))
        .find(|p| absence(p).is_none())
    else {
        return Ok(());
    };
    for (file, recovery) in needed(config) {
        let path = dir.join(file);
        if let Some(reason) = absence(&path) {
            return Err(BootstrapError::Damaged {
                path,
                reason,
                evidence,
                recovery,
            });
        }
    }
    Ok(())
}

/// Moves `path` aside to `<path>.lost-<unix seconds>` if it exists.
fn move_aside(path: &Path) -> Result<(), BootstrapError> {
    if !path.exists() {
        return Ok(());
    }
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut aside = path.as_os_str().to_owned();
    aside.push(format!(".lost-{secs}"));
    std::fs::rename(path, &aside).map_err(io(path))
}

/// `--recreate-missing`: re-creates on purpose what an initialised node
/// lacks, each logged at warn. A new CA (the remaining CA files and the
/// server certificate are moved aside to `*.lost-<secs>`); an empty store
/// (a 0-byte file is replaced; the admin token file and `tenants.toml` are
/// imported into it at start); a new admin token (the store must open).
/// Damaged contents are not touched: restore those, or move them away.
pub fn recreate_missing(config: &crate::config::Config) -> Result<(), BootstrapError> {
    use arqonbus_controlplane::store::{RedbStore, STORE_FILE, Store as _};
    let dir = &config.data_dir;
    let generated_tls = config.tls.cert.is_none() || config.tls.key.is_none();
    let tls = dir.join("tls");
    if generated_tls
        && [tls.join("ca.pem"), tls.join("ca.key")]
            .iter()
            .any(|p| absence(p).is_some())
    {
        for f in ["ca.pem", "ca.key", "server.pem", "server.key"] {
            move_aside(&tls.join(f))?;
        }
        crate::tls::new_ca(dir).map_err(|e| BootstrapError::Recreate {
            what: "the CA",
            reason: e.to_string(),
        })?;
        tracing::warn!(
            dir = %tls.display(),
            "--recreate-missing: the CA was missing; a new CA is created and every client needs the new ca.pem"
        );
    }
    if !config.control.enabled {
        return Ok(());
    }
    let store = dir.join(STORE_FILE);
    if absence(&store).is_some() {
        move_aside(&store)?;
        RedbStore::open(dir).map_err(|e| BootstrapError::Recreate {
            what: "the control store",
            reason: e.to_string(),
        })?;
        tracing::warn!(
            path = %store.display(),
            "--recreate-missing: the control store was missing; starting with an empty store"
        );
    }
    let admin = dir.join(arqonbus_controlplane::admin::ADMIN_TOKEN_FILE);
    if absence(&admin).is_some() {
        let recreate = |reason: String| BootstrapError::Recreate {
            what: "the admin credential",
            reason,
        };
        let opened = RedbStore::open(dir).map_err(|e| recreate(e.to_string()))?;
        // A store without an admin credential gets one at start anyway.
        if opened
            .admin_token_hash()
            .map_err(|e| recreate(e.to_string()))?
            .is_none()
        {
            return Ok(());
        }
        move_aside(&admin)?;
        let rotated = arqonbus_controlplane::admin::rotate(&opened, dir)
            .map_err(|e| recreate(e.to_string()))?;
        tracing::warn!(
            path = %rotated.path.display(),
            fingerprint = %rotated.fingerprint,
            "--recreate-missing: the admin credential was missing; a new one was written (mode 0600)"
        );
    }
    Ok(())
}

/// The on-disk shape of `tenants.toml`.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantsFile {
    #[serde(default)]
    tenants: Vec<TenantConfig>,
}

/// What the data directory provided.
#[derive(Debug)]
pub struct Credentials {
    /// Every valid credential.
    pub auth: Arc<ConfigSnapshot>,
    /// The bootstrap token file, when it exists.
    pub bootstrap_token: Option<PathBuf>,
    /// Whether the bootstrap credential was created during this start.
    pub created: bool,
}

/// Creates `dir` (and parents) with mode 0700 if it does not exist.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// A new bearer token: the prefix and 256 random bits, base64url.
pub fn new_token() -> Result<String, BootstrapError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| BootstrapError::Random(e.to_string()))?;
    Ok(format!(
        "{TOKEN_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    ))
}

/// Hex SHA-256 of a token, as stored in `tenants.toml` and configs.
pub fn token_hash_hex(token: &str) -> String {
    hex::encode(CredentialHash::of(token).0)
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BootstrapError + '_ {
    move |source| BootstrapError::Io {
        path: path.to_owned(),
        source,
    }
}

fn create_bootstrap(data_dir: &Path, tenants_path: &Path) -> Result<PathBuf, BootstrapError> {
    let token_path = data_dir.join(BOOTSTRAP_TOKEN);
    if let Some(parent) = token_path.parent() {
        create_private_dir(parent).map_err(io(parent))?;
    }
    if token_path.exists() {
        return Err(BootstrapError::Tenants {
            path: tenants_path.to_owned(),
            reason: format!(
                "missing, but {} exists; restore tenants.toml or move the token away",
                token_path.display()
            ),
        });
    }
    let token = new_token()?;
    let file = TenantsFile {
        tenants: vec![TenantConfig {
            id: 1,
            name: "default".into(),
            credentials: vec![CredentialConfig {
                principal_id: 1,
                principal: "bootstrap".into(),
                sha256: token_hash_hex(&token),
            }],
        }],
    };
    let text = toml::to_string_pretty(&file).map_err(|e| BootstrapError::Tenants {
        path: tenants_path.to_owned(),
        reason: e.to_string(),
    })?;
    let text = format!(
        "# Managed by arqonbus. Credential hashes only: tokens are never stored here.\n{text}"
    );
    write_file(&token_path, format!("{token}\n").as_bytes(), 0o600).map_err(io(&token_path))?;
    write_file(tenants_path, text.as_bytes(), 0o600).map_err(io(tenants_path))?;
    Ok(token_path)
}

fn read_tenants(path: &Path) -> Result<Vec<TenantConfig>, BootstrapError> {
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    let file: TenantsFile = toml::from_str(&text).map_err(|e| BootstrapError::Tenants {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    Ok(file.tenants)
}

/// Builds the snapshot the data plane checks credentials against: every
/// principal may use every subject of its tenant, no quotas, every tenant
/// placed `placement`.
pub fn snapshot(
    tenants: &[TenantConfig],
    limits: &Limits,
    placement: TenantPlacement,
) -> Result<ConfigSnapshot, BootstrapError> {
    validate_tenants("tenants", tenants)?;
    let mut snap = ConfigSnapshot::new(1, limits.clone());
    let bad = |reason: String| BootstrapError::Tenants {
        path: PathBuf::from("tenants"),
        reason,
    };
    let mut next_credential = 1u64;
    for t in tenants {
        snap.insert_tenant(TenantEntry {
            id: TenantId(t.id),
            name: t.name.as_str().into(),
            quotas: Quotas::default(),
            verify_key: None,
            placement,
        });
        for c in &t.credentials {
            let mut hash = [0u8; 32];
            hex::decode_to_slice(&c.sha256, &mut hash)
                .map_err(|e| bad(format!("credential of {}: {e}", c.principal)))?;
            let principal = PrincipalId(c.principal_id);
            if snap.principal(principal).is_none() {
                snap.insert_principal(PrincipalEntry {
                    id: principal,
                    tenant: TenantId(t.id),
                    name: c.principal.as_str().into(),
                    roles: Vec::new(),
                    quotas: Quotas::default(),
                    permissions: Arc::new(Permissions::allow_all()),
                })
                .map_err(|e| bad(e.to_string()))?;
            }
            snap.insert_bearer(
                CredentialHash(hash),
                CredentialEntry {
                    id: CredentialId(next_credential),
                    principal,
                    expires_at_unix: None,
                },
            )
            .map_err(|e| bad(e.to_string()))?;
            next_credential += 1;
        }
    }
    Ok(snap)
}

/// Prepares the data directory and loads every credential.
pub fn credentials(
    data_dir: &Path,
    configured: &[TenantConfig],
    limits: &Limits,
    placement: TenantPlacement,
) -> Result<Credentials, BootstrapError> {
    create_private_dir(data_dir).map_err(io(data_dir))?;
    let tenants_path = data_dir.join(TENANTS_FILE);
    let mut created = false;
    if !tenants_path.exists() {
        create_bootstrap(data_dir, &tenants_path)?;
        created = true;
    }
    let mut tenants = read_tenants(&tenants_path)?;
    tenants.extend(configured.iter().cloned());
    let auth = snapshot(&tenants, limits, placement)?;
    if auth.credential_count() == 0 {
        tracing::warn!("no credentials are configured: every connection will be refused");
    }
    let token = data_dir.join(BOOTSTRAP_TOKEN);
    Ok(Credentials {
        auth: Arc::new(auth),
        bootstrap_token: token.exists().then_some(token),
        created,
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn first_start_creates_one_secret_and_stores_only_its_hash() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let first = credentials(&data, &[], &Limits::default(), TenantPlacement::Home).unwrap();
        assert!(first.created);
        let token_path = first.bootstrap_token.unwrap();
        let token = std::fs::read_to_string(&token_path).unwrap();
        let token = token.trim();
        assert!(token.starts_with(TOKEN_PREFIX) && token.len() > 40);
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&token_path), 0o600);
        assert_eq!(mode(&data), 0o700);
        let stored = std::fs::read_to_string(data.join(TENANTS_FILE)).unwrap();
        assert!(!stored.contains(token), "the secret must not be stored");
        assert!(stored.contains(&token_hash_hex(token)));
        let p = first.auth.authenticate(token, 0).unwrap();
        assert_eq!(p.tenant.id, TenantId(1));

        // Second start: same credential, nothing new.
        let second = credentials(&data, &[], &Limits::default(), TenantPlacement::Home).unwrap();
        assert!(!second.created);
        assert!(second.auth.authenticate(token, 0).is_ok());
    }

    #[test]
    fn configured_tenants_join_and_must_not_collide() {
        let dir = tempfile::tempdir().unwrap();
        let extra = TenantConfig {
            id: 2,
            name: "acme".into(),
            credentials: vec![CredentialConfig {
                principal_id: 7,
                principal: "svc".into(),
                sha256: token_hash_hex("abt_acme"),
            }],
        };
        let c = credentials(
            dir.path(),
            std::slice::from_ref(&extra),
            &Limits::default(),
            TenantPlacement::Spread,
        )
        .unwrap();
        let id = c.auth.authenticate("abt_acme", 0).unwrap();
        assert_eq!(id.tenant.id, TenantId(2));
        assert_eq!(id.tenant.placement, TenantPlacement::Spread);
        let clash = TenantConfig { id: 1, ..extra };
        assert!(
            credentials(
                dir.path(),
                &[clash],
                &Limits::default(),
                TenantPlacement::Home
            )
            .is_err()
        );
    }

    #[test]
    fn an_initialised_node_needs_what_its_configuration_uses() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = crate::config::Config {
            data_dir: dir.path().join("data"),
            ..crate::config::Config::default()
        };
        check_data_dir(&config).unwrap();
        std::fs::create_dir_all(config.data_dir.join("tls")).unwrap();
        std::fs::write(config.data_dir.join(TENANTS_FILE), "").unwrap();
        check_data_dir(&config).unwrap();
        std::fs::write(config.data_dir.join(TENANTS_FILE), "# x\n").unwrap();
        let err = check_data_dir(&config).unwrap_err().to_string();
        assert!(err.contains("ca.pem is missing"), "{err}");
        for f in ["tls/ca.pem", "tls/ca.key"] {
            std::fs::write(config.data_dir.join(f), "x").unwrap();
        }
        let err = check_data_dir(&config).unwrap_err().to_string();
        assert!(
            err.contains("control.redb is missing") && err.contains("arqonbus restore --from"),
            "{err}"
        );
        std::fs::write(config.data_dir.join("control.redb"), "").unwrap();
        let err = check_data_dir(&config).unwrap_err().to_string();
        assert!(err.contains("control.redb is empty"), "{err}");
        // Without the control plane, the store and admin token are not needed.
        config.control.enabled = false;
        check_data_dir(&config).unwrap();
    }

    #[test]
    fn tokens_are_unique() {
        assert_ne!(new_token().unwrap(), new_token().unwrap());
    }
}
