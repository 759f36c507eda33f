//! The store's contract, on a real redb file.

#![allow(
    clippy::many_single_char_names,
    reason = "short names for the records under test"
)]

use std::collections::BTreeSet;

use ::redb::{ReadableDatabase as _, ReadableTable as _, TableDefinition};
use arqonbus_proto::control::policy::Target;
use arqonbus_proto::control::{CredentialKind, Policy, Quotas, SubjectRules};

use super::redb_store::{
    MIGRATIONS, Migration, PRINCIPAL_CREDENTIALS, TENANT_POLICIES, TENANT_PRINCIPALS, migrate_v1,
};
use super::*;
use crate::seed::new_signing_key;
use arqonbus_proto::control::AffinityRule;

fn open(dir: &tempfile::TempDir) -> RedbStore {
    RedbStore::open(dir.path()).unwrap()
}

pub(crate) fn new_tenant(name: &str) -> NewTenant {
    NewTenant {
        name: name.into(),
        quotas: Quotas::default(),
        placement: "home".into(),
        signing_key: new_signing_key().unwrap(),
        created_at_unix_ms: 1_000,
        allowed_origins: Vec::new(),
    }
}

pub(crate) fn new_principal(tenant_id: u64, name: &str, roles: &[&str]) -> NewPrincipal {
    NewPrincipal {
        tenant_id,
        name: name.into(),
        roles: roles.iter().map(|r| (*r).to_owned()).collect(),
        quotas: Quotas::default(),
        created_at_unix_ms: 1_000,
    }
}

/// Issues a bearer credential whose token is `token`.
pub(crate) fn bearer(store: &dyn Store, principal_id: u64, token: &str) -> Credential {
    let new = NewCredential {
        principal_id,
        kind: CredentialKind::Bearer,
        created_at_unix_ms: 1_000,
        expires_at_unix_ms: 0,
    };
    let hash = arqonbus_core::auth::CredentialHash::of(token);
    store
        .issue_credential(new, &mut |_| {
            Ok(Minted {
                token: Secret::new(token.into()),
                token_sha256: Some(hash.0),
                fingerprint: hash.fingerprint(),
            })
        })
        .unwrap()
        .credential
}

fn policy(tenant_id: u64, target: Target, allow: &[&str]) -> Policy {
    Policy {
        tenant_id,
        target: Some(target),
        publish: Some(SubjectRules {
            allow: allow.iter().map(|s| (*s).to_owned()).collect(),
            deny: vec![],
        }),
        ..Policy::default()
    }
}

#[test]
fn the_store_file_is_owner_only() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(super::redb_store::STORE_FILE);
    let mode = || std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    drop(open(&dir));
    assert_eq!(mode(), 0o600);
    // A file made wider by hand is narrowed on the next open.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    drop(open(&dir));
    assert_eq!(mode(), 0o600);
}

#[test]
fn tenants_principals_versions_and_names() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    let a = s.create_tenant(new_tenant("acme")).unwrap();
    assert_eq!((a.id, a.version), (1, 1));
    assert!(matches!(
        s.create_tenant(new_tenant("acme")),
        Err(StoreError::AlreadyExists { what: "tenant", .. })
    ));
    let b = s.create_tenant(new_tenant("globex")).unwrap();
    assert_eq!(b.id, 2);
    assert_eq!(s.tenant_by_name("globex").unwrap(), b);
    assert!(matches!(
        s.tenant(9),
        Err(StoreError::NotFound { what: "tenant", .. })
    ));

    let q = Quotas {
        max_connections: 5,
        ..Quotas::default()
    };
    let a2 = s
        .update_tenant(
            a.id,
            1,
            TenantChange {
                quotas: Some(q),
                ..TenantChange::default()
            },
        )
        .unwrap();
    assert_eq!((a2.version, a2.quotas), (2, Some(q)));
    assert!(matches!(
        s.update_tenant(a.id, 1, TenantChange::default()),
        Err(StoreError::VersionMismatch {
            expected: 1,
            actual: 2,
            ..
        })
    ));
    // 0 skips the check.
    assert_eq!(
        s.update_tenant(a.id, 0, TenantChange::default())
            .unwrap()
            .version,
        3
    );

    let p = s
        .create_principal(new_principal(a.id, "svc", &["ops"]))
        .unwrap();
    assert!(matches!(
        s.create_principal(new_principal(a.id, "svc", &[])),
        Err(StoreError::AlreadyExists {
            what: "principal",
            ..
        })
    ));
    // Same name in another tenant is fine; ids are global.
    let p2 = s.create_principal(new_principal(b.id, "svc", &[])).unwrap();
    assert_ne!(p.id, p2.id);
    assert!(matches!(
        s.create_principal(new_principal(77, "x", &[])),
        Err(StoreError::NotFound { what: "tenant", .. })
    ));
    let p3 = s
        .update_principal(p.id, p.version, vec!["dev".into()], None)
        .unwrap();
    assert_eq!(
        (p3.roles.as_slice(), p3.version),
        (["dev".to_owned()].as_slice(), 2)
    );
    assert_eq!(s.list_principals(a.id).unwrap(), vec![p3]);
}

