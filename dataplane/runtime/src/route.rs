//! Moving messages: a shard's publish path, delivery into connections'
//! queues, the mesh protocol with the other shards, the subscription
//! barrier and publisher stalls.
//!
//! - **Publish**: `Router::route` gives local deliveries and one copy per
//!   interested remote shard; local ones are queued with the shared
//!   `MessageTemplate` and the payload `Bytes`, remote ones go on the rings.
//! - **Delivery** never waits. A subscriber whose queue is full is handled by
//!   its slow-consumer policy: cut (default), drop its oldest messages, or
//!   stall the tenant's publishers for at most `stall_max` and then cut. A
//!   request queued for a connection grants it a one-shot reply permission
//!   (`ConnShared::allow_reply`).
//! - **Stalls** are announced to every shard (`PeerMsg::Stall`, `Unstall`)
//!   and kept in each shard's `Throttle`, which makes the tenant's publishes
//!   wait (`Throttle::admit`, in the core).
//! - **Barrier**: every interest update carries an increasing `seq`, and so
//!   does a mark sent behind message copies that crossed since the last one;
//!   peers acknowledge the highest one they applied; a client's `Ping` is
//!   answered once every peer acknowledged the `seq` current when it
//!   arrived. The numbers and who acknowledged what are the core's
//!   `Barrier`; this file sends them over the rings and queues the `Pong`s.

use std::ops::Range;
use std::time::Instant;

use arqonbus_core::router::{Delivery, InterestUpdate, Origin, RoutePlan, SubscriptionError};
use arqonbus_core::session::PublishRef;
use arqonbus_core::snapshot::SlowConsumerPolicy;
use arqonbus_core::subject::{Pattern, QueueGroup, Subject, SubjectRef};
use arqonbus_core::{ConnId, ShardId, Sid, TenantId};
use arqonbus_proto::codec::{self, MessageTemplate};
use arqonbus_proto::v1::{self, MessageStatus, frame::Kind};
use bytes::Bytes;

use crate::conn::{ConnShared, Flag};
use crate::mesh::{Body, PeerMsg, RemoteMessage, Sample};
use crate::outbound::Outbound;
use crate::shard::Shard;

/// A W3C `traceparent` header
/// (`00-<32 hex trace id>-<16 hex span id>-<2 hex flags>`) whose trace id is
/// well-formed, and that trace id.
fn traceparent(headers: &[v1::Header]) -> Option<(&str, &str)> {
    let h = headers.iter().find(|h| h.key.as_ref() == b"traceparent")?;
    let value = std::str::from_utf8(&h.value).ok()?;
    let id = value.split('-').nth(1)?;
    (id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())).then_some((value, id))
}

/// The trace id of a `traceparent` header, if there is a valid one.
fn trace_id(headers: &[v1::Header]) -> Option<&str> {
    traceparent(headers).map(|(_, id)| id)
}

/// How far past `max_pending_bytes` a stalling subscriber's queue may grow
/// with messages that were in flight when the stall began.
const STALL_HEADROOM: usize = 4;

/// A copy from another shard with its fields found ([`Shard::resolve`]).
struct Arrived<'a> {
    subject: SubjectRef<'a>,
    reply: Option<SubjectRef<'a>>,
    headers: &'a [v1::Header],
    /// The payload, in `owner` (the publisher's batch, or the owned
    /// message's payload): queued as a range of it.
    payload: &'a [u8],
    owner: &'a Bytes,
}

/// Where a publish borrowed from a read batch lies in it: the batch and
/// the offsets of its subject, reply and payload. `None` for a publish
/// that is not borrowed from one (it crosses owned).
fn in_batch<'a>(msg: &PublishRef<'a>) -> Option<(&'a Bytes, [Range<u32>; 3])> {
    let batch = msg.batch()?;
    if !msg.headers.is_empty() {
        return None;
    }
    let at = |part: &[u8]| -> Option<Range<u32>> {
        let r = codec::range_in(batch, part)?;
        Some(u32::try_from(r.start).ok()?..u32::try_from(r.end).ok()?)
    };
    let reply = msg.reply.map_or(&[][..], SubjectRef::as_bytes);
    Some((
        batch,
        [at(msg.subject.as_bytes())?, at(reply)?, at(msg.payload)?],
    ))
}

