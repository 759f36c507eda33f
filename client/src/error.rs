//! The SDK's error types: [`OptionsError`] for configuration, [`Error`] for
//! every client operation, and [`ServerError`] for an `Error` frame the server
//! sent.
//!
//! Invariants: every type here is `Clone` (one failure may have to be handed to
//! many waiters), no message ever contains a credential or a payload, and each
//! variant says whether retrying the same call can help
//! ([`Error::is_retryable`]).

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use arqonbus_core::Sid;
use arqonbus_core::subject::SubjectError;
use arqonbus_proto::codec::DecodeError;
use arqonbus_proto::v1::ErrorCode;

use crate::message::HeaderError;

/// The name of an error code without its `ERROR_CODE_` prefix, e.g.
/// `INVALID_SUBJECT`.
pub(crate) fn code_name(code: ErrorCode) -> &'static str {
    let name = code.as_str_name();
    name.strip_prefix("ERROR_CODE_").unwrap_or(name)
}

/// An `Error` frame received from the server.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("server error {}: {message}", code_name(*.code))]
pub struct ServerError {
    /// The stable error code (`Unspecified` when the server sent a code this
    /// SDK does not know).
    pub code: ErrorCode,
    /// Human-readable detail from the server. Never holds payloads or secrets.
    pub message: String,
    /// Whether the server closes the connection after this error.
    pub fatal: bool,
    /// The subscription the error is about, when there is one.
    pub sid: Option<Sid>,
}

impl ServerError {
    pub(crate) fn from_frame(frame: &arqonbus_proto::v1::Error) -> Self {
        Self {
            code: ErrorCode::try_from(frame.code).unwrap_or(ErrorCode::Unspecified),
            message: frame.message.clone(),
            fatal: frame.close,
            sid: (frame.sid != 0).then_some(Sid(frame.sid)),
        }
    }
}

/// Why [`ConnectOptions`](crate::ConnectOptions) cannot be used. Retrying with
/// the same options never helps: fix the configuration.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum OptionsError {
    /// The server URL does not parse.
    #[error("invalid server URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// No credential was configured.
    #[error("no credential configured")]
    MissingCredential,
    /// The credential file could not be read.
    #[error("cannot read credential file {}: {source}", path.display())]
    ReadCredential {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: Arc<io::Error>,
    },
    /// The credential is empty or holds whitespace or control characters.
    #[error("invalid credential: {0}")]
    InvalidCredential(&'static str),
    /// A `tls://` URL needs a CA certificate to verify the server.
    #[error("a tls:// server needs a CA certificate (set a CA file or PEM)")]
    MissingCa,
    /// The CA file could not be read.
    #[error("cannot read CA file {}: {source}", path.display())]
    ReadCa {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: Arc<io::Error>,
    },
    /// The CA PEM holds no usable certificate.
    #[error("invalid CA certificate: {0}")]
    InvalidCa(String),
    /// The TLS configuration could not be built.
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// A numeric option that must be positive is zero.
    #[error("option {0} must be greater than zero")]
    Zero(&'static str),
    /// A client kind other than `human`, `device` or `agent`.
    #[error("unknown client kind {0:?} (expected human, device or agent)")]
    UnknownClientKind(String),
    /// `client_name` is longer than the protocol allows (128 bytes).
    #[error("client name is {0} bytes, the maximum is 128")]
    ClientNameTooLong(usize),
}

/// Everything a client operation can fail with.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The options are invalid. Not retryable.
    #[error(transparent)]
    InvalidOptions(#[from] OptionsError),
    /// A subject or pattern breaks the subject rules; checked locally, nothing
    /// was sent. Not retryable.
    #[error("invalid subject {subject:?}: {source}")]
    InvalidSubject {
        /// The subject (escaped for display).
        subject: String,
        /// The rule it breaks.
        source: SubjectError,
    },
    /// A queue group name breaks the naming rules. Not retryable.
    #[error("invalid queue group {group:?}: {source}")]
    InvalidQueueGroup {
        /// The group name (escaped for display).
        group: String,
        /// The rule it breaks.
        source: SubjectError,
    },
    /// Headers break the header rules or the server's limits. Not retryable.
    #[error("invalid headers: {0}")]
    InvalidHeaders(#[from] HeaderError),
    /// Presence metadata breaks its bounds (8 entries, 32 B keys, 128 B
    /// values, 1 KiB in all); checked locally, nothing was sent. Not
    /// retryable.
    #[error("invalid presence metadata: {0}")]
    InvalidMetadata(#[from] arqonbus_core::presence::MetadataError),
    /// The payload is larger than the server's `max_payload`. Not retryable.
    #[error("payload of {len} bytes exceeds the server maximum of {max}")]
    PayloadTooLarge {
        /// Payload length.
        len: usize,
        /// The server's limit.
        max: usize,
    },
    /// A network error (DNS, refused, reset, ...). Retrying may help.
    #[error("i/o: {0}")]
    Io(Arc<io::Error>),
    /// The TLS handshake failed (untrusted certificate, wrong name, ...).
    /// Retrying does not help until the configuration or server changes.
    #[error("tls: {0}")]
    Tls(rustls::Error),
    /// Connecting (TCP, TLS and the Welcome) took longer than the connect
    /// timeout. Retrying may help.
    #[error("timed out connecting to the server")]
    ConnectTimeout,
    /// The server rejected the credential. Not retryable.
    #[error("authentication failed: {message}")]
    AuthenticationFailed {
        /// The server's detail.
        message: String,
    },
    /// The server does not speak this protocol version. Not retryable.
    #[error(
        "the server does not support protocol version {}: {message}",
        arqonbus_proto::PROTOCOL_VERSION
    )]
    UnsupportedVersion {
        /// The server's detail.
        message: String,
    },
    /// The server sent an `Error` frame. Fatal ones (`fatal == true`) closed
    /// the connection and are retryable (the client reconnects); non-fatal
    /// ones (e.g. a rejected subscription) are not.
    #[error(transparent)]
    Server(#[from] ServerError),
    /// The server sent bytes that are not valid protocol v1. Retryable (the
    /// client reconnects), but it points at a server bug.
    #[error("protocol: {0}")]
    Protocol(ProtocolViolation),
    /// The server closed the connection without an `Error` frame. Retryable.
    #[error("the server closed the connection")]
    ConnectionReset,
    /// The server answered no client pings for two ping intervals. Retryable.
    #[error("the server stopped answering pings")]
    StaleConnection,
    /// The client is disconnected and its reconnect buffer is full; the
    /// publish was not queued. Retryable once the client has reconnected.
    #[error("disconnected and the reconnect buffer ({limit} bytes) is full")]
    ReconnectBufferFull {
        /// The configured buffer size.
        limit: usize,
    },
    /// A request found no subscriber for its subject. Retryable (a responder
    /// may appear later).
    #[error("no responders")]
    NoResponders,
    /// A request got no reply in time. Retryable.
    #[error("request timed out")]
    Timeout,
    /// The client was closed (by `close`, `drain`, or because every handle
    /// was dropped) or gave up reconnecting. Not retryable on this client.
    #[error("the client is closed")]
    Closed,
}

/// What exactly was wrong with the server's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtocolViolation {
    /// A frame could not be decoded.
    Decode(DecodeError),
    /// A frame kind the server must not send in this state.
    UnexpectedFrame(&'static str),
}

impl fmt::Display for ProtocolViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Decode(e) => write!(f, "{e}"),
            Self::UnexpectedFrame(kind) => write!(f, "unexpected {kind} frame"),
        }
    }
}

