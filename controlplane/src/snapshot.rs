//! Building the data plane's [`ConfigSnapshot`] from the store.
//!
//! [`compile_snapshot`] is pure: store contents, an epoch, the server's
//! limits and `now` in, a snapshot out. [`build_snapshot`] reads the store
//! first. The rules:
//! - each tenant carries its quotas (0 = unlimited, a 0 stall = 100 ms),
//!   the public half of its signing key and its placement (empty: home);
//! - the steering set through the API, if any, goes in with
//!   [`ConfigSnapshot::set_steering`] (none: the configuration file's);
//! - each principal's permissions are compiled by
//!   [`arqonbus_core::policy::compile`] from every policy of its tenant that
//!   targets its id or one of its roles (none: allow all; deny wins);
//! - bearer credentials go in by token hash, signed ones by id, each with
//!   its expiry; revoked credentials are left out, so the shards close
//!   their sessions.
//!
//! Incremental: [`BuildCache`] keeps the last snapshot built and what it
//! was built from — tenant entries (with their verified key), parsed
//! policies, compiled permissions and principal entries — keyed by id and
//! checked against the stored record (which carries its `version`), with
//! indexes from each policy target to its policies and from each role to
//! its principals. Given what was written since (the store's
//! [`Changes`]), a build starts from the last snapshot (which shares its
//! storage: `arqonbus_core::cowmap`) and visits only the records written
//! and the principals a changed policy applies to, so it costs what
//! changed; the snapshot then names the tenants and principals it touched
//! ([`Changed`]), and the shards re-check only their sessions. Without them (the first build, a reload, a build after one that
//! failed) it visits every record, still reusing the same `Arc` for every
//! record that did not change. Either way a principal's permissions are
//! compiled again only when one of the policies that apply to it changed,
//! and each distinct set of policies once (every principal of a role shares
//! one `Permissions`, counted by its users and freed with the last). Shards
//! compare the `Arc`s: a session whose principal's permissions are the same
//! `Arc` re-checks none of its subscriptions. The cache is updated in
//! place, an entry with its record, so a failed build leaves only entries
//! that match their records.
//!
//! Reading: the publisher keeps the store's contents between builds and
//! [`Store::refresh`]es them, which reads only the records written since
//! (the store journals its writes, deletions with every record they take
//! along) and says which.
//!
//! Expiry: a build that visits a credential leaves it out once expired; one
//! left in by an earlier build is refused as expired by the shards
//! (`authenticate` and `revalidate` check the expiry against their clock).
//!
//! Fail closed: anything that does not decode or validate (a policy pattern,
//! a quota, a signing key, a dangling reference) fails the whole build. The
//! caller ([`crate::publish`]) then pushes the last good snapshot marked as
//! refusing new sessions; it never pushes a partial, more permissive one.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use arqonbus_core::auth::CredentialHash;
use arqonbus_core::limits::Limits;
use arqonbus_core::policy::{Permissions, PolicyRules, compile};
use arqonbus_core::snapshot::{
    Changed, ConfigSnapshot, CredentialEntry, PrincipalEntry, SnapshotError, TenantEntry,
};
use arqonbus_core::{CredentialId, PrincipalId, TenantId};
use arqonbus_proto::control::policy::Target;
use arqonbus_proto::control::{CredentialKind, Policy, Principal, Quotas};
use ring::signature::{Ed25519KeyPair, KeyPair as _};

use crate::store::{Changes, CredentialRecord, Store, StoreContents, StoreError, TenantRecord};
use crate::validate::{core_quotas, placement, policy_rules, steering_config};

/// Why a snapshot could not be built. Every variant means the stored state
/// cannot be trusted as a whole; the node fails closed until it is fixed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The store could not be read, or a record does not decode.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stored policy does not validate.
    #[error("policy {policy}: {reason}")]
    Policy {
        /// The policy's id.
        policy: u64,
        /// What is wrong.
        reason: String,
    },
    /// A stored tenant or principal has quotas the data plane cannot use.
    #[error("{what} {id}: quotas.{reason}")]
    Quotas {
        /// "tenant" or "principal".
        what: &'static str,
        /// Its id.
        id: u64,
        /// What is wrong.
        reason: String,
    },
    /// A tenant's signing key is unusable.
    #[error("tenant {tenant}: signing key: {reason}")]
    SigningKey {
        /// The tenant.
        tenant: u64,
        /// What is wrong.
        reason: String,
    },
    /// A credential is of no known kind, or lacks its token hash.
    #[error("credential {credential}: {reason}")]
    Credential {
        /// The credential.
        credential: u64,
        /// What is wrong.
        reason: String,
    },
    /// A tenant's stored placement does not parse.
    #[error("tenant {tenant}: {reason}")]
    Placement {
        /// The tenant.
        tenant: u64,
        /// What is wrong.
        reason: String,
    },
    /// The stored steering does not parse.
    #[error("steering: {0}")]
    Steering(String),
    /// Records refer to records that do not exist.
    #[error(transparent)]
    Inconsistent(#[from] SnapshotError),
}

/// Now, Unix seconds.
pub fn now_unix() -> i64 {
    now_unix_ms().div_euclid(1000)
}

/// Now, Unix milliseconds (0 if the clock is before 1970).
pub fn now_unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The public key of a PKCS#8 ed25519 signing key.
pub fn verify_key(pkcs8: &[u8]) -> Result<[u8; 32], String> {
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8).map_err(|e| e.to_string())?;
    <[u8; 32]>::try_from(pair.public_key().as_ref())
        .map_err(|_| "public key is not 32 bytes".into())
}

