//! What an authenticated connection may do: every permission, quota, rate
//! and stall decision the data plane makes about a client's request.
//!
//! The runtime asks, then carries out the answer: it queues the error frame a
//! [`Denial`] names, or holds a publish for the [`Admission::Wait`] it is
//! told. Nothing here does I/O or reads a clock (`now` is passed in), so the
//! unit tests below and the fuzz target drive the very decisions a shard
//! makes.
//!
//! - **Publish** ([`publish`]): allowed when the principal is unrestricted,
//!   or may publish to the subject (an allow pattern matches and no deny
//!   pattern does: deny wins), or holds a one-shot permission to answer a
//!   request on that subject ([`ReplyPermissions`]); and, when the message
//!   names a reply subject, the principal may receive on it. Otherwise
//!   `PERMISSION_DENIED`; the connection stays open.
//! - **Subscribe** ([`subscribe`]): the pattern must be allowed (checked
//!   first, so a refused pattern takes no count), then the tenant's and the
//!   principal's subscription counts must stay within `max_subscriptions`.
//!   [`keep_subscription`] re-checks one after the permissions changed.
//! - **Connect** ([`connect`]): the tenant's and the principal's connection
//!   counts must stay within `max_connections`.
//! - **Rate and stall** ([`Throttle::admit`]): a publish waits while its
//!   tenant's publishers are stalled by a subscriber (stall-publisher
//!   policy), or until its tenant's and principal's token buckets
//!   ([`crate::ratelimit::Rates`]) have room. Throttling holds, never drops.
//!
//! Counts shared by every shard (connections and subscriptions per tenant
//! and per principal) are stored by the runtime, in atomics; they are
//! reached here through [`SharedCount`], and whether a count is over its
//! quota ([`over_quota`]) is decided here.
//!
//! Reply permissions are copies: a request's reply subject is a slice of the
//! requester's receive buffer, which a permission kept for later must not
//! pin. Nothing on the publish path allocates.

use std::cell::Cell;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use arqonbus_proto::v1::ErrorCode;
use bytes::Bytes;
use rustc_hash::{FxHashMap, FxHashSet};

use crate::ids::{Sid, TenantId};
use crate::policy::Permissions;
use crate::ratelimit::{Rates, is_rate_limited};
use crate::router::SubscriptionError;
use crate::session::Rejection;
use crate::snapshot::Identity;
use crate::subject::{Pattern, SubjectRef};

/// What the core decided about a request.
#[must_use]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Carry it out.
    Allow,
    /// Refuse it with this error.
    Deny(Denial),
}

/// A refusal, as the protocol names it: the error code, the subscription it
/// concerns (0 for none) and the text sent with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Denial {
    /// Stable code.
    pub code: ErrorCode,
    /// The subscription concerned, or 0.
    pub sid: u64,
    /// Text for humans; never holds client data.
    pub detail: &'static str,
}

impl Denial {
    const PUBLISH: Self = Self {
        code: ErrorCode::PermissionDenied,
        sid: 0,
        detail: "not allowed to publish to this subject",
    };
    const CONNECTIONS: Self = Self {
        code: ErrorCode::MaxConnectionsExceeded,
        sid: 0,
        detail: "tenant or principal at max_connections",
    };

    /// The error the protocol names for a subscribe or unsubscribe of `sid`
    /// the shard's router refused.
    pub fn subscription(e: SubscriptionError, sid: Sid) -> Self {
        let (code, detail) = match e {
            SubscriptionError::InvalidSid => (ErrorCode::InvalidSid, "sid is 0 or already in use"),
            SubscriptionError::TooMany(_) => (
                ErrorCode::MaxSubscriptionsExceeded,
                "connection holds max_subscriptions subscriptions",
            ),
            SubscriptionError::UnknownSid => {
                (ErrorCode::UnknownSid, "no subscription with that sid")
            }
        };
        Self {
            code,
            sid: sid.0,
            detail,
        }
    }

    /// The error frame for this refusal, leaving the connection open.
    pub fn soft(self) -> Rejection {
        Rejection {
            code: self.code,
            close: false,
            sid: self.sid,
            seq: 0,
            detail: self.detail,
        }
    }
}

/// Most reply permissions a connection keeps.
pub const MAX_PENDING_REPLIES: usize = 1024;

