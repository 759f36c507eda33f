//! Request validation: names, roles, quotas, subject patterns, tenant
//! placement and steering.
//!
//! Every check names the offending field, so a bad request gets
//! `INVALID_ARGUMENT` with a message such as
//! `policy.publish.allow[2]: invalid pattern`. Checks never panic, whatever
//! the input. The snapshot builder reuses [`policy_rules`], [`core_quotas`],
//! [`placement`] and [`steering_config`], so a record that passed validation
//! when written is read back with the same rules. Placement and steering
//! reasons are the core's [`PlacementError`] messages; the field is the
//! request's (`affinity[3].prefix`, not the core's `affinity.prefix`).
//! Whether a shard exists is checked only when a request is accepted
//! ([`placement_on_node`], [`steering_for_node`]): a node restarted with
//! fewer shards still builds its snapshot, and the data plane skips what
//! names a shard it does not have.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::time::Duration;

use arqonbus_core::ShardId;
use arqonbus_core::limits::MAX_PAYLOAD_CEILING;
use arqonbus_core::placement::{
    AffinityRule as CoreAffinityRule, MAX_AFFINITY_RULES, PlacementError, SteeringConfig,
    SteeringMode, TenantPlacement,
};
use arqonbus_core::policy::{PolicyRules, parse_pattern};
use arqonbus_core::snapshot::{Quotas as CoreQuotas, SlowConsumerPolicy as CoreSlowConsumer};
use arqonbus_core::subject::Pattern;
use arqonbus_proto::control::{AffinityRule, Policy, Quotas, SlowConsumerPolicy, SubjectRules};

/// Longest name of a tenant, principal or role, in bytes.
pub const MAX_NAME_LEN: usize = 64;
/// Most roles on one principal.
pub const MAX_ROLES: usize = 64;
/// Most patterns in one allow or deny list of a policy.
pub const MAX_PATTERNS: usize = 256;
/// Longest publisher stall a quota may ask for, milliseconds.
pub const MAX_STALL_MS: u32 = 60_000;
/// Longest credential lifetime, seconds: ten years.
pub const MAX_TTL_SECONDS: u64 = 10 * 365 * 24 * 3600;
/// The publisher stall when a quota says 0.
pub const DEFAULT_STALL: Duration = Duration::from_millis(100);

/// A field that failed validation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct FieldError {
    /// The field's path in the request, such as `policy.publish.allow[2]`.
    pub field: String,
    /// What is wrong.
    pub reason: String,
}

impl FieldError {
    /// An error about `field`.
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl From<FieldError> for tonic::Status {
    fn from(e: FieldError) -> Self {
        tonic::Status::invalid_argument(e.to_string())
    }
}

/// Checks a name: 1..=64 bytes of `[A-Za-z0-9_.-]`.
pub fn name(field: &str, value: &str) -> Result<(), FieldError> {
    if value.is_empty() {
        return Err(FieldError::new(field, "required"));
    }
    if value.len() > MAX_NAME_LEN {
        return Err(FieldError::new(
            field,
            format!("{} bytes, at most {MAX_NAME_LEN}", value.len()),
        ));
    }
    if let Some(c) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        return Err(FieldError::new(
            field,
            format!("invalid character {c:?} (allowed: A-Z a-z 0-9 _ . -)"),
        ));
    }
    Ok(())
}

/// Checks a non-zero id.
pub fn id(field: &str, value: u64) -> Result<u64, FieldError> {
    if value == 0 {
        return Err(FieldError::new(field, "required"));
    }
    Ok(value)
}

/// Checks roles and removes duplicates (keeping the first of each).
pub fn roles(field: &str, values: &[String]) -> Result<Vec<String>, FieldError> {
    if values.len() > MAX_ROLES {
        return Err(FieldError::new(
            field,
            format!("{} roles, at most {MAX_ROLES}", values.len()),
        ));
    }
    let mut out: Vec<String> = Vec::with_capacity(values.len());
    for (i, r) in values.iter().enumerate() {
        name(&format!("{field}[{i}]"), r)?;
        if !out.contains(r) {
            out.push(r.clone());
        }
    }
    Ok(out)
}

