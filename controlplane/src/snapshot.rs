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
//!   its expiry; revoked credentials and those expired at build time are
//!   left out, so the shards close their sessions.
//!
//! Incremental: [`BuildCache`] keeps what the last successful build
//! compiled — tenant entries (with their verified key), parsed policies,
//! compiled permissions and principal entries — keyed by id and checked
//! against the stored record (which carries its `version`). A build reuses
//! the same `Arc` for every record that did not change, compiles a
//! principal's permissions again only when one of the policies that apply
//! to it changed, and compiles each distinct set of policies once (every
//! principal of a role shares one `Permissions`). Shards compare the
//! `Arc`s: a session whose principal's permissions are the same `Arc`
//! re-checks none of its subscriptions. The cache is updated in place, an
//! entry with its record, so a failed build leaves only entries that match
//! their records.
//!
//! Reading: the publisher keeps the store's contents between builds and
//! [`Store::refresh`]es them, which reads only the records written since
//! (the store journals its writes); a build then costs one pass over the
//! contents, comparing records, not a read and decode of the whole store.
//!
//! Fail closed: anything that does not decode or validate (a policy pattern,
//! a quota, a signing key, a dangling reference) fails the whole build. The
//! caller ([`crate::publish`]) then pushes the last good snapshot marked as
//! refusing new sessions; it never pushes a partial, more permissive one.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use arqonbus_core::auth::CredentialHash;
use arqonbus_core::limits::Limits;
use arqonbus_core::policy::{Permissions, PolicyRules, compile};
use arqonbus_core::snapshot::{
    ConfigSnapshot, CredentialEntry, PrincipalEntry, SnapshotError, TenantEntry,
};
use arqonbus_core::{CredentialId, PrincipalId, TenantId};
use arqonbus_proto::control::policy::Target;
use arqonbus_proto::control::{CredentialKind, Policy, Principal, Quotas};
use ring::signature::{Ed25519KeyPair, KeyPair as _};

use crate::store::{Store, StoreContents, StoreError, TenantRecord};
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

/// Permissions compiled from a set of policies, with those policies (held
/// so their addresses, the key, stay theirs).
#[derive(Debug)]
struct Compiled {
    _rules: Vec<Arc<PolicyRules>>,
    permissions: Arc<Permissions>,
}

