//! From parsed arguments to control API requests. Pure functions, so the
//! mapping of every flag to its proto field is tested without a server.
//!
//! Invariants: an absent quota flag never changes anything: on create it
//! leaves the field at 0 (unlimited), on update it keeps the value read from
//! the server; an update without an explicit `--expected-version` is
//! conditional on the version that was read, so a concurrent change is
//! reported (FAILED_PRECONDITION) instead of being silently overwritten;
//! an absent `--placement` is sent empty (create: home; update: unchanged).

use arqonbus_proto::control::{
    AffinityRule, AllowedOrigins, CreatePrincipalRequest, CreateTenantRequest, CredentialKind,
    IssueCredentialRequest, ListCredentialsRequest, Policy, Principal, PutPolicyRequest, Quotas,
    SetSteeringRequest, SlowConsumerPolicy, SubjectRules, Tenant, TenantRef,
    UpdatePrincipalRequest, UpdateTenantRequest, policy,
};

use crate::args::{
    PlacementArg, PolicyPutArgs, PrincipalUpdateArgs, QuotaArgs, SlowConsumerArg, SteeringSetArgs,
    TenantArg, TenantUpdateArgs,
};

impl From<SlowConsumerArg> for SlowConsumerPolicy {
    fn from(arg: SlowConsumerArg) -> Self {
        match arg {
            SlowConsumerArg::Disconnect => Self::Disconnect,
            SlowConsumerArg::DropOldest => Self::DropOldest,
            SlowConsumerArg::StallPublisher => Self::StallPublisher,
        }
    }
}

/// `base` with every quota flag that was given applied to it.
pub(crate) fn apply_quotas(flags: &QuotaArgs, base: Quotas) -> Quotas {
    Quotas {
        max_connections: flags.max_connections.unwrap_or(base.max_connections),
        max_subscriptions: flags.max_subscriptions.unwrap_or(base.max_subscriptions),
        max_payload: flags.max_payload.unwrap_or(base.max_payload),
        messages_per_second: flags
            .messages_per_second
            .unwrap_or(base.messages_per_second),
        bytes_per_second: flags.bytes_per_second.unwrap_or(base.bytes_per_second),
        slow_consumer: flags
            .slow_consumer
            .map_or(base.slow_consumer, |p| SlowConsumerPolicy::from(p).into()),
        stall_max_ms: flags.stall_max_ms.unwrap_or(base.stall_max_ms),
    }
}

/// The quotas of a new tenant or principal: `None` (server defaults) when no
/// flag was given.
pub(crate) fn new_quotas(flags: &QuotaArgs) -> Option<Quotas> {
    (!flags.is_empty()).then(|| apply_quotas(flags, Quotas::default()))
}

/// `TenantRef` for `tenants get`.
pub(crate) fn tenant_ref(tenant: &TenantArg) -> TenantRef {
    match tenant {
        TenantArg::Id(id) => TenantRef {
            id: *id,
            name: String::new(),
        },
        TenantArg::Name(name) => TenantRef {
            id: 0,
            name: name.clone(),
        },
        // Resolved by `commands::get_tenant` (by id and by name); as a
        // reference on its own, digits are the id, as they always were.
        TenantArg::Digits(digits) => TenantRef {
            id: digits.parse().unwrap_or_default(),
            name: String::new(),
        },
    }
}

/// A placement flag as the API takes it; absent: empty.
fn placement(flag: Option<PlacementArg>) -> String {
    flag.map(|p| p.to_string()).unwrap_or_default()
}

pub(crate) fn create_tenant(
    name: String,
    flags: &QuotaArgs,
    placement_flag: Option<PlacementArg>,
    allowed_origins: Vec<String>,
) -> CreateTenantRequest {
    CreateTenantRequest {
        name,
        quotas: new_quotas(flags),
        placement: placement(placement_flag),
        allowed_origins,
    }
}