#[test]
fn credentials_policies_and_cascading_deletes() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    let t = s.create_tenant(new_tenant("acme")).unwrap();
    let other = s.create_tenant(new_tenant("globex")).unwrap();
    let p = s
        .create_principal(new_principal(t.id, "svc", &["ops"]))
        .unwrap();
    let q = s.create_principal(new_principal(t.id, "web", &[])).unwrap();
    let c1 = bearer(&s, p.id, "abt_one");
    let c2 = bearer(&s, q.id, "abt_two");
    assert_eq!(s.list_credentials(t.id, None).unwrap().len(), 2);
    assert_eq!(
        s.list_credentials(t.id, Some(q.id)).unwrap(),
        vec![c2.clone()]
    );
    assert!(matches!(
        s.list_credentials(other.id, Some(q.id)),
        Err(StoreError::NotFound {
            what: "principal",
            ..
        })
    ));

    let (r, changed) = s.revoke_credential(c1.id, 5_000).unwrap();
    assert!(changed && r.revoked && r.revoked_at_unix_ms == 5_000);
    let (r2, changed) = s.revoke_credential(c1.id, 6_000).unwrap();
    assert!(!changed);
    assert_eq!(
        r2.revoked_at_unix_ms, 5_000,
        "revoking twice changes nothing"
    );

    let by_id = s
        .put_policy(policy(t.id, Target::PrincipalId(p.id), &["a.>"]), 0)
        .unwrap();
    assert_eq!(by_id.version, 1);
    let by_role = s
        .put_policy(policy(t.id, Target::Role("ops".into()), &["b.>"]), 0)
        .unwrap();
    let replaced = s
        .put_policy(
            Policy {
                id: by_id.id,
                ..policy(t.id, Target::PrincipalId(p.id), &["c.>"])
            },
            1,
        )
        .unwrap();
    assert_eq!(replaced.version, 2);
    assert!(matches!(
        s.put_policy(
            Policy {
                id: by_id.id,
                ..policy(t.id, Target::PrincipalId(p.id), &["c.>"])
            },
            1
        ),
        Err(StoreError::VersionMismatch { .. })
    ));
    assert!(matches!(
        s.put_policy(
            Policy {
                id: by_id.id,
                ..policy(other.id, Target::Role("x".into()), &[])
            },
            0
        ),
        Err(StoreError::Invalid {
            field: "policy.tenant_id",
            ..
        })
    ));
    // A principal of another tenant cannot be targeted.
    assert!(matches!(
        s.put_policy(policy(other.id, Target::PrincipalId(p.id), &[]), 0),
        Err(StoreError::NotFound {
            what: "principal",
            ..
        })
    ));
    assert!(matches!(
        s.put_policy(
            Policy {
                id: 99,
                ..policy(t.id, Target::Role("r".into()), &[])
            },
            0
        ),
        Err(StoreError::NotFound { what: "policy", .. })
    ));

    // Deleting a principal takes its credentials and the policies naming
    // it, not the role policies.
    s.delete_principal(p.id).unwrap();
    assert_eq!(s.list_credentials(t.id, None).unwrap(), vec![c2]);
    assert_eq!(s.list_policies(t.id).unwrap(), vec![by_role]);
    assert!(matches!(
        s.delete_principal(p.id),
        Err(StoreError::NotFound { .. })
    ));

    // Deleting the tenant takes everything of it.
    s.delete_tenant(t.id).unwrap();
    let left = s.load().unwrap();
    assert_eq!(left.tenants.len(), 1);
    assert!(left.principals.is_empty() && left.credentials.is_empty() && left.policies.is_empty());
    // Ids are never handed out again.
    assert_eq!(s.create_tenant(new_tenant("acme")).unwrap().id, 3);
}

#[test]
fn reopening_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let before = {
        let s = open(&dir);
        let t = s.create_tenant(new_tenant("acme")).unwrap();
        let p = s
            .create_principal(new_principal(t.id, "svc", &["ops"]))
            .unwrap();
        bearer(&s, p.id, "abt_x");
        s.put_policy(policy(t.id, Target::Role("ops".into()), &["a"]), 0)
            .unwrap();
        s.set_admin_token_hash([7; 32]).unwrap();
        s.load().unwrap()
    };
    let s = open(&dir);
    assert_eq!(s.load().unwrap(), before);
    assert_eq!(s.admin_token_hash().unwrap(), Some([7; 32]));
    assert_eq!(s.schema_version().unwrap(), SCHEMA_VERSION);
    // Counters survived too.
    assert_eq!(s.create_tenant(new_tenant("b")).unwrap().id, 2);
}

#[test]
fn epochs_strictly_increase_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = open(&dir);
        assert_eq!(s.next_epoch(1).unwrap(), 1);
        assert_eq!(s.next_epoch(1).unwrap(), 2);
        assert_eq!(s.next_epoch(10).unwrap(), 10);
    }
    assert_eq!(open(&dir).next_epoch(1).unwrap(), 11);
}

#[test]
fn a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(STORE_FILE);
    drop(open(&dir));
    {
        let db = ::redb::Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(TableDefinition::<&str, u64>::new("meta"))
            .unwrap()
            .insert("schema_version", SCHEMA_VERSION + 1)
            .unwrap();
        txn.commit().unwrap();
    }
    let err = RedbStore::open(dir.path()).unwrap_err();
    assert!(
        matches!(err, StoreError::SchemaTooNew { found, supported } if found == SCHEMA_VERSION + 1 && supported == SCHEMA_VERSION),
        "{err}"
    );
    assert!(err.to_string().contains("newer than this binary supports"));
}

