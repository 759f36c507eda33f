//! The admin credential and its check on every control API call.
//!
//! On first open a random token (`abt_` + 43 base64url characters, 256
//! bits) is created. Only its SHA-256 goes into the store; the token itself is
//! written once to `<data_dir>/credentials/admin.token` (directory 0700, file
//! 0600, created exclusively) and never logged. If the store has no admin hash
//! but the file exists (a first start interrupted between the two writes,
//! or a store restored from scratch), the file's token is adopted.
//!
//! Once the store holds a hash, the file must hold the matching token: a
//! missing, malformed or mismatched file refuses the start
//! ([`AdminError::Missing`], [`AdminError::Mismatch`]) instead of leaving
//! the operator locked out of a running node. [`rotate`] replaces the
//! credential (offline as `arqonbus admin rotate-token`, which is also the
//! recovery for a lost file): the new token goes to `admin.token.new`
//! (0600, synced), its hash into the store, then the file is renamed over
//! `admin.token`. A crash in between is finished at the next start: a
//! `.new` file matching the store is renamed into place, any other is
//! removed, so the file and the store never disagree for long.
//!
//! `AdminAuth` is the tonic interceptor: it wants
//! `authorization: Bearer <token>` and compares the SHA-256 of what it got
//! with the stored one in constant time. A failure is `UNAUTHENTICATED` with
//! a fixed message, counted, and logged at warn with the peer address only.

use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use arqonbus_core::auth::{CredentialHash, TOKEN_PREFIX};
use base64::Engine as _;
use subtle::ConstantTimeEq as _;
use tonic::{Request, Status};

use crate::metrics::Metrics;
use crate::store::{Secret, Store, StoreError};

/// Where the admin token is written, relative to the data directory.
pub const ADMIN_TOKEN_FILE: &str = "credentials/admin.token";

/// Why the admin credential could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The token file or its directory could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The token file exists but does not hold a token.
    #[error(
        "{path}: not an ArqonBus token; write a new admin credential with `arqonbus admin rotate-token` (node stopped)"
    )]
    Malformed {
        /// The file.
        path: PathBuf,
    },
    /// The store holds an admin credential but its file is gone.
    #[error(
        "{path} is missing, but the store holds an admin credential: write a new one with \
         `arqonbus admin rotate-token` (node stopped), or restore the file"
    )]
    Missing {
        /// The file.
        path: PathBuf,
    },
    /// The file's token is not the one the store knows.
    #[error(
        "{path} does not hold the store's admin credential: write a new one with \
         `arqonbus admin rotate-token` (node stopped), or restore the file"
    )]
    Mismatch {
        /// The file.
        path: PathBuf,
    },
    /// The store could not be read or written.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The system random source failed.
    #[error(transparent)]
    Random(RandomError),
}

/// The system random source failed.
#[derive(Debug, thiserror::Error)]
#[error("no randomness available: {0}")]
pub struct RandomError(String);

/// A new bearer token: [`TOKEN_PREFIX`] and 256 random bits, base64url.
pub fn new_token() -> Result<Secret, RandomError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| RandomError(e.to_string()))?;
    Ok(Secret::new(format!(
        "{TOKEN_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )))
}

fn looks_like_token(t: &str) -> bool {
    t.strip_prefix(TOKEN_PREFIX).is_some_and(|rest| {
        rest.len() >= 43
            && rest
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    })
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> AdminError + '_ {
    move |source| AdminError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The admin credential of this node.
#[derive(Debug, Clone)]
pub(crate) struct AdminCredential {
    /// SHA-256 of the token.
    pub(crate) hash: [u8; 32],
    /// The token file.
    pub(crate) path: PathBuf,
    /// Whether the token was created by this call.
    pub(crate) created: bool,
}

/// The token in `path`, checked.
fn read_token(path: &Path) -> Result<Secret, AdminError> {
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    let token = text.trim();
    if !looks_like_token(token) {
        return Err(AdminError::Malformed {
            path: path.to_owned(),
        });
    }
    Ok(Secret::new(token.to_owned()))
}

/// The half-written rotation file next to `path`.
fn pending_path(path: &Path) -> PathBuf {
    path.with_extension("token.new")
}

/// Writes `token` to `path` (0600, created exclusively, synced).
fn write_token(path: &Path, token: &Secret) -> Result<(), AdminError> {
    let _ = std::fs::remove_file(path);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io(path))?;
    file.write_all(format!("{}\n", token.expose()).as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(io(path))
}

fn sync_dir(dir: &Path) -> Result<(), AdminError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))
}

/// Finishes or undoes a rotation a crash interrupted.
fn settle_pending(path: &Path, stored: [u8; 32]) -> Result<(), AdminError> {
    let pending = pending_path(path);
    if !pending.exists() {
        return Ok(());
    }
    let matches = read_token(&pending)
        .is_ok_and(|t| bool::from(CredentialHash::of(t.expose()).0.ct_eq(&stored)));
    if matches {
        std::fs::rename(&pending, path).map_err(io(path))?;
        tracing::info!(path = %path.display(), "finished an interrupted admin credential rotation");
    } else {
        std::fs::remove_file(&pending).map_err(io(&pending))?;
    }
    Ok(())
}