impl Shard {
    // ---- subscriptions and the barrier ---------------------------------

    pub(crate) fn subscribe(
        &self,
        tenant: TenantId,
        conn: ConnId,
        sid: Sid,
        pattern: Pattern,
        queue: Option<QueueGroup>,
    ) -> Result<(), SubscriptionError> {
        let max = self.config.borrow().limits().max_subscriptions;
        let mut updates = self.interest_out.borrow_mut();
        self.router
            .borrow_mut()
            .subscribe(tenant, conn, sid, pattern, queue, max, &mut updates)?;
        self.broadcast(&mut updates);
        Ok(())
    }

    pub(crate) fn unsubscribe(
        &self,
        conn: ConnId,
        sid: Sid,
        after: u64,
    ) -> Result<(), SubscriptionError> {
        let mut updates = self.interest_out.borrow_mut();
        self.router
            .borrow_mut()
            .unsubscribe(conn, sid, after, &mut updates)?;
        self.broadcast(&mut updates);
        Ok(())
    }

    /// Sends interest updates to every peer, numbering them.
    pub(crate) fn broadcast(&self, updates: &mut Vec<InterestUpdate>) {
        if updates.is_empty() {
            return;
        }
        let mut links = self.links.borrow_mut();
        let mut full = 0;
        let mut barrier = self.barrier.borrow_mut();
        for update in updates.drain(..) {
            let seq = barrier.number();
            for link in links.iter_mut() {
                if !link.send(PeerMsg::Interest {
                    seq,
                    update: update.clone(),
                }) {
                    full += 1;
                }
            }
        }
        if full > 0 {
            self.stats.borrow_mut().ring_full += full;
            self.wake_mesh();
        }
    }

    /// A ring overflowed: make sure the mesh loop retries it.
    pub(crate) fn wake_mesh(&self) {
        if let Some(w) = self.mesh_waker.take() {
            w.wake();
        }
    }

    /// Answers a client's `Ping` now, or when the barrier allows: once
    /// every other shard applied this shard's interest updates and routed
    /// the message copies this shard sent it before the `Ping`.
    pub(crate) fn pong(&self, conn: &ConnShared) {
        self.mark_if_crossed();
        if self.barrier.borrow_mut().ping(conn.id) {
            conn.out.borrow_mut().push_frame(&Kind::Pong(v1::Pong {}));
        }
    }

    /// Copies crossed since the last mark: number a mark and send it behind
    /// them on every link, so the barrier also waits for their routing.
    fn mark_if_crossed(&self) {
        let mut links = self.links.borrow_mut();
        let mut crossed = false;
        for link in links.iter_mut() {
            crossed |= link.take_crossed();
        }
        if !crossed {
            return;
        }
        let seq = self.barrier.borrow_mut().number();
        let mut full = 0;
        for link in links.iter_mut() {
            if !link.send(PeerMsg::Mark { seq }) {
                full += 1;
            }
        }
        if full > 0 {
            self.stats.borrow_mut().ring_full += full;
            self.wake_mesh();
        }
    }

    /// Answers the pings the barrier now lets through.
    fn release_pongs(&self) {
        loop {
            let next = self.barrier.borrow_mut().next_ready();
            let Some(id) = next else { break };
            self.send_frame(id, &Kind::Pong(v1::Pong {}));
        }
    }

    // ---- publishing ------------------------------------------------------

    /// Whether to time this publish (one in `sample_every`).
    fn sample(&self) -> Option<Instant> {
        let every = self.cfg.sample_every;
        if every == 0 {
            return None;
        }
        let n = self.sample_counter.get() + 1;
        if n >= every {
            self.sample_counter.set(0);
            Some(Instant::now())
        } else {
            self.sample_counter.set(n);
            None
        }
    }

    fn record_latency(&self, sample: Option<&Sample>) {
        if let Some(s) = sample {
            let micros = u64::try_from(s.at.elapsed().as_micros()).unwrap_or(u64::MAX);
            let _ = self.deliver_latency.borrow_mut().record(micros.max(1));
        }
    }