fn step_two(txn: &::redb::WriteTransaction) -> Result<(), StoreError> {
    let mut meta = txn.open_table(TableDefinition::<&str, u64>::new("meta"))?;
    let runs = meta.get("test.step_two_runs")?.map_or(0, |v| v.value());
    meta.insert("test.step_two_runs", runs + 1)?;
    Ok(())
}

#[test]
fn pending_migrations_run_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(STORE_FILE);
    let v1 = [Migration {
        version: 1,
        description: "v1",
        run: migrate_v1,
    }];
    let v2 = [
        Migration {
            version: 1,
            description: "v1",
            run: migrate_v1,
        },
        Migration {
            version: 2,
            description: "test step",
            run: step_two,
        },
    ];
    let s = RedbStore::open_with(&path, &v1).unwrap();
    assert_eq!(s.schema_version().unwrap(), 1);
    let t = s.create_tenant(new_tenant("acme")).unwrap();
    drop(s);
    for _ in 0..2 {
        let s = RedbStore::open_with(&path, &v2).unwrap();
        assert_eq!(s.schema_version().unwrap(), 2);
        assert_eq!(s.tenant(t.id).unwrap(), t, "data survives migration");
        let txn = s.database().begin_read().unwrap();
        let meta = txn
            .open_table(TableDefinition::<&str, u64>::new("meta"))
            .unwrap();
        assert_eq!(meta.get("test.step_two_runs").unwrap().unwrap().value(), 1);
    }
    // The real list is numbered 1..=n.
    for (i, m) in MIGRATIONS.iter().enumerate() {
        assert_eq!(m.version, i as u64 + 1);
    }
}

fn import(id: u64, name: &str, creds: &[(u64, &str, u8)]) -> ImportTenant {
    ImportTenant {
        id,
        name: name.into(),
        signing_key: new_signing_key().unwrap(),
        credentials: creds
            .iter()
            .map(|(pid, pname, h)| ImportCredential {
                principal_id: *pid,
                principal: (*pname).into(),
                token_sha256: [*h; 32],
            })
            .collect(),
        created_at_unix_ms: 1,
        placement: String::new(),
    }
}

#[test]
fn imports_keep_ids_and_run_once() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    let file = [import(
        5,
        "default",
        &[(8, "bootstrap", 1), (8, "bootstrap", 2)],
    )];
    let r = s.import_tenants(&file, Some("m")).unwrap();
    assert_eq!(r.created, [5]);
    let again = s.import_tenants(&file, Some("m")).unwrap();
    assert!(again.already_done && again.created.is_empty());
    let c = s.load().unwrap();
    assert_eq!(c.principals.len(), 1, "one principal, two credentials");
    assert_eq!(c.credentials.len(), 2);
    assert_eq!(
        c.credentials.values().next().unwrap().token_sha256,
        Some([1; 32])
    );
    assert!(c.principals.contains_key(&8));
    // Counters moved past the imported ids.
    assert_eq!(s.create_tenant(new_tenant("next")).unwrap().id, 6);
    assert_eq!(
        s.create_principal(new_principal(6, "p", &[])).unwrap().id,
        9
    );

    // Seeds: only absent ids; conflicts are refused.
    let r = s
        .import_tenants(&[import(5, "changed", &[]), import(7, "fresh", &[])], None)
        .unwrap();
    assert_eq!(
        (r.skipped.as_slice(), r.created.as_slice()),
        ([5].as_slice(), [7].as_slice())
    );
    assert_eq!(s.tenant(5).unwrap().name, "default");
    assert!(matches!(
        s.import_tenants(&[import(20, "fresh", &[])], None),
        Err(StoreError::Invalid { .. })
    ));
    assert!(matches!(
        s.import_tenants(&[import(21, "x", &[(8, "stolen", 3)])], None),
        Err(StoreError::Invalid { .. })
    ));
    assert!(s.tenant(21).is_err(), "a failed import changes nothing");
}

