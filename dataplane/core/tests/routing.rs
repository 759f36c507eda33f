//! Routing as an executable spec: a deterministic multi-shard simulation of
//! routers exchanging interest updates and message copies, checked against a
//! naive matcher that knows every subscription.
#![allow(clippy::unwrap_used, reason = "test code")]

use std::collections::{BTreeMap, BTreeSet};

use arqonbus_core::router::{InterestUpdate, Origin, RoutePlan, Router, SubscriptionError};
use arqonbus_core::subject::{Pattern, QueueGroup, Subject};
use arqonbus_core::{ConnId, ShardId, Sid, TenantId};
use bytes::Bytes;
use proptest::prelude::*;

fn pat(s: &str) -> Pattern {
    Pattern::parse(Bytes::copy_from_slice(s.as_bytes()), 256).unwrap()
}
fn subj(s: &str) -> Subject {
    Subject::parse(Bytes::copy_from_slice(s.as_bytes()), 256).unwrap()
}
fn queue(s: &str) -> QueueGroup {
    QueueGroup::parse(Bytes::copy_from_slice(s.as_bytes())).unwrap()
}

/// A delivered message: (shard, connection, sid).
type Got = (u16, u64, u64);

/// N routers wired like the data plane wires shards.
struct Sim {
    routers: Vec<Router>,
    plan: RoutePlan,
}

impl Sim {
    fn new(shards: u16, seed: u64) -> Self {
        Self {
            routers: (0..shards)
                .map(|i| Router::new(ShardId(i), seed ^ u64::from(i)))
                .collect(),
            plan: RoutePlan::default(),
        }
    }