    /// A sampled publish: its time and its `publish` span, correlated by the
    /// W3C trace id. When a span exporter runs (the `trace_parent` hook is
    /// set and the span is enabled), the span joins the trace the
    /// `traceparent` header names; otherwise this costs one branch.
    fn sample_publish(&self, at: Instant, tenant: TenantId, msg: &PublishRef<'_>) -> Sample {
        let tp = traceparent(msg.headers);
        let span = tracing::debug_span!(
            "publish",
            shard = %self.id,
            %tenant,
            subject = %msg.subject,
            trace_id = tp.map_or("", |(_, id)| id),
        );
        if let Some(hook) = self.cfg.trace_parent
            && let Some((value, _)) = tp
            && !span.is_disabled()
        {
            hook(&span, value);
        }
        Sample { at, span }
    }

    /// Routes a message published by `conn` (already authorised and
    /// admitted by its rate limits). The message is borrowed (from the
    /// publisher's read batch, usually): a subscriber's queue keeps its
    /// payload as a range of that batch (holding the batch once for a run
    /// of payloads from it), and the message is made owned only for the
    /// copies that cross to other shards and are not borrowed from a batch.
    pub(crate) fn publish(&self, tenant: TenantId, conn: ConnId, echo: bool, msg: PublishRef<'_>) {
        // Sampled messages get a span (unsampled ones: nothing at all, not
        // even a guard to drop).
        match self.sample() {
            None => self.route_publish(tenant, conn, echo, &msg, None),
            Some(at) => {
                let sample = self.sample_publish(at, tenant, &msg);
                let _entered = sample.span.enter();
                self.route_publish(tenant, conn, echo, &msg, Some(&sample));
            }
        }
    }

    /// [`Self::publish`], given its sample if it has one.
    fn route_publish(
        &self,
        tenant: TenantId,
        conn: ConnId,
        echo: bool,
        msg: &PublishRef<'_>,
        sample: Option<&Sample>,
    ) {
        {
            let mut stats = self.stats.borrow_mut();
            stats.msgs_in += 1;
            stats.bytes_in += msg.payload.len() as u64;
        }
        let mut plan = self.plan.borrow_mut();
        self.router.borrow_mut().route(
            tenant,
            msg.subject,
            Origin::Local { conn, echo },
            &mut plan,
        );
        self.after_route(&mut plan);

        if plan.is_empty() {
            if let Some(reply) = msg.reply {
                self.router
                    .borrow_mut()
                    .route_to_conn(tenant, reply, conn, &mut plan);
                self.after_route(&mut plan);
                let mut t = self.template.borrow_mut();
                t.prepare(
                    reply.as_bytes(),
                    b"",
                    &[],
                    MessageStatus::NoResponders.into(),
                    0,
                );
                self.deliver(&plan.local, &t, &Bytes::new(), b"", None);
                self.stats.borrow_mut().no_responders += 1;
            }
            return;
        }

        if !plan.local.is_empty() {
            let local = || {
                let mut t = self.template.borrow_mut();
                t.prepare(
                    msg.subject.as_bytes(),
                    msg.reply.map_or(&[][..], |r| r.as_bytes()),
                    msg.headers,
                    MessageStatus::Ok.into(),
                    msg.payload.len(),
                );
                self.deliver(
                    &plan.local,
                    &t,
                    msg.payload_owner(),
                    msg.payload,
                    msg.reply.map(SubjectRef::as_bytes),
                );
            };
            if sample.is_some() {
                // A sampled message's local deliveries: a `deliver` span
                // inside `publish`, like the one a receiving shard opens.
                let _deliver = tracing::debug_span!(
                    "deliver",
                    shard = %self.id,
                    %tenant,
                    subject = %msg.subject,
                    trace_id = trace_id(msg.headers).unwrap_or(""),
                )
                .entered();
                local();
                self.record_latency(sample);
            } else {
                local();
            }
        }
        if !plan.remote.is_empty() {
            // Staged on each link, sealed into one ring entry per link at
            // the end of the read batch (`after_batch`).
            // A publish borrowed from a read batch crosses as offsets into
            // it, the batch held once per ring entry (`mesh::Copies`); any
            // other crosses owned.
            let in_batch = in_batch(msg);
            let mut owned = in_batch.is_none().then(|| msg.to_owned());
            let mut links = self.links.borrow_mut();
            let mut stats = self.stats.borrow_mut();
            let last = plan.remote.len() - 1;
            let mut overflowed = false;
            for (i, copy) in plan.remote.drain(..).enumerate() {
                let Some(link) = links.iter_mut().find(|l| l.peer == copy.shard) else {
                    continue;
                };
                let body = if let Some((batch, [subject, reply, payload])) = &in_batch {
                    Body::InBatch {
                        batch: link.hold(batch),
                        subject: subject.clone(),
                        reply: reply.clone(),
                        payload: payload.clone(),
                    }
                } else {
                    // The last copy takes the message itself, the others
                    // clone it (reference counts only).
                    let m = if i == last {
                        owned.take()
                    } else {
                        owned.clone()
                    };
                    let Some(m) = m else { break };
                    Body::Owned(Box::new(m))
                };
                stats.remote_out += 1;
                let waiting = link.stage(RemoteMessage {
                    tenant,
                    body,
                    groups: copy.groups,
                    sample: sample.map(|s| Box::new(s.clone())),
                });
                if waiting > 0 {
                    stats.ring_full += waiting as u64;
                    overflowed = true;
                }
            }
            if overflowed {
                self.wake_mesh();
            }
        }
    }