/// Applies the quota and placement flags to `current`, conditional on its
/// version.
pub(crate) fn update_tenant(current: &Tenant, args: &TenantUpdateArgs) -> UpdateTenantRequest {
    UpdateTenantRequest {
        id: current.id,
        expected_version: args.expected_version.unwrap_or(current.version),
        quotas: Some(apply_quotas(
            &args.quotas,
            current.quotas.unwrap_or_default(),
        )),
        placement: placement(args.placement),
        allowed_origins: if args.any_origin {
            Some(AllowedOrigins::default())
        } else if args.allowed_origins.is_empty() {
            None
        } else {
            Some(AllowedOrigins {
                origins: args.allowed_origins.clone(),
            })
        },
    }
}

/// The whole steering as given: the rules replace the current ones.
pub(crate) fn set_steering(args: &SteeringSetArgs) -> SetSteeringRequest {
    SetSteeringRequest {
        mode: args.mode.as_str().to_owned(),
        affinity: args
            .affinity
            .iter()
            .map(|a| AffinityRule {
                prefix: a.prefix.clone(),
                shard: a.shard,
            })
            .collect(),
    }
}

pub(crate) fn create_principal(
    tenant_id: u64,
    name: String,
    roles: Vec<String>,
    flags: &QuotaArgs,
) -> CreatePrincipalRequest {
    CreatePrincipalRequest {
        tenant_id,
        name,
        roles,
        quotas: new_quotas(flags),
    }
}

/// The API replaces roles on every update, so the current roles are sent
/// back unless `--role` or `--clear-roles` was given; quotas are sent only
/// when a quota flag was given.
pub(crate) fn update_principal(
    current: &Principal,
    args: &PrincipalUpdateArgs,
) -> UpdatePrincipalRequest {
    let roles = if args.clear_roles {
        Vec::new()
    } else if args.roles.is_empty() {
        current.roles.clone()
    } else {
        args.roles.clone()
    };
    UpdatePrincipalRequest {
        id: current.id,
        expected_version: args.expected_version.unwrap_or(current.version),
        roles,
        quotas: (!args.quotas.is_empty())
            .then(|| apply_quotas(&args.quotas, current.quotas.unwrap_or_default())),
    }
}

pub(crate) fn issue_credential(
    principal_id: u64,
    signed: bool,
    ttl_seconds: Option<u64>,
) -> IssueCredentialRequest {
    let kind = if signed {
        CredentialKind::Signed
    } else {
        CredentialKind::Bearer
    };
    IssueCredentialRequest {
        principal_id,
        kind: kind.into(),
        ttl_seconds: ttl_seconds.unwrap_or(0),
    }
}

pub(crate) fn list_credentials(tenant_id: u64, principal: Option<u64>) -> ListCredentialsRequest {
    ListCredentialsRequest {
        tenant_id,
        principal_id: principal.unwrap_or(0),
    }
}