/// Reply subjects a restricted principal may answer once: the requests it
/// received. Bounded at [`MAX_PENDING_REPLIES`]; the oldest is forgotten
/// first. Each entry is a copy, never a slice of a receive buffer.
///
/// Shared by the connection's task (which uses them up when it publishes)
/// and the deliveries of its shard (which grant them), hence `&self`
/// methods. Kept only for a principal that needs them
/// ([`ReplyPermissions::needed`]); otherwise grants are ignored and none is
/// held. Unused, it allocates nothing, and a publish allowed by its rules
/// never touches it.
#[derive(Default)]
pub struct ReplyPermissions {
    /// `None` while the principal does not need them (see
    /// [`Self::set_permissions`]); boxed, so a connection that never needs
    /// them carries one pointer (it is part of every connection's state),
    /// and in a `Cell`, taken out while used ([`Self::with`]), not a
    /// `RefCell`: 8 bytes, not 16.
    pending: Cell<Option<Box<Pending>>>,
}

/// The permissions held, oldest first; each entry also in `set`, once.
#[derive(Debug, Default)]
struct Pending {
    order: VecDeque<Bytes>,
    set: FxHashSet<Bytes>,
}

impl std::fmt::Debug for ReplyPermissions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplyPermissions")
            .field("held", &self.len())
            .finish()
    }
}

impl ReplyPermissions {
    /// Whether a principal with `perms` needs reply permissions at all: only
    /// a restricted one whose policies allow responses (an unrestricted one
    /// may publish anywhere anyway).
    pub fn needed(perms: &Permissions) -> bool {
        !perms.unrestricted() && perms.allow_responses()
    }

    /// Reply permissions for a principal with `perms` (none held yet).
    pub fn for_permissions(perms: &Permissions) -> Self {
        let r = Self::default();
        r.set_permissions(perms);
        r
    }

    /// Runs `f` on what is held, taken out of its cell and put back (none
    /// of these methods calls another while it is out).
    fn with<R>(&self, f: impl FnOnce(&mut Option<Box<Pending>>) -> R) -> R {
        let mut pending = self.pending.take();
        let r = f(&mut pending);
        self.pending.set(pending);
        r
    }

    /// The principal's permissions are now `perms`: keeps what is held if it
    /// still needs reply permissions, forgets everything if not.
    pub fn set_permissions(&self, perms: &Permissions) {
        self.with(|pending| match (Self::needed(perms), pending.is_some()) {
            (true, false) => *pending = Some(Box::default()),
            (false, true) => *pending = None,
            _ => {}
        });
    }

    /// A request with reply subject `reply` was delivered: it may be
    /// answered once. Already permitted, or not kept: nothing changes.
    pub fn grant(&self, reply: &[u8]) {
        self.with(|pending| {
            let Some(p) = pending.as_mut() else { return };
            if p.set.contains(reply) {
                return;
            }
            let reply = Bytes::copy_from_slice(reply);
            p.set.insert(reply.clone());
            p.order.push_back(reply);
            if p.order.len() > MAX_PENDING_REPLIES
                && let Some(old) = p.order.pop_front()
            {
                p.set.remove(&old);
            }
        });
    }

    /// Uses up the permission to answer on `subject`, if there is one.
    pub fn take<'s>(&self, subject: impl Into<SubjectRef<'s>>) -> bool {
        let s = subject.into().as_bytes();
        self.with(|pending| {
            let Some(p) = pending.as_mut() else {
                return false;
            };
            if !p.set.remove(s) {
                return false;
            }
            if let Some(i) = p.order.iter().position(|r| r.as_ref() == s) {
                p.order.remove(i);
            }
            true
        })
    }

    /// Whether answering on `reply` is permitted now.
    pub fn contains(&self, reply: &[u8]) -> bool {
        self.with(|pending| pending.as_ref().is_some_and(|p| p.set.contains(reply)))
    }

    /// How many permissions are held.
    pub fn len(&self) -> usize {
        self.with(|pending| pending.as_ref().map_or(0, |p| p.order.len()))
    }

    /// True when none is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// May a principal with `perms` publish to `subject`, naming `reply`?
///
/// `replies` are the connection's reply permissions. One is used up when
/// the publish needs it, that is when the subject's publish rules alone do
/// not allow it; it is used up even when the reply subject is then refused.
#[inline]
pub fn publish(
    perms: &Permissions,
    replies: &ReplyPermissions,
    subject: SubjectRef<'_>,
    reply: Option<SubjectRef<'_>>,
) -> Decision {
    if perms.unrestricted() {
        return Decision::Allow;
    }
    let to_subject =
        perms.may_publish(subject) || (perms.allow_responses() && replies.take(subject));
    if to_subject && reply.is_none_or(|r| perms.may_receive(r)) {
        Decision::Allow
    } else {
        Decision::Deny(Denial::PUBLISH)
    }
}

/// A count shared by every shard: one tenant's or principal's connections or
/// subscriptions. The runtime stores it in an [`AtomicU32`]; tests and
/// simulations may use a [`Cell`].
pub trait SharedCount {
    /// Adds one; returns the count before.
    fn add_one(&self) -> u32;
    /// Takes `n` away.
    fn remove(&self, n: u32);
}