impl Error {
    /// Whether trying again (the same call later, or a reconnect) can
    /// succeed without changing the configuration or the arguments.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Io(_)
            | Self::ConnectTimeout
            | Self::Protocol(_)
            | Self::ConnectionReset
            | Self::StaleConnection
            | Self::ReconnectBufferFull { .. }
            | Self::NoResponders
            | Self::Timeout => true,
            Self::Server(e) => e.fatal,
            Self::InvalidOptions(_)
            | Self::InvalidSubject { .. }
            | Self::InvalidQueueGroup { .. }
            | Self::InvalidHeaders(_)
            | Self::InvalidMetadata(_)
            | Self::PayloadTooLarge { .. }
            | Self::Tls(_)
            | Self::AuthenticationFailed { .. }
            | Self::UnsupportedVersion { .. }
            | Self::Closed => false,
        }
    }

    /// Whether a connection that failed with this error may be re-established
    /// (used by the reconnect loop).
    pub(crate) fn allows_reconnect(&self) -> bool {
        match self {
            // A certificate problem may be fixed on the server side (a new
            // certificate) while we back off; keep trying.
            Self::Tls(_) => true,
            other => other.is_retryable(),
        }
    }

    /// Maps an I/O error, unwrapping TLS failures that tokio-rustls reports
    /// as `io::Error`.
    pub(crate) fn from_io(err: io::Error) -> Self {
        if err
            .get_ref()
            .is_some_and(<dyn std::error::Error + Send + Sync>::is::<rustls::Error>)
        {
            if let Some(tls) = err
                .into_inner()
                .and_then(|inner| inner.downcast::<rustls::Error>().ok())
            {
                return Self::Tls(*tls);
            }
            return Self::Io(Arc::new(io::Error::other("TLS failure")));
        }
        Self::Io(Arc::new(err))
    }

    /// The error for a fatal (or pre-Welcome) server `Error` frame.
    pub(crate) fn from_server(err: ServerError) -> Self {
        match err.code {
            ErrorCode::AuthenticationFailed => Self::AuthenticationFailed {
                message: err.message,
            },
            ErrorCode::UnsupportedVersion => Self::UnsupportedVersion {
                message: err.message,
            },
            _ => Self::Server(err),
        }
    }
}

impl From<io::Error> for Error {
    fn from(err: io::Error) -> Self {
        Self::from_io(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_and_version_failures_are_not_retryable() {
        let auth = Error::from_server(ServerError {
            code: ErrorCode::AuthenticationFailed,
            message: "nope".into(),
            fatal: true,
            sid: None,
        });
        assert!(matches!(auth, Error::AuthenticationFailed { .. }));
        assert!(!auth.is_retryable());
        assert!(!auth.allows_reconnect());
        let version = Error::from_server(ServerError {
            code: ErrorCode::UnsupportedVersion,
            message: String::new(),
            fatal: true,
            sid: None,
        });
        assert!(!version.allows_reconnect());
        let shutting_down = Error::from_server(ServerError {
            code: ErrorCode::ServerShuttingDown,
            message: String::new(),
            fatal: true,
            sid: None,
        });
        assert!(shutting_down.allows_reconnect());
    }

    #[test]
    fn server_error_display_names_the_code() {
        let e = ServerError {
            code: ErrorCode::InvalidSubject,
            message: "bad".into(),
            fatal: false,
            sid: Some(Sid(3)),
        };
        assert_eq!(e.to_string(), "server error INVALID_SUBJECT: bad");
    }

    #[test]
    fn tls_errors_are_unwrapped_from_io() {
        let io = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        );
        assert!(matches!(Error::from_io(io), Error::Tls(_)));
        let plain = io::Error::from(io::ErrorKind::ConnectionRefused);
        assert!(matches!(Error::from_io(plain), Error::Io(_)));
    }
}