    /// Interest changes and expired subscriptions caused by routing. Most
    /// routes cause neither: that is checked here, inline, and the work
    /// is out of line.
    #[inline]
    fn after_route(&self, plan: &mut RoutePlan) {
        if !plan.interest.is_empty() || !plan.expired.is_empty() {
            self.after_route_changes(plan);
        }
    }

    #[cold]
    #[inline(never)]
    fn after_route_changes(&self, plan: &mut RoutePlan) {
        self.broadcast(&mut plan.interest);
        if !plan.expired.is_empty() {
            let conns = self.conns.borrow();
            let expired: Vec<_> = plan.expired.drain(..).collect();
            for &(id, _) in &expired {
                if let Some(c) = Self::conn(&conns, id) {
                    c.subscription_released();
                }
            }
            drop(conns);
            // A subscription ended by `Unsubscribe{after_messages}` leaves
            // presence like any other (specs/presence.md).
            for (id, sid) in expired {
                crate::presence::left(self, id, sid);
            }
        }
    }

    /// Queues one message for each delivery, its payload `payload` of
    /// `owner` (see `Outbound::push_message`), applying each subscriber's
    /// slow-consumer policy when its queue is full.
    fn deliver(
        &self,
        deliveries: &[Delivery],
        template: &MessageTemplate,
        owner: &Bytes,
        payload: &[u8],
        reply: Option<&[u8]>,
    ) {
        let conns = self.conns.borrow();
        let mut stats = self.stats.borrow_mut();
        let max =
            usize::try_from(self.config.borrow().limits().max_pending_bytes).unwrap_or(usize::MAX);
        for d in deliveries {
            let Some(c) = Self::conn(&conns, d.conn) else {
                continue;
            };
            if c.closing.get() {
                continue;
            }
            let frame_len = template.frame_len(d.sid.0);
            let len = Outbound::message_cost(frame_len);
            let mut out = c.out.borrow_mut();
            let policy = c.policy.get();
            // Drop-oldest measures what dropping frees (items, since buffer
            // capacity is only given back when the queue empties); the
            // others the memory the queue would hold after this message.
            let over = if policy == SlowConsumerPolicy::DropOldest {
                out.items() + len > max
            } else {
                let prefix = frame_len - payload.len();
                out.held_after(prefix, payload.len()) > max
            };
            if over {
                match policy {
                    SlowConsumerPolicy::Disconnect => {
                        drop(out);
                        Self::cut(c, &mut stats);
                        continue;
                    }
                    SlowConsumerPolicy::DropOldest => {
                        let excess = out.items() + len - max;
                        let dropped = out.drop_oldest(excess);
                        stats.dropped += dropped as u64;
                        if out.items() + len > max {
                            // Only the frame in flight is left: drop this one.
                            stats.dropped += 1;
                            continue;
                        }
                    }
                    SlowConsumerPolicy::StallPublisher => {
                        let now = Instant::now();
                        let since = c.stalled_since.get();
                        let over_time =
                            since.is_some_and(|t| now.duration_since(t) > c.stall_max());
                        // Headroom for what was already in flight (from
                        // other shards' rings) when the stall took hold.
                        if over_time || out.held() + len > max.saturating_mul(STALL_HEADROOM) {
                            drop(out);
                            Self::cut(c, &mut stats);
                            continue;
                        }
                        if since.is_none() {
                            c.stalled_since.set(Some(now));
                            if let Some(t) = c.tenant() {
                                self.stall(t, now + c.stall_max());
                            }
                            stats.stalls += 1;
                        }
                    }
                }
            }
            out.push_message(template, d.sid.0, owner, payload);
            drop(out);
            if let Some(r) = reply {
                c.allow_reply(r);
            }
            c.count_out(payload.len());
            stats.msgs_out += 1;
            stats.bytes_out += payload.len() as u64;
            c.wake();
        }
    }