/// The whole policy as given: `policies put` creates or replaces, it never
/// merges.
pub(crate) fn put_policy(tenant_id: u64, args: &PolicyPutArgs) -> PutPolicyRequest {
    let target = match (&args.principal, &args.role) {
        (Some(id), _) => Some(policy::Target::PrincipalId(*id)),
        (None, Some(role)) => Some(policy::Target::Role(role.clone())),
        (None, None) => None,
    };
    PutPolicyRequest {
        policy: Some(Policy {
            id: args.id.unwrap_or(0),
            tenant_id,
            target,
            publish: Some(SubjectRules {
                allow: args.pub_allow.clone(),
                deny: args.pub_deny.clone(),
            }),
            subscribe: Some(SubjectRules {
                allow: args.sub_allow.clone(),
                deny: args.sub_deny.clone(),
            }),
            allow_responses: args.allow_responses,
            version: 0,
            presence: Some(SubjectRules {
                allow: args.presence_allow.clone(),
                deny: args.presence_deny.clone(),
            }),
        }),
        expected_version: args.expected_version.unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;
    use crate::args::{Cli, Cmd, PoliciesCmd, PrincipalsCmd, SteeringCmd, TenantsCmd};

    fn cli(args: &[&str]) -> Cmd {
        Cli::try_parse_from(std::iter::once("arqonctl").chain(args.iter().copied()))
            .unwrap()
            .command
    }

    fn quota_flags(args: &[&str]) -> QuotaArgs {
        let mut full = vec!["tenants", "create", "t"];
        full.extend_from_slice(args);
        let Cmd::Tenants(TenantsCmd::Create { quotas, .. }) = cli(&full) else {
            panic!("not tenants create")
        };
        quotas
    }

    #[test]
    fn every_quota_flag_maps_to_its_field() {
        let flags = quota_flags(&[
            "--max-connections",
            "1",
            "--max-subscriptions",
            "2",
            "--max-payload",
            "3",
            "--messages-per-second",
            "4",
            "--bytes-per-second",
            "5",
            "--slow-consumer",
            "stall-publisher",
            "--stall-max-ms",
            "6",
        ]);
        assert_eq!(
            new_quotas(&flags),
            Some(Quotas {
                max_connections: 1,
                max_subscriptions: 2,
                max_payload: 3,
                messages_per_second: 4,
                bytes_per_second: 5,
                slow_consumer: SlowConsumerPolicy::StallPublisher.into(),
                stall_max_ms: 6,
            })
        );
        for (arg, want) in [
            ("disconnect", SlowConsumerPolicy::Disconnect),
            ("drop-oldest", SlowConsumerPolicy::DropOldest),
            ("stall-publisher", SlowConsumerPolicy::StallPublisher),
        ] {
            let q = new_quotas(&quota_flags(&["--slow-consumer", arg])).unwrap();
            assert_eq!(q.slow_consumer(), want);
            assert_eq!(q.max_connections, 0);
        }
        // No flag: the server's defaults.
        assert_eq!(new_quotas(&quota_flags(&[])), None);
        // Large values survive.
        let q = new_quotas(&quota_flags(&[
            "--bytes-per-second",
            "18446744073709551615",
        ]))
        .unwrap();
        assert_eq!(q.bytes_per_second, u64::MAX);
    }

    #[test]
    fn create_requests() {
        let flags = quota_flags(&["--max-payload", "65536"]);
        let r = create_tenant("acme".into(), &flags, None, Vec::new());
        assert_eq!(r.name, "acme");
        assert_eq!(r.quotas.unwrap().max_payload, 65536);
        assert_eq!(r.placement, "", "the server's default: home");
        let Cmd::Tenants(TenantsCmd::Create {
            name,
            quotas,
            placement,
            allowed_origins,
        }) = cli(&[
            "tenants",
            "create",
            "big",
            "--placement",
            "spread",
            "--allowed-origin",
            "https://app.example",
        ])
        else {
            panic!("not tenants create")
        };
        assert_eq!(
            create_tenant(name, &quotas, placement, allowed_origins),
            CreateTenantRequest {
                name: "big".into(),
                quotas: None,
                placement: "spread".into(),
                allowed_origins: vec!["https://app.example".into()],
            }
        );

        let Cmd::Principals(PrincipalsCmd::Create {
            name,
            roles,
            quotas,
            ..
        }) = cli(&[
            "principals",
            "create",
            "--tenant",
            "1",
            "bob",
            "--role",
            "a",
            "--role",
            "b",
        ])
        else {
            panic!("not principals create")
        };
        let r = create_principal(9, name, roles, &quotas);
        assert_eq!(
            r,
            CreatePrincipalRequest {
                tenant_id: 9,
                name: "bob".into(),
                roles: vec!["a".into(), "b".into()],
                quotas: None,
            }
        );
    }

    #[test]
    fn tenant_updates_merge_into_the_current_quotas() {
        let current = Tenant {
            id: 4,
            name: "acme".into(),
            quotas: Some(Quotas {
                max_connections: 10,
                messages_per_second: 100,
                slow_consumer: SlowConsumerPolicy::DropOldest.into(),
                ..Quotas::default()
            }),
            created_at_unix_ms: 1,
            version: 7,
            placement: "shard:1".into(),
            allowed_origins: Vec::new(),
        };
        let Cmd::Tenants(TenantsCmd::Update(args)) = cli(&[
            "tenants",
            "update",
            "acme",
            "--max-connections",
            "0",
            "--bytes-per-second",
            "1000",
        ]) else {
            panic!("not tenants update")
        };
        let r = update_tenant(&current, &args);
        assert_eq!(r.id, 4);
        assert_eq!(r.expected_version, 7, "conditional on the version read");
        assert_eq!(r.placement, "", "placement unchanged");
        assert_eq!(
            r.quotas,
            Some(Quotas {
                max_connections: 0,
                messages_per_second: 100,
                bytes_per_second: 1000,
                slow_consumer: SlowConsumerPolicy::DropOldest.into(),
                ..Quotas::default()
            })
        );

        let Cmd::Tenants(TenantsCmd::Update(args)) = cli(&[
            "tenants",
            "update",
            "4",
            "--max-subscriptions",
            "5",
            "--expected-version",
            "6",
        ]) else {
            panic!("not tenants update")
        };
        let no_quotas = Tenant {
            quotas: None,
            ..current.clone()
        };
        let r = update_tenant(&no_quotas, &args);
        assert_eq!(r.expected_version, 6);
        assert_eq!(
            r.quotas,
            Some(Quotas {
                max_subscriptions: 5,
                ..Quotas::default()
            })
        );

        // Placement alone: the quotas read are sent back as they were.
        let Cmd::Tenants(TenantsCmd::Update(args)) =
            cli(&["tenants", "update", "4", "--placement", "home"])
        else {
            panic!("not tenants update")
        };
        let r = update_tenant(&current, &args);
        assert_eq!(r.placement, "home");
        assert_eq!(r.quotas, current.quotas);
        assert_eq!(r.expected_version, 7);
    }

    #[test]
    fn steering_requests_carry_every_rule() {
        let Cmd::Steering(SteeringCmd::Set(args)) = cli(&[
            "steering",
            "set",
            "--mode",
            "affinity",
            "--affinity",
            "10.0.0.0/8=1",
            "--affinity",
            "fd00::/8=0",
        ]) else {
            panic!("not steering set")
        };
        assert_eq!(
            set_steering(&args),
            SetSteeringRequest {
                mode: "affinity".into(),
                affinity: vec![
                    AffinityRule {
                        prefix: "10.0.0.0/8".into(),
                        shard: 1
                    },
                    AffinityRule {
                        prefix: "fd00::/8".into(),
                        shard: 0
                    },
                ],
            }
        );
        for (mode, want) in [
            ("hash", "hash"),
            ("balance", "balance"),
            ("cpu", "cpu"),
            ("affinity", "affinity"),
        ] {
            let Cmd::Steering(SteeringCmd::Set(args)) = cli(&["steering", "set", "--mode", mode])
            else {
                panic!("not steering set")
            };
            let r = set_steering(&args);
            assert_eq!((r.mode.as_str(), r.affinity.len()), (want, 0));
        }
    }

    #[test]
    fn principal_updates_keep_what_is_not_given() {
        let current = Principal {
            id: 5,
            tenant_id: 2,
            name: "alice".into(),
            roles: vec!["ops".into()],
            quotas: Some(Quotas {
                max_subscriptions: 50,
                ..Quotas::default()
            }),
            created_at_unix_ms: 1,
            version: 3,
        };
        let update = |args: &[&str]| {
            let mut full = vec!["principals", "update", "5"];
            full.extend_from_slice(args);
            let Cmd::Principals(PrincipalsCmd::Update(a)) = cli(&full) else {
                panic!("not principals update")
            };
            update_principal(&current, &a)
        };

        let r = update(&["--max-connections", "2"]);
        assert_eq!((r.id, r.expected_version), (5, 3));
        assert_eq!(r.roles, ["ops"], "roles are kept");
        assert_eq!(
            r.quotas,
            Some(Quotas {
                max_connections: 2,
                max_subscriptions: 50,
                ..Quotas::default()
            })
        );

        let r = update(&["--role", "dev", "--role", "qa", "--expected-version", "9"]);
        assert_eq!(r.roles, ["dev", "qa"]);
        assert_eq!(r.quotas, None, "quotas are kept");
        assert_eq!(r.expected_version, 9);

        let r = update(&["--clear-roles"]);
        assert!(r.roles.is_empty());
        assert_eq!(r.quotas, None);
    }

    #[test]
    fn credential_requests() {
        assert_eq!(
            issue_credential(3, false, None),
            IssueCredentialRequest {
                principal_id: 3,
                kind: CredentialKind::Bearer.into(),
                ttl_seconds: 0,
            }
        );
        assert_eq!(
            issue_credential(3, true, Some(3600)),
            IssueCredentialRequest {
                principal_id: 3,
                kind: CredentialKind::Signed.into(),
                ttl_seconds: 3600,
            }
        );
        assert_eq!(
            list_credentials(2, None),
            ListCredentialsRequest {
                tenant_id: 2,
                principal_id: 0
            }
        );
        assert_eq!(list_credentials(2, Some(7)).principal_id, 7);
    }

    #[test]
    fn tenant_refs() {
        assert_eq!(
            tenant_ref(&TenantArg::Id(3)),
            TenantRef {
                id: 3,
                name: String::new()
            }
        );
        assert_eq!(
            tenant_ref(&TenantArg::Name("acme".into())),
            TenantRef {
                id: 0,
                name: "acme".into()
            }
        );
    }

    #[test]
    fn policies_are_sent_whole() {
        let put = |args: &[&str]| {
            let mut full = vec!["policies", "put", "--tenant", "1"];
            full.extend_from_slice(args);
            let Cmd::Policies(PoliciesCmd::Put(a)) = cli(&full) else {
                panic!("not policies put")
            };
            put_policy(1, &a)
        };
        let r = put(&[
            "--principal",
            "5",
            "--pub-allow",
            "a.>",
            "--pub-deny",
            "a.secret",
            "--sub-allow",
            "b.*",
            "--sub-deny",
            "b.x",
            "--sub-deny",
            "b.y",
            "--presence-allow",
            "rooms.>",
            "--presence-deny",
            "rooms.secret",
            "--allow-responses",
        ]);
        assert_eq!(r.expected_version, 0);
        let p = r.policy.unwrap();
        assert_eq!((p.id, p.tenant_id), (0, 1));
        assert_eq!(p.target, Some(policy::Target::PrincipalId(5)));
        assert_eq!(
            p.publish,
            Some(SubjectRules {
                allow: vec!["a.>".into()],
                deny: vec!["a.secret".into()]
            })
        );
        assert_eq!(
            p.subscribe,
            Some(SubjectRules {
                allow: vec!["b.*".into()],
                deny: vec!["b.x".into(), "b.y".into()]
            })
        );
        assert_eq!(
            p.presence,
            Some(SubjectRules {
                allow: vec!["rooms.>".into()],
                deny: vec!["rooms.secret".into()]
            })
        );
        assert!(p.allow_responses);

        let r = put(&["--role", "ops", "--id", "3", "--expected-version", "4"]);
        assert_eq!(r.expected_version, 4);
        let p = r.policy.unwrap();
        assert_eq!(p.id, 3);
        assert_eq!(p.target, Some(policy::Target::Role("ops".into())));
        assert_eq!(p.publish, Some(SubjectRules::default()));
        assert!(!p.allow_responses);
    }
}
