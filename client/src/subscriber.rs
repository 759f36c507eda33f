//! [`Subscriber`]: the receiving end of one subscription.
//!
//! Invariants: the background task only ever `try_send`s into a subscriber's
//! bounded buffer (it never waits on one); when the subscription ends
//! (unsubscribe, `unsubscribe_after` count reached, server error, drain,
//! close) the task drops its sender, so the stream yields what is already
//! buffered and then ends; dropping a `Subscriber` unsubscribes.

use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};

use futures_util::Stream;
use tokio::sync::mpsc;

use crate::Sid;
use crate::driver::Command;
use crate::error::Error;
use crate::message::Message;

/// State the background task and the subscriber share.
#[derive(Debug, Default)]
pub(crate) struct SubShared {
    /// Messages dropped because the buffer was full.
    dropped: AtomicU64,
    /// Why the subscription ended, when it ended because of an error.
    error: OnceLock<Error>,
    /// Why the server refused the last presence track of this subscription.
    track_refused: Mutex<Option<Error>>,
}

impl SubShared {
    /// Counts one dropped message; returns the new total.
    pub(crate) fn count_drop(&self) -> u64 {
        self.dropped.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Records why the subscription ended (first error wins).
    pub(crate) fn fail(&self, err: Error) {
        // Only the first error is kept; a later one is a consequence.
        let _first = self.error.set(err);
    }

    pub(crate) fn error(&self) -> Option<&Error> {
        self.error.get()
    }

    /// Items dropped so far.
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Records why the last presence track was refused (the subscription
    /// itself goes on).
    pub(crate) fn refuse_track(&self, err: Error) {
        if let Ok(mut slot) = self.track_refused.lock() {
            *slot = Some(err);
        }
    }

    /// Takes the refusal of the last track, if there was one.
    pub(crate) fn take_track_refusal(&self) -> Option<Error> {
        self.track_refused
            .lock()
            .ok()
            .and_then(|mut slot| slot.take())
    }
}

/// A subscription's message stream. Use it with
/// [`StreamExt`](futures_util::StreamExt): `while let Some(msg) =
/// sub.next().await { ... }`. The stream ends after an unsubscribe, drain or
/// close (once the buffered messages are read), or when the server rejects
/// the subscription (then [`error`](Self::error) says why).
pub struct Subscriber {
    sid: Sid,
    rx: mpsc::Receiver<Message>,
    shared: Arc<SubShared>,
    commands: mpsc::UnboundedSender<Command>,
    /// False once `unsubscribe` was sent (so `Drop` does not repeat it).
    active: bool,
}

impl Subscriber {
    pub(crate) fn new(
        sid: Sid,
        rx: mpsc::Receiver<Message>,
        shared: Arc<SubShared>,
        commands: mpsc::UnboundedSender<Command>,
    ) -> Self {
        Self {
            sid,
            rx,
            shared,
            commands,
            active: true,
        }
    }

    /// The subscription id on the wire.
    pub fn sid(&self) -> Sid {
        self.sid
    }

    /// Stops the subscription now. Messages already buffered are still
    /// yielded; then the stream ends.
    pub fn unsubscribe(&mut self) -> Result<(), Error> {
        self.active = false;
        self.send_unsubscribe(0)
    }

    /// Stops the subscription after `messages` more deliveries (0 means
    /// now). The count survives reconnects.
    pub fn unsubscribe_after(&mut self, messages: u64) -> Result<(), Error> {
        if messages == 0 {
            return self.unsubscribe();
        }
        self.send_unsubscribe(messages)
    }

    fn send_unsubscribe(&self, after: u64) -> Result<(), Error> {
        self.commands
            .send(Command::Unsubscribe {
                sid: self.sid,
                after,
            })
            .map_err(|_| Error::Closed)
    }

    /// Messages dropped because this subscriber's buffer was full (a
    /// client-side slow consumer).
    pub fn dropped(&self) -> u64 {
        self.shared.dropped()
    }

    /// Lists this subscription in its subject's presence, with `metadata`
    /// (at most 8 entries, 32 B keys, 128 B values, 1 KiB in all), so
    /// watchers see it join; it leaves when the subscription ends. Needs a
    /// subscription to a literal subject ([`Error::InvalidSubject`]
    /// otherwise, nothing sent). Returns once the server has listed it, or
    /// with [`Error::Server`] when it refused (the subject or tenant at its
    /// presence bound, `PRESENCE_LIMIT_EXCEEDED`; the subscription goes on,
    /// unlisted, and may track again later). Tracking a listed
    /// subscription again does nothing. The listing is re-made after a
    /// reconnect. [`Error::Closed`] if the subscription has ended.
    pub async fn track<'a>(
        &mut self,
        metadata: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<(), Error> {
        let entries: Vec<(&str, &str)> = metadata.into_iter().collect();
        arqonbus_core::presence::Metadata::parse(entries.iter().copied())?;
        let metadata = entries
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        self.shared.take_track_refusal();
        let (sent, accepted) = tokio::sync::oneshot::channel();
        self.commands
            .send(Command::Track {
                sid: self.sid,
                metadata,
                reply: sent,
            })
            .map_err(|_| Error::Closed)?;
        accepted.await.unwrap_or(Err(Error::Closed))?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.commands
            .send(Command::Flush(tx))
            .map_err(|_| Error::Closed)?;
        rx.await.unwrap_or(Err(Error::Closed))?;
        if let Some(err) = self.shared.error() {
            return Err(err.clone());
        }
        match self.shared.take_track_refusal() {
            Some(err) => Err(err),
            None => Ok(()),
        }
    }

    /// Why the stream ended, if it ended because of an error (the server
    /// rejected the subscription, or the client closed after an
    /// unrecoverable error). `None` while the subscription is healthy or
    /// after a normal unsubscribe/drain/close.
    pub fn error(&self) -> Option<&Error> {
        self.shared.error()
    }
}

impl Stream for Subscriber {
    type Item = Message;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        self.rx.poll_recv(cx)
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        if self.active {
            // Failing only means the client is closed: nothing to undo.
            let _closed = self.send_unsubscribe(0);
        }
    }
}

impl fmt::Debug for Subscriber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscriber")
            .field("sid", &self.sid)
            .field("active", &self.active)
            .field("buffered", &self.rx.len())
            .field("dropped", &self.dropped())
            .finish_non_exhaustive()
    }
}
