//! The configuration snapshot every shard applies.
//!
//! A [`ConfigSnapshot`] is immutable and versioned (`epoch`): the control plane
//! builds a new one for every change and pushes it to each shard as an
//! `Arc`, so checking a credential or a permission takes no lock and a shard
//! always sees one consistent version. It holds the server's per-connection
//! [`Limits`], the tenants (quotas, signing keys), the principals (roles,
//! quotas, compiled [`Permissions`]) and the live credentials.
//!
//! Shared storage: every map is a [`CowMap`], so a snapshot made from the
//! previous one ([`ConfigSnapshot::renumbered`], then inserts and removes)
//! shares every part that did not change with it. Building one costs what
//! changed, and so does freeing the one it replaces.
//!
//! Fail closed: a snapshot built while the store or a policy could not be
//! read is the last good one with `accepting = false` — existing sessions
//! keep their rights, new sessions are refused.

use std::sync::Arc;
use std::time::Duration;

use rustc_hash::FxHashSet;

use crate::auth::{self, CredentialHash, SIGNED_PREFIX};
use crate::cowmap::CowMap;
use crate::ids::{CredentialId, PrincipalId, TenantId};
use crate::limits::Limits;
use crate::placement::{SteeringConfig, TenantPlacement};
use crate::policy::Permissions;

/// What happens to a subscriber whose outbound buffer is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SlowConsumerPolicy {
    /// Cut it with `SLOW_CONSUMER`.
    #[default]
    Disconnect,
    /// Drop its oldest queued messages to make room.
    DropOldest,
    /// Pause the tenant's publishers for at most `stall_max`, then cut it.
    StallPublisher,
}

/// Quotas of a tenant or a principal; 0 means unlimited (for `max_payload`:
/// the server's limit).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Quotas {
    /// Open connections.
    pub max_connections: u32,
    /// Subscriptions over all connections.
    pub max_subscriptions: u32,
    /// Largest payload.
    pub max_payload: u32,
    /// Published messages per second.
    pub messages_per_second: u64,
    /// Published payload bytes per second.
    pub bytes_per_second: u64,
    /// Slow-consumer handling for subscribers.
    pub slow_consumer: SlowConsumerPolicy,
    /// Longest publisher stall under [`SlowConsumerPolicy::StallPublisher`].
    pub stall_max: Duration,
}

/// A tenant as the data plane sees it.
#[derive(Debug)]
pub struct TenantEntry {
    /// Its id.
    pub id: TenantId,
    /// Its name (shown in `Welcome`).
    pub name: Arc<str>,
    /// Tenant-wide quotas.
    pub quotas: Quotas,
    /// Public key for signed tokens, when the tenant has one.
    pub verify_key: Option<[u8; 32]>,
    /// Where its connections live.
    pub placement: TenantPlacement,
}

/// A principal as the data plane sees it.
#[derive(Debug)]
pub struct PrincipalEntry {
    /// Its id.
    pub id: PrincipalId,
    /// Its tenant.
    pub tenant: TenantId,
    /// Its name, for logs and listings.
    pub name: Arc<str>,
    /// Its roles.
    pub roles: Vec<Arc<str>>,
    /// Its own quotas (on top of the tenant's).
    pub quotas: Quotas,
    /// What it may publish and subscribe to.
    pub permissions: Arc<Permissions>,
}

/// A live credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CredentialEntry {
    /// Its id.
    pub id: CredentialId,
    /// Whose it is.
    pub principal: PrincipalId,
    /// When it stops being valid (Unix seconds), if ever.
    pub expires_at_unix: Option<i64>,
}

/// Who a session is, as resolved from one snapshot.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The tenant.
    pub tenant: Arc<TenantEntry>,
    /// The principal.
    pub principal: Arc<PrincipalEntry>,
    /// The credential it authenticated with.
    pub credential: CredentialId,
    /// When the session must end (Unix seconds), if ever.
    pub expires_at_unix: Option<i64>,
}