fn quotas(
    what: &'static str,
    id: u64,
    q: Option<&Quotas>,
) -> Result<arqonbus_core::snapshot::Quotas, BuildError> {
    core_quotas(q.unwrap_or(&Quotas::default())).map_err(|e| BuildError::Quotas {
        what,
        id,
        reason: e.to_string(),
    })
}

/// Where a policy applies: to one principal, or to a role in a tenant.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Applies {
    Principal(u64),
    Role(u64, String),
}

impl Applies {
    fn of(p: &Policy) -> Result<Self, BuildError> {
        match &p.target {
            Some(Target::PrincipalId(id)) => Ok(Self::Principal(*id)),
            Some(Target::Role(role)) => Ok(Self::Role(p.tenant_id, role.clone())),
            None => Err(BuildError::Policy {
                policy: p.id,
                reason: "no target".into(),
            }),
        }
    }
}

/// Permissions compiled from a set of policies, with those policies (held
/// so their addresses, the key, stay theirs) and how many principals use
/// them.
#[derive(Debug)]
struct Compiled {
    _rules: Vec<Arc<PolicyRules>>,
    permissions: Arc<Permissions>,
    users: usize,
}

/// A principal as last built: its record, its entry, and the key of the
/// permissions it holds a use of (`None`: none yet in this build).
#[derive(Debug)]
struct BuiltPrincipal {
    record: Principal,
    entry: Arc<PrincipalEntry>,
    held: Option<Vec<usize>>,
}

/// What the last builds compiled, for the next one to reuse, and the last
/// snapshot built, for the next one to start from.
#[derive(Debug, Default)]
pub struct BuildCache {
    /// The last snapshot built, which every index below describes; `None`
    /// (at first, and after a build failed): the next build is a full one.
    base: Option<ConfigSnapshot>,
    tenants: HashMap<u64, (TenantRecord, Arc<TenantEntry>)>,
    policies: HashMap<u64, (Policy, Arc<PolicyRules>)>,
    /// The policies that apply to each target, by id (the order they
    /// apply in).
    applies: HashMap<Applies, BTreeMap<u64, Arc<PolicyRules>>>,
    /// Each role's principals, by (tenant, role).
    members: HashMap<(u64, String), BTreeSet<u64>>,
    /// By the addresses of the policies' `Arc`s (held by `policies` and by
    /// the value), in the order they apply.
    permissions: HashMap<Vec<usize>, Compiled>,
    principals: HashMap<u64, BuiltPrincipal>,
}

/// What one build had to do, beyond reusing [`BuildCache`] entries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BuildStats {
    /// Tenant entries built (their signing key verified).
    pub tenants: usize,
    /// Policies parsed and validated.
    pub policies: usize,
    /// Distinct sets of policies compiled into permissions.
    pub permissions: usize,
    /// Principal entries built (the rest are the previous snapshot's).
    pub principals: usize,
}

/// Reads the store and builds the snapshot numbered `epoch`.
pub fn build_snapshot(
    store: &dyn Store,
    epoch: u64,
    limits: &Limits,
) -> Result<ConfigSnapshot, BuildError> {
    compile_snapshot(&store.load()?, epoch, limits, now_unix())
}

/// Reads the whole store and builds the snapshot numbered `epoch`, reusing
/// and then updating `cache`.
pub fn build_snapshot_cached(
    store: &dyn Store,
    epoch: u64,
    limits: &Limits,
    cache: &mut BuildCache,
) -> Result<(ConfigSnapshot, BuildStats), BuildError> {
    compile_snapshot_cached(&store.load()?, None, epoch, limits, now_unix(), cache)
}

/// Builds the snapshot numbered `epoch` from `contents` as of `now_unix`,
/// from scratch.
pub fn compile_snapshot(
    contents: &StoreContents,
    epoch: u64,
    limits: &Limits,
    now_unix: i64,
) -> Result<ConfigSnapshot, BuildError> {
    let mut cache = BuildCache::default();
    compile_snapshot_cached(contents, None, epoch, limits, now_unix, &mut cache).map(|(s, _)| s)
}

fn tenant_entry(t: &TenantRecord) -> Result<TenantEntry, BuildError> {
    let id = t.tenant.id;
    let key = verify_key(&t.signing_key.0)
        .map_err(|reason| BuildError::SigningKey { tenant: id, reason })?;
    let placement =
        placement("placement", &t.tenant.placement).map_err(|e| BuildError::Placement {
            tenant: id,
            reason: e.to_string(),
        })?;
    Ok(TenantEntry {
        id: TenantId(id),
        name: t.tenant.name.as_str().into(),
        quotas: quotas("tenant", id, t.tenant.quotas.as_ref())?,
        verify_key: Some(key),
        placement,
    })
}

/// Builds the snapshot numbered `epoch` from `contents` as of `now_unix`.
///
/// With `changes` (what was written since the last build) and a last
/// snapshot in `cache`, the build starts from that snapshot and visits only
/// the records named, and the principals a changed policy applies to: it
/// costs what changed. Otherwise it visits every record, still reusing
/// what `cache` holds for records that did not change.
///
/// The cache is updated in place: a record that changed is copied into it
/// with what was built from it, so every entry always matches its record,
/// even after a build that failed half-way; such a build also forgets the
/// last snapshot, so the next one visits everything.
pub fn compile_snapshot_cached(
    contents: &StoreContents,
    changes: Option<&Changes>,
    epoch: u64,
    limits: &Limits,
    now_unix: i64,
    cache: &mut BuildCache,
) -> Result<(ConfigSnapshot, BuildStats), BuildError> {
    let base = cache.base.take();
    let mut b = Build {
        snap: ConfigSnapshot::new(epoch, limits.clone()),
        cache,
        contents,
        now_unix,
        stats: BuildStats::default(),
    };
    match (base, changes) {
        (Some(base), Some(changes)) => {
            b.snap = base.renumbered(epoch, limits.clone());
            let touched = b.changed(changes)?;
            b.snap.set_changed(&base, touched);
        }
        _ => b.everything()?,
    }
    let Build {
        snap, cache, stats, ..
    } = b;
    cache.base = Some(snap.clone());
    Ok((snap, stats))
}

