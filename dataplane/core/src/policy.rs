//! Subject permissions: what a principal may publish and subscribe to.
//!
//! A [`Permissions`] is compiled once per principal by the control plane from
//! every policy that targets the principal or one of its roles, and shared
//! read-only by the shards. Rules: a subject is allowed when some `allow`
//! pattern matches it and no `deny` pattern does (deny wins). A principal
//! with no policy at all may use every subject of its tenant
//! ([`Permissions::allow_all`]); tenants are isolated regardless.
//!
//! Subscriptions are checked as patterns: `P` is allowed when it is contained
//! in some allow pattern (every subject `P` matches, the allow pattern
//! matches too) and intersects no deny pattern (no subject could match both).
//! So `>` is refused when anything is denied: a subscription never sees a
//! denied subject, and nothing has to be filtered per message.

use bytes::Bytes;

use crate::index::{Slot, SubjectIndex};
use crate::subject::{Pattern, SubjectRef};

/// Marks a pattern as present in a [`PatternSet`].
#[derive(Debug, Default)]
struct Present(bool);

impl Slot for Present {
    fn is_empty(&self) -> bool {
        !self.0
    }
}

/// A set of patterns, matched against subjects in one trie walk and against
/// patterns by containment and intersection.
#[derive(Debug, Default)]
pub struct PatternSet {
    patterns: Vec<Pattern>,
    index: SubjectIndex<Present>,
}

impl PatternSet {
    /// A set of `patterns` (duplicates are harmless).
    pub fn new(patterns: impl IntoIterator<Item = Pattern>) -> Self {
        let mut set = Self::default();
        for p in patterns {
            set.index.slot_mut(&p).0 = true;
            set.patterns.push(p);
        }
        set
    }

    /// True when the set is empty.
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Whether any pattern matches `subject`.
    pub fn matches<'s>(&self, subject: impl Into<SubjectRef<'s>>) -> bool {
        let mut hit = false;
        self.index.for_each_match(subject, |_| hit = true);
        hit
    }

    /// Whether some pattern contains every subject `p` matches.
    pub fn contains(&self, p: &Pattern) -> bool {
        self.patterns.iter().any(|a| contains(a, p))
    }

    /// Whether some pattern matches a subject `p` also matches.
    pub fn intersects(&self, p: &Pattern) -> bool {
        self.patterns.iter().any(|d| intersects(d, p))
    }

    /// The patterns, as given.
    pub fn patterns(&self) -> &[Pattern] {
        &self.patterns
    }
}