/// What the last successful build compiled, for the next one to reuse.
#[derive(Debug, Default)]
pub struct BuildCache {
    tenants: HashMap<u64, (TenantRecord, Arc<TenantEntry>)>,
    policies: HashMap<u64, (Policy, Arc<PolicyRules>)>,
    /// By the addresses of the policies' `Arc`s (held by `policies` and by
    /// the value), in the order they apply.
    permissions: HashMap<Vec<usize>, Compiled>,
    principals: HashMap<u64, (Principal, Arc<PrincipalEntry>)>,
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

/// Reads the store and builds the snapshot numbered `epoch`, reusing and
/// then replacing `cache` (left as it was on error).
pub fn build_snapshot_cached(
    store: &dyn Store,
    epoch: u64,
    limits: &Limits,
    cache: &mut BuildCache,
) -> Result<(ConfigSnapshot, BuildStats), BuildError> {
    compile_snapshot_cached(&store.load()?, epoch, limits, now_unix(), cache)
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
    compile_snapshot_cached(contents, epoch, limits, now_unix, &mut cache).map(|(s, _)| s)
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

/// Builds the snapshot numbered `epoch` from `contents` as of `now_unix`,
/// reusing what `cache` holds for records that did not change. The cache
/// is updated in place: a record that changed is copied into it with what
/// was built from it, so every entry always matches its record, even after
/// a build that failed half-way; entries of records gone are dropped once a
/// build succeeds.
pub fn compile_snapshot_cached(
    contents: &StoreContents,
    epoch: u64,
    limits: &Limits,
    now_unix: i64,
    cache: &mut BuildCache,
) -> Result<(ConfigSnapshot, BuildStats), BuildError> {
    let mut stats = BuildStats::default();
    let mut permissions_used: HashMap<Vec<usize>, Compiled> = HashMap::new();
    let mut snap = ConfigSnapshot::new(epoch, limits.clone());
    for t in &contents.tenants {
        let entry = match cache.tenants.get(&t.tenant.id) {
            Some((old, entry)) if old == t => entry.clone(),
            _ => {
                stats.tenants += 1;
                let entry = Arc::new(tenant_entry(t)?);
                cache
                    .tenants
                    .insert(t.tenant.id, (t.clone(), entry.clone()));
                entry
            }
        };
        snap.insert_tenant_shared(entry);
        snap.set_allowed_origins(TenantId(t.tenant.id), t.tenant.allowed_origins.clone());
    }
    if let Some(s) = &contents.steering {
        let steering = steering_config(&s.mode, &s.affinity)
            .map_err(|e| BuildError::Steering(e.to_string()))?;
        snap.set_steering(steering);
    }

    // Every stored policy must validate, whether or not it targets anyone.
    let mut by_principal: HashMap<u64, Vec<Arc<PolicyRules>>> = HashMap::new();
    let mut by_role: HashMap<(u64, String), Vec<Arc<PolicyRules>>> = HashMap::new();
    for p in &contents.policies {
        let rules = match cache.policies.get(&p.id) {
            Some((old, rules)) if old == p => rules.clone(),
            _ => {
                stats.policies += 1;
                let rules =
                    Arc::new(policy_rules("policy", p).map_err(|e| BuildError::Policy {
                        policy: p.id,
                        reason: e.to_string(),
                    })?);
                cache.policies.insert(p.id, (p.clone(), rules.clone()));
                rules
            }
        };
        match &p.target {
            Some(Target::PrincipalId(pid)) => {
                by_principal.entry(*pid).or_default().push(rules.clone());
            }
            Some(Target::Role(role)) => by_role
                .entry((p.tenant_id, role.clone()))
                .or_default()
                .push(rules.clone()),
            None => {
                return Err(BuildError::Policy {
                    policy: p.id,
                    reason: "no target".into(),
                });
            }
        }
    }

    let mut principal_tenant = HashMap::new();
    let mut role_key = (0_u64, String::new());
    for p in &contents.principals {
        let mut rules: Vec<Arc<PolicyRules>> = by_principal
            .get(&p.id)
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        for role in &p.roles {
            role_key.0 = p.tenant_id;
            role.clone_into(&mut role_key.1);
            rules.extend(by_role.get(&role_key).into_iter().flatten().cloned());
        }
        let key: Vec<usize> = rules.iter().map(|r| Arc::as_ptr(r) as usize).collect();
        let known = permissions_used
            .get(&key)
            .or_else(|| cache.permissions.get(&key))
            .map(|c| c.permissions.clone());
        let permissions = known.unwrap_or_else(|| {
            stats.permissions += 1;
            Arc::new(compile(rules.iter().map(|r| &**r)))
        });
        permissions_used.entry(key).or_insert_with(|| Compiled {
            _rules: rules,
            permissions: permissions.clone(),
        });
        let entry = match cache.principals.get(&p.id) {
            Some((old, entry)) if old == p && Arc::ptr_eq(&entry.permissions, &permissions) => {
                entry.clone()
            }
            _ => {
                stats.principals += 1;
                let entry = Arc::new(PrincipalEntry {
                    id: PrincipalId(p.id),
                    tenant: TenantId(p.tenant_id),
                    name: p.name.as_str().into(),
                    roles: p.roles.iter().map(|r| r.as_str().into()).collect(),
                    quotas: quotas("principal", p.id, p.quotas.as_ref())?,
                    permissions,
                });
                cache.principals.insert(p.id, (p.clone(), entry.clone()));
                entry
            }
        };
        snap.insert_principal_shared(entry)?;
        principal_tenant.insert(p.id, p.tenant_id);
    }

    for r in &contents.credentials {
        let c = &r.credential;
        if c.revoked {
            continue;
        }
        let expires_at_unix =
            (c.expires_at_unix_ms != 0).then(|| c.expires_at_unix_ms.div_euclid(1000));
        if expires_at_unix.is_some_and(|e| e <= now_unix) {
            continue;
        }
        if principal_tenant
            .get(&c.principal_id)
            .is_some_and(|t| *t != c.tenant_id)
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
                snap.insert_bearer(CredentialHash(hash), entry)?;
            }
            Ok(CredentialKind::Signed) => snap.insert_signed(entry)?,
            Ok(CredentialKind::Unspecified) | Err(_) => {
                return Err(BuildError::Credential {
                    credential: c.id,
                    reason: format!("unknown kind {}", c.kind),
                });
            }
        }
    }
    // Success: forget what is gone, keep only the permissions in use (a
    // permissions entry keeps its policies' `Arc`s, so their addresses,
    // its key, cannot be reused while it lives).
    prune(&mut cache.tenants, &contents.tenants, |t| t.tenant.id);
    prune(&mut cache.policies, &contents.policies, |p| p.id);
    prune(&mut cache.principals, &contents.principals, |p| p.id);
    cache.permissions = permissions_used;
    Ok((snap, stats))
}