/// Why a credential was not accepted. Clients always see the same
/// `AUTHENTICATION_FAILED`; the variants are for logs and counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Unknown, malformed, or badly signed.
    #[error("unknown credential")]
    Unknown,
    /// Past its expiry.
    #[error("credential expired")]
    Expired,
    /// Revoked, or its principal or tenant is gone.
    #[error("credential revoked")]
    Revoked,
    /// The server refuses new sessions (configuration unavailable).
    #[error("not accepting new sessions")]
    Unavailable,
}

/// Building a snapshot from inconsistent parts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    /// A principal names a tenant that is not in the snapshot.
    #[error("principal {principal} belongs to unknown tenant {tenant}")]
    UnknownTenant {
        /// The principal.
        principal: PrincipalId,
        /// The missing tenant.
        tenant: TenantId,
    },
    /// A credential names a principal that is not in the snapshot.
    #[error("credential {credential} belongs to unknown principal {principal}")]
    UnknownPrincipal {
        /// The credential.
        credential: CredentialId,
        /// The missing principal.
        principal: PrincipalId,
    },
}

/// What one shard answered when a snapshot was pushed to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyReply {
    /// It answered with the epoch it now runs (its own when the snapshot
    /// pushed was not newer).
    Applied(u64),
    /// It is gone (stopped): it has no sessions left to apply anything to.
    Gone,
    /// It did not answer in time.
    Silent,
}

/// The shards (by index in `replies`) that have not applied snapshot
/// `epoch`: the silent ones, and any that answered with an older epoch.
/// Empty: the push is acknowledged everywhere.
pub fn unconfirmed(epoch: u64, replies: &[ApplyReply]) -> Vec<u16> {
    replies
        .iter()
        .enumerate()
        .filter(|(_, r)| match r {
            ApplyReply::Applied(e) => *e < epoch,
            ApplyReply::Gone => false,
            ApplyReply::Silent => true,
        })
        .map(|(i, _)| u16::try_from(i).unwrap_or(u16::MAX))
        .collect()
}

/// What changed from the snapshot numbered `since` to the one that carries
/// it: the tenants whose entry or origins changed, and the principals whose
/// entry or any of whose credentials changed. A shard running `since` needs
/// to re-check only those sessions ([`ConfigSnapshot::rechecks`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changed {
    /// The epoch this snapshot was built from.
    pub since: u64,
    /// Tenants changed, added or removed.
    pub tenants: FxHashSet<TenantId>,
    /// Principals changed, added or removed, or whose credentials were.
    pub principals: FxHashSet<PrincipalId>,
}

/// One immutable version of everything the data plane needs to decide.
#[derive(Debug, Clone)]
pub struct ConfigSnapshot {
    epoch: u64,
    accepting: bool,
    reason: Option<Arc<str>>,
    limits: Limits,
    tenants: CowMap<TenantId, Arc<TenantEntry>>,
    principals: CowMap<PrincipalId, Arc<PrincipalEntry>>,
    /// Each credential with the hash it is found by in `bearer`, if any.
    credentials: CowMap<CredentialId, (CredentialEntry, Option<CredentialHash>)>,
    bearer: CowMap<CredentialHash, CredentialId>,
    /// Steering set through the control API; `None`: the node's configured
    /// default stays in force.
    steering: Option<Arc<SteeringConfig>>,
    /// Origins each tenant's WebSocket clients may come from (absent or
    /// empty: any); `origin::allowed` decides.
    origins: CowMap<TenantId, Arc<[Box<str>]>>,
    /// How many tenants, and how many principals, have a rate limit.
    rated: (usize, usize),
    /// What changed since the snapshot this one was built from, when the
    /// builder says (`None`: anything may have).
    changed: Option<Arc<Changed>>,
}

/// Whether `q` limits a rate.
fn rated(q: &Quotas) -> bool {
    q.messages_per_second > 0 || q.bytes_per_second > 0
}