impl SharedCount for AtomicU32 {
    fn add_one(&self) -> u32 {
        // Relaxed: the counter is its own synchronisation; no other memory
        // is published through it.
        self.fetch_add(1, Ordering::Relaxed)
    }

    fn remove(&self, n: u32) {
        if n > 0 {
            // Relaxed: as above.
            self.fetch_sub(n, Ordering::Relaxed);
        }
    }
}

impl SharedCount for Cell<u32> {
    fn add_one(&self) -> u32 {
        let before = self.get();
        self.set(before.saturating_add(1));
        before
    }

    fn remove(&self, n: u32) {
        self.set(self.get().saturating_sub(n));
    }
}

/// Whether a count already at `count` may not grow under `limit` (0: no
/// limit).
pub fn over_quota(count: u32, limit: u32) -> bool {
    limit != 0 && count >= limit
}

/// The tenant's and the principal's count of one thing (connections or
/// subscriptions), as the runtime stores them.
#[derive(Debug)]
pub struct Counts<'a, C: ?Sized> {
    /// The tenant's count, over all its principals.
    pub tenant: &'a C,
    /// The principal's own count.
    pub principal: &'a C,
}

impl<C: ?Sized> Clone for Counts<'_, C> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<C: ?Sized> Copy for Counts<'_, C> {}

impl<C: SharedCount + ?Sized> Counts<'_, C> {
    /// Counts one more against both limits, unless that would pass either
    /// (then nothing is counted).
    fn take(self, tenant_limit: u32, principal_limit: u32) -> bool {
        if !take_one(self.tenant, tenant_limit) {
            return false;
        }
        if !take_one(self.principal, principal_limit) {
            self.tenant.remove(1);
            return false;
        }
        true
    }

    /// Gives `n` back to both counts.
    pub fn release(self, n: u32) {
        self.tenant.remove(n);
        self.principal.remove(n);
    }
}

/// Takes one unit of `count` if that stays within `limit`.
fn take_one<C: SharedCount + ?Sized>(count: &C, limit: u32) -> bool {
    if over_quota(count.add_one(), limit) {
        count.remove(1);
        return false;
    }
    true
}

/// May `id` open one more session? Allowed, it is counted in `connections`
/// (give it back with [`Counts::release`] when the session ends).
pub fn connect<C: SharedCount + ?Sized>(id: &Identity, connections: Counts<'_, C>) -> Decision {
    if connections.take(
        id.tenant.quotas.max_connections,
        id.principal.quotas.max_connections,
    ) {
        Decision::Allow
    } else {
        Decision::Deny(Denial::CONNECTIONS)
    }
}

/// May `id` subscribe to `pattern` as `sid`? The pattern is checked first
/// (deny wins, and a refused pattern takes no count); then, when the
/// connection holds `subscriptions` counts, one is taken within both quotas
/// (give it back with [`Counts::release`] if the subscription is not made
/// after all, or when it ends).
pub fn subscribe<C: SharedCount + ?Sized>(
    id: &Identity,
    sid: Sid,
    pattern: &Pattern,
    subscriptions: Option<Counts<'_, C>>,
) -> Decision {
    if !id.principal.permissions.may_subscribe(pattern) {
        return Decision::Deny(Denial {
            code: ErrorCode::PermissionDenied,
            sid: sid.0,
            detail: "not allowed to subscribe to this pattern",
        });
    }
    if let Some(counts) = subscriptions
        && !counts.take(
            id.tenant.quotas.max_subscriptions,
            id.principal.quotas.max_subscriptions,
        )
    {
        return Decision::Deny(Denial {
            code: ErrorCode::MaxSubscriptionsExceeded,
            sid: sid.0,
            detail: "tenant or principal at max_subscriptions",
        });
    }
    Decision::Allow
}

/// After the principal's permissions changed: may subscription `sid` on
/// `pattern` stay? Refused, it is to be removed with this error.
pub fn keep_subscription(perms: &Permissions, sid: Sid, pattern: &Pattern) -> Decision {
    if perms.may_subscribe(pattern) {
        Decision::Allow
    } else {
        Decision::Deny(Denial {
            code: ErrorCode::PermissionDenied,
            sid: sid.0,
            detail: "subscription no longer allowed; removed",
        })
    }
}

/// When a publish may go.
#[must_use]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Now.
    Go,
    /// Hold it this long, then ask again.
    Wait(Duration),
}