/// One build in progress.
struct Build<'a> {
    snap: ConfigSnapshot,
    cache: &'a mut BuildCache,
    contents: &'a StoreContents,
    now_unix: i64,
    stats: BuildStats,
}

impl Build<'_> {
    /// Visits every record, into the empty snapshot.
    fn everything(&mut self) -> Result<(), BuildError> {
        let c = self.contents;
        // The indexes are rebuilt; permissions keep their entries, for
        // reuse, but no principal holds them until visited.
        self.cache.applies.clear();
        self.cache.members.clear();
        for compiled in self.cache.permissions.values_mut() {
            compiled.users = 0;
        }
        for built in self.cache.principals.values_mut() {
            built.held = None;
        }
        for t in c.tenants.values() {
            self.put_tenant(t)?;
        }
        self.steering()?;
        // Every stored policy must validate, whether or not it targets anyone.
        for p in c.policies.values() {
            self.put_policy(p)?;
        }
        for p in c.principals.values() {
            self.put_principal(p)?;
        }
        for r in c.credentials.values() {
            self.put_credential(r)?;
        }
        // Forget what is gone, keep only the permissions in use (an entry
        // keeps its policies' `Arc`s, so their addresses, its key, cannot
        // be reused while it lives).
        prune(&mut self.cache.tenants, &c.tenants);
        prune(&mut self.cache.policies, &c.policies);
        prune(&mut self.cache.principals, &c.principals);
        self.cache.permissions.retain(|_, c| c.users > 0);
        Ok(())
    }

    /// Visits what `changes` names, into the last snapshot renumbered;
    /// returns the tenants and principals whose sessions must re-check.
    fn changed(&mut self, changes: &Changes) -> Result<Changed, BuildError> {
        let c = self.contents;
        let mut touched = Changed {
            tenants: changes.tenants.iter().map(|&t| TenantId(t)).collect(),
            ..Changed::default()
        };
        for &id in &changes.tenants {
            if let Some(t) = c.tenants.get(&id) {
                self.put_tenant(t)?;
            } else {
                self.snap.remove_tenant(TenantId(id));
                self.cache.tenants.remove(&id);
            }
        }
        if changes.steering {
            self.steering()?;
        }
        // A policy that changed changes the permissions of every principal
        // it applied to, and of every one it applies to now.
        let mut principals = changes.principals.clone();
        for &id in &changes.policies {
            if let Some((old, _)) = self.cache.policies.get(&id) {
                let was = Applies::of(old)?;
                self.reaches(&was, &mut principals);
            }
            match c.policies.get(&id) {
                Some(p) => {
                    self.put_policy(p)?;
                    self.reaches(&Applies::of(p)?, &mut principals);
                }
                None => self.drop_policy(id),
            }
        }
        for &id in &principals {
            match c.principals.get(&id) {
                Some(p) => self.put_principal(p)?,
                None => self.drop_principal(id),
            }
            touched.principals.insert(PrincipalId(id));
        }
        for &id in &changes.credentials {
            if let Some(was) = self.snap.credential(CredentialId(id)) {
                touched.principals.insert(was.principal);
            }
            self.snap.remove_credential(CredentialId(id));
            if let Some(r) = c.credentials.get(&id) {
                touched
                    .principals
                    .insert(PrincipalId(r.credential.principal_id));
                self.put_credential(r)?;
            }
        }
        Ok(touched)
    }

    /// Adds the principals `target` names to `into`.
    fn reaches(&self, target: &Applies, into: &mut BTreeSet<u64>) {
        match target {
            Applies::Principal(id) => {
                into.insert(*id);
            }
            Applies::Role(tenant, role) => {
                if let Some(m) = self.cache.members.get(&(*tenant, role.clone())) {
                    into.extend(m);
                }
            }
        }
    }

    fn put_tenant(&mut self, t: &TenantRecord) -> Result<(), BuildError> {
        let entry = match self.cache.tenants.get(&t.tenant.id) {
            Some((old, entry)) if old == t => entry.clone(),
            _ => {
                self.stats.tenants += 1;
                let entry = Arc::new(tenant_entry(t)?);
                self.cache
                    .tenants
                    .insert(t.tenant.id, (t.clone(), entry.clone()));
                entry
            }
        };
        self.snap.insert_tenant_shared(entry);
        self.snap
            .set_allowed_origins(TenantId(t.tenant.id), t.tenant.allowed_origins.clone());
        Ok(())
    }

    fn steering(&mut self) -> Result<(), BuildError> {
        match &self.contents.steering {
            Some(s) => {
                let steering = steering_config(&s.mode, &s.affinity)
                    .map_err(|e| BuildError::Steering(e.to_string()))?;
                self.snap.set_steering(steering);
            }
            None => self.snap.clear_steering(),
        }
        Ok(())
    }

    /// Validates `p` (unless the cache holds it unchanged) and indexes it
    /// under its target.
    fn put_policy(&mut self, p: &Policy) -> Result<(), BuildError> {
        let target = Applies::of(p)?;
        let rules = match self.cache.policies.get(&p.id) {
            Some((old, rules)) if old == p => rules.clone(),
            _ => {
                self.stats.policies += 1;
                let rules =
                    Arc::new(policy_rules("policy", p).map_err(|e| BuildError::Policy {
                        policy: p.id,
                        reason: e.to_string(),
                    })?);
                self.drop_policy(p.id);
                self.cache.policies.insert(p.id, (p.clone(), rules.clone()));
                rules
            }
        };
        self.cache
            .applies
            .entry(target)
            .or_default()
            .insert(p.id, rules);
        Ok(())
    }

    /// Forgets policy `id` and takes it out of its target's index.
    fn drop_policy(&mut self, id: u64) {
        let Some((old, _)) = self.cache.policies.remove(&id) else {
            return;
        };
        if let Ok(target) = Applies::of(&old)
            && let Some(list) = self.cache.applies.get_mut(&target)
        {
            list.remove(&id);
            if list.is_empty() {
                self.cache.applies.remove(&target);
            }
        }
    }

    /// (Re)builds principal `p`: its role memberships, its permissions
    /// (compiled once per distinct set of policies) and its entry.
    fn put_principal(&mut self, p: &Principal) -> Result<(), BuildError> {
        let cache = &mut *self.cache;
        if let Some(old) = cache.principals.get(&p.id) {
            leave_roles(&mut cache.members, &old.record);
        }
        for role in &p.roles {
            cache
                .members
                .entry((p.tenant_id, role.clone()))
                .or_default()
                .insert(p.id);
        }
        let mut rules: Vec<Arc<PolicyRules>> = Vec::new();
        let own = Applies::Principal(p.id);
        rules.extend(
            cache
                .applies
                .get(&own)
                .into_iter()
                .flat_map(|l| l.values().cloned()),
        );
        let mut role_key = Applies::Role(p.tenant_id, String::new());
        for role in &p.roles {
            if let Applies::Role(_, r) = &mut role_key {
                role.clone_into(r);
            }
            rules.extend(
                cache
                    .applies
                    .get(&role_key)
                    .into_iter()
                    .flat_map(|l| l.values().cloned()),
            );
        }
        let key: Vec<usize> = rules.iter().map(|r| Arc::as_ptr(r) as usize).collect();
        let permissions = if let Some(c) = cache.permissions.get_mut(&key) {
            c.users += 1;
            c.permissions.clone()
        } else {
            self.stats.permissions += 1;
            let permissions = Arc::new(compile(rules.iter().map(|r| &**r)));
            cache.permissions.insert(
                key.clone(),
                Compiled {
                    _rules: rules,
                    permissions: permissions.clone(),
                    users: 1,
                },
            );
            permissions
        };
        // Taken before the old use is given back: the same key keeps its
        // entry.
        let old = cache.principals.remove(&p.id);
        let reused = match &old {
            Some(o) if o.record == *p && Arc::ptr_eq(&o.entry.permissions, &permissions) => {
                Some(o.entry.clone())
            }
            _ => None,
        };
        if let Some(held) = old.and_then(|o| o.held) {
            release(&mut cache.permissions, &held);
        }
        let entry = if let Some(entry) = reused {
            entry
        } else {
            self.stats.principals += 1;
            Arc::new(PrincipalEntry {
                id: PrincipalId(p.id),
                tenant: TenantId(p.tenant_id),
                name: p.name.as_str().into(),
                roles: p.roles.iter().map(|r| r.as_str().into()).collect(),
                quotas: quotas("principal", p.id, p.quotas.as_ref())?,
                permissions,
            })
        };
        cache.principals.insert(
            p.id,
            BuiltPrincipal {
                record: p.clone(),
                entry: entry.clone(),
                held: Some(key),
            },
        );
        self.snap.insert_principal_shared(entry)?;
        Ok(())
    }

    /// Removes principal `id` from the snapshot and the cache.
    fn drop_principal(&mut self, id: u64) {
        self.snap.remove_principal(PrincipalId(id));
        let cache = &mut *self.cache;
        if let Some(old) = cache.principals.remove(&id) {
            leave_roles(&mut cache.members, &old.record);
            if let Some(held) = old.held {
                release(&mut cache.permissions, &held);
            }
        }
    }

    /// Adds credential `r` unless it is revoked or expired.
    fn put_credential(&mut self, r: &CredentialRecord) -> Result<(), BuildError> {
        let c = &r.credential;
        if c.revoked {
            return Ok(());
        }
        let expires_at_unix =
            (c.expires_at_unix_ms != 0).then(|| c.expires_at_unix_ms.div_euclid(1000));
        if expires_at_unix.is_some_and(|e| e <= self.now_unix) {
            return Ok(());
        }
        if self
            .snap
            .principal(PrincipalId(c.principal_id))
            .is_some_and(|p| p.tenant != TenantId(c.tenant_id))
        {
            return Err(BuildError::Credential {
                credential: c.id,
                reason: format!(
                    "principal {} is not in tenant {}",
                    c.principal_id, c.tenant_id
                ),
            });
        }
        let entry = CredentialEntry {
            id: CredentialId(c.id),
            principal: PrincipalId(c.principal_id),
            expires_at_unix,
        };
        match CredentialKind::try_from(c.kind) {
            Ok(CredentialKind::Bearer) => {
                let hash = r.token_sha256.ok_or_else(|| BuildError::Credential {
                    credential: c.id,
                    reason: "bearer credential without a token hash".into(),
                })?;
                self.snap.insert_bearer(CredentialHash(hash), entry)?;
            }
            Ok(CredentialKind::Signed) => self.snap.insert_signed(entry)?,
            Ok(CredentialKind::Unspecified) | Err(_) => {
                return Err(BuildError::Credential {
                    credential: c.id,
                    reason: format!("unknown kind {}", c.kind),
                });
            }
        }
        Ok(())
    }
}