/// Whether every subject matched by `inner` is matched by `outer`.
pub fn contains(outer: &Pattern, inner: &Pattern) -> bool {
    let mut o = outer.tokens();
    let mut i = inner.tokens();
    loop {
        match (o.next(), i.next()) {
            (Some(b">"), Some(_)) => return true,
            (Some(b"*"), Some(t)) if t != b">" => {}
            (Some(a), Some(b)) if a == b && a != b"*" && a != b">" => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Whether some subject is matched by both `a` and `b`.
pub fn intersects(left: &Pattern, right: &Pattern) -> bool {
    let mut lt = left.tokens();
    let mut rt = right.tokens();
    loop {
        match (lt.next(), rt.next()) {
            (Some(b">"), Some(_)) | (Some(_), Some(b">")) => return true,
            (Some(b"*"), Some(_)) | (Some(_), Some(b"*")) => {}
            (Some(l), Some(r)) if l == r => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Allow and deny patterns for one direction (publish or subscribe).
#[derive(Debug, Default)]
pub struct Rules {
    allow: PatternSet,
    deny: PatternSet,
}

impl Rules {
    /// Rules from allow and deny patterns.
    pub fn new(allow: PatternSet, deny: PatternSet) -> Self {
        Self { allow, deny }
    }

    fn allows_subject(&self, s: SubjectRef<'_>) -> bool {
        self.allow.matches(s) && !self.deny.matches(s)
    }

    fn allows_pattern(&self, p: &Pattern) -> bool {
        self.allow.contains(p) && !self.deny.intersects(p)
    }
}

/// A principal's effective permissions.
#[derive(Debug)]
#[allow(clippy::large_enum_variant, reason = "always shared behind an Arc")]
pub enum Permissions {
    /// No policy targets the principal: every subject of its tenant.
    AllowAll,
    /// The union of the policies that target the principal or its roles.
    Restricted {
        /// What it may publish.
        publish: Rules,
        /// What it may subscribe to.
        subscribe: Rules,
        /// Whose presence it may see (watch, query); none unless allowed.
        presence: Rules,
        /// Whether it may answer requests it received even where `publish`
        /// would deny the reply subject.
        allow_responses: bool,
    },
}

impl Permissions {
    /// Everything within the tenant.
    pub fn allow_all() -> Self {
        Self::AllowAll
    }

    /// True when no check is needed.
    pub fn unrestricted(&self) -> bool {
        matches!(self, Self::AllowAll)
    }

    /// Whether the principal may publish to `subject`.
    pub fn may_publish<'s>(&self, subject: impl Into<SubjectRef<'s>>) -> bool {
        match self {
            Self::AllowAll => true,
            Self::Restricted { publish, .. } => publish.allows_subject(subject.into()),
        }
    }

    /// Whether the principal may receive messages on `subject` (a
    /// subscription to exactly it would be allowed). A request's reply
    /// subject must pass this: a responder's one permitted answer must not
    /// reach a subject the requester could not subscribe to.
    pub fn may_receive<'s>(&self, subject: impl Into<SubjectRef<'s>>) -> bool {
        match self {
            Self::AllowAll => true,
            Self::Restricted { subscribe, .. } => subscribe.allows_subject(subject.into()),
        }
    }

    /// Whether the principal may subscribe to `pattern`.
    pub fn may_subscribe(&self, pattern: &Pattern) -> bool {
        match self {
            Self::AllowAll => true,
            Self::Restricted { subscribe, .. } => subscribe.allows_pattern(pattern),
        }
    }

    /// Whether the principal may see the presence of `subject` (watch it,
    /// query it): its own permission, apart from publish and subscribe.
    pub fn may_see_presence<'s>(&self, subject: impl Into<SubjectRef<'s>>) -> bool {
        match self {
            Self::AllowAll => true,
            Self::Restricted { presence, .. } => presence.allows_subject(subject.into()),
        }
    }

    /// Whether replies to received requests are always allowed.
    pub fn allow_responses(&self) -> bool {
        match self {
            Self::AllowAll => true,
            Self::Restricted {
                allow_responses, ..
            } => *allow_responses,
        }
    }
}

/// One policy's rules, as stored (patterns already validated).
#[derive(Debug, Clone, Default)]
pub struct PolicyRules {
    /// Publish allow patterns.
    pub publish_allow: Vec<Pattern>,
    /// Publish deny patterns.
    pub publish_deny: Vec<Pattern>,
    /// Subscribe allow patterns.
    pub subscribe_allow: Vec<Pattern>,
    /// Subscribe deny patterns.
    pub subscribe_deny: Vec<Pattern>,
    /// Patterns of subjects whose presence may be seen (watch, query).
    pub presence_allow: Vec<Pattern>,
    /// Patterns of subjects whose presence may not be seen.
    pub presence_deny: Vec<Pattern>,
    /// Replies to received requests are allowed.
    pub allow_responses: bool,
}

/// The effective permissions of a principal targeted by `policies` (none:
/// allow all).
pub fn compile<'a>(policies: impl IntoIterator<Item = &'a PolicyRules>) -> Permissions {
    let mut any = false;
    let (mut pa, mut pd, mut sa, mut sd) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut va, mut vd) = (Vec::new(), Vec::new());
    let mut responses = false;
    for p in policies {
        any = true;
        pa.extend(p.publish_allow.iter().cloned());
        pd.extend(p.publish_deny.iter().cloned());
        sa.extend(p.subscribe_allow.iter().cloned());
        sd.extend(p.subscribe_deny.iter().cloned());
        va.extend(p.presence_allow.iter().cloned());
        vd.extend(p.presence_deny.iter().cloned());
        responses |= p.allow_responses;
    }
    if !any {
        return Permissions::AllowAll;
    }
    Permissions::Restricted {
        publish: Rules::new(PatternSet::new(pa), PatternSet::new(pd)),
        subscribe: Rules::new(PatternSet::new(sa), PatternSet::new(sd)),
        presence: Rules::new(PatternSet::new(va), PatternSet::new(vd)),
        allow_responses: responses,
    }
}

/// Parses a pattern from text for policies (server limits apply).
pub fn parse_pattern(text: &str) -> Result<Pattern, crate::subject::SubjectError> {
    Pattern::parse(Bytes::copy_from_slice(text.as_bytes()), 2048)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::subject::Subject;

    fn p(s: &str) -> Pattern {
        parse_pattern(s).unwrap()
    }
    fn s(x: &str) -> Subject {
        Subject::parse(Bytes::copy_from_slice(x.as_bytes()), 256).unwrap()
    }

    #[test]
    fn containment() {
        assert!(contains(&p(">"), &p("a.b")));
        assert!(contains(&p("a.>"), &p("a.*.c")));
        assert!(contains(&p("a.*"), &p("a.b")));
        assert!(contains(&p("a.*"), &p("a.*")));
        assert!(!contains(&p("a.*"), &p("a.>")));
        assert!(!contains(&p("a.b"), &p("a.*")));
        assert!(!contains(&p("a.>"), &p("a")));
        assert!(!contains(&p("a.*"), &p("a.b.c")));
    }

    #[test]
    fn intersection() {
        assert!(intersects(&p(">"), &p("x")));
        assert!(intersects(&p("a.*"), &p("*.b")));
        assert!(intersects(&p("a.>"), &p("*.b.c")));
        assert!(!intersects(&p("a.*"), &p("b.*")));
        assert!(!intersects(&p("a.*"), &p("a.b.c")));
        assert!(!intersects(&p("a.>"), &p("a")));
    }

    /// Seeing presence is its own permission: everything without a policy,
    /// nothing for a targeted principal unless a policy allows it (deny
    /// wins), whatever its publish and subscribe rules.
    #[test]
    fn seeing_presence_is_its_own_permission() {
        let lobby = s("rooms.lobby");
        assert!(compile([]).may_see_presence(&lobby));
        let subscriber = PolicyRules {
            subscribe_allow: vec![p("rooms.>")],
            ..PolicyRules::default()
        };
        assert!(!compile([&subscriber]).may_see_presence(&lobby));
        let watcher = PolicyRules {
            presence_allow: vec![p("rooms.>")],
            presence_deny: vec![p("rooms.secret")],
            ..PolicyRules::default()
        };
        let perms = compile([&subscriber, &watcher]);
        assert!(perms.may_see_presence(&lobby));
        assert!(!perms.may_see_presence(&s("rooms.secret")));
        assert!(!perms.may_see_presence(&s("billing.x")));
        assert!(
            !perms.may_subscribe(&p("billing.x")),
            "presence grants no subscribe"
        );
    }

    #[test]
    fn deny_wins_and_no_policy_allows_all() {
        let all = compile([]);
        assert!(all.unrestricted() && all.may_publish(&s("any.thing")));
        let rules = PolicyRules {
            publish_allow: vec![p("orders.>")],
            publish_deny: vec![p("orders.secret.*")],
            subscribe_allow: vec![p("orders.>"), p("_INBOX.>")],
            subscribe_deny: vec![p("orders.secret.>")],
            presence_allow: vec![],
            presence_deny: vec![],
            allow_responses: false,
        };
        let perms = compile([&rules]);
        assert!(perms.may_publish(&s("orders.eu")));
        assert!(!perms.may_publish(&s("orders.secret.x")));
        assert!(!perms.may_publish(&s("billing.x")));
        assert!(perms.may_subscribe(&p("orders.eu.*")));
        assert!(perms.may_subscribe(&p("_INBOX.abc.*")));
        assert!(!perms.may_subscribe(&p("orders.>")), "overlaps a deny");
        assert!(!perms.may_subscribe(&p(">")));
        assert!(perms.may_receive(&s("_INBOX.abc.1")));
        assert!(!perms.may_receive(&s("orders.secret.x")));
        assert!(!perms.may_receive(&s("billing.x")));
        assert!(!perms.allow_responses());
    }

    fn arb_pattern() -> impl Strategy<Value = String> {
        proptest::collection::vec(prop_oneof![Just("a"), Just("b"), Just("*")], 1..4).prop_flat_map(
            |t| {
                any::<bool>().prop_map(move |full| {
                    let mut t: Vec<&str> = t.clone();
                    if full {
                        t.push(">");
                    }
                    t.join(".")
                })
            },
        )
    }

    fn subjects() -> Vec<Subject> {
        let mut out = Vec::new();
        let toks = ["a", "b", "c"];
        for n in 1..=5 {
            let mut idx = vec![0usize; n];
            loop {
                out.push(s(&idx
                    .iter()
                    .map(|&i| toks[i])
                    .collect::<Vec<_>>()
                    .join(".")));
                let mut k = 0;
                while k < n {
                    idx[k] += 1;
                    if idx[k] < toks.len() {
                        break;
                    }
                    idx[k] = 0;
                    k += 1;
                }
                if k == n {
                    break;
                }
            }
        }
        out
    }

    proptest! {
        /// Containment and intersection agree with enumerating every subject
        /// of up to five tokens over a small alphabet.
        #[test]
        fn algebra_agrees_with_enumeration(a in arb_pattern(), b in arb_pattern()) {
            let (a, b) = (p(&a), p(&b));
            let all = subjects();
            let in_a: Vec<bool> = all.iter().map(|x| a.matches(x)).collect();
            let in_b: Vec<bool> = all.iter().map(|x| b.matches(x)).collect();
            let both = in_a.iter().zip(&in_b).any(|(x, y)| *x && *y);
            prop_assert_eq!(intersects(&a, &b), both);
            // Containment is exact only when b's matches are all within the
            // enumerated range, i.e. b has no '>' (which reaches further).
            if !b.as_bytes().ends_with(b">") {
                let sub = in_b.iter().zip(&in_a).all(|(y, x)| !*y || *x);
                prop_assert_eq!(contains(&a, &b), sub);
            }
        }
    }
}