/// A tenant record as written before `Tenant.placement` existed (fields 1
/// to 5 of the API's `Tenant`, wrapped like `StoredTenant`).
#[derive(Clone, PartialEq, prost::Message)]
struct TenantBeforePlacement {
    #[prost(uint64, tag = "1")]
    id: u64,
    #[prost(string, tag = "2")]
    name: String,
    #[prost(message, optional, tag = "3")]
    quotas: Option<Quotas>,
    #[prost(int64, tag = "4")]
    created_at_unix_ms: i64,
    #[prost(uint64, tag = "5")]
    version: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
struct StoredTenantBeforePlacement {
    #[prost(message, optional, tag = "1")]
    tenant: Option<TenantBeforePlacement>,
    #[prost(bytes = "vec", tag = "2")]
    signing_key_pkcs8: Vec<u8>,
}

#[test]
fn placement_is_kept_and_a_record_without_it_reads_as_home() {
    use prost::Message as _;
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    let t = s
        .create_tenant(NewTenant {
            placement: "spread".into(),
            ..new_tenant("acme")
        })
        .unwrap();
    assert_eq!(t.placement, "spread");
    let t2 = s
        .update_tenant(
            t.id,
            1,
            TenantChange {
                placement: Some("shard:1".into()),
                ..TenantChange::default()
            },
        )
        .unwrap();
    assert_eq!((t2.placement.as_str(), t2.version), ("shard:1", 2));
    // No placement given: kept.
    let t3 = s
        .update_tenant(
            t.id,
            2,
            TenantChange {
                quotas: Some(Quotas::default()),
                ..TenantChange::default()
            },
        )
        .unwrap();
    assert_eq!((t3.placement.as_str(), t3.version), ("shard:1", 3));

    // A record written by a build that had no placement field.
    let old = StoredTenantBeforePlacement {
        tenant: Some(TenantBeforePlacement {
            id: 7,
            name: "legacy".into(),
            quotas: Some(Quotas::default()),
            created_at_unix_ms: 5,
            version: 4,
        }),
        signing_key_pkcs8: new_signing_key().unwrap().0,
    };
    {
        let txn = s.database().begin_write().unwrap();
        txn.open_table(TableDefinition::<u64, &[u8]>::new("tenants"))
            .unwrap()
            .insert(7, old.encode_to_vec().as_slice())
            .unwrap();
        txn.commit().unwrap();
    }
    let legacy = s.tenant(7).unwrap();
    assert_eq!((legacy.name.as_str(), legacy.version), ("legacy", 4));
    assert_eq!(legacy.placement, "home");
    let snap = crate::snapshot::compile_snapshot(
        &s.load().unwrap(),
        1,
        &arqonbus_core::limits::Limits::default(),
        0,
    )
    .unwrap();
    assert_eq!(
        snap.tenant(arqonbus_core::TenantId(7)).unwrap().placement,
        arqonbus_core::placement::TenantPlacement::Home
    );
    // Imported tenants start at home too.
    s.import_tenants(&[import(20, "imported", &[])], None)
        .unwrap();
    assert_eq!(s.tenant(20).unwrap().placement, "home");
}

fn steering_record(mode: &str, rules: &[(&str, u32)]) -> SteeringRecord {
    SteeringRecord {
        mode: mode.into(),
        affinity: rules
            .iter()
            .map(|(prefix, shard)| AffinityRule {
                prefix: (*prefix).into(),
                shard: *shard,
            })
            .collect(),
        updated_at_unix_ms: 9,
    }
}

#[test]
fn steering_is_stored_and_replaced() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = open(&dir);
        assert_eq!(s.steering().unwrap(), None);
        assert_eq!(s.load().unwrap().steering, None);
        s.set_steering(&steering_record("affinity", &[("10.0.0.0/8", 1)]))
            .unwrap();
        s.set_steering(&steering_record(
            "cpu",
            &[("fd00::/8", 0), ("10.0.0.0/8", 1)],
        ))
        .unwrap();
    }
    let s = open(&dir);
    let want = steering_record("cpu", &[("fd00::/8", 0), ("10.0.0.0/8", 1)]);
    assert_eq!(s.steering().unwrap(), Some(want.clone()));
    assert_eq!(s.load().unwrap().steering, Some(want));
}

#[test]
fn a_schema_1_store_migrates_to_the_settings_table() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(STORE_FILE);
    let v1 = &MIGRATIONS[..1];
    let t = {
        let s = RedbStore::open_with(&path, v1).unwrap();
        assert_eq!(s.schema_version().unwrap(), 1);
        let txn = s.database().begin_read().unwrap();
        assert!(
            txn.open_table(TableDefinition::<&str, &[u8]>::new("settings"))
                .is_err(),
            "schema 1 has no settings table"
        );
        drop(txn);
        s.create_tenant(new_tenant("acme")).unwrap()
    };
    let s = open(&dir);
    assert_eq!(s.schema_version().unwrap(), SCHEMA_VERSION);
    assert_eq!(s.tenant(t.id).unwrap(), t, "data survives migration");
    assert_eq!(s.steering().unwrap(), None);
    let c = s.load().unwrap();
    assert_eq!((c.tenants.len(), c.steering), (1, None));
    s.set_steering(&steering_record("hash", &[])).unwrap();
    assert_eq!(s.steering().unwrap().unwrap().mode, "hash");
}

/// A schema 2 store gains the name indexes: after the migration a taken
/// name is still refused, names are found, and a tenant's principals are
/// listed, all from the indexes.
#[test]
fn a_schema_2_store_migrates_to_name_indexes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(STORE_FILE);
    let (acme, other) = {
        let s = RedbStore::open_with(&path, &MIGRATIONS[..2]).unwrap();
        let acme = s.create_tenant(new_tenant("acme")).unwrap();
        let other = s.create_tenant(new_tenant("other")).unwrap();
        for (t, name) in [(&acme, "svc"), (&acme, "api"), (&other, "svc")] {
            s.create_principal(new_principal(t.id, name, &[])).unwrap();
        }
        (acme, other)
    };
    let s = open(&dir);
    assert_eq!(s.schema_version().unwrap(), SCHEMA_VERSION);
    assert!(matches!(
        s.create_tenant(new_tenant("acme")),
        Err(StoreError::AlreadyExists { .. })
    ));
    assert!(matches!(
        s.create_principal(new_principal(acme.id, "svc", &[])),
        Err(StoreError::AlreadyExists { .. })
    ));
    assert_eq!(s.tenant_by_name("other").unwrap(), other);
    let names = |t: u64| -> Vec<String> {
        s.list_principals(t)
            .unwrap()
            .into_iter()
            .map(|p| p.name)
            .collect()
    };
    assert_eq!(names(acme.id), ["svc", "api"], "listed in id order");
    assert_eq!(names(other.id), ["svc"]);
}

