//! Connection events: a broadcast of what happened to the connection, for
//! applications that want to log or react to it.
//!
//! Invariants: emitting never blocks the background task; a receiver that
//! falls behind loses the oldest events (and the loss is logged), never the
//! connection.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::Stream;
use tokio::sync::broadcast;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;

use crate::Sid;
use crate::client::ServerInfo;
use crate::error::{Error, ServerError};

/// Events kept for a slow [`Events`] reader before the oldest are dropped.
pub(crate) const EVENT_CAPACITY: usize = 256;

/// Something that happened to the connection.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Event {
    /// The connection was lost; the client is reconnecting (unless `reason`
    /// is not retryable, in which case [`Event::Closed`] follows).
    Disconnected {
        /// Why.
        reason: Error,
    },
    /// A new connection is up. Every live subscription is re-sent on it
    /// ahead of any publish buffered while disconnected.
    Reconnected {
        /// The new session.
        info: Arc<ServerInfo>,
    },
    /// The server reported a non-fatal error (e.g. a rejected publish or
    /// subscription). Fatal ones show up as [`Event::Disconnected`].
    ServerError(ServerError),
    /// The server is going away (lame duck) and will close this connection
    /// within `deadline`; the client reconnects when it does.
    ServerDraining {
        /// How long the server gave.
        deadline: std::time::Duration,
        /// Why, for humans.
        reason: String,
    },
    /// A subscriber's buffer was full and messages were dropped; emitted once
    /// per overflow episode.
    SlowConsumer {
        /// The subscription.
        sid: Sid,
        /// Messages dropped on it so far.
        dropped: u64,
    },
    /// The client is closed; nothing further will happen.
    Closed {
        /// The error that closed it, if it did not close on request.
        reason: Option<Error>,
    },
}

/// A stream of [`Event`]s, from [`Client::events`](crate::Client::events).
/// Ends when the client is closed and the last event was read.
#[derive(Debug)]
pub struct Events {
    inner: BroadcastStream<Event>,
}

impl Events {
    pub(crate) fn new(rx: broadcast::Receiver<Event>) -> Self {
        Self {
            inner: BroadcastStream::new(rx),
        }
    }
}

impl Stream for Events {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        loop {
            match Pin::new(&mut self.inner).poll_next(cx) {
                Poll::Ready(Some(Err(BroadcastStreamRecvError::Lagged(missed)))) => {
                    tracing::warn!(missed, "event reader fell behind; events were dropped");
                }
                Poll::Ready(Some(Ok(event))) => return Poll::Ready(Some(event)),
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}