    fn broadcast(&mut self, from: u16, updates: &[InterestUpdate]) {
        for (i, r) in self.routers.iter_mut().enumerate() {
            if i != usize::from(from) {
                for u in updates {
                    r.apply_interest(ShardId(from), u);
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn subscribe(
        &mut self,
        shard: u16,
        tenant: u64,
        conn: u64,
        sid: u64,
        pattern: &str,
        q: Option<&str>,
    ) -> Result<(), SubscriptionError> {
        let mut out = Vec::new();
        let r = self.routers[usize::from(shard)].subscribe(
            TenantId(tenant),
            ConnId(conn),
            Sid(sid),
            pat(pattern),
            q.map(queue),
            1000,
            &mut out,
        );
        self.broadcast(shard, &out);
        r
    }

    fn unsubscribe(&mut self, shard: u16, conn: u64, sid: u64, after: u64) {
        let mut out = Vec::new();
        self.routers[usize::from(shard)]
            .unsubscribe(ConnId(conn), Sid(sid), after, &mut out)
            .unwrap();
        self.broadcast(shard, &out);
    }

    fn remove_conn(&mut self, shard: u16, conn: u64) {
        let mut out = Vec::new();
        self.routers[usize::from(shard)].remove_conn(ConnId(conn), &mut out);
        self.broadcast(shard, &out);
    }

    /// Publishes from `conn` on `shard` and follows every copy to its shard.
    fn publish(
        &mut self,
        shard: u16,
        tenant: u64,
        conn: u64,
        echo: bool,
        subject: &str,
    ) -> Vec<Got> {
        let s = subj(subject);
        let mut got = Vec::new();
        let origin = Origin::Local {
            conn: ConnId(conn),
            echo,
        };
        self.routers[usize::from(shard)].route(TenantId(tenant), &s, origin, &mut self.plan);
        got.extend(self.plan.local.iter().map(|d| (shard, d.conn.0, d.sid.0)));
        let interest = std::mem::take(&mut self.plan.interest);
        self.broadcast(shard, &interest);
        let copies = std::mem::take(&mut self.plan.remote);
        let mut seen = BTreeSet::new();
        for copy in copies {
            assert!(seen.insert(copy.shard), "two copies for one shard");
            assert_ne!(copy.shard, ShardId(shard), "a copy for the origin shard");
            let r = &mut self.routers[copy.shard.index()];
            let mut plan = RoutePlan::default();
            r.route(
                TenantId(tenant),
                &s,
                Origin::Remote {
                    groups: &copy.groups,
                },
                &mut plan,
            );
            assert_eq!(plan.missed_groups, 0);
            assert!(plan.remote.is_empty(), "a copy was forwarded again");
            got.extend(plan.local.iter().map(|d| (copy.shard.0, d.conn.0, d.sid.0)));
            self.broadcast(copy.shard.0, &plan.interest);
        }
        got.sort_unstable();
        got
    }
}

#[test]
fn one_copy_per_interested_shard() {
    let mut sim = Sim::new(3, 1);
    sim.subscribe(1, 1, 10, 1, "a.b", None).unwrap();
    sim.subscribe(1, 1, 11, 1, "a.*", None).unwrap();
    sim.subscribe(2, 1, 20, 1, "a.>", None).unwrap();
    let routers = &mut sim.routers;
    let mut plan = RoutePlan::default();
    routers[0].route(
        TenantId(1),
        &subj("a.b"),
        Origin::Local {
            conn: ConnId(1),
            echo: true,
        },
        &mut plan,
    );
    assert!(plan.local.is_empty());
    let shards: Vec<_> = plan.remote.iter().map(|r| r.shard).collect();
    assert_eq!(shards, vec![ShardId(1), ShardId(2)]);
    assert_eq!(
        sim.publish(0, 1, 1, true, "a.b"),
        vec![(1, 10, 1), (1, 11, 1), (2, 20, 1)]
    );
}

#[test]
fn tenants_never_meet() {
    let mut sim = Sim::new(2, 2);
    sim.subscribe(0, 1, 10, 1, ">", None).unwrap();
    sim.subscribe(1, 2, 20, 1, ">", None).unwrap();
    sim.subscribe(1, 2, 21, 1, "a", Some("q")).unwrap();
    assert_eq!(sim.publish(0, 1, 99, true, "a"), vec![(0, 10, 1)]);
    assert_eq!(sim.publish(0, 2, 99, true, "a").len(), 2);
    assert!(sim.publish(0, 3, 99, true, "a").is_empty());
}

#[test]
fn echo_and_no_echo() {
    let mut sim = Sim::new(1, 3);
    sim.subscribe(0, 1, 10, 1, "a", None).unwrap();
    assert_eq!(sim.publish(0, 1, 10, true, "a"), vec![(0, 10, 1)]);
    assert!(sim.publish(0, 1, 10, false, "a").is_empty());
}

#[test]
fn no_echo_also_holds_for_queue_groups() {
    let mut sim = Sim::new(1, 8);
    sim.subscribe(0, 1, 10, 1, "q", Some("g")).unwrap();
    sim.subscribe(0, 1, 11, 1, "q", Some("g")).unwrap();
    for _ in 0..200 {
        assert_eq!(sim.publish(0, 1, 10, false, "q"), vec![(0, 11, 1)]);
    }
    // Alone in its group, a no-echo publisher reaches nobody.
    let mut sim = Sim::new(1, 9);
    sim.subscribe(0, 1, 10, 1, "q", Some("g")).unwrap();
    assert!(sim.publish(0, 1, 10, false, "q").is_empty());
}

#[test]
fn unsubscribe_after_n_messages() {
    let mut sim = Sim::new(2, 4);
    sim.subscribe(1, 1, 10, 7, "a.*", None).unwrap();
    sim.unsubscribe(1, 10, 7, 2);
    assert_eq!(sim.publish(0, 1, 1, true, "a.x").len(), 1);
    assert_eq!(sim.publish(0, 1, 1, true, "a.x").len(), 1);
    // The remote shard withdrew its interest: no copy is even sent.
    let mut plan = RoutePlan::default();
    sim.routers[0].route(
        TenantId(1),
        &subj("a.x"),
        Origin::Local {
            conn: ConnId(1),
            echo: true,
        },
        &mut plan,
    );
    assert!(plan.is_empty());
    assert_eq!(sim.routers[1].local_subscriptions(), 0);
}

#[test]
fn subscription_errors() {
    let mut sim = Sim::new(1, 5);
    assert_eq!(
        sim.subscribe(0, 1, 1, 0, "a", None),
        Err(SubscriptionError::InvalidSid)
    );
    sim.subscribe(0, 1, 1, 1, "a", None).unwrap();
    assert_eq!(
        sim.subscribe(0, 1, 1, 1, "b", None),
        Err(SubscriptionError::InvalidSid)
    );
    let mut out = Vec::new();
    let r = &mut sim.routers[0];
    assert_eq!(
        r.subscribe(TenantId(1), ConnId(1), Sid(2), pat("c"), None, 1, &mut out),
        Err(SubscriptionError::TooMany(1))
    );
    assert_eq!(
        r.unsubscribe(ConnId(1), Sid(9), 0, &mut out),
        Err(SubscriptionError::UnknownSid)
    );
    assert_eq!(
        r.unsubscribe(ConnId(2), Sid(1), 0, &mut out),
        Err(SubscriptionError::UnknownSid)
    );
}

#[test]
fn queue_group_spreads_over_members_on_all_shards() {
    let mut sim = Sim::new(2, 6);
    // Three members: one on shard 0, two on shard 1.
    sim.subscribe(0, 1, 10, 1, "jobs.*", Some("w")).unwrap();
    sim.subscribe(1, 1, 20, 1, "jobs.*", Some("w")).unwrap();
    sim.subscribe(1, 1, 21, 1, "jobs.*", Some("w")).unwrap();
    let mut counts: BTreeMap<u64, u32> = BTreeMap::new();
    for _ in 0..3000 {
        let got = sim.publish(0, 1, 1, true, "jobs.x");
        assert_eq!(got.len(), 1, "exactly one member per message");
        *counts.entry(got[0].1).or_default() += 1;
    }
    assert_eq!(counts.len(), 3);
    for (conn, n) in counts {
        assert!((800..1200).contains(&n), "member {conn} got {n} of 3000");
    }
}

#[test]
fn removing_a_connection_withdraws_its_interest() {
    let mut sim = Sim::new(2, 7);
    sim.subscribe(1, 1, 10, 1, "a", None).unwrap();
    sim.subscribe(1, 1, 10, 2, "b", Some("q")).unwrap();
    sim.remove_conn(1, 10);
    assert_eq!(sim.routers[1].local_subscriptions(), 0);
    let mut plan = RoutePlan::default();
    for s in ["a", "b"] {
        sim.routers[0].route(
            TenantId(1),
            &subj(s),
            Origin::Local {
                conn: ConnId(1),
                echo: true,
            },
            &mut plan,
        );
        assert!(plan.is_empty(), "{s}");
    }
}

#[test]
fn a_group_that_left_is_counted_as_a_miss() {
    let mut r = Router::new(ShardId(1), 1);
    let groups = [arqonbus_core::router::GroupKey {
        pattern: pat("a"),
        queue: queue("q"),
    }];
    let mut plan = RoutePlan::default();
    r.route(
        TenantId(1),
        &subj("a"),
        Origin::Remote { groups: &groups },
        &mut plan,
    );
    assert_eq!(plan.missed_groups, 1);
    assert!(plan.local.is_empty());
}

#[test]
fn requests_find_the_requesters_own_inbox() {
    let mut r = Router::new(ShardId(0), 1);
    let mut out = Vec::new();
    r.subscribe(
        TenantId(1),
        ConnId(1),
        Sid(5),
        pat("_INBOX.abc.*"),
        None,
        10,
        &mut out,
    )
    .unwrap();
    r.subscribe(
        TenantId(1),
        ConnId(2),
        Sid(6),
        pat("_INBOX.>"),
        None,
        10,
        &mut out,
    )
    .unwrap();
    let mut plan = RoutePlan::default();
    r.route_to_conn(TenantId(1), &subj("_INBOX.abc.1"), ConnId(1), &mut plan);
    assert_eq!(plan.local.len(), 1);
    assert_eq!(plan.local[0].sid, Sid(5));
}

// ---- Property test: the sharded index agrees with a naive matcher. ----

#[derive(Debug, Clone)]
struct SubSpec {
    shard: u16,
    tenant: u64,
    pattern: String,
    queue: Option<String>,
}

fn token() -> impl Strategy<Value = String> {
    prop_oneof![Just("a"), Just("b"), Just("c")].prop_map(str::to_owned)
}

fn pattern_tokens() -> impl Strategy<Value = String> {
    proptest::collection::vec(prop_oneof![4 => token(), 2 => Just("*".to_owned())], 1..4)
        .prop_flat_map(|toks| {
            any::<bool>().prop_map(move |full| {
                let mut toks = toks.clone();
                if full {
                    toks.push(">".to_owned());
                }
                toks.join(".")
            })
        })
}

fn sub_spec(shards: u16) -> impl Strategy<Value = SubSpec> {
    (
        0..shards,
        1u64..3,
        pattern_tokens(),
        prop_oneof![3 => Just(None), 1 => Just(Some("q1".to_owned())), 1 => Just(Some("q2".to_owned()))],
    )
        .prop_map(|(shard, tenant, pattern, queue)| SubSpec {
            shard,
            tenant,
            pattern,
            queue,
        })
}

fn subject_str() -> impl Strategy<Value = String> {
    proptest::collection::vec(token(), 1..5).prop_map(|t| t.join("."))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn sharded_routing_agrees_with_naive_matching(
        specs in proptest::collection::vec(sub_spec(3), 0..40),
        removed in proptest::collection::vec(any::<prop::sample::Index>(), 0..10),
        subjects in proptest::collection::vec((0u16..3, 1u64..3, subject_str()), 1..20),
        seed in any::<u64>(),
    ) {
        let mut sim = Sim::new(3, seed);
        // Each subscription gets its own connection: conn = index + 100.
        let mut live: Vec<Option<SubSpec>> = specs.iter().cloned().map(Some).collect();
        for (i, s) in specs.iter().enumerate() {
            sim.subscribe(s.shard, s.tenant, i as u64 + 100, 1, &s.pattern, s.queue.as_deref()).unwrap();
        }
        if !specs.is_empty() {
            for ix in removed {
                let i = ix.index(specs.len());
                if let Some(s) = live[i].take() {
                    sim.unsubscribe(s.shard, i as u64 + 100, 1, 0);
                }
            }
        }
        for (shard, tenant, subject) in subjects {
            let got = sim.publish(shard, tenant, 1, true, &subject);
            let s = subj(&subject);
            // Naive: every matching plain subscription, and one member of each
            // matching (pattern, queue) group.
            let mut expected_plain = BTreeSet::new();
            let mut groups: BTreeMap<(String, String), BTreeSet<Got>> = BTreeMap::new();
            for (i, spec) in live.iter().enumerate() {
                let Some(spec) = spec else { continue };
                if spec.tenant != tenant || !pat(&spec.pattern).matches(&s) { continue; }
                let g: Got = (spec.shard, i as u64 + 100, 1);
                match &spec.queue {
                    None => { expected_plain.insert(g); }
                    Some(q) => { groups.entry((spec.pattern.clone(), q.clone())).or_default().insert(g); }
                }
            }
            let got_set: BTreeSet<Got> = got.iter().copied().collect();
            prop_assert_eq!(got_set.len(), got.len(), "a subscription got a message twice");
            let got_plain: BTreeSet<Got> = got_set.iter().copied().filter(|g| expected_plain.contains(g)).collect();
            prop_assert_eq!(&got_plain, &expected_plain);
            let mut rest: BTreeSet<Got> = got_set.difference(&expected_plain).copied().collect();
            for members in groups.values() {
                let hit: Vec<Got> = members.iter().copied().filter(|m| rest.contains(m)).collect();
                prop_assert_eq!(hit.len(), 1, "queue group must get exactly one delivery");
                rest.remove(&hit[0]);
            }
            prop_assert!(rest.is_empty(), "unexpected deliveries: {:?}", rest);
        }
    }
}

/// One step of [`interleaved_changes_never_leave_a_stale_route`].
#[derive(Debug, Clone)]
enum Op {
    Subscribe(SubSpec),
    /// Unsubscribe the n-th subscription made so far (if live).
    Unsubscribe(prop::sample::Index),
    /// Close the n-th subscription's connection.
    Close(prop::sample::Index),
    /// Publish on (shard, tenant, subject), echo or not, from connection 1
    /// or (when any was made) from the n-th subscription's connection, on
    /// its shard.
    Publish(u16, u64, String, Option<prop::sample::Index>, bool),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => sub_spec(3).prop_map(Op::Subscribe),
        1 => any::<prop::sample::Index>().prop_map(Op::Unsubscribe),
        1 => any::<prop::sample::Index>().prop_map(Op::Close),
        5 => (0u16..3, 1u64..3, prop_oneof![Just("a.b".to_owned()), Just("a.c".to_owned()), subject_str()], proptest::option::of(any::<prop::sample::Index>()), any::<bool>())
            .prop_map(|(s, t, subj, c, e)| Op::Publish(s, t, subj, c, e)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Publishes repeat a few subjects (so routes come from the cache)
    /// between subscribes, unsubscribes and closes on every shard: each
    /// publish still reaches exactly the live matching subscriptions.
    #[test]
    fn interleaved_changes_never_leave_a_stale_route(
        ops in proptest::collection::vec(op(), 1..60),
        seed in any::<u64>(),
    ) {
        let mut sim = Sim::new(3, seed);
        // Subscription i is sid 1 of connection i + 100.
        let mut made: Vec<Option<SubSpec>> = Vec::new();
        for op in ops {
            match op {
                Op::Subscribe(spec) => {
                    let conn = made.len() as u64 + 100;
                    sim.subscribe(spec.shard, spec.tenant, conn, 1, &spec.pattern, spec.queue.as_deref()).unwrap();
                    made.push(Some(spec));
                }
                Op::Unsubscribe(ix) | Op::Close(ix) if made.is_empty() => { let _ = ix; }
                Op::Unsubscribe(ix) => {
                    let i = ix.index(made.len());
                    if let Some(s) = made[i].take() {
                        sim.unsubscribe(s.shard, i as u64 + 100, 1, 0);
                    }
                }
                Op::Close(ix) => {
                    let i = ix.index(made.len());
                    if let Some(s) = made[i].take() {
                        sim.remove_conn(s.shard, i as u64 + 100);
                    }
                }
                Op::Publish(shard, tenant, subject, from, echo) => {
                    let (shard, conn) = match from {
                        Some(ix) if !made.is_empty() => {
                            let i = ix.index(made.len());
                            (made[i].as_ref().map_or(shard, |s| s.shard), i as u64 + 100)
                        }
                        _ => (shard, 1),
                    };
                    let got = sim.publish(shard, tenant, conn, echo, &subject);
                    let s = subj(&subject);
                    let mut plain = BTreeSet::new();
                    let mut groups: BTreeMap<(String, String), BTreeSet<Got>> = BTreeMap::new();
                    for (i, spec) in made.iter().enumerate() {
                        let Some(spec) = spec else { continue };
                        if spec.tenant != tenant || !pat(&spec.pattern).matches(&s) { continue; }
                        let g: Got = (spec.shard, i as u64 + 100, 1);
                        // A no-echo publisher's own subscription gets nothing.
                        let own = !echo && g.1 == conn;
                        match &spec.queue {
                            None if own => {}
                            None => { plain.insert(g); }
                            Some(q) => {
                                let members = groups.entry((spec.pattern.clone(), q.clone())).or_default();
                                if !own { members.insert(g); }
                            }
                        }
                    }
                    let got_set: BTreeSet<Got> = got.iter().copied().collect();
                    prop_assert_eq!(got_set.len(), got.len(), "a subscription got a message twice");
                    let got_plain: BTreeSet<Got> = got_set.intersection(&plain).copied().collect();
                    prop_assert_eq!(&got_plain, &plain, "plain subscribers of {}", subject);
                    let mut rest: BTreeSet<Got> = got_set.difference(&plain).copied().collect();
                    for members in groups.values() {
                        let hit: Vec<Got> = members.iter().copied().filter(|m| rest.contains(m)).collect();
                        prop_assert_eq!(hit.len(), usize::from(!members.is_empty()), "queue group must get exactly one delivery");
                        if let Some(h) = hit.first() { rest.remove(h); }
                    }
                    prop_assert!(rest.is_empty(), "unexpected deliveries: {:?}", rest);
                }
            }
        }
    }
}