/// Deleting a principal or a tenant frees its names, and only its own.
#[test]
fn deletes_free_names_in_the_indexes() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    let acme = s.create_tenant(new_tenant("acme")).unwrap();
    let other = s.create_tenant(new_tenant("other")).unwrap();
    let svc = s
        .create_principal(new_principal(acme.id, "svc", &[]))
        .unwrap();
    s.create_principal(new_principal(acme.id, "api", &[]))
        .unwrap();
    s.create_principal(new_principal(other.id, "svc", &[]))
        .unwrap();

    s.delete_principal(svc.id).unwrap();
    let again = s
        .create_principal(new_principal(acme.id, "svc", &[]))
        .unwrap();
    assert_ne!(again.id, svc.id);

    s.delete_tenant(acme.id).unwrap();
    assert!(s.tenant_by_name("acme").is_err());
    let acme2 = s.create_tenant(new_tenant("acme")).unwrap();
    assert!(s.list_principals(acme2.id).unwrap().is_empty());
    s.create_principal(new_principal(acme2.id, "api", &[]))
        .unwrap();
    s.create_principal(new_principal(acme2.id, "svc", &[]))
        .unwrap();
    // The other tenant's principal kept its name.
    assert!(matches!(
        s.create_principal(new_principal(other.id, "svc", &[])),
        Err(StoreError::AlreadyExists { .. })
    ));
    assert_eq!(s.list_principals(other.id).unwrap().len(), 1);
}

#[test]
fn a_corrupt_steering_record_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    {
        let txn = s.database().begin_write().unwrap();
        txn.open_table(TableDefinition::<&str, &[u8]>::new("settings"))
            .unwrap()
            .insert("steering", [0xff_u8, 0xff, 0xff].as_slice())
            .unwrap();
        txn.commit().unwrap();
    }
    assert!(matches!(
        s.steering(),
        Err(StoreError::Corrupt {
            table: "settings",
            ..
        })
    ));
    assert!(matches!(s.load(), Err(StoreError::Corrupt { .. })));
    // Setting it again repairs it.
    s.set_steering(&steering_record("balance", &[])).unwrap();
    assert!(s.load().is_ok());
}

/// A deterministic byte stream (xorshift), so damage tests repeat.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn populated(dir: &tempfile::TempDir) -> std::path::PathBuf {
    let s = open(dir);
    for i in 0..40 {
        let t = s.create_tenant(new_tenant(&format!("t{i}"))).unwrap();
        let p = s.create_principal(new_principal(t.id, "svc", &[])).unwrap();
        bearer(&s, p.id, &format!("abt_{i}"));
    }
    s.path().to_owned()
}

#[test]
fn a_randomly_overwritten_file_is_an_error_never_a_panic() {
    use std::io::{Seek as _, SeekFrom, Write as _};
    let mut detected = 0;
    for seed in 0..12_u64 {
        let dir = tempfile::tempdir().unwrap();
        let path = populated(&dir);
        let len = std::fs::metadata(&path).unwrap().len();
        // The header (seed 0) and then pages spread over the file.
        let offset = if seed == 0 {
            0
        } else {
            (seed * 7919 * 4096) % len.saturating_sub(4096).max(1)
        };
        let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.seek(SeekFrom::Start(offset)).unwrap();
        f.write_all(&noise(seed, 4096)).unwrap();
        drop(f);
        match RedbStore::open(dir.path()) {
            Err(e) => {
                detected += 1;
                assert!(
                    matches!(e, StoreError::Corrupt { .. } | StoreError::Backend(_)),
                    "{e}"
                );
            }
            // Free space overwritten: the store still reads, or names the
            // record it cannot decode.
            Ok(s) => {
                let _ = s.load();
            }
        }
    }
    assert!(detected > 0, "overwriting the header must be detected");
}

#[test]
fn a_backup_is_a_consistent_store_and_restores_over_a_damaged_one() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    let t = s.create_tenant(new_tenant("acme")).unwrap();
    let p = s.create_principal(new_principal(t.id, "svc", &[])).unwrap();
    bearer(&s, p.id, "abt_backup");
    s.set_admin_token_hash([1; 32]).unwrap();
    let bytes = s.backup().unwrap();
    let before = s.load().unwrap();
    // Writes after the backup are not in it.
    s.create_tenant(new_tenant("later")).unwrap();
    drop(s);

    let file = dir.path().join("backup.redb");
    write_backup(&file, &bytes).unwrap();
    assert!(write_backup(&file, &bytes).is_err(), "never overwrites");

    // Damage the live file, then restore.
    std::fs::write(dir.path().join(STORE_FILE), noise(3, 8192)).unwrap();
    assert!(RedbStore::open(dir.path()).is_err());
    let report = restore(&file, dir.path(), Some([2; 32])).unwrap();
    assert_eq!(
        (report.tenants, report.principals, report.credentials),
        (1, 1, 1)
    );
    assert!(
        report.replaced.unwrap().exists(),
        "the damaged file is kept aside"
    );
    let s = RedbStore::open(dir.path()).unwrap();
    assert_eq!(s.load().unwrap(), before);
    assert_owners_and_indexes(&s, "a restore");
    assert_eq!(s.admin_token_hash().unwrap(), Some([2; 32]));
    // The name indexes came with it.
    assert_eq!(s.tenant_by_name("acme").unwrap().id, t.id);
    assert!(matches!(
        s.create_principal(new_principal(t.id, "svc", &[])),
        Err(StoreError::AlreadyExists { .. })
    ));
    // A restore while the store is open is refused.
    let err = restore(&file, dir.path(), None).unwrap_err();
    assert!(err.to_string().contains("in use"), "{err}");
    drop(s);
    // A damaged backup is refused and changes nothing.
    std::fs::write(&file, noise(5, 8192)).unwrap();
    let err = restore(&file, dir.path(), None).unwrap_err();
    assert!(err.to_string().contains("backup.redb"), "{err}");
    assert_eq!(RedbStore::open(dir.path()).unwrap().load().unwrap(), before);
}

