//! Per-shard counters. Each shard owns one [`ShardStats`] and bumps plain
//! integers: no atomics, no sharing on the hot path. Readers ask the shard for
//! a copy and merge copies with [`ShardStats::merge`].

/// Counters and gauges of one shard (or the sum of several).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShardStats {
    /// Connections accepted.
    pub connections_accepted: u64,
    /// Connections closed, for any reason.
    pub connections_closed: u64,
    /// Connections refused because the shard was full.
    pub connections_refused: u64,
    /// Failed authentications.
    pub auth_failures: u64,
    /// `Connect`s refused by login throttling before their credential was
    /// checked (`AUTH_THROTTLED`; not in `auth_failures`).
    pub auth_throttled: u64,
    /// TLS handshakes that failed.
    pub tls_failures: u64,
    /// Protocol violations (the connection was closed).
    pub protocol_errors: u64,
    /// Non-fatal client errors answered with an `Error` frame.
    pub client_errors: u64,
    /// Connections cut as slow consumers.
    pub slow_consumers: u64,
    /// Connections closed for not answering pings.
    pub stale_connections: u64,
    /// Messages published by this shard's clients.
    pub msgs_in: u64,
    /// Payload bytes published by this shard's clients.
    pub bytes_in: u64,
    /// Messages delivered to this shard's clients.
    pub msgs_out: u64,
    /// Payload bytes delivered to this shard's clients.
    pub bytes_out: u64,
    /// Message copies sent to other shards.
    pub remote_out: u64,
    /// Message copies received from other shards.
    pub remote_in: u64,
    /// Requests answered with `NO_RESPONDERS`.
    pub no_responders: u64,
    /// Queue-group assignments that found no member on arrival.
    pub queue_misses: u64,
    /// Times a ring to another shard was full and messages waited.
    pub ring_full: u64,
    /// Messages dropped by the drop-oldest slow-consumer policy.
    pub dropped: u64,
    /// Times a subscriber stalled its tenant's publishers.
    pub stalls: u64,
    /// Times a publisher waited for its rate limit.
    pub throttled: u64,
    /// Publishes and subscriptions refused by a policy.
    pub permission_denied: u64,
    /// Sessions closed because their credential was revoked or expired.
    pub revoked: u64,
    /// Connections closed by an operator.
    pub kicked: u64,
    /// Connections handed to this shard, their tenant's home, after
    /// authentication.
    pub moved_in: u64,
    /// Connections this shard handed to their tenant's home shard.
    pub moved_out: u64,
    /// Gauge: open connections.
    pub connections: u64,
    /// Gauge: local subscriptions.
    pub subscriptions: u64,
    /// Gauge: messages waiting in this shard's outgoing rings and overflow.
    pub ring_used: u64,
    /// WebSocket upgrades completed (`specs/websocket.md`).
    pub ws_upgrades: u64,
    /// WebSocket upgrades refused (subprotocol, origin, not an upgrade) or
    /// failed (timeout, socket).
    pub ws_upgrade_failures: u64,
    /// WebSocket connections closed for a violation (malformed frame, text
    /// message, oversized message).
    pub ws_violations: u64,
    /// Gauge: open WebSocket connections (also counted in `connections`).
    pub ws_connections: u64,
    /// Gauge: subjects with presence members (this shard's replica of all
    /// shards) or watches of this shard's connections.
    pub presence_subjects: u64,
    /// Gauge: presence members (the replica: all shards).
    pub presence_members: u64,
    /// Gauge: presence members whose connection is on this shard.
    pub presence_local_members: u64,
    /// Gauge: presence watches of this shard's connections.
    pub presence_watches: u64,
    /// `PresenceTrack`s refused: the subject was at its bound.
    pub presence_refused_subject_full: u64,
    /// `PresenceTrack`s refused: the tenant was at its bound.
    pub presence_refused_tenant_full: u64,
    /// `PresenceWatch`es refused: the connection held its most watches.
    pub presence_refused_watches: u64,
}

impl ShardStats {
    /// Adds `other` into `self` (counters and gauges alike, except the
    /// presence replica's gauges, which every shard holds whole).
    pub fn merge(&mut self, other: &Self) {
        let Self {
            connections_accepted,
            connections_closed,
            connections_refused,
            auth_failures,
            auth_throttled,
            tls_failures,
            protocol_errors,
            client_errors,
            slow_consumers,
            stale_connections,
            msgs_in,
            bytes_in,
            msgs_out,
            bytes_out,
            remote_out,
            remote_in,
            no_responders,
            queue_misses,
            ring_full,
            dropped,
            stalls,
            throttled,
            permission_denied,
            revoked,
            kicked,
            moved_in,
            moved_out,
            connections,
            subscriptions,
            ring_used,
            ws_upgrades,
            ws_upgrade_failures,
            ws_violations,
            ws_connections,
            presence_subjects,
            presence_members,
            presence_local_members,
            presence_watches,
            presence_refused_subject_full,
            presence_refused_tenant_full,
            presence_refused_watches,
        } = other;
        self.connections_accepted += connections_accepted;
        self.connections_closed += connections_closed;
        self.connections_refused += connections_refused;
        self.auth_failures += auth_failures;
        self.auth_throttled += auth_throttled;
        self.tls_failures += tls_failures;
        self.protocol_errors += protocol_errors;
        self.client_errors += client_errors;
        self.slow_consumers += slow_consumers;
        self.stale_connections += stale_connections;
        self.msgs_in += msgs_in;
        self.bytes_in += bytes_in;
        self.msgs_out += msgs_out;
        self.bytes_out += bytes_out;
        self.remote_out += remote_out;
        self.remote_in += remote_in;
        self.no_responders += no_responders;
        self.queue_misses += queue_misses;
        self.ring_full += ring_full;
        self.dropped += dropped;
        self.stalls += stalls;
        self.throttled += throttled;
        self.permission_denied += permission_denied;
        self.revoked += revoked;
        self.kicked += kicked;
        self.moved_in += moved_in;
        self.moved_out += moved_out;
        self.connections += connections;
        self.subscriptions += subscriptions;
        self.ring_used += ring_used;
        self.ws_upgrades += ws_upgrades;
        self.ws_upgrade_failures += ws_upgrade_failures;
        self.ws_violations += ws_violations;
        self.ws_connections += ws_connections;
        // Every shard's replica holds the node-wide figures: the largest,
        // not the sum.
        self.presence_subjects = self.presence_subjects.max(*presence_subjects);
        self.presence_members = self.presence_members.max(*presence_members);
        self.presence_local_members += presence_local_members;
        self.presence_watches += presence_watches;
        self.presence_refused_subject_full += presence_refused_subject_full;
        self.presence_refused_tenant_full += presence_refused_tenant_full;
        self.presence_refused_watches += presence_refused_watches;
    }
}