/// Takes principal `p` out of the members of its roles.
fn leave_roles(members: &mut HashMap<(u64, String), BTreeSet<u64>>, p: &Principal) {
    for role in &p.roles {
        let key = (p.tenant_id, role.clone());
        if let Some(m) = members.get_mut(&key) {
            m.remove(&p.id);
            if m.is_empty() {
                members.remove(&key);
            }
        }
    }
}

/// Gives back one use of the permissions under `key`; the last use frees
/// them (and the policies they hold).
fn release(permissions: &mut HashMap<Vec<usize>, Compiled>, key: &[usize]) {
    if let Some(c) = permissions.get_mut(key) {
        c.users = c.users.saturating_sub(1);
        if c.users == 0 {
            permissions.remove(key);
        }
    }
}

/// Drops the entries of `cache` whose record is not in `records`.
fn prune<R, V>(cache: &mut HashMap<u64, V>, records: &BTreeMap<u64, R>) {
    if cache.len() == records.len() {
        // Every record has its entry (the build put it there): none extra.
        return;
    }
    cache.retain(|k, _| records.contains_key(k));
}

#[cfg(test)]
mod tests {
    use arqonbus_core::snapshot::AuthError;
    use arqonbus_core::subject::Subject;
    use arqonbus_proto::control::{Policy, Principal, SubjectRules};
    use bytes::Bytes;

