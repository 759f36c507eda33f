//! The ArqonBus protocol and routing core.
//!
//! Everything a shard decides, without doing any I/O: it takes frames and
//! `now`, and returns what to send and where to route. The glommio data plane
//! (`arqonbus-dataplane`) and any simulation are thin drivers around it, so the
//! logic here is unit-tested, fuzzed and benchmarked without sockets.
//!
//! # Layout
//! - [`subject`]: the subject, pattern and queue-group grammar;
//! - [`index`]: the token trie from patterns to per-pattern slots;
//! - [`barrier`]: when a client's `Ping` may be answered (every other shard
//!   applied the interest updates sent before it);
//! - [`router`]: one shard's subscriptions, its replica of the other shards'
//!   interest, and routing decisions (local deliveries, one copy per
//!   interested remote shard, queue-group choice);
//! - [`session`]: the connection state machine and input validation;
//! - [`snapshot`]: the immutable configuration every shard applies (tenants,
//!   principals, credentials, quotas), kept in [`cowmap`]s so a snapshot
//!   built from the last one shares what did not change; [`auth`]: bearer
//!   and signed tokens;
//! - [`placement`]: steering modes, affinity rules, tenant home shards;
//! - [`policy`]: subject permissions (allow/deny, deny wins);
//! - [`authorize`]: every decision about what an authenticated client may
//!   do: publish and subscribe permissions, one-shot reply permissions,
//!   connection and subscription quotas, rate limits and publisher stalls;
//! - [`ratelimit`]: token buckets, a shard's rate limiters and how a rate is
//!   shared between shards;
//! - [`throttle`]: login throttling, per source address and per claimed
//!   principal, in fixed-size tables;
//! - [`limits`]: per-connection limits; [`stats`]: per-shard counters;
//!   [`ops`]: what shards report to operators (connections, shard status);
//!   [`metrics`]: what shards measure (per tenant, errors, latencies);
//! - [`presence`]: who is on a subject, join/leave events, the query;
//!   [`origin`]: WebSocket clients' allowed origins;
//! - [`ids`]: newtype identities.
//!
//! No async runtime, no clock, no randomness source: callers pass `now` and
//! seeds.

pub mod auth;
pub mod authorize;
pub mod barrier;
pub mod cowmap;
pub mod ids;
pub mod index;
pub mod limits;
pub mod metrics;
pub mod ops;
pub mod origin;
pub mod placement;
pub mod policy;
pub mod presence;
pub mod ratelimit;
pub mod router;
pub mod session;
pub mod snapshot;
pub mod stats;
pub mod subject;
pub mod throttle;

pub use ids::{ConnId, CredentialId, PrincipalId, ShardId, Sid, TenantId};
