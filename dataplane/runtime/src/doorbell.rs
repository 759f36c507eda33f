//! Waking a parked shard from another thread.
//!
//! Rings between shards are lock-free SPSC queues with no way to wake the
//! consumer, and an idle shard must sleep in io_uring rather than spin. Each
//! shard therefore owns a doorbell: a non-blocking Unix socket pair. The
//! shard's ring task reads the inner end through glommio (so waiting on it is
//! an ordinary io_uring poll); producers write one byte to the outer end, but
//! only when the shard said it is about to sleep (`armed`), so a busy shard
//! costs producers one load, not a syscall.
//!
//! Protocol (a Dekker-style handshake; both fences are `SeqCst`):
//! - consumer: `armed = true`; fence; re-check every ring; sleep on the
//!   socket only if all were empty;
//! - producer: push to the ring; fence; if `armed` was true, clear it and
//!   write a byte.
//!
//! Either the consumer's re-check sees the push, or the producer sees
//! `armed` and rings. A spurious byte only causes one extra empty drain.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering, fence};

/// The producer side of a shard's doorbell. Shared by every producer.
#[derive(Debug)]
pub(crate) struct Doorbell {
    /// The shard is (about to be) parked and wants a byte.
    armed: AtomicBool,
    /// Outer end of the socket pair.
    tx: OwnedFd,
}

impl Doorbell {
    /// A doorbell and the inner end (for the shard to wait on).
    pub(crate) fn new() -> io::Result<(Self, OwnedFd)> {
        let (a, b) = socket2::Socket::pair(
            socket2::Domain::UNIX,
            socket2::Type::STREAM.nonblocking().cloexec(),
            None,
        )?;
        Ok((
            Self {
                armed: AtomicBool::new(false),
                tx: a.into(),
            },
            b.into(),
        ))
    }

    /// Called by producers after pushing work for this shard.
    pub(crate) fn ring(&self) {
        // Orders the producer's push before the load of `armed`.
        fence(Ordering::SeqCst);
        if self.armed.load(Ordering::Relaxed) && self.armed.swap(false, Ordering::AcqRel) {
            let byte = 1u8;
            // SAFETY: `tx` is an open socket owned by `self`; the buffer is one
            // valid byte. A full socket (EAGAIN) already holds a wake-up.
            let _ = unsafe {
                libc::send(
                    self.tx.as_raw_fd(),
                    (&raw const byte).cast(),
                    1,
                    libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                )
            };
        }
    }

    /// Called by the consumer before its final check of the rings.
    pub(crate) fn arm(&self) {
        self.armed.store(true, Ordering::Relaxed);
        // Orders the store of `armed` before the consumer's ring checks.
        fence(Ordering::SeqCst);
    }

    /// Called by the consumer when it found work after arming.
    pub(crate) fn disarm(&self) {
        self.armed.store(false, Ordering::Relaxed);
    }
}