impl ConfigSnapshot {
    /// An empty snapshot: nothing authenticates.
    pub fn new(epoch: u64, limits: Limits) -> Self {
        Self {
            epoch,
            accepting: true,
            reason: None,
            limits,
            tenants: CowMap::default(),
            principals: CowMap::default(),
            credentials: CowMap::default(),
            bearer: CowMap::default(),
            steering: None,
            origins: CowMap::default(),
            rated: (0, 0),
            changed: None,
        }
    }

    /// The next version of this snapshot, numbered `epoch`, with `limits`,
    /// accepting new sessions; it shares every entry with this one until
    /// changed. It says nothing about what changed until
    /// [`set_changed`](Self::set_changed).
    pub fn renumbered(&self, epoch: u64, limits: Limits) -> Self {
        Self {
            epoch,
            accepting: true,
            reason: None,
            limits,
            changed: None,
            ..self.clone()
        }
    }

    /// Records what changed since `base`, the snapshot this one was built
    /// from (`changed.since` becomes its epoch; ignored when the limits
    /// differ from its: every session re-checks then).
    pub fn set_changed(&mut self, base: &ConfigSnapshot, changed: Changed) {
        self.changed = (self.limits == base.limits).then(|| {
            Arc::new(Changed {
                since: base.epoch,
                ..changed
            })
        });
    }

    /// What changed since the snapshot this one was built from, if known.
    pub fn changed(&self) -> Option<&Changed> {
        self.changed.as_deref()
    }

    /// Whether a shard running snapshot `running` must re-check a session
    /// of `tenant` and `principal` (`None`: not authenticated, or on its
    /// way to another shard) when it applies this one: always, unless this
    /// snapshot says what changed since `running` and neither is in it.
    pub fn rechecks(
        &self,
        running: u64,
        tenant: Option<TenantId>,
        principal: Option<PrincipalId>,
    ) -> bool {
        match (&self.changed, tenant, principal) {
            (Some(c), Some(t), Some(p)) if c.since == running => {
                c.tenants.contains(&t) || c.principals.contains(&p)
            }
            _ => true,
        }
    }

    /// How many parts of its maps this snapshot shares with `other` (see
    /// [`CowMap`]), for tests and measurements.
    pub fn parts_shared_with(&self, other: &Self) -> usize {
        self.tenants.parts_shared_with(&other.tenants)
            + self.principals.parts_shared_with(&other.principals)
            + self.credentials.parts_shared_with(&other.credentials)
            + self.bearer.parts_shared_with(&other.bearer)
            + self.origins.parts_shared_with(&other.origins)
    }

    /// Steering set through the control API, if any (else the node's
    /// configured default applies).
    pub fn steering(&self) -> Option<&Arc<SteeringConfig>> {
        self.steering.as_ref()
    }

    /// Sets the steering the control API chose.
    pub fn set_steering(&mut self, steering: SteeringConfig) {
        self.steering = Some(Arc::new(steering));
    }

    /// Forgets the steering the control API chose (the node's configured
    /// default applies again).
    pub fn clear_steering(&mut self) {
        self.steering = None;
    }

    /// Sets the origins `tenant`'s WebSocket clients may come from (entries
    /// checked with `origin::validate` by whoever builds the snapshot);
    /// empty: any origin.
    pub fn set_allowed_origins(&mut self, tenant: TenantId, origins: Vec<String>) {
        if origins.is_empty() {
            self.origins.remove(&tenant);
        } else {
            let list: Vec<Box<str>> = origins.into_iter().map(String::into_boxed_str).collect();
            self.origins.insert(tenant, list.into());
        }
    }

    /// The origins `tenant`'s WebSocket clients may come from; empty: any.
    pub fn allowed_origins(&self, tenant: TenantId) -> &[Box<str>] {
        self.origins.get(&tenant).map_or(&[], |o| &o[..])
    }

    /// This snapshot, renumbered, refusing new sessions because of `reason`
    /// (fail closed). Existing sessions keep what they have.
    pub fn refusing_new_sessions(&self, epoch: u64, reason: &str) -> Self {
        Self {
            epoch,
            accepting: false,
            reason: Some(reason.into()),
            changed: None,
            ..self.clone()
        }
    }