    use super::*;
    use crate::service::credentials::mint;
    use crate::store::tests::{bearer, new_principal, new_tenant};
    use crate::store::{Issued, NewCredential, RedbStore};

    fn subject(s: &str) -> Subject {
        Subject::parse(Bytes::copy_from_slice(s.as_bytes()), 256).unwrap()
    }

    fn pattern(s: &str) -> arqonbus_core::subject::Pattern {
        arqonbus_core::policy::parse_pattern(s).unwrap()
    }

    #[allow(clippy::unnecessary_wraps, reason = "fits the optional proto field")]
    fn rules(allow: &[&str], deny: &[&str]) -> Option<SubjectRules> {
        Some(SubjectRules {
            allow: allow.iter().map(|s| (*s).to_owned()).collect(),
            deny: deny.iter().map(|s| (*s).to_owned()).collect(),
        })
    }

    fn issue(store: &dyn Store, principal_id: u64, kind: CredentialKind, expires_s: i64) -> Issued {
        let now_s = now_unix();
        store
            .issue_credential(
                NewCredential {
                    principal_id,
                    kind,
                    created_at_unix_ms: now_s * 1000,
                    expires_at_unix_ms: expires_s * 1000,
                },
                &mut mint,
            )
            .unwrap()
    }

    #[test]
    fn permissions_come_from_principal_and_role_policies_deny_wins() {
        let dir = tempfile::tempdir().unwrap();
        let s = RedbStore::open(dir.path()).unwrap();
        let acme = s.create_tenant(new_tenant("acme")).unwrap();
        let globex = s.create_tenant(new_tenant("globex")).unwrap();
        let svc = s
            .create_principal(new_principal(acme.id, "svc", &["ops"]))
            .unwrap();
        let free = s
            .create_principal(new_principal(acme.id, "free", &[]))
            .unwrap();
        let foreign = s
            .create_principal(new_principal(globex.id, "ops-too", &["ops"]))
            .unwrap();
        s.put_policy(
            Policy {
                tenant_id: acme.id,
                target: Some(Target::PrincipalId(svc.id)),
                publish: rules(&["orders.>"], &[]),
                subscribe: rules(&["orders.>"], &[]),
                ..Policy::default()
            },
            0,
        )
        .unwrap();
        s.put_policy(
            Policy {
                tenant_id: acme.id,
                target: Some(Target::Role("ops".into())),
                publish: rules(&["metrics.>"], &["orders.secret.>"]),
                subscribe: rules(&[], &["orders.secret.>"]),
                allow_responses: true,
                ..Policy::default()
            },
            0,
        )
        .unwrap();
        let snap = build_snapshot(&s, 3, &Limits::default()).unwrap();
        assert_eq!(snap.epoch(), 3);

        let perms = &snap.principal(PrincipalId(svc.id)).unwrap().permissions;
        assert!(perms.may_publish(&subject("orders.eu")), "own policy");
        assert!(perms.may_publish(&subject("metrics.cpu")), "role policy");
        assert!(!perms.may_publish(&subject("orders.secret.x")), "deny wins");
        assert!(!perms.may_publish(&subject("billing.x")));
        assert!(perms.may_subscribe(&pattern("orders.eu.*")));
        assert!(
            !perms.may_subscribe(&pattern("orders.>")),
            "overlaps a deny"
        );
        assert!(perms.allow_responses());

        // No policy at all: everything in the tenant.
        let free = &snap.principal(PrincipalId(free.id)).unwrap().permissions;
        assert!(free.unrestricted());
        // A role policy of one tenant does not reach another tenant's role.
        let foreign = &snap.principal(PrincipalId(foreign.id)).unwrap().permissions;
        assert!(foreign.unrestricted());

        let tenant = snap.tenant(TenantId(acme.id)).unwrap();
        assert!(tenant.verify_key.is_some());
        assert_eq!(tenant.quotas.stall_max, crate::validate::DEFAULT_STALL);
    }