/// Checks quotas (absent: all defaults) and returns them.
pub fn quotas(field: &str, value: Option<&Quotas>) -> Result<Quotas, FieldError> {
    let q = value.copied().unwrap_or_default();
    core_quotas(&q).map_err(|e| FieldError::new(format!("{field}.{}", e.field), e.reason))?;
    Ok(q)
}

/// The data plane's quotas for stored quotas: 0 stays "unlimited", a zero
/// stall becomes [`DEFAULT_STALL`]. Fails on values the API refuses.
pub fn core_quotas(q: &Quotas) -> Result<CoreQuotas, FieldError> {
    let slow_consumer = match SlowConsumerPolicy::try_from(q.slow_consumer) {
        Ok(SlowConsumerPolicy::Unspecified | SlowConsumerPolicy::Disconnect) => {
            CoreSlowConsumer::Disconnect
        }
        Ok(SlowConsumerPolicy::DropOldest) => CoreSlowConsumer::DropOldest,
        Ok(SlowConsumerPolicy::StallPublisher) => CoreSlowConsumer::StallPublisher,
        Err(_) => {
            return Err(FieldError::new(
                "slow_consumer",
                format!("unknown policy {}", q.slow_consumer),
            ));
        }
    };
    if q.max_payload > MAX_PAYLOAD_CEILING {
        return Err(FieldError::new(
            "max_payload",
            format!("{} bytes, at most {MAX_PAYLOAD_CEILING}", q.max_payload),
        ));
    }
    if q.stall_max_ms > MAX_STALL_MS {
        return Err(FieldError::new(
            "stall_max_ms",
            format!("{} ms, at most {MAX_STALL_MS}", q.stall_max_ms),
        ));
    }
    Ok(CoreQuotas {
        max_connections: q.max_connections,
        max_subscriptions: q.max_subscriptions,
        max_payload: q.max_payload,
        messages_per_second: q.messages_per_second,
        bytes_per_second: q.bytes_per_second,
        slow_consumer,
        stall_max: if q.stall_max_ms == 0 {
            DEFAULT_STALL
        } else {
            Duration::from_millis(u64::from(q.stall_max_ms))
        },
    })
}

fn patterns(field: &str, values: &[String]) -> Result<Vec<Pattern>, FieldError> {
    if values.len() > MAX_PATTERNS {
        return Err(FieldError::new(
            field,
            format!("{} patterns, at most {MAX_PATTERNS}", values.len()),
        ));
    }
    values
        .iter()
        .enumerate()
        .map(|(i, p)| {
            parse_pattern(p).map_err(|e| FieldError::new(format!("{field}[{i}]"), e.to_string()))
        })
        .collect()
}

fn rules(
    field: &str,
    r: Option<&SubjectRules>,
) -> Result<(Vec<Pattern>, Vec<Pattern>), FieldError> {
    let empty = SubjectRules::default();
    let r = r.unwrap_or(&empty);
    Ok((
        patterns(&format!("{field}.allow"), &r.allow)?,
        patterns(&format!("{field}.deny"), &r.deny)?,
    ))
}

/// A policy's compiled rules; fails on the first invalid pattern, naming it
/// (`prefix` is the policy's field path, such as `policy`).
pub fn policy_rules(prefix: &str, p: &Policy) -> Result<PolicyRules, FieldError> {
    let (publish_allow, publish_deny) = rules(&format!("{prefix}.publish"), p.publish.as_ref())?;
    let (subscribe_allow, subscribe_deny) =
        rules(&format!("{prefix}.subscribe"), p.subscribe.as_ref())?;
    let (presence_allow, presence_deny) =
        rules(&format!("{prefix}.presence"), p.presence.as_ref())?;
    Ok(PolicyRules {
        publish_allow,
        publish_deny,
        subscribe_allow,
        subscribe_deny,
        presence_allow,
        presence_deny,
        allow_responses: p.allow_responses,
    })
}