/// One shard's rate limiters and the publisher stalls it knows of: whether
/// a publish may go now.
#[derive(Debug)]
pub struct Throttle {
    rates: Rates,
    /// Tenants whose publishers are paused by a stalling subscriber, until.
    stalls: FxHashMap<TenantId, Instant>,
}

impl Throttle {
    /// No limiter and no stall yet, on one of `shards` shards.
    pub fn new(shards: usize) -> Self {
        Self {
            rates: Rates::new(shards),
            stalls: FxHashMap::default(),
        }
    }

    /// May a publish of `bytes` from `id` go now? A stall of its tenant
    /// makes it wait until the stall's end (and spends no token); otherwise
    /// its tenant's and principal's rate limits decide.
    ///
    /// `now` is called only when a rate limit or a stall applies, so the
    /// path of an unthrottled publish reads no clock.
    #[inline]
    pub fn admit(
        &mut self,
        id: &Identity,
        bytes: usize,
        now: impl FnOnce() -> Instant,
    ) -> Admission {
        if !is_rate_limited(id) && self.stalls.is_empty() {
            return Admission::Go;
        }
        self.admit_at(id, bytes, now())
    }

    fn admit_at(&mut self, id: &Identity, bytes: usize, now: Instant) -> Admission {
        if let Some(until) = self.stalled_until(id.tenant.id, now) {
            return Admission::Wait(until - now);
        }
        match self.rates.admit(id, bytes, now) {
            Ok(()) => Admission::Go,
            Err(wait) => Admission::Wait(wait),
        }
    }

    /// Until when `tenant`'s publishers must wait, if they must.
    pub fn stalled_until(&self, tenant: TenantId, now: Instant) -> Option<Instant> {
        self.stalls.get(&tenant).copied().filter(|u| *u > now)
    }

    /// Pauses `tenant`'s publishers until `until` (a later stall replaces an
    /// earlier one).
    pub fn stall(&mut self, tenant: TenantId, until: Instant) {
        self.stalls.insert(tenant, until);
    }

    /// Ends the stall of `tenant`'s publishers.
    pub fn unstall(&mut self, tenant: TenantId) {
        self.stalls.remove(&tenant);
    }

    /// Forgets the stalls that ended by `now`.
    pub fn expire(&mut self, now: Instant) {
        self.stalls.retain(|_, until| *until > now);
    }

