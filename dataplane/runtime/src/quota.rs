//! Where the counts behind quotas that span shards are kept.
//!
//! - **Counts** (connections, subscriptions per tenant and per principal):
//!   one [`Usage`] of atomics per tenant and per principal, shared by all
//!   shards through the [`QuotaBook`]. They change only when a connection
//!   opens or closes or a subscription is added or removed, never per
//!   message, so the message path stays free of shared state. A connection
//!   looks its counters up once (under a mutex) and keeps them in [`Holds`].
//!   Whether a count may grow is decided by the core
//!   (`arqonbus_core::authorize::{connect, subscribe}`); this module only
//!   stores the counts and gives them back.
//! - **Rates** (messages and bytes per second) are decided by the core too:
//!   each shard's `arqonbus_core::authorize::Throttle` holds its token
//!   buckets (`arqonbus_core::ratelimit::Rates`), each refilling at this
//!   shard's share of the tenant's (or principal's) rate. The data plane's
//!   rebalancer moves shares between shards from their reports
//!   (`arqonbus_core::ratelimit::rebalance`); [`RateKey`] and [`RateUse`]
//!   are re-exported here for it.

use std::sync::atomic::AtomicU32;
use std::sync::{Arc, Mutex, PoisonError};

use arqonbus_core::authorize::Counts;
pub(crate) use arqonbus_core::ratelimit::{RateKey, RateUse};
use arqonbus_core::snapshot::Identity;
use arqonbus_core::{PrincipalId, TenantId};
use rustc_hash::FxHashMap;

/// Live counts of one tenant or principal, across all shards.
#[derive(Debug, Default)]
pub(crate) struct Usage {
    connections: AtomicU32,
    subscriptions: AtomicU32,
}

/// Every tenant's and principal's [`Usage`].
#[derive(Debug, Default)]
pub(crate) struct QuotaBook {
    tenants: Mutex<FxHashMap<TenantId, Arc<Usage>>>,
    principals: Mutex<FxHashMap<PrincipalId, Arc<Usage>>>,
}

impl QuotaBook {
    /// The counters of `id`'s tenant and principal.
    pub(crate) fn holds(&self, id: &Identity) -> Holds {
        let tenant = self
            .tenants
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(id.tenant.id)
            .or_default()
            .clone();
        let principal = self
            .principals
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(id.principal.id)
            .or_default()
            .clone();
        Holds { tenant, principal }
    }
}

/// A connection's handle on its tenant's and principal's counters.
#[derive(Debug)]
pub(crate) struct Holds {
    tenant: Arc<Usage>,
    principal: Arc<Usage>,
}

impl Holds {
    /// The tenant's and the principal's connection counts.
    pub(crate) fn connections(&self) -> Counts<'_, AtomicU32> {
        Counts {
            tenant: &self.tenant.connections,
            principal: &self.principal.connections,
        }
    }

    /// The tenant's and the principal's subscription counts.
    pub(crate) fn subscriptions(&self) -> Counts<'_, AtomicU32> {
        Counts {
            tenant: &self.tenant.subscriptions,
            principal: &self.principal.subscriptions,
        }
    }

    /// Gives back `n` subscriptions.
    pub(crate) fn unsubscribe(&self, n: u32) {
        self.subscriptions().release(n);
    }

    /// Gives back the connection.
    pub(crate) fn disconnect(&self) {
        self.connections().release(1);
    }
}