    fn cut(c: &ConnShared, stats: &mut arqonbus_core::stats::ShardStats) {
        c.count_slow();
        c.closing.set(true);
        c.raise(Flag::SlowConsumer);
        stats.slow_consumers += 1;
    }

    // ---- publisher stalls -------------------------------------------------

    /// Pauses `tenant`'s publishers on every shard until `until`.
    pub(crate) fn stall(&self, tenant: TenantId, until: Instant) {
        self.throttle.borrow_mut().stall(tenant, until);
        let mut links = self.links.borrow_mut();
        let mut full = false;
        for link in links.iter_mut() {
            full |= !link.send(PeerMsg::Stall { tenant, until });
        }
        drop(links);
        if full {
            self.wake_mesh();
        }
    }

    /// The stalled subscriber caught up: publishers may go on.
    pub(crate) fn unstall(&self, tenant: TenantId) {
        self.resume_publishers(tenant);
        let mut links = self.links.borrow_mut();
        let mut full = false;
        for link in links.iter_mut() {
            full |= !link.send(PeerMsg::Unstall { tenant });
        }
        drop(links);
        if full {
            self.wake_mesh();
        }
        self.after_batch();
    }

    /// Ends a stall of `tenant` on this shard and wakes its paused
    /// publishers (they wait on timers set for the stall's full length).
    fn resume_publishers(&self, tenant: TenantId) {
        self.throttle.borrow_mut().unstall(tenant);
        for (_, c) in self.conns.borrow().iter() {
            if c.tenant() == Some(tenant) {
                c.raise(Flag::Tick);
            }
        }
    }

    // ---- the mesh ----------------------------------------------------------

    pub(crate) fn on_peer(&self, from: ShardId, msg: PeerMsg) {
        match msg {
            PeerMsg::Interest { seq, update } => {
                self.router.borrow_mut().apply_interest(from, &update);
                self.barrier.borrow_mut().applied(from, seq);
            }
            // Every copy `from` sent before the mark was routed above.
            PeerMsg::Mark { seq } => self.barrier.borrow_mut().applied(from, seq),
            PeerMsg::InterestAck { seq } => {
                self.barrier.borrow_mut().acknowledged(from, seq);
                self.release_pongs();
            }
            PeerMsg::Deliver(copies) => {
                for m in &copies.msgs {
                    self.on_remote_message(m, &copies.batches);
                }
            }
            PeerMsg::Stall { tenant, until } => {
                self.throttle.borrow_mut().stall(tenant, until);
            }
            PeerMsg::Unstall { tenant } => self.resume_publishers(tenant),
        }
    }

    fn on_remote_message(&self, m: &RemoteMessage, batches: &[Bytes]) {
        self.stats.borrow_mut().remote_in += 1;
        let Some(copy) = self.resolve(m, batches) else {
            // Offsets outside their batch, or a subject that is not one:
            // the sending shard never stages such a copy.
            tracing::warn!(shard = %self.id, tenant = %m.tenant, "a copy from another shard did not resolve; dropped");
            return;
        };
        // A child of the sender's `publish` span, so an exporter sees one
        // trace across shards.
        let _span = m.sample.as_deref().map(|s| {
            tracing::debug_span!(
                parent: &s.span,
                "deliver",
                shard = %self.id,
                tenant = %m.tenant,
                subject = %copy.subject,
                trace_id = trace_id(copy.headers).unwrap_or(""),
            )
            .entered()
        });
        let mut plan = self.plan.borrow_mut();
        self.router.borrow_mut().route(
            m.tenant,
            copy.subject,
            Origin::Remote { groups: &m.groups },
            &mut plan,
        );
        self.after_route(&mut plan);
        self.stats.borrow_mut().queue_misses += u64::from(plan.missed_groups);
        if plan.local.is_empty() {
            return;
        }
        let mut t = self.template.borrow_mut();
        t.prepare(
            copy.subject.as_bytes(),
            copy.reply.map_or(&[][..], SubjectRef::as_bytes),
            copy.headers,
            MessageStatus::Ok.into(),
            copy.payload.len(),
        );
        self.deliver(
            &plan.local,
            &t,
            copy.owner,
            copy.payload,
            copy.reply.map(SubjectRef::as_bytes),
        );
        self.record_latency(m.sample.as_deref());
    }