    /// The version; newer snapshots have larger epochs.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Whether new sessions are accepted.
    pub fn accepting(&self) -> bool {
        self.accepting
    }

    /// Why new sessions are refused, when they are.
    pub fn reason(&self) -> Option<&str> {
        self.reason.as_deref()
    }

    /// Per-connection limits.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// A tenant.
    pub fn tenant(&self, id: TenantId) -> Option<&Arc<TenantEntry>> {
        self.tenants.get(&id)
    }

    /// Every tenant.
    pub fn tenants(&self) -> impl Iterator<Item = &Arc<TenantEntry>> {
        self.tenants.values()
    }

    /// A principal.
    pub fn principal(&self, id: PrincipalId) -> Option<&Arc<PrincipalEntry>> {
        self.principals.get(&id)
    }

    /// Every principal.
    pub fn principals(&self) -> impl Iterator<Item = &Arc<PrincipalEntry>> {
        self.principals.values()
    }

    /// Every credential, with the hash of its bearer token (signed ones:
    /// `None`).
    pub fn credentials(&self) -> impl Iterator<Item = (&CredentialEntry, Option<&CredentialHash>)> {
        self.credentials.values().map(|(c, h)| (c, h.as_ref()))
    }

    /// A credential.
    pub fn credential(&self, id: CredentialId) -> Option<&CredentialEntry> {
        self.credentials.get(&id).map(|(c, _)| c)
    }

    /// The bearer credential whose token has `hash`.
    pub fn bearer(&self, hash: &CredentialHash) -> Option<CredentialId> {
        self.bearer.get(hash).copied()
    }

    /// Whether any tenant or principal has a rate limit (kept as entries
    /// come and go, so asking costs nothing).
    pub fn uses_rates(&self) -> bool {
        self.rated != (0, 0)
    }

    /// Number of credentials.
    pub fn credential_count(&self) -> usize {
        self.credentials.len()
    }

    /// Adds (or replaces) a tenant.
    pub fn insert_tenant(&mut self, tenant: TenantEntry) {
        self.insert_tenant_shared(Arc::new(tenant));
    }

    /// Adds (or replaces) a tenant already shared with another snapshot:
    /// sessions resolved from either see the same entry.
    pub fn insert_tenant_shared(&mut self, tenant: Arc<TenantEntry>) {
        self.rated.0 += usize::from(rated(&tenant.quotas));
        if let Some(old) = self.tenants.insert(tenant.id, tenant) {
            self.rated.0 -= usize::from(rated(&old.quotas));
        }
    }

    /// Removes a tenant and its origins (its principals and credentials are
    /// the caller's to remove: a session resolved against them finds no
    /// tenant and is refused).
    pub fn remove_tenant(&mut self, id: TenantId) {
        if let Some(old) = self.tenants.remove(&id) {
            self.rated.0 -= usize::from(rated(&old.quotas));
        }
        self.origins.remove(&id);
    }

    /// Adds (or replaces) a principal of a tenant already added.
    pub fn insert_principal(&mut self, principal: PrincipalEntry) -> Result<(), SnapshotError> {
        self.insert_principal_shared(Arc::new(principal))
    }

    /// Adds (or replaces) a principal already shared with another snapshot,
    /// of a tenant already added. Sharing it keeps its `permissions` the
    /// same `Arc`, so sessions of that principal see no permission change
    /// ([`crate::session::Step::PermissionsChanged`] compares pointers) and
    /// re-check none of their subscriptions.
    pub fn insert_principal_shared(
        &mut self,
        principal: Arc<PrincipalEntry>,
    ) -> Result<(), SnapshotError> {
        if !self.tenants.contains_key(&principal.tenant) {
            return Err(SnapshotError::UnknownTenant {
                principal: principal.id,
                tenant: principal.tenant,
            });
        }
        self.rated.1 += usize::from(rated(&principal.quotas));
        if let Some(old) = self.principals.insert(principal.id, principal) {
            self.rated.1 -= usize::from(rated(&old.quotas));
        }
        Ok(())
    }