    #[test]
    fn credentials_verify_and_revoked_or_expired_ones_are_left_out() {
        let dir = tempfile::tempdir().unwrap();
        let s = RedbStore::open(dir.path()).unwrap();
        let t = s.create_tenant(new_tenant("acme")).unwrap();
        let p = s.create_principal(new_principal(t.id, "svc", &[])).unwrap();
        let now = now_unix();
        let live = bearer(&s, p.id, "abt_live");
        let revoked = bearer(&s, p.id, "abt_revoked");
        s.revoke_credential(revoked.id, 1).unwrap();
        let signed = issue(&s, p.id, CredentialKind::Signed, now + 3600);
        let short = issue(&s, p.id, CredentialKind::Signed, now + 60);
        let issued_bearer = issue(&s, p.id, CredentialKind::Bearer, 0);
        assert!(signed.token.expose().starts_with("abs_"));
        assert!(issued_bearer.token.expose().starts_with("abt_"));
        assert_eq!(signed.credential.fingerprint.len(), 8);

        let snap = build_snapshot(&s, 1, &Limits::default()).unwrap();
        let who = snap.authenticate("abt_live", now).unwrap();
        assert_eq!(
            (who.tenant.id, who.principal.id, who.credential),
            (TenantId(t.id), PrincipalId(p.id), CredentialId(live.id))
        );
        assert_eq!(
            snap.authenticate("abt_revoked", now).unwrap_err(),
            AuthError::Unknown
        );
        let who = snap.authenticate(signed.token.expose(), now).unwrap();
        assert_eq!(who.credential, CredentialId(signed.credential.id));
        assert_eq!(who.expires_at_unix, Some(now + 3600));
        assert!(snap.authenticate(issued_bearer.token.expose(), now).is_ok());
        assert_eq!(snap.credential_count(), 4);

        // Built after `short` expired: left out.
        let later = compile_snapshot(&s.load().unwrap(), 2, &Limits::default(), now + 120).unwrap();
        assert_eq!(later.credential_count(), 3);
        assert!(later.authenticate(short.token.expose(), now).is_err());

        // Revoking a signed credential: its token no longer authenticates
        // although its signature is still valid.
        s.revoke_credential(signed.credential.id, 2).unwrap();
        let snap = build_snapshot(&s, 3, &Limits::default()).unwrap();
        assert_eq!(
            snap.authenticate(signed.token.expose(), now).unwrap_err(),
            AuthError::Revoked
        );
        // Another tenant's key does not verify this tenant's tokens.
        let other = s.create_tenant(new_tenant("globex")).unwrap();
        let q = s
            .create_principal(new_principal(other.id, "q", &[]))
            .unwrap();
        let theirs = issue(&s, q.id, CredentialKind::Signed, now + 3600);
        let snap = build_snapshot(&s, 4, &Limits::default()).unwrap();
        assert_eq!(
            snap.authenticate(theirs.token.expose(), now)
                .unwrap()
                .tenant
                .id,
            TenantId(other.id)
        );
    }

    #[test]
    fn placement_and_steering_reach_the_snapshot() {
        use arqonbus_core::ShardId;
        use arqonbus_core::placement::{SteeringMode, TenantPlacement};
        use arqonbus_proto::control::AffinityRule;

        use crate::store::{NewTenant, SteeringRecord};

        let dir = tempfile::tempdir().unwrap();
        let s = RedbStore::open(dir.path()).unwrap();
        let mut ids = Vec::new();
        for (name, placement) in [("a", "home"), ("b", "spread"), ("c", "shard:3")] {
            let t = s
                .create_tenant(NewTenant {
                    placement: placement.into(),
                    ..new_tenant(name)
                })
                .unwrap();
            ids.push(t.id);
        }
        let snap = build_snapshot(&s, 1, &Limits::default()).unwrap();
        let placed: Vec<TenantPlacement> = ids
            .iter()
            .map(|id| snap.tenant(TenantId(*id)).unwrap().placement)
            .collect();
        assert_eq!(
            placed,
            [
                TenantPlacement::Home,
                TenantPlacement::Spread,
                // Not checked against a node here: the data plane decides
                // what a shard it does not have means.
                TenantPlacement::Pinned(ShardId(3)),
            ]
        );
        assert!(snap.steering().is_none(), "nothing set: the file's");

        s.set_steering(&SteeringRecord {
            mode: "affinity".into(),
            affinity: vec![AffinityRule {
                prefix: "10.0.0.0/8".into(),
                shard: 1,
            }],
            updated_at_unix_ms: 1,
        })
        .unwrap();
        let snap = build_snapshot(&s, 2, &Limits::default()).unwrap();
        let steering = snap.steering().unwrap();
        assert_eq!(steering.mode, SteeringMode::Affinity);
        assert_eq!(
            steering.affinity_for("10.1.1.1".parse().unwrap()),
            Some(ShardId(1))
        );

        // A stored value that does not parse fails the build.
        let mut contents = s.load().unwrap();
        contents
            .tenants
            .values_mut()
            .nth(1)
            .unwrap()
            .tenant
            .placement = "everywhere".into();
        let err = compile_snapshot(&contents, 3, &Limits::default(), 0).unwrap_err();
        assert!(matches!(err, BuildError::Placement { .. }), "{err}");
        assert!(err.to_string().contains("unknown placement"), "{err}");
        let mut contents = s.load().unwrap();
        contents.steering.as_mut().unwrap().mode = "random".into();
        let err = compile_snapshot(&contents, 3, &Limits::default(), 0).unwrap_err();
        assert!(matches!(err, BuildError::Steering(_)), "{err}");
    }