/// A core placement error about the request's `field`: the reason is the
/// core's message without the core's own field name.
fn placement_error(field: impl Into<String>, e: &PlacementError) -> FieldError {
    let message = e.to_string();
    let reason = message
        .split_once(": ")
        .map_or(message.as_str(), |(_, r)| r);
    FieldError::new(field, reason)
}

/// Parses a tenant placement: `home`, `spread` or `shard:N`; empty is
/// `home`. Does not check that the shard exists.
pub fn placement(field: &str, value: &str) -> Result<TenantPlacement, FieldError> {
    if value.is_empty() {
        return Ok(TenantPlacement::default());
    }
    value.parse().map_err(|e| placement_error(field, &e))
}

/// A tenant's WebSocket origins: at most `origin::MAX_ORIGINS`, each
/// `scheme://host[:port]`; returned lowercased without duplicates, in order.
pub fn allowed_origins(field: &str, origins: &[String]) -> Result<Vec<String>, FieldError> {
    use arqonbus_core::origin::{MAX_ORIGINS, validate};
    if origins.len() > MAX_ORIGINS {
        return Err(FieldError::new(
            field,
            format!("at most {MAX_ORIGINS} origins"),
        ));
    }
    let mut out: Vec<String> = Vec::with_capacity(origins.len());
    for (i, o) in origins.iter().enumerate() {
        validate(o).map_err(|e| FieldError::new(format!("{field}[{i}]"), e.to_string()))?;
        let o = o.to_ascii_lowercase();
        if !out.contains(&o) {
            out.push(o);
        }
    }
    Ok(out)
}

/// [`placement`], and a pinned shard must be one of the node's `shards`.
pub fn placement_on_node(
    field: &str,
    value: &str,
    shards: usize,
) -> Result<TenantPlacement, FieldError> {
    let p = placement(field, value)?;
    p.validate(shards).map_err(|e| placement_error(field, &e))?;
    Ok(p)
}

/// Parses a steering mode and its affinity rules: a known mode, at most
/// [`MAX_AFFINITY_RULES`] rules, each an `ADDRESS/LEN` prefix given once.
/// Does not check that the shards exist.
pub fn steering_config(
    mode: &str,
    affinity: &[AffinityRule],
) -> Result<SteeringConfig, FieldError> {
    steering(mode, affinity, None)
}

/// [`steering_config`], and every rule's shard must be one of the node's
/// `shards`.
pub fn steering_for_node(
    mode: &str,
    affinity: &[AffinityRule],
    shards: usize,
) -> Result<SteeringConfig, FieldError> {
    steering(mode, affinity, Some(shards))
}