    /// Removes a principal (its credentials are the caller's to remove: a
    /// session resolved against them finds no principal and is refused).
    pub fn remove_principal(&mut self, id: PrincipalId) {
        if let Some(old) = self.principals.remove(&id) {
            self.rated.1 -= usize::from(rated(&old.quotas));
        }
    }

    fn insert_credential(
        &mut self,
        entry: CredentialEntry,
        hash: Option<CredentialHash>,
    ) -> Result<(), SnapshotError> {
        if !self.principals.contains_key(&entry.principal) {
            return Err(SnapshotError::UnknownPrincipal {
                credential: entry.id,
                principal: entry.principal,
            });
        }
        self.remove_credential(entry.id);
        self.credentials.insert(entry.id, (entry, hash));
        if let Some(hash) = hash {
            self.bearer.insert(hash, entry.id);
        }
        Ok(())
    }

    /// Adds (or replaces) a bearer credential, found by the hash of its
    /// token.
    pub fn insert_bearer(
        &mut self,
        hash: CredentialHash,
        entry: CredentialEntry,
    ) -> Result<(), SnapshotError> {
        self.insert_credential(entry, Some(hash))
    }

    /// Adds (or replaces) a signed credential (its token carries its
    /// claims).
    pub fn insert_signed(&mut self, entry: CredentialEntry) -> Result<(), SnapshotError> {
        self.insert_credential(entry, None)
    }

    /// Removes a credential (revoked): sessions that authenticated with it
    /// close when they re-check.
    pub fn remove_credential(&mut self, id: CredentialId) {
        if let Some((_, Some(hash))) = self.credentials.remove(&id) {
            // Only if the hash still names it (a token is one credential's).
            if self.bearer.get(&hash) == Some(&id) {
                self.bearer.remove(&hash);
            }
        }
    }

    fn resolve(&self, id: CredentialId, now_unix: i64) -> Result<Identity, AuthError> {
        let (cred, _) = self.credentials.get(&id).ok_or(AuthError::Revoked)?;
        if cred.expires_at_unix.is_some_and(|e| e <= now_unix) {
            return Err(AuthError::Expired);
        }
        let principal = self
            .principals
            .get(&cred.principal)
            .ok_or(AuthError::Revoked)?;
        let tenant = self
            .tenants
            .get(&principal.tenant)
            .ok_or(AuthError::Revoked)?;
        Ok(Identity {
            tenant: tenant.clone(),
            principal: principal.clone(),
            credential: id,
            expires_at_unix: cred.expires_at_unix,
        })
    }

    /// Who `credential` belongs to at `now_unix`.
    pub fn authenticate(&self, credential: &str, now_unix: i64) -> Result<Identity, AuthError> {
        if !self.accepting {
            return Err(AuthError::Unavailable);
        }
        if credential.is_empty() {
            return Err(AuthError::Unknown);
        }
        if credential.starts_with(SIGNED_PREFIX) {
            let (claims, bytes, sig) =
                auth::parse_signed(credential).map_err(|_| AuthError::Unknown)?;
            let tenant = self
                .tenants
                .get(&TenantId(claims.tenant_id))
                .ok_or(AuthError::Unknown)?;
            let key = tenant.verify_key.as_ref().ok_or(AuthError::Unknown)?;
            auth::verify_signature(key, &bytes, &sig).map_err(|_| AuthError::Unknown)?;
            if claims.expires_at_unix <= now_unix {
                return Err(AuthError::Expired);
            }
            let id = self.resolve(CredentialId(claims.credential_id), now_unix)?;
            // The claims must agree with the record they name.
            if id.principal.id != PrincipalId(claims.principal_id) || id.tenant.id != tenant.id {
                return Err(AuthError::Unknown);
            }
            return Ok(Identity {
                expires_at_unix: Some(
                    id.expires_at_unix
                        .map_or(claims.expires_at_unix, |e| e.min(claims.expires_at_unix)),
                ),
                ..id
            });
        }
        let id = self
            .bearer
            .get(&CredentialHash::of(credential))
            .ok_or(AuthError::Unknown)?;
        self.resolve(*id, now_unix)
    }