    #[test]
    fn a_build_rebuilds_only_what_changed_and_shares_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let s = RedbStore::open(dir.path()).unwrap();
        let acme = s.create_tenant(new_tenant("acme")).unwrap();
        let globex = s.create_tenant(new_tenant("globex")).unwrap();
        let writers: Vec<u64> = (0..3)
            .map(|i| {
                s.create_principal(new_principal(acme.id, &format!("w{i}"), &["writer"]))
                    .unwrap()
                    .id
            })
            .collect();
        let other = s
            .create_principal(new_principal(globex.id, "other", &[]))
            .unwrap();
        let role = |allow: &str| Policy {
            tenant_id: acme.id,
            target: Some(Target::Role("writer".into())),
            publish: rules(&[allow], &[]),
            ..Policy::default()
        };
        let policy = s.put_policy(role("orders.>"), 0).unwrap();
        let limits = Limits::default();
        let mut cache = BuildCache::default();
        let (first, stats) = build_snapshot_cached(&s, 1, &limits, &mut cache).unwrap();
        assert_eq!(
            stats,
            BuildStats {
                tenants: 2,
                policies: 1,
                permissions: 2,
                principals: 4
            },
            "from scratch; one compile per distinct set of policies"
        );
        let perms = |snap: &ConfigSnapshot, id: u64| {
            snap.principal(PrincipalId(id)).unwrap().permissions.clone()
        };
        assert!(Arc::ptr_eq(
            &perms(&first, writers[0]),
            &perms(&first, writers[2])
        ));

        // An unrelated write: one principal rebuilt, nothing compiled, every
        // other entry the same Arc.
        s.update_principal(other.id, 0, vec!["ops".into()], None)
            .unwrap();
        let (second, stats) = build_snapshot_cached(&s, 2, &limits, &mut cache).unwrap();
        assert_eq!(
            stats,
            BuildStats {
                principals: 1,
                ..BuildStats::default()
            }
        );
        for w in &writers {
            assert!(Arc::ptr_eq(
                second.principal(PrincipalId(*w)).unwrap(),
                first.principal(PrincipalId(*w)).unwrap()
            ));
        }
        assert!(Arc::ptr_eq(
            second.tenant(TenantId(acme.id)).unwrap(),
            first.tenant(TenantId(acme.id)).unwrap()
        ));

        // A failed build leaves the cache as it was.
        let mut broken = s.load().unwrap();
        broken.policies.values_mut().next().unwrap().publish = rules(&["a..b"], &[]);
        assert!(compile_snapshot_cached(&broken, None, 3, &limits, 0, &mut cache).is_err());
        let (third, stats) = build_snapshot_cached(&s, 4, &limits, &mut cache).unwrap();
        assert_eq!(stats, BuildStats::default());
        assert!(Arc::ptr_eq(
            &perms(&third, writers[0]),
            &perms(&first, writers[0])
        ));