/// Drops the entries of `cache` whose record is not in `records`.
fn prune<R, V>(cache: &mut HashMap<u64, V>, records: &[R], id: impl Fn(&R) -> u64) {
    if cache.len() == records.len() {
        // Every record has its entry (the build put it there): none extra.
        return;
    }
    let live: std::collections::HashSet<u64> = records.iter().map(id).collect();
    cache.retain(|k, _| live.contains(k));
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
        contents.tenants[1].tenant.placement = "everywhere".into();
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
        broken.policies[0].publish = rules(&["a..b"], &[]);
        assert!(compile_snapshot_cached(&broken, 3, &limits, 0, &mut cache).is_err());
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

    #[test]
    fn anything_invalid_fails_the_whole_build() {
        let dir = tempfile::tempdir().unwrap();
        let s = RedbStore::open(dir.path()).unwrap();
        let t = s.create_tenant(new_tenant("acme")).unwrap();
        let mut contents = s.load().unwrap();
        assert!(compile_snapshot(&contents, 1, &Limits::default(), 0).is_ok());

        let mut bad_policy = contents.clone();
        bad_policy.policies.push(Policy {
            id: 4,
            tenant_id: t.id,
            target: Some(Target::Role("r".into())),
            publish: rules(&["a..b"], &[]),
            ..Policy::default()
        });
        let err = compile_snapshot(&bad_policy, 1, &Limits::default(), 0).unwrap_err();
        assert!(matches!(err, BuildError::Policy { policy: 4, .. }), "{err}");

        let mut bad_key = contents.clone();
        bad_key.tenants[0].signing_key.0 = vec![1, 2, 3];
        assert!(matches!(
            compile_snapshot(&bad_key, 1, &Limits::default(), 0),
            Err(BuildError::SigningKey { .. })
        ));

        let mut orphan = contents.clone();
        orphan.principals.push(Principal {
            id: 50,
            tenant_id: 99,
            name: "lost".into(),
            ..Principal::default()
        });
        assert!(matches!(
            compile_snapshot(&orphan, 1, &Limits::default(), 0),
            Err(BuildError::Inconsistent(_))
        ));

        contents.tenants[0].tenant.quotas = Some(Quotas {
            slow_consumer: 9,
            ..Quotas::default()
        });
        assert!(matches!(
            compile_snapshot(&contents, 1, &Limits::default(), 0),
            Err(BuildError::Quotas { .. })
        ));
    }
}