    /// Re-resolves an existing session against this snapshot: its credential
    /// may have been revoked, its principal's rights changed.
    pub fn revalidate(&self, identity: &Identity, now_unix: i64) -> Result<Identity, AuthError> {
        let fresh = self.resolve(identity.credential, now_unix)?;
        if fresh.principal.id != identity.principal.id {
            return Err(AuthError::Revoked);
        }
        // A signed token's own expiry still binds.
        let expires = match (fresh.expires_at_unix, identity.expires_at_unix) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if expires.is_some_and(|e| e <= now_unix) {
            return Err(AuthError::Expired);
        }
        Ok(Identity {
            expires_at_unix: expires,
            ..fresh
        })
    }
}

#[cfg(test)]
mod tests {
    use arqonbus_proto::v1::SignedTokenClaims;
    use ring::signature::{Ed25519KeyPair, KeyPair as _};

    use super::*;
    use crate::auth::sign_token;

    fn snapshot(key: Option<[u8; 32]>) -> ConfigSnapshot {
        let mut s = ConfigSnapshot::new(1, Limits::default());
        s.insert_tenant(TenantEntry {
            id: TenantId(1),
            name: "acme".into(),
            quotas: Quotas::default(),
            verify_key: key,
            placement: crate::placement::TenantPlacement::default(),
        });
        s.insert_principal(PrincipalEntry {
            id: PrincipalId(10),
            tenant: TenantId(1),
            name: "svc".into(),
            roles: vec![],
            quotas: Quotas::default(),
            permissions: Arc::new(Permissions::allow_all()),
        })
        .unwrap();
        s
    }

    #[test]
    fn bearer_lifecycle() {
        let mut s = snapshot(None);
        let entry = CredentialEntry {
            id: CredentialId(5),
            principal: PrincipalId(10),
            expires_at_unix: Some(1000),
        };
        s.insert_bearer(CredentialHash::of("abt_x"), entry).unwrap();
        let id = s.authenticate("abt_x", 999).unwrap();
        assert_eq!(id.tenant.id, TenantId(1));
        assert_eq!(
            s.authenticate("abt_y", 999).unwrap_err(),
            AuthError::Unknown
        );
        assert_eq!(
            s.authenticate("abt_x", 1000).unwrap_err(),
            AuthError::Expired
        );
        assert!(s.revalidate(&id, 999).is_ok());

        // Revoked: the next snapshot lacks the credential.
        let revoked = snapshot(None);
        assert_eq!(
            revoked.revalidate(&id, 999).unwrap_err(),
            AuthError::Revoked
        );
        // Fail closed: nobody new, existing sessions untouched.
        let closed = s.refusing_new_sessions(2, "store unreadable");
        assert_eq!(
            closed.authenticate("abt_x", 1).unwrap_err(),
            AuthError::Unavailable
        );
        assert!(closed.revalidate(&id, 1).is_ok());
        assert_eq!(closed.reason(), Some("store unreadable"));
    }

    #[test]
    fn signed_tokens_verify_locally_and_honour_revocation() {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let key = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let public: [u8; 32] = key.public_key().as_ref().try_into().unwrap();
        let mut s = snapshot(Some(public));
        s.insert_signed(CredentialEntry {
            id: CredentialId(6),
            principal: PrincipalId(10),
            expires_at_unix: None,
        })
        .unwrap();
        let claims = SignedTokenClaims {
            tenant_id: 1,
            principal_id: 10,
            credential_id: 6,
            issued_at_unix: 0,
            expires_at_unix: 500,
        };
        let token = sign_token(&claims, &key);
        let id = s.authenticate(&token, 100).unwrap();
        assert_eq!(id.expires_at_unix, Some(500));
        assert_eq!(s.authenticate(&token, 500).unwrap_err(), AuthError::Expired);
        assert_eq!(s.revalidate(&id, 500).unwrap_err(), AuthError::Expired);

        // Claims that name another principal than the record: refused.
        let lie = sign_token(
            &SignedTokenClaims {
                principal_id: 11,
                ..claims
            },
            &key,
        );
        assert_eq!(s.authenticate(&lie, 100).unwrap_err(), AuthError::Unknown);
        // Revoked: the credential is absent from the next snapshot.
        let fresh = snapshot(Some(public));
        assert_eq!(
            fresh.authenticate(&token, 100).unwrap_err(),
            AuthError::Revoked
        );
    }