    /// The rate limiters (reports, shares, reset).
    pub fn rates(&mut self) -> &mut Rates {
        &mut self.rates
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::ids::{CredentialId, PrincipalId};
    use crate::placement::TenantPlacement;
    use crate::policy::{PolicyRules, compile, parse_pattern};
    use crate::snapshot::{PrincipalEntry, Quotas, TenantEntry};
    use crate::subject::Subject;

    fn p(s: &str) -> Pattern {
        parse_pattern(s).unwrap()
    }

    fn s(x: &str) -> Subject {
        Subject::parse(Bytes::copy_from_slice(x.as_bytes()), 256).unwrap()
    }

    fn identity(perms: Permissions, tenant: Quotas, principal: Quotas) -> Identity {
        Identity {
            tenant: Arc::new(TenantEntry {
                id: TenantId(1),
                name: "t".into(),
                quotas: tenant,
                verify_key: None,
                placement: TenantPlacement::default(),
            }),
            principal: Arc::new(PrincipalEntry {
                id: PrincipalId(7),
                tenant: TenantId(1),
                name: "p".into(),
                roles: vec![],
                quotas: principal,
                permissions: Arc::new(perms),
            }),
            credential: CredentialId(1),
            expires_at_unix: None,
        }
    }

    /// Publishes `orders.*` and `jobs.>` except `orders.secret`; subscribes
    /// to `orders.>` and `_INBOX.>` except `orders.secret.>`.
    fn restricted(allow_responses: bool) -> Permissions {
        compile([&PolicyRules {
            publish_allow: vec![p("orders.*"), p("jobs.>")],
            publish_deny: vec![p("orders.secret")],
            subscribe_allow: vec![p("orders.>"), p("_INBOX.>")],
            subscribe_deny: vec![p("orders.secret.>")],
            presence_allow: vec![],
            presence_deny: vec![],
            allow_responses,
        }])
    }

    fn quotas(f: impl FnOnce(&mut Quotas)) -> Quotas {
        let mut q = Quotas::default();
        f(&mut q);
        q
    }

    /// No reply permission held.
    fn none() -> ReplyPermissions {
        ReplyPermissions::default()
    }

    fn is_denied(d: Decision, code: ErrorCode) -> bool {
        matches!(d, Decision::Deny(x) if x.code == code)
    }

    // ---- publish ---------------------------------------------------------

    #[test]
    fn given_no_policy_when_publishing_anywhere_then_allowed() {
        let perms = compile([]);
        let replies = ReplyPermissions::for_permissions(&perms);
        let d = publish(
            &perms,
            &replies,
            s("any.thing").view(),
            Some(s("billing.x").view()),
        );
        assert_eq!(d, Decision::Allow);
    }

    #[test]
    fn given_an_allowed_subject_when_publishing_then_allowed() {
        let perms = restricted(false);
        assert_eq!(
            publish(&perms, &none(), s("orders.eu").view(), None),
            Decision::Allow
        );
        assert_eq!(
            publish(&perms, &none(), s("jobs.a.b").view(), None),
            Decision::Allow
        );
    }

    #[test]
    fn given_a_subject_allowed_and_denied_when_publishing_then_deny_wins() {
        let perms = restricted(false);
        assert_eq!(
            publish(&perms, &none(), s("orders.secret").view(), None),
            Decision::Deny(Denial {
                code: ErrorCode::PermissionDenied,
                sid: 0,
                detail: "not allowed to publish to this subject",
            })
        );
        assert!(is_denied(
            publish(&perms, &none(), s("billing.x").view(), None),
            ErrorCode::PermissionDenied
        ));
    }

    #[test]
    fn given_a_reply_subject_denied_for_receiving_when_publishing_then_denied() {
        let perms = restricted(false);
        let inbox = s("_INBOX.me.1");
        assert_eq!(
            publish(&perms, &none(), s("orders.eu").view(), Some(inbox.view())),
            Decision::Allow
        );
        // orders.secret.x matches the subscribe allow `orders.>` and the
        // deny `orders.secret.>`: deny wins.
        for reply in ["orders.secret.x", "billing.inbox"] {
            assert!(is_denied(
                publish(
                    &perms,
                    &none(),
                    s("orders.eu").view(),
                    Some(s(reply).view())
                ),
                ErrorCode::PermissionDenied
            ));
        }
    }

    #[test]
    fn given_a_received_request_when_answering_then_allowed_once() {
        let perms = restricted(true);
        let replies = ReplyPermissions::for_permissions(&perms);
        let answer = s("billing.reply.1");
        assert!(is_denied(
            publish(&perms, &replies, answer.view(), None),
            ErrorCode::PermissionDenied
        ));
        replies.grant(answer.as_bytes());
        assert_eq!(
            publish(&perms, &replies, answer.view(), None),
            Decision::Allow
        );
        assert!(replies.is_empty());
        assert!(is_denied(
            publish(&perms, &replies, answer.view(), None),
            ErrorCode::PermissionDenied
        ));
    }

    #[test]
    fn given_a_reply_permission_on_a_denied_subject_when_answering_then_allowed() {
        // allow_responses: the one permitted answer passes even where the
        // publish rules deny the subject.
        let perms = restricted(true);
        let replies = ReplyPermissions::for_permissions(&perms);
        replies.grant(b"orders.secret");
        assert_eq!(
            publish(&perms, &replies, s("orders.secret").view(), None),
            Decision::Allow
        );
    }

    #[test]
    fn given_an_allowed_subject_when_publishing_then_no_reply_permission_is_used() {
        let perms = restricted(true);
        let replies = ReplyPermissions::for_permissions(&perms);
        replies.grant(b"orders.eu");
        assert_eq!(
            publish(&perms, &replies, s("orders.eu").view(), None),
            Decision::Allow
        );
        assert!(replies.contains(b"orders.eu"));
    }

    #[test]
    fn given_responses_not_allowed_when_a_request_is_delivered_then_no_permission_is_kept() {
        let perms = restricted(false);
        assert!(!ReplyPermissions::needed(&perms));
        assert!(ReplyPermissions::needed(&restricted(true)));
        assert!(!ReplyPermissions::needed(&compile([])));
        let replies = ReplyPermissions::for_permissions(&perms);
        replies.grant(b"billing.reply");
        assert!(replies.is_empty());
        assert!(is_denied(
            publish(&perms, &replies, s("billing.reply").view(), None),
            ErrorCode::PermissionDenied
        ));
    }

    #[test]
    fn given_permissions_that_change_then_replies_are_kept_only_while_needed() {
        let replies = ReplyPermissions::for_permissions(&restricted(true));
        replies.grant(b"a.1");
        // Still needed: what is held stays.
        replies.set_permissions(&restricted(true));
        assert!(replies.contains(b"a.1"));
        // No longer needed: everything is forgotten, and grants are ignored.
        replies.set_permissions(&compile([]));
        assert!(replies.is_empty());
        replies.grant(b"a.2");
        assert!(replies.is_empty());
        replies.set_permissions(&restricted(true));
        replies.grant(b"a.3");
        assert_eq!(replies.len(), 1);
    }

    #[test]
    fn given_an_answer_naming_a_refused_reply_subject_then_denied_and_the_permission_is_used() {
        let perms = restricted(true);
        let replies = ReplyPermissions::for_permissions(&perms);
        replies.grant(b"billing.reply");
        assert!(is_denied(
            publish(
                &perms,
                &replies,
                s("billing.reply").view(),
                Some(s("billing.inbox").view())
            ),
            ErrorCode::PermissionDenied
        ));
        assert!(replies.is_empty());
    }

    #[test]
    fn given_1024_reply_permissions_when_one_more_is_granted_then_the_oldest_is_forgotten() {
        let replies = ReplyPermissions::for_permissions(&restricted(true));
        for i in 0..MAX_PENDING_REPLIES {
            replies.grant(format!("r.{i}").as_bytes());
        }
        assert_eq!(replies.len(), MAX_PENDING_REPLIES);
        // Granting one already held changes nothing.
        replies.grant(b"r.0");
        assert_eq!(replies.len(), MAX_PENDING_REPLIES);
        assert!(replies.contains(b"r.0"));
        replies.grant(b"r.new");
        assert_eq!(replies.len(), MAX_PENDING_REPLIES);
        assert!(!replies.contains(b"r.0"), "the oldest is forgotten");
        assert!(replies.contains(b"r.1"));
        assert!(replies.contains(b"r.new"));
        // A used permission frees its place: nothing more is forgotten.
        assert!(replies.take(&s("r.5")));
        replies.grant(b"r.newer");
        assert!(replies.contains(b"r.1"));
        assert_eq!(replies.len(), MAX_PENDING_REPLIES);
    }

    #[test]
    fn given_a_reply_slice_of_a_big_buffer_when_granted_then_the_permission_is_a_copy() {
        let buffer = Bytes::from(vec![b'a'; 64 * 1024]);
        let replies = ReplyPermissions::for_permissions(&restricted(true));
        replies.grant(&buffer[..8]);
        replies.with(|pending| {
            let kept = pending.as_ref().unwrap().order.front().unwrap();
            assert_eq!(kept.len(), 8);
            assert!(!buffer.as_ptr_range().contains(&kept.as_ptr()));
        });
    }

    // ---- quotas ----------------------------------------------------------

    fn cells() -> (Cell<u32>, Cell<u32>) {
        (Cell::new(0), Cell::new(0))
    }

    #[test]
    fn given_no_quota_when_counting_then_always_within() {
        assert!(!over_quota(u32::MAX - 1, 0));
        assert!(!over_quota(1, 2));
        assert!(over_quota(2, 2));
    }

    #[test]
    fn given_a_tenant_at_max_connections_when_connecting_then_denied_and_nothing_counted() {
        let id = identity(
            compile([]),
            quotas(|q| q.max_connections = 2),
            Quotas::default(),
        );
        let (t, pr) = cells();
        let counts = Counts {
            tenant: &t,
            principal: &pr,
        };
        assert_eq!(connect(&id, counts), Decision::Allow);
        assert_eq!(connect(&id, counts), Decision::Allow);
        assert_eq!(
            connect(&id, counts),
            Decision::Deny(Denial {
                code: ErrorCode::MaxConnectionsExceeded,
                sid: 0,
                detail: "tenant or principal at max_connections",
            })
        );
        assert_eq!((t.get(), pr.get()), (2, 2));
        counts.release(1);
        assert_eq!(connect(&id, counts), Decision::Allow);
    }

    #[test]
    fn given_a_principal_at_max_connections_when_connecting_then_the_tenant_count_is_given_back() {
        let id = identity(
            compile([]),
            Quotas::default(),
            quotas(|q| q.max_connections = 1),
        );
        let t = AtomicU32::new(5);
        let pr = AtomicU32::new(1);
        let counts = Counts {
            tenant: &t,
            principal: &pr,
        };
        assert!(is_denied(
            connect(&id, counts),
            ErrorCode::MaxConnectionsExceeded
        ));
        assert_eq!(t.load(Ordering::Relaxed), 5);
        assert_eq!(pr.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn given_an_allowed_pattern_within_quota_when_subscribing_then_allowed_and_counted() {
        let id = identity(
            restricted(false),
            quotas(|q| q.max_subscriptions = 1),
            Quotas::default(),
        );
        let (t, pr) = cells();
        let counts = Counts {
            tenant: &t,
            principal: &pr,
        };
        assert_eq!(
            subscribe(&id, Sid(3), &p("orders.eu"), Some(counts)),
            Decision::Allow
        );
        assert_eq!((t.get(), pr.get()), (1, 1));
        assert_eq!(
            subscribe(&id, Sid(4), &p("orders.us"), Some(counts)),
            Decision::Deny(Denial {
                code: ErrorCode::MaxSubscriptionsExceeded,
                sid: 4,
                detail: "tenant or principal at max_subscriptions",
            })
        );
        assert_eq!((t.get(), pr.get()), (1, 1));
    }

    #[test]
    fn given_a_pattern_overlapping_a_deny_when_subscribing_then_denied_before_counting() {
        let id = identity(
            restricted(false),
            quotas(|q| q.max_subscriptions = 1),
            Quotas::default(),
        );
        let (t, pr) = (Cell::new(1), Cell::new(1));
        let counts = Counts {
            tenant: &t,
            principal: &pr,
        };
        // At its quota and refused by permission: the permission answers.
        assert_eq!(
            subscribe(&id, Sid(9), &p("orders.>"), Some(counts)),
            Decision::Deny(Denial {
                code: ErrorCode::PermissionDenied,
                sid: 9,
                detail: "not allowed to subscribe to this pattern",
            })
        );
        assert_eq!((t.get(), pr.get()), (1, 1));
    }

    #[test]
    fn given_no_counts_held_when_subscribing_then_only_permissions_decide() {
        let id = identity(
            compile([]),
            quotas(|q| q.max_subscriptions = 1),
            Quotas::default(),
        );
        assert_eq!(
            subscribe::<Cell<u32>>(&id, Sid(1), &p(">"), None),
            Decision::Allow
        );
    }

    #[test]
    fn given_changed_permissions_when_rechecking_then_refused_subscriptions_go() {
        let perms = restricted(false);
        assert_eq!(
            keep_subscription(&perms, Sid(2), &p("orders.eu")),
            Decision::Allow
        );
        assert_eq!(
            keep_subscription(&perms, Sid(2), &p(">")),
            Decision::Deny(Denial {
                code: ErrorCode::PermissionDenied,
                sid: 2,
                detail: "subscription no longer allowed; removed",
            })
        );
    }

    #[test]
    fn given_a_refusal_by_the_router_then_the_protocol_error_names_the_sid() {
        let cases = [
            (SubscriptionError::InvalidSid, ErrorCode::InvalidSid),
            (
                SubscriptionError::TooMany(3),
                ErrorCode::MaxSubscriptionsExceeded,
            ),
            (SubscriptionError::UnknownSid, ErrorCode::UnknownSid),
        ];
        for (e, code) in cases {
            let d = Denial::subscription(e, Sid(42));
            assert_eq!((d.code, d.sid), (code, 42));
        }
    }

    #[test]
    fn given_a_denial_then_its_error_frame_keeps_the_connection_open() {
        let r = Denial::PUBLISH.soft();
        assert!(!r.close);
        assert_eq!(r.code, ErrorCode::PermissionDenied);
        assert_eq!(r.detail, Denial::PUBLISH.detail);
    }

    // ---- rates and stalls --------------------------------------------------

    fn at(t0: Instant, ms: u64) -> impl FnOnce() -> Instant {
        move || t0 + Duration::from_millis(ms)
    }

    /// A wait of `ms` milliseconds, give or take a microsecond of rounding.
    fn assert_wait(a: Admission, ms: u64) {
        let Admission::Wait(w) = a else {
            panic!("admitted, expected a wait of {ms} ms");
        };
        let want = Duration::from_millis(ms);
        assert!(
            w.abs_diff(want) < Duration::from_micros(1),
            "{w:?}, expected {want:?}"
        );
    }

    #[test]
    fn given_no_rate_and_no_stall_when_publishing_then_go_without_reading_the_clock() {
        let id = identity(compile([]), Quotas::default(), Quotas::default());
        let mut throttle = Throttle::new(1);
        let read = Cell::new(false);
        let admission = throttle.admit(&id, 100, || {
            read.set(true);
            Instant::now()
        });
        assert_eq!(admission, Admission::Go);
        assert!(!read.get());
    }

    #[test]
    fn given_a_message_rate_when_the_bucket_is_empty_then_the_wait_is_computed_from_now() {
        // 10 msg/s on one shard: a burst of 1, one token every 100 ms.
        let id = identity(
            compile([]),
            quotas(|q| q.messages_per_second = 10),
            Quotas::default(),
        );
        let mut throttle = Throttle::new(1);
        let t0 = Instant::now();
        assert_eq!(throttle.admit(&id, 1, at(t0, 0)), Admission::Go);
        assert_wait(throttle.admit(&id, 1, at(t0, 0)), 100);
        assert_wait(throttle.admit(&id, 1, at(t0, 40)), 60);
        assert_eq!(throttle.admit(&id, 1, at(t0, 100)), Admission::Go);
    }

    #[test]
    fn given_tenant_and_principal_rates_when_both_are_empty_then_the_longer_wait_wins() {
        // Tenant: 20 msg/s (burst 2); principal: 1000 B/s (burst 100).
        let id = identity(
            compile([]),
            quotas(|q| q.messages_per_second = 20),
            quotas(|q| q.bytes_per_second = 1000),
        );
        let mut throttle = Throttle::new(1);
        let t0 = Instant::now();
        assert_eq!(throttle.admit(&id, 50, at(t0, 0)), Admission::Go);
        assert_eq!(throttle.admit(&id, 50, at(t0, 0)), Admission::Go);
        // 30 ms on: a message token in 20 ms, 100 bytes in 70 ms.
        assert_wait(throttle.admit(&id, 100, at(t0, 30)), 70);
        // A refused message took nothing: at 100 ms both have room again.
        assert_eq!(throttle.admit(&id, 100, at(t0, 100)), Admission::Go);
        let report = throttle.rates().report();
        assert_eq!(report.len(), 2);
        assert!(report.iter().all(|(_, u)| u.throttled));
    }

    #[test]
    fn given_a_stalled_tenant_when_publishing_then_wait_until_the_stall_ends() {
        let id = identity(compile([]), Quotas::default(), Quotas::default());
        let mut throttle = Throttle::new(1);
        let t0 = Instant::now();
        throttle.stall(TenantId(1), t0 + Duration::from_millis(50));
        assert_eq!(
            throttle.stalled_until(TenantId(1), t0),
            Some(t0 + Duration::from_millis(50))
        );
        assert_eq!(
            throttle.admit(&id, 1, at(t0, 10)),
            Admission::Wait(Duration::from_millis(40))
        );
        // Until: the stall ends at its instant.
        assert_eq!(throttle.admit(&id, 1, at(t0, 50)), Admission::Go);
        assert_eq!(
            throttle.stalled_until(TenantId(1), t0 + Duration::from_millis(50)),
            None
        );
    }

    #[test]
    fn given_another_tenant_stalled_when_publishing_then_go() {
        let id = identity(compile([]), Quotas::default(), Quotas::default());
        let mut throttle = Throttle::new(1);
        let t0 = Instant::now();
        throttle.stall(TenantId(2), t0 + Duration::from_secs(1));
        assert_eq!(throttle.admit(&id, 1, at(t0, 0)), Admission::Go);
    }

    #[test]
    fn given_a_stall_and_a_rate_when_stalled_then_no_token_is_spent() {
        let id = identity(
            compile([]),
            quotas(|q| q.messages_per_second = 10),
            Quotas::default(),
        );
        let mut throttle = Throttle::new(1);
        let t0 = Instant::now();
        throttle.stall(TenantId(1), t0 + Duration::from_millis(20));
        assert_eq!(
            throttle.admit(&id, 1, at(t0, 0)),
            Admission::Wait(Duration::from_millis(20))
        );
        throttle.unstall(TenantId(1));
        // The bucket's one token is still there.
        assert_eq!(throttle.admit(&id, 1, at(t0, 0)), Admission::Go);
    }

    #[test]
    fn given_stalls_when_time_passes_then_ended_ones_are_forgotten() {
        let mut throttle = Throttle::new(1);
        let t0 = Instant::now();
        throttle.stall(TenantId(1), t0 + Duration::from_millis(10));
        throttle.stall(TenantId(2), t0 + Duration::from_millis(30));
        throttle.expire(t0 + Duration::from_millis(10));
        assert_eq!(throttle.stalls.len(), 1);
        assert!(throttle.stalled_until(TenantId(2), t0).is_some());
        throttle.expire(t0 + Duration::from_millis(30));
        assert!(throttle.stalls.is_empty());
    }

    #[test]
    fn given_two_shards_when_a_rate_is_new_then_each_starts_with_half() {
        let id = identity(
            compile([]),
            quotas(|q| q.messages_per_second = 100),
            Quotas::default(),
        );
        let mut throttle = Throttle::new(2);
        let t0 = Instant::now();
        // Half of 100/s: a burst of 5, one token per 20 ms.
        for _ in 0..5 {
            assert_eq!(throttle.admit(&id, 1, at(t0, 0)), Admission::Go);
        }
        assert_wait(throttle.admit(&id, 1, at(t0, 0)), 20);
        let mut shares = FxHashMap::default();
        shares.insert(crate::ratelimit::RateKey::Tenant(TenantId(1)), 1.0);
        throttle.rates().set_shares(&shares, t0);
        assert_wait(throttle.admit(&id, 1, at(t0, 0)), 10);
    }
}
