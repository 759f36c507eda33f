//! Presence (specs/presence.md): who is on a subject, as the server lists
//! them, their joins and leaves as they happen, and being listed oneself.
//!
//! - [`Subscriber::track`](crate::Subscriber::track) lists a subscription
//!   to a literal subject with a small metadata map; it leaves when the
//!   subscription ends (unsubscribe, drop, close).
//! - [`Client::watch_presence`](crate::Client::watch_presence) streams the
//!   joins and leaves on a subject as [`PresenceEvent`]s.
//! - [`Client::presence`](crate::Client::presence) asks once: a
//!   [`PresenceAnswer`].
//!
//! Invariants: the background task only `try_send`s into a watcher's bounded
//! buffer (events that do not fit are dropped and counted, like messages);
//! tracks and watches are state of the client, re-sent after every
//! reconnect (the server forgot them with the old connection, and the
//! watcher sees the members leave and join again); watch ids come from the
//! same counter as subscription ids, so an error frame's `sid` names one
//! thing only.

use std::collections::HashMap;
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use arqonbus_proto::v1;
use futures_util::Stream;
use tokio::sync::mpsc;

use crate::driver::Command;
use crate::options::ClientKind;
use crate::subscriber::SubShared;

/// A listed client, as the server describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceMember {
    /// The member connection's session id (`ServerInfo::session_id` on its
    /// side): unique on the server while it lives.
    pub client_id: u64,
    /// What the member said it is, if it said.
    pub kind: Option<ClientKind>,
    /// The member's client name.
    pub name: String,
    /// What the member set when it asked to be listed.
    pub metadata: HashMap<String, String>,
}

impl PresenceMember {
    pub(crate) fn from_wire(m: v1::PresenceMember) -> Self {
        let kind = match m.client_kind() {
            v1::ClientKind::Human => Some(ClientKind::Human),
            v1::ClientKind::Device => Some(ClientKind::Device),
            v1::ClientKind::Agent => Some(ClientKind::Agent),
            v1::ClientKind::Unspecified => None,
        };
        Self {
            client_id: m.client_id,
            kind,
            name: m.client_name,
            metadata: m.metadata.into_iter().collect(),
        }
    }
}

/// Whether a member came or went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PresenceAction {
    /// It is listed now.
    Join,
    /// It is no longer listed.
    Leave,
}

/// One join or leave on a watched subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceEvent {
    /// The subject.
    pub subject: String,
    /// Join or leave.
    pub action: PresenceAction,
    /// Who.
    pub member: PresenceMember,
}

impl PresenceEvent {
    /// `None` for an event without a member or with an unknown action (a
    /// newer server's addition this SDK cannot represent).
    pub(crate) fn from_wire(e: v1::PresenceEvent) -> Option<Self> {
        let action = match e.action() {
            v1::PresenceAction::Join => PresenceAction::Join,
            v1::PresenceAction::Leave => PresenceAction::Leave,
            v1::PresenceAction::Unspecified => return None,
        };
        Some(Self {
            subject: String::from_utf8_lossy(&e.subject).into_owned(),
            action,
            member: PresenceMember::from_wire(e.member?),
        })
    }
}

/// The members of a subject when the server answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceAnswer {
    /// The subject asked about.
    pub subject: String,
    /// Its members, ordered by client id.
    pub members: Vec<PresenceMember>,
    /// Whether the server cut the list (its `presence_query_max`, or what
    /// fits one frame).
    pub truncated: bool,
}

/// A watch's event stream. Use it with
/// [`StreamExt`](futures_util::StreamExt). It ends when the client closes,
/// or when the server refuses the watch (then [`error`](Self::error) says
/// why); dropping it stops the watch.
pub struct PresenceWatcher {
    id: u64,
    rx: mpsc::Receiver<PresenceEvent>,
    shared: Arc<SubShared>,
    commands: mpsc::UnboundedSender<Command>,
}

impl PresenceWatcher {
    pub(crate) fn new(
        id: u64,
        rx: mpsc::Receiver<PresenceEvent>,
        shared: Arc<SubShared>,
        commands: mpsc::UnboundedSender<Command>,
    ) -> Self {
        Self {
            id,
            rx,
            shared,
            commands,
        }
    }

    /// The watch id on the wire.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Events dropped because this watcher's buffer was full.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped()
    }

    /// Why the stream ended, if the server refused the watch (a permission,
    /// the per-connection bound) or the client closed after an error.
    pub fn error(&self) -> Option<&crate::Error> {
        self.shared.error()
    }
}

impl Stream for PresenceWatcher {
    type Item = PresenceEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<PresenceEvent>> {
        self.rx.poll_recv(cx)
    }
}

impl Drop for PresenceWatcher {
    fn drop(&mut self) {
        // Failing only means the client is closed: nothing to undo.
        let _closed = self.commands.send(Command::Unwatch { id: self.id });
    }
}

impl fmt::Debug for PresenceWatcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PresenceWatcher")
            .field("id", &self.id)
            .field("buffered", &self.rx.len())
            .field("dropped", &self.dropped())
            .finish_non_exhaustive()
    }
}