    /// A copy from another shard, its fields found: in its batch (the
    /// subject validated again, through this shard's memo: a comparison
    /// for a repeated subject), or in the owned message.
    fn resolve<'a>(&self, m: &'a RemoteMessage, batches: &'a [Bytes]) -> Option<Arrived<'a>> {
        match &m.body {
            Body::Owned(p) => Some(Arrived {
                subject: p.subject.view(),
                reply: p.reply.as_ref().map(Subject::view),
                headers: &p.headers,
                payload: &p.payload,
                owner: &p.payload,
            }),
            Body::InBatch {
                batch,
                subject,
                reply,
                payload,
            } => {
                let batch = batches.get(*batch as usize)?;
                let field = |r: &Range<u32>| batch.get(r.start as usize..r.end as usize);
                let mut memo = self.subjects.borrow_mut();
                let subject = memo.check(field(subject)?, usize::MAX).ok()?;
                let reply = match field(reply)? {
                    [] => None,
                    r => Some(SubjectRef::parse(r, usize::MAX).ok()?),
                };
                let payload = field(payload)?;
                Some(Arrived {
                    subject,
                    reply,
                    headers: &[],
                    payload,
                    owner: batch,
                })
            }
        }
    }

    /// End of a batch of work: acknowledge interest, push overflow into the
    /// rings, ring the peers' doorbells, update back-pressure.
    pub(crate) fn after_batch(&self) {
        let mut barrier = self.barrier.borrow_mut();
        let mut links = self.links.borrow_mut();
        for link in links.iter_mut() {
            if let Some(seq) = barrier.take_due(link.peer)
                && !link.send(PeerMsg::InterestAck { seq })
            {
                self.wake_mesh();
            }
        }
        let mut over = false;
        let mut waiting = 0;
        for link in links.iter_mut() {
            waiting += link.flush();
            over |= link.overflow_len() > self.cfg.overflow_limit;
        }
        if waiting > 0 {
            // A batch sealed into a full ring: only the mesh loop retries
            // overflow, and it may be parked (it parks when nothing
            // overflowed), while the connections wait for it.
            self.stats.borrow_mut().ring_full += waiting as u64;
            self.wake_mesh();
        }
        let was = self.backpressure.replace(over);
        if was && !over {
            for w in self.bp_waiters.take() {
                w.wake();
            }
        }
    }

    pub(crate) fn has_overflow(&self) -> bool {
        self.links.borrow().iter().any(|l| l.overflow_len() > 0)
    }

    /// While the rings are overloaded, connections stop reading (they park
    /// here) so TCP pushes back on publishers.
    pub(crate) fn backpressured(&self, waker: &std::task::Waker) -> bool {
        if self.backpressure.get() {
            self.bp_waiters.borrow_mut().push(waker.clone());
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn h(k: &'static str, v: &'static str) -> v1::Header {
        v1::Header {
            key: Bytes::from_static(k.as_bytes()),
            value: Bytes::from_static(v.as_bytes()),
        }
    }

    #[test]
    fn trace_ids_come_from_valid_traceparents_only() {
        let good = h(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        );
        assert_eq!(
            traceparent(std::slice::from_ref(&good)),
            Some((
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                "4bf92f3577b34da6a3ce929d0e0e4736"
            ))
        );
        assert_eq!(trace_id(&[good]), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
        assert_eq!(trace_id(&[h("traceparent", "00-nothex-00-01")]), None);
        assert_eq!(traceparent(&[h("traceparent", "00-nothex-00-01")]), None);
        assert_eq!(
            trace_id(&[h("other", "00-4bf92f3577b34da6a3ce929d0e0e4736-x-01")]),
            None
        );
        assert_eq!(trace_id(&[]), None);
    }
}