fn steering(
    mode: &str,
    affinity: &[AffinityRule],
    shards: Option<usize>,
) -> Result<SteeringConfig, FieldError> {
    let mode: SteeringMode = mode.parse().map_err(|e| placement_error("mode", &e))?;
    if affinity.len() > MAX_AFFINITY_RULES {
        let e = PlacementError::TooManyRules {
            rules: affinity.len(),
            max: MAX_AFFINITY_RULES,
        };
        return Err(placement_error("affinity", &e));
    }
    let mut rules = Vec::with_capacity(affinity.len());
    let mut seen = HashMap::with_capacity(affinity.len());
    for (i, r) in affinity.iter().enumerate() {
        let no_such_shard = |shards| PlacementError::NoSuchShard {
            field: "affinity.shard",
            shard: r.shard,
            shards,
        };
        let shard_field = || format!("affinity[{i}].shard");
        if let Some(n) = shards
            && usize::try_from(r.shard).map_or(true, |s| s >= n)
        {
            return Err(placement_error(shard_field(), &no_such_shard(n)));
        }
        let shard = u16::try_from(r.shard).map_err(|_| {
            placement_error(shard_field(), &no_such_shard(usize::from(u16::MAX) + 1))
        })?;
        let rule = CoreAffinityRule::parse(&r.prefix, ShardId(shard))
            .map_err(|e| placement_error(format!("affinity[{i}].prefix"), &e))?;
        match seen.entry((rule.network, rule.len)) {
            Entry::Occupied(first) => {
                return Err(FieldError::new(
                    format!("affinity[{i}].prefix"),
                    format!("{rule} is already affinity[{}]", first.get()),
                ));
            }
            Entry::Vacant(slot) => {
                slot.insert(i);
            }
        }
        rules.push(rule);
    }
    Ok(SteeringConfig {
        mode,
        affinity: rules,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(name("n", "acme-1_x.y").is_ok());
        assert!(name("n", &"a".repeat(64)).is_ok());
        assert_eq!(name("n", "").unwrap_err().reason, "required");
        assert!(
            name("n", &"a".repeat(65))
                .unwrap_err()
                .reason
                .contains("at most 64")
        );
        assert!(name("n", "a b").unwrap_err().reason.contains("' '"));
        assert!(name("n", "é").is_err());
        assert!(name("n", "a/b").is_err());
    }

    #[test]
    fn roles_are_checked_and_deduplicated() {
        let r = roles("roles", &["a".into(), "b".into(), "a".into()]).unwrap();
        assert_eq!(r, ["a", "b"]);
        let e = roles("roles", &["ok".into(), "no way".into()]).unwrap_err();
        assert_eq!(e.field, "roles[1]");
        assert!(roles("roles", &vec!["x".to_owned(); 65]).is_err());
    }

    #[test]
    fn quotas_defaults_and_bounds() {
        let q = core_quotas(&Quotas::default()).unwrap();
        assert_eq!(q.stall_max, DEFAULT_STALL);
        assert_eq!(q.slow_consumer, CoreSlowConsumer::Disconnect);
        let bad = Quotas {
            slow_consumer: 42,
            ..Quotas::default()
        };
        assert_eq!(
            quotas("quotas", Some(&bad)).unwrap_err().field,
            "quotas.slow_consumer"
        );
        let long = Quotas {
            stall_max_ms: MAX_STALL_MS + 1,
            ..Quotas::default()
        };
        assert_eq!(
            quotas("quotas", Some(&long)).unwrap_err().field,
            "quotas.stall_max_ms"
        );
        let stall = Quotas {
            slow_consumer: SlowConsumerPolicy::StallPublisher.into(),
            stall_max_ms: 250,
            ..Quotas::default()
        };
        let q = core_quotas(&stall).unwrap();
        assert_eq!(q.slow_consumer, CoreSlowConsumer::StallPublisher);
        assert_eq!(q.stall_max, Duration::from_millis(250));
    }

    #[test]
    fn origins_are_checked_lowercased_and_deduplicated() {
        let ok = allowed_origins(
            "allowed_origins",
            &[
                "HTTPS://App.Example".into(),
                "https://app.example".into(),
                "http://localhost:5173".into(),
            ],
        )
        .unwrap();
        assert_eq!(ok, ["https://app.example", "http://localhost:5173"]);
        let e = allowed_origins(
            "allowed_origins",
            &["https://a.example".into(), "a.example".into()],
        )
        .unwrap_err();
        assert_eq!(e.field, "allowed_origins[1]");
        let many: Vec<String> = (0..=arqonbus_core::origin::MAX_ORIGINS)
            .map(|i| format!("https://h{i}.example"))
            .collect();
        assert_eq!(
            allowed_origins("allowed_origins", &many).unwrap_err().field,
            "allowed_origins"
        );
        assert!(allowed_origins("allowed_origins", &[]).unwrap().is_empty());
    }

    #[test]
    fn policy_patterns_name_the_field() {
        let p = Policy {
            publish: Some(SubjectRules {
                allow: vec!["orders.>".into(), "a..b".into()],
                deny: vec![],
            }),
            ..Policy::default()
        };
        let e = policy_rules("policy", &p).unwrap_err();
        assert_eq!(e.field, "policy.publish.allow[1]");
        let ok = Policy {
            subscribe: Some(SubjectRules {
                allow: vec!["a.*".into()],
                deny: vec!["a.secret".into()],
            }),
            ..Policy::default()
        };
        let r = policy_rules("policy", &ok).unwrap();
        assert_eq!((r.subscribe_allow.len(), r.subscribe_deny.len()), (1, 1));
    }

    fn rule(prefix: &str, shard: u32) -> AffinityRule {
        AffinityRule {
            prefix: prefix.into(),
            shard,
        }
    }

    #[test]
    fn placements_parse_and_name_the_field() {
        assert_eq!(placement("placement", ""), Ok(TenantPlacement::Home));
        assert_eq!(
            placement("placement", "spread"),
            Ok(TenantPlacement::Spread)
        );
        assert_eq!(
            placement_on_node("placement", "shard:1", 2),
            Ok(TenantPlacement::Pinned(ShardId(1)))
        );
        let e = placement("placement", "nearby").unwrap_err();
        assert_eq!(
            e.to_string(),
            "placement: unknown placement \"nearby\" (home, spread or shard:N)"
        );
        let e = placement_on_node("placement", "shard:2", 2).unwrap_err();
        assert_eq!(
            e.to_string(),
            "placement: shard 2 does not exist (this node has 2)"
        );
        // Without a node, any shard parses (the snapshot builder's case).
        assert!(placement("placement", "shard:9").is_ok());
    }

    #[test]
    fn steering_is_checked_rule_by_rule() {
        let ok = steering_for_node(
            "affinity",
            &[rule("10.1.0.0/16", 1), rule("fd00::/8", 0)],
            2,
        )
        .unwrap();
        assert_eq!(ok.mode, SteeringMode::Affinity);
        assert_eq!(ok.affinity.len(), 2);
        assert_eq!(ok.affinity[0].to_string(), "10.1.0.0/16");

        let field = |mode: &str, rules: &[AffinityRule]| {
            steering_for_node(mode, rules, 2).unwrap_err().field
        };
        assert_eq!(field("round-robin", &[]), "mode");
        assert_eq!(field("", &[]), "mode");
        assert_eq!(
            field("affinity", &[rule("10.0.0.0/8", 0), rule("10.0.0.0/33", 1)]),
            "affinity[1].prefix"
        );
        assert_eq!(
            field("balance", &[rule("10.0.0.0/8", 2)]),
            "affinity[0].shard"
        );
        assert_eq!(
            field("balance", &[rule("10.0.0.0/8", u32::MAX)]),
            "affinity[0].shard"
        );
        // The same network twice (host bits cleared) is refused.
        let e = steering_for_node(
            "affinity",
            &[rule("10.0.0.0/8", 0), rule("10.9.9.9/8", 1)],
            2,
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "affinity[1].prefix: 10.0.0.0/8 is already affinity[0]"
        );
        let too_many: Vec<_> = (0..=MAX_AFFINITY_RULES)
            .map(|i| rule(&format!("fd00::{i:x}"), 0))
            .collect();
        let e = steering_for_node("affinity", &too_many, 2).unwrap_err();
        assert_eq!(
            e.to_string(),
            "affinity: 4097 rules exceed the limit of 4096"
        );
        let e = steering_for_node("affinity", &[rule("10.0.0.0/8", 5)], 2).unwrap_err();
        assert_eq!(
            e.to_string(),
            "affinity[0].shard: shard 5 does not exist (this node has 2)"
        );
        // Without a node, any shard that fits parses.
        assert!(steering_config("hash", &[rule("10.0.0.0/8", 5)]).is_ok());
    }
}