#[test]
fn reopening_keeps_the_data_and_counts() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    let t = s.create_tenant(new_tenant("acme")).unwrap();
    assert!(!s.recover().unwrap(), "nothing to recover");
    s.reopen().unwrap();
    assert_eq!(s.tenant(t.id).unwrap(), t);
    let h = s.health();
    assert_eq!((h.failed, h.reopen_attempts, h.reopens), (false, 1, 1));
}

/// Random writes to a store: creates, updates, revocations, policies on
/// roles and on principals, deletes (cascading), steering and failed
/// writes, from a fixed seed.
pub(crate) struct RandomWrites {
    x: u64,
    tenants: Vec<u64>,
    principals: Vec<u64>,
    credentials: Vec<u64>,
    policies: Vec<u64>,
}

impl RandomWrites {
    pub(crate) fn new(seed: u64) -> Self {
        Self {
            x: seed | 1,
            tenants: Vec::new(),
            principals: Vec::new(),
            credentials: Vec::new(),
            policies: Vec::new(),
        }
    }

    fn next(&mut self, n: u64) -> u64 {
        self.x ^= self.x << 13;
        self.x ^= self.x >> 7;
        self.x ^= self.x << 17;
        self.x % n
    }

    fn pick(&mut self, from: fn(&Self) -> &Vec<u64>) -> Option<u64> {
        let r = self.next(64);
        let v = from(self);
        v.get(usize::try_from(r).unwrap() % v.len().max(1)).copied()
    }

    /// Makes write number `i` (or none, about one time in eleven: the
    /// caller's turn to look); returns whether it tried one.
    pub(crate) fn step(&mut self, s: &dyn Store, i: u64) -> bool {
        match self.next(11) {
            0 | 1 => {
                if let Ok(t) = s.create_tenant(new_tenant(&format!("t{i}"))) {
                    self.tenants.push(t.id);
                }
            }
            2 => {
                if let Some(t) = self.pick(|w| &w.tenants) {
                    let change = TenantChange {
                        placement: Some(
                            if i.is_multiple_of(2) {
                                "spread"
                            } else {
                                "home"
                            }
                            .into(),
                        ),
                        quotas: (i.is_multiple_of(3)).then(|| Quotas {
                            messages_per_second: i,
                            ..Quotas::default()
                        }),
                        ..TenantChange::default()
                    };
                    let _ = s.update_tenant(t, 0, change);
                }
            }
            3 => {
                let roles: &[&str] = if i.is_multiple_of(2) {
                    &["ops"]
                } else {
                    &["ops", "dev"]
                };
                if let Some(t) = self.pick(|w| &w.tenants)
                    && let Ok(p) = s.create_principal(new_principal(t, &format!("p{i}"), roles))
                {
                    self.principals.push(p.id);
                }
            }
            4 => {
                if let Some(p) = self.pick(|w| &w.principals) {
                    let role = ["ops", "dev", "r"][usize::try_from(i % 3).unwrap()];
                    let _ = s.update_principal(p, 0, vec![role.into()], None);
                }
            }
            5 => {
                if let Some(p) = self.pick(|w| &w.principals)
                    && s.principal(p).is_ok()
                {
                    let c = bearer(s, p, &format!("abt_token_{i}"));
                    self.credentials.push(c.id);
                }
            }
            6 => {
                if let Some(c) = self.pick(|w| &w.credentials) {
                    let _ = s.revoke_credential(c, 2_000);
                }
            }
            7 => {
                let principal = self
                    .pick(|w| &w.principals)
                    .and_then(|p| s.principal(p).ok());
                let (tenant, target) = match principal {
                    Some(p) if i.is_multiple_of(2) => {
                        (Some(p.tenant_id), Target::PrincipalId(p.id))
                    }
                    _ => (
                        self.pick(|w| &w.tenants),
                        Target::Role(if i.is_multiple_of(3) { "dev" } else { "ops" }.into()),
                    ),
                };
                if let Some(t) = tenant {
                    let subject = format!("a{}.>", i % 4);
                    let mut p = policy(t, target, &[subject.as_str()]);
                    if i.is_multiple_of(5)
                        && let Some(old) = s.list_policies(t).ok().and_then(|l| l.first().cloned())
                    {
                        // A rewrite, possibly of its target.
                        p.id = old.id;
                    }
                    if let Ok(p) = s.put_policy(p, 0) {
                        self.policies.push(p.id);
                    }
                }
            }
            8 => match self.next(4) {
                0 => {
                    if let Some(p) = self.pick(|w| &w.policies) {
                        let _ = s.delete_policy(p);
                    }
                }
                1 => {
                    if let Some(p) = self.pick(|w| &w.principals) {
                        let _ = s.delete_principal(p);
                    }
                }
                2 => {
                    if let Some(t) = self.pick(|w| &w.tenants) {
                        let _ = s.delete_tenant(t);
                    }
                }
                _ => {
                    // A write that fails changes nothing (a stale version).
                    if let Some(t) = self.pick(|w| &w.tenants) {
                        let _ = s.update_tenant(t, 999, TenantChange::default());
                    }
                }
            },
            9 => {
                let steering = SteeringRecord {
                    mode: if i.is_multiple_of(2) {
                        "hash"
                    } else {
                        "balance"
                    }
                    .into(),
                    affinity: Vec::new(),
                    updated_at_unix_ms: i64::try_from(i).unwrap(),
                };
                s.set_steering(&steering).unwrap();
            }
            _ => return false,
        }
        true
    }
}