    #[test]
    fn a_push_is_acknowledged_when_every_live_shard_runs_its_epoch() {
        use ApplyReply::{Applied, Gone, Silent};
        assert!(unconfirmed(7, &[Applied(7), Applied(9), Gone]).is_empty());
        assert_eq!(unconfirmed(7, &[Applied(7), Silent, Applied(6)]), [1, 2]);
        assert!(unconfirmed(7, &[]).is_empty());
    }

    #[test]
    fn a_shared_principal_keeps_its_permissions_pointer() {
        let old = snapshot(None);
        let kept = old.principal(PrincipalId(10)).unwrap().clone();
        let mut next = ConfigSnapshot::new(2, Limits::default());
        next.insert_tenant_shared(old.tenant(TenantId(1)).unwrap().clone());
        next.insert_principal_shared(kept.clone()).unwrap();
        let now = next.principal(PrincipalId(10)).unwrap();
        assert!(Arc::ptr_eq(&now.permissions, &kept.permissions));
        let orphan = ConfigSnapshot::new(3, Limits::default()).insert_principal_shared(kept);
        assert!(matches!(orphan, Err(SnapshotError::UnknownTenant { .. })));
    }

    #[test]
    fn only_sessions_named_in_what_changed_are_rechecked() {
        let base = snapshot(None);
        let mut next = base.renumbered(2, Limits::default());
        let (t, p) = (Some(TenantId(1)), Some(PrincipalId(10)));
        assert!(next.rechecks(1, t, p), "nothing said: every session");
        next.set_changed(
            &base,
            Changed {
                since: 1,
                tenants: [TenantId(3)].into_iter().collect(),
                principals: [PrincipalId(11)].into_iter().collect(),
            },
        );
        assert!(!next.rechecks(1, t, p), "neither changed");
        assert!(next.rechecks(1, Some(TenantId(3)), p), "its tenant did");
        assert!(
            next.rechecks(1, t, Some(PrincipalId(11))),
            "its principal did"
        );
        assert!(next.rechecks(0, t, p), "the shard runs another epoch");
        assert!(
            next.rechecks(1, None, None),
            "not authenticated (or moving)"
        );
        // Not carried over: renumbered or refusing, it says nothing again.
        assert!(next.renumbered(3, Limits::default()).rechecks(2, t, p));
        assert!(next.refusing_new_sessions(3, "x").rechecks(2, t, p));
        // New limits: every session re-checks.
        let limits = Limits {
            max_subscriptions: 7,
            ..Limits::default()
        };
        let mut other = base.renumbered(2, limits);
        other.set_changed(
            &base,
            Changed {
                since: 1,
                ..Changed::default()
            },
        );
        assert!(other.changed().is_none() && other.rechecks(1, t, p));
    }

    #[test]
    fn inconsistent_parts_are_refused() {
        let mut s = ConfigSnapshot::new(1, Limits::default());
        let err = s
            .insert_principal(PrincipalEntry {
                id: PrincipalId(1),
                tenant: TenantId(9),
                name: "x".into(),
                roles: vec![],
                quotas: Quotas::default(),
                permissions: Arc::new(Permissions::allow_all()),
            })
            .unwrap_err();
        assert!(matches!(err, SnapshotError::UnknownTenant { .. }));
        let err = s
            .insert_bearer(
                CredentialHash::of("abt_z"),
                CredentialEntry {
                    id: CredentialId(1),
                    principal: PrincipalId(1),
                    expires_at_unix: None,
                },
            )
            .unwrap_err();
        assert!(matches!(err, SnapshotError::UnknownPrincipal { .. }));
    }
}