/// Loads the admin credential, creating it on first open.
pub(crate) fn ensure(store: &dyn Store, data_dir: &Path) -> Result<AdminCredential, AdminError> {
    let path = data_dir.join(ADMIN_TOKEN_FILE);
    if let Some(hash) = store.admin_token_hash()? {
        settle_pending(&path, hash)?;
        if !path.exists() {
            return Err(AdminError::Missing { path });
        }
        let token = read_token(&path)?;
        if !bool::from(CredentialHash::of(token.expose()).0.ct_eq(&hash)) {
            return Err(AdminError::Mismatch { path });
        }
        return Ok(AdminCredential {
            hash,
            path,
            created: false,
        });
    }
    if path.exists() {
        let token = read_token(&path)?;
        let hash = CredentialHash::of(token.expose()).0;
        store.set_admin_token_hash(hash)?;
        tracing::info!(path = %path.display(), "adopted the existing admin token file");
        return Ok(AdminCredential {
            hash,
            path,
            created: false,
        });
    }
    let dir = path
        .parent()
        .map_or_else(|| data_dir.to_owned(), Path::to_owned);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(io(&dir))?;
    let token = new_token().map_err(AdminError::Random)?;
    // The file first: a crash after it and before the store write is
    // repaired by adoption on the next start; the other order could lose
    // the only copy of the token.
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(io(&path))?;
    file.write_all(format!("{}\n", token.expose()).as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(io(&path))?;
    sync_dir(&dir)?;
    let hash = CredentialHash::of(token.expose()).0;
    store.set_admin_token_hash(hash)?;
    tracing::info!(path = %path.display(), "created the admin credential (mode 0600)");
    Ok(AdminCredential {
        hash,
        path,
        created: true,
    })
}

/// What [`rotate`] did.
#[derive(Debug)]
pub struct Rotated {
    /// The file now holding the new token (0600).
    pub path: PathBuf,
    /// First eight hex digits of the new token's SHA-256.
    pub fingerprint: String,
    /// The new token, for an online rotation's answer (never logged).
    pub token: Secret,
}

/// Replaces the admin credential: a new token in
/// `<data_dir>/credentials/admin.token` (0600), its hash in the store; the
/// old token stops working. Offline: the node must be stopped (the store
/// is opened by the caller, which a running node prevents).
pub fn rotate(store: &dyn Store, data_dir: &Path) -> Result<Rotated, AdminError> {
    let path = data_dir.join(ADMIN_TOKEN_FILE);
    let dir = path
        .parent()
        .map_or_else(|| data_dir.to_owned(), Path::to_owned);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(io(&dir))?;
    let token = new_token().map_err(AdminError::Random)?;
    let pending = pending_path(&path);
    write_token(&pending, &token)?;
    sync_dir(&dir)?;
    let hash = CredentialHash::of(token.expose());
    store.set_admin_token_hash(hash.0)?;
    std::fs::rename(&pending, &path).map_err(io(&path))?;
    sync_dir(&dir)?;
    tracing::info!(path = %path.display(), "rotated the admin credential (mode 0600)");
    Ok(Rotated {
        path,
        fingerprint: hash.fingerprint(),
        token,
    })
}

/// The admin credential in force, shared by every check (the gRPC
/// interceptor, the HTTP monitoring endpoints) and replaced by an online
/// rotation (`NodeService.RotateAdminToken`): from the moment [`rotate`]
/// returns, the old token fails and the new one works.
#[derive(Debug)]
pub(crate) struct AdminCell {
    hash: RwLock<[u8; 32]>,
    data_dir: PathBuf,
}

impl AdminCell {
    pub(crate) fn new(hash: [u8; 32], data_dir: PathBuf) -> Self {
        Self {
            hash: RwLock::new(hash),
            data_dir,
        }
    }

    fn hash(&self) -> [u8; 32] {
        *self.hash.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Rotates the credential ([`rotate`]: file, then store) and puts the
    /// new hash in force. Concurrent rotations run one after the other.
    pub(crate) fn rotate(&self, store: &dyn Store) -> Result<Rotated, AdminError> {
        let mut hash = self.hash.write().unwrap_or_else(PoisonError::into_inner);
        let rotated = rotate(store, &self.data_dir)?;
        *hash = CredentialHash::of(rotated.token.expose()).0;
        Ok(rotated)
    }
}

/// The hash of the token in `<data_dir>/credentials/admin.token`, if the
/// file exists and holds a token (for `arqonbus restore`).
pub fn token_file_hash(data_dir: &Path) -> Result<Option<[u8; 32]>, AdminError> {
    let path = data_dir.join(ADMIN_TOKEN_FILE);
    if !path.exists() {
        return Ok(None);
    }
    read_token(&path).map(|t| Some(CredentialHash::of(t.expose()).0))
}

/// The interceptor that requires the admin credential.
#[derive(Clone)]
pub(crate) struct AdminAuth {
    cell: Arc<AdminCell>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for AdminAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminAuth").finish_non_exhaustive()
    }
}

impl AdminAuth {
    /// A check against a fixed hash (no rotation).
    #[cfg(test)]
    pub(crate) fn new(hash: [u8; 32], metrics: Arc<Metrics>) -> Self {
        Self::shared(Arc::new(AdminCell::new(hash, PathBuf::new())), metrics)
    }

    /// A check against the credential in force in `cell`.
    pub(crate) fn shared(cell: Arc<AdminCell>, metrics: Arc<Metrics>) -> Self {
        Self { cell, metrics }
    }

    /// Whether `authorization` (an HTTP/gRPC header value) carries the
    /// admin token; a refusal is counted.
    pub(crate) fn check(&self, authorization: Option<&str>) -> bool {
        let ok = self.accepts(authorization);
        if !ok {
            self.metrics.inc_auth_failure();
        }
        ok
    }

    /// Whether `authorization` carries the admin token.
    fn accepts(&self, authorization: Option<&str>) -> bool {
        let Some(value) = authorization else {
            return false;
        };
        let Some((scheme, token)) = value.split_once(' ') else {
            return false;
        };
        if !scheme.eq_ignore_ascii_case("bearer") {
            return false;
        }
        // Hashing first makes the comparison independent of the token's
        // length; the digest comparison is constant time.
        CredentialHash::of(token.trim())
            .0
            .ct_eq(&self.cell.hash())
            .into()
    }
}

impl tonic::service::Interceptor for AdminAuth {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let header = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        if self.accepts(header) {
            return Ok(request);
        }
        self.metrics.inc_auth_failure();
        tracing::warn!(
            peer = ?request.remote_addr(),
            credential_present = header.is_some(),
            "control API request refused: no valid admin credential"
        );
        Err(Status::unauthenticated("admin credential required"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_have_the_bootstrap_shape() {
        let t = new_token().unwrap();
        assert!(looks_like_token(t.expose()));
        assert_eq!(t.expose().len(), 4 + 43);
        assert!(!format!("{t:?}").contains(TOKEN_PREFIX));
        assert!(!looks_like_token("abt_short"));
        assert!(!looks_like_token(&format!("xyz_{}", "a".repeat(43))));
    }

    #[test]
    fn header_check() {
        let auth = AdminAuth::new(CredentialHash::of("abt_secret").0, Arc::default());
        assert!(auth.accepts(Some("Bearer abt_secret")));
        assert!(auth.accepts(Some("bearer abt_secret")));
        assert!(!auth.accepts(Some("Bearer abt_secreT")));
        assert!(!auth.accepts(Some("Basic abt_secret")));
        assert!(!auth.accepts(Some("abt_secret")));
        assert!(!auth.accepts(Some("")));
        assert!(!auth.accepts(None));
    }

    #[test]
    fn the_file_must_match_the_store_and_rotation_settles_after_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::RedbStore::open(dir.path()).unwrap();
        let first = ensure(&store, dir.path()).unwrap();
        assert!(first.created);
        let path = first.path.clone();
        let token = std::fs::read_to_string(&path).unwrap();

        // Missing, then another token: refused, naming the recovery.
        std::fs::remove_file(&path).unwrap();
        let err = ensure(&store, dir.path()).unwrap_err();
        assert!(matches!(err, AdminError::Missing { .. }), "{err}");
        assert!(err.to_string().contains("arqonbus admin rotate-token"));
        std::fs::write(&path, format!("abt_{}\n", "x".repeat(43))).unwrap();
        assert!(matches!(
            ensure(&store, dir.path()),
            Err(AdminError::Mismatch { .. })
        ));
        std::fs::write(&path, &token).unwrap();

        // A crash after the store took the new hash: the `.new` file wins.
        let next = new_token().unwrap();
        std::fs::write(pending_path(&path), format!("{}\n", next.expose())).unwrap();
        store
            .set_admin_token_hash(CredentialHash::of(next.expose()).0)
            .unwrap();
        let settled = ensure(&store, dir.path()).unwrap();
        assert_eq!(settled.hash, CredentialHash::of(next.expose()).0);
        assert!(!pending_path(&path).exists());
        assert_eq!(
            std::fs::read_to_string(&path).unwrap().trim(),
            next.expose()
        );

        // A crash before it: the `.new` file is dropped, the old token stays.
        std::fs::write(pending_path(&path), "abt_never_committed\n").unwrap();
        ensure(&store, dir.path()).unwrap();
        assert!(!pending_path(&path).exists());

        // A rotation through the cell: the old token fails at once.
        let cell = Arc::new(AdminCell::new(settled.hash, dir.path().to_owned()));
        let auth = AdminAuth::shared(cell.clone(), Arc::default());
        assert!(auth.accepts(Some(&format!("Bearer {}", next.expose()))));
        let rotated = cell.rotate(&store).unwrap();
        assert!(!auth.accepts(Some(&format!("Bearer {}", next.expose()))));
        assert!(auth.accepts(Some(&format!("Bearer {}", rotated.token.expose()))));
        assert!(!format!("{rotated:?}").contains(rotated.token.expose()));
        assert_eq!(ensure(&store, dir.path()).unwrap().hash, cell.hash());
    }
}