/// A refreshed mirror equals a full read after any sequence of writes
/// (creates, updates, revocations, deletes, steering, failed writes),
/// refreshed at random points: the journal never misses a write.
#[test]
fn a_refreshed_mirror_equals_a_full_load_after_any_writes() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    let mut mirror = None;
    assert!(
        s.refresh(&mut mirror).unwrap().1.is_none(),
        "the first refresh reads all"
    );
    let mut writes = RandomWrites::new(0x2545_f491_4f6c_dd1d);
    let mut patched = 0;
    for i in 0..600u64 {
        if !writes.step(&s, i) {
            if s.refresh(&mut mirror).unwrap().1.is_some() {
                patched += 1;
            }
            assert_eq!(
                mirror.as_ref().unwrap(),
                &s.load().unwrap(),
                "after write {i}"
            );
        }
    }
    s.refresh(&mut mirror).unwrap();
    assert_eq!(mirror.unwrap(), s.load().unwrap());
    assert!(patched > 10, "most refreshes patched ({patched})");
}

/// Every record's owners exist, and each owner index holds exactly one row
/// per record, under the owners the record names.
fn assert_owners_and_indexes(s: &RedbStore, after: &str) {
    let c = s.load().unwrap();
    let tenants: BTreeSet<u64> = c.tenants.values().map(|t| t.tenant.id).collect();
    let principals: BTreeSet<u64> = c.principals.values().map(|p| p.id).collect();
    for p in c.principals.values() {
        assert!(tenants.contains(&p.tenant_id), "{after}: principal {p:?}");
    }
    for r in c.credentials.values() {
        let cr = &r.credential;
        assert!(principals.contains(&cr.principal_id), "{after}: {cr:?}");
        assert!(tenants.contains(&cr.tenant_id), "{after}: {cr:?}");
    }
    for p in c.policies.values() {
        assert!(tenants.contains(&p.tenant_id), "{after}: policy {p:?}");
        if let Some(Target::PrincipalId(id)) = p.target {
            assert!(principals.contains(&id), "{after}: policy {p:?}");
        }
    }
    let txn = s.database().begin_read().unwrap();
    let keys2 = |def| -> BTreeSet<(u64, u64)> {
        txn.open_table(def)
            .unwrap()
            .iter()
            .unwrap()
            .map(|r| r.unwrap().0.value())
            .collect()
    };
    let want: BTreeSet<_> = c.principals.values().map(|p| (p.tenant_id, p.id)).collect();
    assert_eq!(keys2(TENANT_PRINCIPALS), want, "{after}: tenant_principals");
    let want: BTreeSet<_> = c.policies.values().map(|p| (p.tenant_id, p.id)).collect();
    assert_eq!(keys2(TENANT_POLICIES), want, "{after}: tenant_policies");
    let got: BTreeSet<(u64, u64, u64)> = txn
        .open_table(PRINCIPAL_CREDENTIALS)
        .unwrap()
        .iter()
        .unwrap()
        .map(|r| r.unwrap().0.value())
        .collect();
    let want: BTreeSet<_> = c
        .credentials
        .values()
        .map(|r| {
            let c = &r.credential;
            (c.tenant_id, c.principal_id, c.id)
        })
        .collect();
    assert_eq!(got, want, "{after}: principal_credentials");
}

/// Deletes cascade through the owner indexes and listings read them: after
/// any writes, nothing is left without its owner and every index matches
/// the records; listings equal a filter of everything.
#[test]
fn owner_indexes_match_the_records_after_any_writes() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    // Imported records are indexed like written ones.
    s.import_tenants(
        &[import(
            500,
            "imported",
            &[(5_000, "a", 1), (5_000, "a", 2), (5_001, "b", 3)],
        )],
        None,
    )
    .unwrap();
    assert_owners_and_indexes(&s, "an import");
    assert_eq!(s.list_credentials(500, Some(5_000)).unwrap().len(), 2);
    let mut writes = RandomWrites::new(0x6a09_e667_f3bc_c908);
    let mut checked = 0;
    for i in 0..800u64 {
        if writes.step(&s, i) {
            continue;
        }
        assert_owners_and_indexes(&s, &format!("write {i}"));
        let c = s.load().unwrap();
        for t in c.tenants.values() {
            let id = t.tenant.id;
            let want: Vec<_> = c
                .credentials
                .values()
                .map(|r| r.credential.clone())
                .filter(|cr| cr.tenant_id == id)
                .collect();
            assert_eq!(s.list_credentials(id, None).unwrap(), want);
            let want: Vec<_> = c
                .policies
                .values()
                .filter(|p| p.tenant_id == id)
                .cloned()
                .collect();
            assert_eq!(s.list_policies(id).unwrap(), want);
        }
        for p in c.principals.values() {
            let want: Vec<_> = c
                .credentials
                .values()
                .map(|r| r.credential.clone())
                .filter(|cr| cr.principal_id == p.id)
                .collect();
            assert_eq!(s.list_credentials(p.tenant_id, Some(p.id)).unwrap(), want);
        }
        checked += 1;
    }
    assert!(checked > 30, "checked {checked} times");
    let c = s.load().unwrap();
    assert!(
        !c.credentials.is_empty() && !c.policies.is_empty(),
        "the writes left records to check"
    );
}

