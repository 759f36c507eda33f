//! The official Rust client SDK for ArqonBus, on tokio.
//!
//! This crate owns the client side of protocol v1 (specs/protocol.md): the
//! transport (TLS 1.3 with ALPN `arqonbus/1`, or plaintext TCP when asked),
//! the session handshake, publishing, subscriptions, request/reply over a
//! per-client inbox, presence (listing, watching, querying), flush
//! barriers, reconnection and draining.
//!
//! ```no_run
//! # async fn demo() -> Result<(), arqonbus_client::Error> {
//! use arqonbus_client::{Client, ConnectOptions};
//! use futures_util::StreamExt as _;
//!
//! let client = Client::connect(
//!     ConnectOptions::new()
//!         .url("tls://127.0.0.1:7420")
//!         .ca_file("arqonbus-data/tls/ca.pem")
//!         .credential_file("arqonbus-data/credentials/bootstrap.token"),
//! )
//! .await?;
//! let mut sub = client.subscribe("orders.>").await?;
//! client.publish("orders.eu.created", "hello").await?;
//! if let Some(msg) = sub.next().await {
//!     assert_eq!(&msg.payload[..], b"hello");
//! }
//! client.drain().await?;
//! # Ok(())
//! # }
//! ```
//!
//! # Semantics worth knowing
//! - [`Client::subscribe`] sends `Subscribe` then `Ping` and returns when the
//!   `Pong` arrives, i.e. when the subscription is in effect on every shard.
//!   A non-fatal `Error` carrying the subscription's sid that arrives before
//!   that `Pong` makes `subscribe` fail with [`Error::Server`]; one that
//!   arrives later (e.g. a resubscription after a reconnect) ends the
//!   [`Subscriber`] stream, and [`Subscriber::error`] says why.
//! - A fatal server error (`close = true`), EOF, an I/O error, a protocol
//!   violation or two unanswered client pings drop the connection; the client
//!   then reconnects with backoff, unless the error was
//!   `AUTHENTICATION_FAILED` or `UNSUPPORTED_VERSION` (then it closes, and
//!   every later call returns that error). After a reconnect it re-sends all
//!   subscriptions (same sids, remaining `unsubscribe_after` counts), then
//!   repeats barriers that were pending, then writes publishes buffered
//!   while disconnected. Frames written to a connection that then died are
//!   not re-sent (at-most-once).
//! - Presence ([`Subscriber::track`], [`Client::watch_presence`],
//!   [`Client::presence`]): tracks and watches are re-sent after a
//!   reconnect, like subscriptions; a query in flight when the connection
//!   drops fails with the reason.
//! - Requests use one inbox per client, `_INBOX.<22 alphanumerics>.*`,
//!   subscribed (and flushed) on the first request and kept across
//!   reconnects; request `n` replies to `_INBOX.<id>.<n>`.
//! - For tests: `ConnectOptions::new().url("tcp://127.0.0.1:PORT")
//!   .credential(token)` needs no TLS material; for TLS use
//!   `.ca_file("<data_dir>/tls/ca.pem")` or `.ca_pem(pem)`.
//!
//! # Invariants
//! - One background task per [`Client`] owns the socket; every other handle
//!   talks to it through one ordered command channel, so frames from one caller
//!   reach the server in the order the caller issued them.
//! - Subjects, patterns, queue groups, headers and payload sizes are checked
//!   locally before anything is sent; an invalid one is a typed [`Error`] and
//!   never reaches the wire.
//! - The reader never blocks on a slow subscriber: a full subscriber buffer
//!   drops the message and counts it (a client-side slow consumer).
//! - Credentials and payloads never reach logs or `Debug` output.

mod backoff;
mod client;
mod driver;
mod error;
mod events;
mod inbox;
mod message;
mod options;
mod outbound;
mod presence;
mod subscriber;
mod transport;
mod url;

pub use arqonbus_core::Sid;
pub use arqonbus_proto::v1::ErrorCode;

pub use crate::backoff::ReconnectPolicy;
pub use crate::client::{Client, ConnectionState, ServerInfo, ServerLimits};
pub use crate::error::{Error, OptionsError, ProtocolViolation, ServerError};
pub use crate::events::{Event, Events};
pub use crate::message::{HeaderError, Headers, Message, MessageStatus, OutgoingMessage};
pub use crate::options::{ClientKind, ConnectOptions, Credential};
pub use crate::presence::{
    PresenceAction, PresenceAnswer, PresenceEvent, PresenceMember, PresenceWatcher,
};
pub use crate::subscriber::Subscriber;
pub use crate::url::{Scheme, ServerUrl};

/// The TLS ALPN protocol id of protocol v1.
pub const ALPN: &[u8] = b"arqonbus/1";
/// The port a `tls://` or `tcp://` URL uses when it names none.
pub const DEFAULT_PORT: u16 = 7420;
