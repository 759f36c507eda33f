//! Retries of change RPCs whose acknowledgement failed.
//!
//! A change RPC commits to the store, then waits for every shard to apply
//! the new snapshot. When a shard does not confirm in time, the RPC fails
//! with UNAVAILABLE although the change is stored. The client's retry of the
//! *same request* must not run the change again (a second credential, a
//! duplicate policy, `ALREADY_EXISTS` for a tenant it created, `NOT_FOUND`
//! for one it deleted): [`Unconfirmed`] keeps the answer of each such
//! change, keyed by the method and the SHA-256 of the encoded request, and
//! the retry gets that answer once every shard runs the snapshot (until
//! then, the same UNAVAILABLE again).
//!
//! Entries are kept for [`KEEP_FOR`] and at most [`MAX_ENTRIES`] (oldest
//! dropped first); a retry that comes later runs the change again. A request
//! identical to one whose acknowledgement failed, sent within that time, is
//! taken for its retry. Answers held here may carry a token (an issued
//! credential's, never delivered); they live in memory only and are never
//! logged.

use std::any::Any;
use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use ring::digest::{SHA256, digest};

/// How long the answer of an unconfirmed change waits for its retry.
pub(crate) const KEEP_FOR: Duration = Duration::from_secs(600);
/// Most unconfirmed answers kept.
pub(crate) const MAX_ENTRIES: usize = 1024;

/// Identifies a request: its method and the SHA-256 of its encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RetryKey([u8; 32]);

impl RetryKey {
    /// The key of `request` to `method`.
    pub(crate) fn of(method: &str, request: &impl prost::Message) -> Self {
        let mut bytes = Vec::with_capacity(method.len() + 1 + request.encoded_len());
        bytes.extend_from_slice(method.as_bytes());
        bytes.push(0);
        request.encode_raw(&mut bytes);
        let mut key = [0u8; 32];
        key.copy_from_slice(digest(&SHA256, &bytes).as_ref());
        Self(key)
    }
}

struct Entry {
    key: RetryKey,
    at: Instant,
    answer: Box<dyn Any + Send>,
}

/// The answers of changes stored but not yet confirmed by every shard.
#[derive(Default)]
pub(crate) struct Unconfirmed {
    entries: Mutex<VecDeque<Entry>>,
}

impl std::fmt::Debug for Unconfirmed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Unconfirmed")
            .field("entries", &self.lock().len())
            .finish()
    }
}

impl Unconfirmed {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Entry>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Keeps `answer` for the retry of the request `key`.
    pub(crate) fn keep<T: Send + 'static>(&self, key: RetryKey, answer: T, now: Instant) {
        let mut entries = self.lock();
        entries.retain(|e| e.key != key && now.duration_since(e.at) < KEEP_FOR);
        while entries.len() >= MAX_ENTRIES {
            entries.pop_front();
        }
        entries.push_back(Entry {
            key,
            at: now,
            answer: Box::new(answer),
        });
    }

    /// Takes the answer kept for the request `key`, if it is still fresh
    /// and of type `T`.
    pub(crate) fn take<T: 'static>(&self, key: RetryKey, now: Instant) -> Option<T> {
        let mut entries = self.lock();
        entries.retain(|e| now.duration_since(e.at) < KEEP_FOR);
        let i = entries.iter().position(|e| e.key == key)?;
        let entry = entries.remove(i)?;
        match entry.answer.downcast::<T>() {
            Ok(answer) => Some(*answer),
            Err(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use arqonbus_proto::control::{CreateTenantRequest, DeleteTenantRequest};

    use super::*;

    #[test]
    fn a_kept_answer_is_taken_once_by_the_same_request_only() {
        let t0 = Instant::now();
        let u = Unconfirmed::default();
        let create = |name: &str| CreateTenantRequest {
            name: name.into(),
            ..CreateTenantRequest::default()
        };
        let key = RetryKey::of("CreateTenant", &create("acme"));
        assert_eq!(key, RetryKey::of("CreateTenant", &create("acme")));
        assert_ne!(key, RetryKey::of("CreateTenant", &create("globex")));
        assert_ne!(
            RetryKey::of("DeleteTenant", &DeleteTenantRequest { id: 1 }),
            RetryKey::of("DeletePrincipal", &DeleteTenantRequest { id: 1 })
        );

        u.keep(key, 7_u64, t0);
        assert_eq!(
            u.take::<u64>(RetryKey::of("CreateTenant", &create("globex")), t0),
            None
        );
        assert_eq!(u.take::<u64>(key, t0), Some(7));
        assert_eq!(u.take::<u64>(key, t0), None, "taken once");

        u.keep(key, 8_u64, t0);
        assert_eq!(u.take::<u64>(key, t0 + KEEP_FOR), None, "too old");
    }

    #[test]
    fn the_oldest_answers_go_first() {
        let t0 = Instant::now();
        let u = Unconfirmed::default();
        let key = |id| RetryKey::of("DeleteTenant", &DeleteTenantRequest { id });
        for id in 1..=(MAX_ENTRIES as u64 + 1) {
            u.keep(key(id), id, t0);
        }
        assert_eq!(u.take::<u64>(key(1), t0), None);
        assert_eq!(u.take::<u64>(key(2), t0), Some(2));
    }
}