/// A schema 3 store gains the owner indexes: a delete then cascades to
/// records written before the migration, and listings find them.
#[test]
fn a_schema_3_store_migrates_to_owner_indexes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(STORE_FILE);
    let (acme, other, svc, kept) = {
        let s = RedbStore::open_with(&path, &MIGRATIONS[..3]).unwrap();
        let acme = s.create_tenant(new_tenant("acme")).unwrap();
        let other = s.create_tenant(new_tenant("other")).unwrap();
        let svc = s
            .create_principal(new_principal(acme.id, "svc", &[]))
            .unwrap();
        let api = s
            .create_principal(new_principal(acme.id, "api", &[]))
            .unwrap();
        let kept = s
            .create_principal(new_principal(other.id, "svc", &[]))
            .unwrap();
        bearer(&s, svc.id, "abt_svc");
        bearer(&s, api.id, "abt_api");
        bearer(&s, kept.id, "abt_kept");
        s.put_policy(policy(acme.id, Target::PrincipalId(svc.id), &["a.>"]), 0)
            .unwrap();
        s.put_policy(policy(acme.id, Target::Role("ops".into()), &["b.>"]), 0)
            .unwrap();
        s.put_policy(policy(other.id, Target::Role("ops".into()), &["c.>"]), 0)
            .unwrap();
        (acme, other, svc, kept)
    };
    let s = open(&dir);
    assert_eq!(s.schema_version().unwrap(), SCHEMA_VERSION);
    assert_owners_and_indexes(&s, "the migration");
    assert_eq!(s.list_credentials(acme.id, None).unwrap().len(), 2);
    assert_eq!(s.list_credentials(acme.id, Some(svc.id)).unwrap().len(), 1);
    assert_eq!(s.list_policies(acme.id).unwrap().len(), 2);

    s.delete_principal(svc.id).unwrap();
    assert_owners_and_indexes(&s, "deleting a principal");
    assert_eq!(
        s.list_policies(acme.id).unwrap().len(),
        1,
        "its policy went"
    );
    s.delete_tenant(acme.id).unwrap();
    assert_owners_and_indexes(&s, "deleting a tenant");
    let c = s.load().unwrap();
    assert_eq!(c.principals.len(), 1);
    assert!(c.principals.contains_key(&kept.id));
    assert_eq!(c.credentials.len(), 1);
    assert_eq!(c.policies.len(), 1);
    assert_eq!(s.list_policies(other.id).unwrap().len(), 1);
}

/// A tenant with two policies, the second overwritten with bytes that do
/// not decode: (tenant, the good policy, the corrupt one as written).
fn two_policies_one_corrupt(s: &RedbStore) -> (Tenant, Policy, Policy) {
    let t = s.create_tenant(new_tenant("acme")).unwrap();
    let kept = s
        .put_policy(policy(t.id, Target::Role("ops".into()), &["a.>"]), 0)
        .unwrap();
    let bad = s
        .put_policy(policy(t.id, Target::Role("dev".into()), &["b.>"]), 0)
        .unwrap();
    let txn = s.database().begin_write().unwrap();
    txn.open_table(TableDefinition::<u64, &[u8]>::new("policies"))
        .unwrap()
        .insert(bad.id, [0xff_u8, 0xff, 0xff].as_slice())
        .unwrap();
    txn.commit().unwrap();
    (t, kept, bad)
}

/// A schema 3 store holding a policy that does not decode still opens: the
/// migration leaves the record out of the index (with a warning), and the
/// policy can be deleted by id, the repair the runbook gives.
#[test]
fn a_corrupt_policy_does_not_stop_the_migration_and_can_be_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(STORE_FILE);
    let (t, kept, bad) =
        two_policies_one_corrupt(&RedbStore::open_with(&path, &MIGRATIONS[..3]).unwrap());
    let s = open(&dir);
    assert_eq!(s.schema_version().unwrap(), SCHEMA_VERSION);
    assert!(matches!(s.load(), Err(StoreError::Corrupt { .. })));
    s.delete_policy(bad.id).unwrap();
    assert_owners_and_indexes(&s, "deleting a corrupt policy after the migration");
    assert_eq!(s.list_policies(t.id).unwrap(), [kept]);
}

/// A policy whose record is corrupt can still be deleted, and its index
/// row goes with it.
#[test]
fn a_corrupt_policy_is_deleted_with_its_index_row() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    let (t, kept, bad) = two_policies_one_corrupt(&s);
    assert!(matches!(
        s.list_policies(t.id),
        Err(StoreError::Corrupt { .. })
    ));
    s.delete_policy(bad.id).unwrap();
    assert_owners_and_indexes(&s, "deleting a corrupt policy");
    assert_eq!(s.list_policies(t.id).unwrap(), [kept]);
}

/// After a reopen (a storage error), the next refresh reads everything.
#[test]
fn a_reopen_makes_the_next_refresh_read_everything() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    let mut mirror = None;
    s.refresh(&mut mirror).unwrap();
    s.create_tenant(new_tenant("a")).unwrap();
    assert!(s.refresh(&mut mirror).unwrap().1.is_some(), "a patch");
    s.reopen().unwrap();
    assert!(s.refresh(&mut mirror).unwrap().1.is_none(), "everything");
    assert_eq!(mirror.unwrap(), s.load().unwrap());
}