        // The role's policy changes: compiled once for its three principals,
        // which get new permissions; the other principal keeps its own.
        s.put_policy(
            Policy {
                id: policy.id,
                ..role("billing.>")
            },
            0,
        )
        .unwrap();
        let (fourth, stats) = build_snapshot_cached(&s, 5, &limits, &mut cache).unwrap();
        assert_eq!(
            stats,
            BuildStats {
                policies: 1,
                permissions: 1,
                principals: 3,
                ..BuildStats::default()
            }
        );
        assert!(!Arc::ptr_eq(
            &perms(&fourth, writers[1]),
            &perms(&third, writers[1])
        ));
        assert!(perms(&fourth, writers[1]).may_publish(&subject("billing.x")));
        assert!(Arc::ptr_eq(
            &perms(&fourth, other.id),
            &perms(&third, other.id)
        ));
    }

    /// Everything a snapshot decides with, in a form two snapshots can be
    /// compared by.
    fn dump(s: &ConfigSnapshot) -> Vec<String> {
        let mut out: Vec<String> = s
            .tenants()
            .map(|t| format!("{t:?} origins {:?}", s.allowed_origins(t.id)))
            .chain(s.principals().map(|p| format!("{p:?}")))
            .chain(s.credentials().map(|(c, hash)| {
                let found = hash.map(|h| s.bearer(h) == Some(c.id));
                format!("{c:?} bearer {:?} found {found:?}", hash.map(|h| h.0))
            }))
            .collect();
        out.sort();
        out.push(format!("steering {:?}", s.steering()));
        out.push(format!("rates {}", s.uses_rates()));
        out
    }

    /// Every tenant and principal whose sessions see something different
    /// in `next` than in `prev` is named in what `next` says changed.
    fn assert_changed_covers(prev: &ConfigSnapshot, next: &ConfigSnapshot) {
        let Some(ch) = next.changed() else { return };
        assert_eq!(ch.since, prev.epoch());
        let ids = |s: &ConfigSnapshot| s.tenants().map(|t| t.id).collect::<Vec<_>>();
        for t in ids(prev).into_iter().chain(ids(next)) {
            let same = match (prev.tenant(t), next.tenant(t)) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (a, b) => a.is_none() && b.is_none(),
            } && prev.allowed_origins(t) == next.allowed_origins(t);
            assert!(same || ch.tenants.contains(&t), "tenant {t} not named");
        }
        let ids = |s: &ConfigSnapshot| s.principals().map(|p| p.id).collect::<Vec<_>>();
        for p in ids(prev).into_iter().chain(ids(next)) {
            let same = match (prev.principal(p), next.principal(p)) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (a, b) => a.is_none() && b.is_none(),
            };
            assert!(
                same || ch.principals.contains(&p),
                "principal {p} not named"
            );
        }
        let creds = |s: &ConfigSnapshot| s.credentials().map(|(c, _)| c.id).collect::<Vec<_>>();
        for c in creds(prev).into_iter().chain(creds(next)) {
            let (a, b) = (prev.credential(c), next.credential(c));
            if a != b {
                for owner in a.into_iter().chain(b).map(|e| e.principal) {
                    assert!(
                        ch.principals.contains(&owner),
                        "credential {c}: {owner} not named"
                    );
                }
            }
        }
    }

    /// Built from the last snapshot and what changed, a snapshot is the
    /// one built from scratch, after any sequence of writes (every kind,
    /// cascading deletes, policies moving between targets); it names every
    /// tenant and principal whose sessions must re-check; and it shares
    /// what did not change with the one before it.
    #[test]
    fn a_build_from_what_changed_equals_a_build_from_scratch() {
        let dir = tempfile::tempdir().unwrap();
        let s = RedbStore::open(dir.path()).unwrap();
        let limits = Limits::default();
        let now = 1_000;
        let (mut mirror, mut cache) = (None, BuildCache::default());
        let mut writes = crate::store::tests::RandomWrites::new(0x9e37_79b9_7f4a_7c15);
        let (mut epoch, mut incremental) = (0, 0);
        let mut prev: Option<ConfigSnapshot> = None;
        for i in 0..1_500_u64 {
            if writes.step(&s, i) {
                continue;
            }
            epoch += 1;
            let (contents, changes) = s.refresh(&mut mirror).unwrap();
            incremental += usize::from(changes.is_some());
            let (built, _) = compile_snapshot_cached(
                contents,
                changes.as_ref(),
                epoch,
                &limits,
                now,
                &mut cache,
            )
            .unwrap();
            let scratch = compile_snapshot(&s.load().unwrap(), epoch, &limits, now).unwrap();
            assert_eq!(dump(&built), dump(&scratch), "after write {i}");
            assert_eq!(built.changed().is_some(), changes.is_some());
            if let Some(prev) = &prev {
                assert_changed_covers(prev, &built);
            }
            prev = Some(built);
        }
        assert!(incremental > 50, "{incremental} builds from what changed");

        // Caught up, then one more tenant and principal: a few parts copied,
        // the rest shared.
        let (contents, changes) = s.refresh(&mut mirror).unwrap();
        let (last, _) =
            compile_snapshot_cached(contents, changes.as_ref(), epoch, &limits, now, &mut cache)
                .unwrap();
        let t = s.create_tenant(new_tenant("late")).unwrap();
        s.create_principal(new_principal(t.id, "p", &["ops"]))
            .unwrap();
        let (contents, changes) = s.refresh(&mut mirror).unwrap();
        let (next, stats) = compile_snapshot_cached(
            contents,
            changes.as_ref(),
            epoch + 1,
            &limits,
            now,
            &mut cache,
        )
        .unwrap();
        assert_eq!((stats.tenants, stats.principals), (1, 1));
        let all = 5 * arqonbus_core::cowmap::PARTS;
        let shared = next.parts_shared_with(&last);
        assert!(shared + 4 >= all, "{shared} of {all} parts shared");
    }

    #[test]
    fn anything_invalid_fails_the_whole_build() {
        let dir = tempfile::tempdir().unwrap();
        let s = RedbStore::open(dir.path()).unwrap();
        let t = s.create_tenant(new_tenant("acme")).unwrap();
        let mut contents = s.load().unwrap();
        assert!(compile_snapshot(&contents, 1, &Limits::default(), 0).is_ok());

        let mut bad_policy = contents.clone();
        bad_policy.policies.insert(
            4,
            Policy {
                id: 4,
                tenant_id: t.id,
                target: Some(Target::Role("r".into())),
                publish: rules(&["a..b"], &[]),
                ..Policy::default()
            },
        );
        let err = compile_snapshot(&bad_policy, 1, &Limits::default(), 0).unwrap_err();
        assert!(matches!(err, BuildError::Policy { policy: 4, .. }), "{err}");

        let mut bad_key = contents.clone();
        bad_key.tenants.values_mut().next().unwrap().signing_key.0 = vec![1, 2, 3];
        assert!(matches!(
            compile_snapshot(&bad_key, 1, &Limits::default(), 0),
            Err(BuildError::SigningKey { .. })
        ));

        let mut orphan = contents.clone();
        orphan.principals.insert(
            50,
            Principal {
                id: 50,
                tenant_id: 99,
                name: "lost".into(),
                ..Principal::default()
            },
        );
        assert!(matches!(
            compile_snapshot(&orphan, 1, &Limits::default(), 0),
            Err(BuildError::Inconsistent(_))
        ));

        contents.tenants.values_mut().next().unwrap().tenant.quotas = Some(Quotas {
            slow_consumer: 9,
            ..Quotas::default()
        });
        assert!(matches!(
            compile_snapshot(&contents, 1, &Limits::default(), 0),
            Err(BuildError::Quotas { .. })
        ));
    }
}
