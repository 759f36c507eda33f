//! Messages in both directions: [`Message`] (delivered to a subscriber or
//! returned by a request), [`OutgoingMessage`] (what a publish sends) and
//! [`Headers`].
//!
//! Invariants: `Debug` output shows subjects and header keys but never a
//! payload or a header value (they may hold secrets); headers are validated
//! against the protocol rules before they are sent.

use std::borrow::Cow;
use std::fmt;

use arqonbus_proto::v1;
use bytes::Bytes;

/// Longest header key, in bytes.
const MAX_HEADER_KEY: usize = 64;
/// Longest header value, in bytes.
const MAX_HEADER_VALUE: usize = 1024;
/// Most header bytes (keys and values) on one message.
const MAX_HEADER_BYTES: usize = 8 * 1024;

/// Why headers cannot be sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// More headers than the server allows.
    #[error("{count} headers, the maximum is {max}")]
    TooMany {
        /// Headers on the message.
        count: usize,
        /// The server's limit.
        max: usize,
    },
    /// A key that is empty, longer than 64 bytes, or holds a byte other than
    /// printable ASCII without `.`, `*`, `>`.
    #[error("header key {0:?} is invalid")]
    InvalidKey(String),
    /// A value longer than 1024 bytes or with a byte outside printable ASCII
    /// and space.
    #[error("the value of header {0:?} is invalid")]
    InvalidValue(String),
    /// Keys and values together exceed 8 KiB.
    #[error("headers hold {0} bytes, the maximum is 8192")]
    TooLarge(usize),
}

/// Message headers: an ordered list of key/value pairs (keys may repeat).
/// Keys are case-sensitive ASCII tokens; values are printable ASCII.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Headers {
    entries: Vec<(Bytes, Bytes)>,
}

impl Headers {
    /// No headers.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a header, keeping any earlier one with the same key.
    pub fn append(&mut self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        self.entries.push((
            Bytes::copy_from_slice(key.as_ref()),
            Bytes::copy_from_slice(value.as_ref()),
        ));
    }

    /// Sets a header, replacing every earlier one with the same key.
    pub fn insert(&mut self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        let key = key.as_ref();
        self.entries.retain(|(k, _)| k.as_ref() != key);
        self.append(key, value);
    }

    /// The first value of `key`.
    pub fn get(&self, key: impl AsRef<[u8]>) -> Option<&[u8]> {
        let key = key.as_ref();
        self.entries
            .iter()
            .find(|(k, _)| k.as_ref() == key)
            .map(|(_, v)| v.as_ref())
    }

    /// All headers in order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.entries.iter().map(|(k, v)| (k.as_ref(), v.as_ref()))
    }

    /// Number of headers.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Checks the protocol's header rules, with `max_headers` from the
    /// server's limits.
    pub(crate) fn validate(&self, max_headers: usize) -> Result<(), HeaderError> {
        if self.entries.len() > max_headers {
            return Err(HeaderError::TooMany {
                count: self.entries.len(),
                max: max_headers,
            });
        }
        let mut total = 0usize;
        for (key, value) in &self.entries {
            let key_ok = (1..=MAX_HEADER_KEY).contains(&key.len())
                && key
                    .iter()
                    .all(|&b| (0x21..=0x7e).contains(&b) && !matches!(b, b'.' | b'*' | b'>'));
            if !key_ok {
                return Err(HeaderError::InvalidKey(key.escape_ascii().to_string()));
            }
            let value_ok = value.len() <= MAX_HEADER_VALUE
                && value.iter().all(|&b| (0x20..=0x7e).contains(&b));
            if !value_ok {
                return Err(HeaderError::InvalidValue(key.escape_ascii().to_string()));
            }
            total += key.len() + value.len();
        }
        if total > MAX_HEADER_BYTES {
            return Err(HeaderError::TooLarge(total));
        }
        Ok(())
    }

    /// Encoded-size estimate used for buffer accounting.
    pub(crate) fn byte_len(&self) -> usize {
        self.entries
            .iter()
            .map(|(k, v)| k.len() + v.len() + 6)
            .sum()
    }

    pub(crate) fn to_wire(&self) -> Vec<v1::Header> {
        self.entries
            .iter()
            .map(|(key, value)| v1::Header {
                key: key.clone(),
                value: value.clone(),
            })
            .collect()
    }

    pub(crate) fn from_wire(headers: Vec<v1::Header>) -> Self {
        Self {
            entries: headers.into_iter().map(|h| (h.key, h.value)).collect(),
        }
    }
}

impl fmt::Debug for Headers {
    /// Shows keys only: values may carry secrets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.entries.iter().map(|(k, _)| Ascii(k)))
            .finish()
    }
}

impl<K: AsRef<[u8]>, V: AsRef<[u8]>> FromIterator<(K, V)> for Headers {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut headers = Self::new();
        for (k, v) in iter {
            headers.append(k, v);
        }
        headers
    }
}

/// Shows ASCII bytes as a quoted, escaped string in `Debug` output.
struct Ascii<'a>(&'a [u8]);

impl fmt::Debug for Ascii<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{}\"", self.0.escape_ascii())
    }
}

/// Why a message carries no application payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum MessageStatus {
    /// An ordinary message.
    #[default]
    Ok,
    /// The answer to a request that matched no subscription anywhere.
    NoResponders,
    /// A status this SDK version does not know (from a newer server).
    Unknown(i32),
}

impl MessageStatus {
    fn from_wire(status: i32) -> Self {
        match v1::MessageStatus::try_from(status) {
            Ok(v1::MessageStatus::Ok) => Self::Ok,
            Ok(v1::MessageStatus::NoResponders) => Self::NoResponders,
            Err(_) => Self::Unknown(status),
        }
    }
}

/// A message delivered by the server.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Message {
    /// The subject it was published on (ASCII).
    pub subject: Bytes,
    /// Where to send an answer, when the publisher asked for one.
    pub reply: Option<Bytes>,
    /// Headers, in the order the publisher sent them.
    pub headers: Headers,
    /// The application payload (shares the receive buffer; no copy).
    pub payload: Bytes,
    /// Whether this is an ordinary message.
    pub status: MessageStatus,
}

impl Message {
    /// A message built by hand (status OK, no reply, no headers), e.g. to
    /// test code that handles messages. Set the public fields for more.
    pub fn new(subject: impl Into<Bytes>, payload: impl Into<Bytes>) -> Self {
        Self {
            subject: subject.into(),
            reply: None,
            headers: Headers::new(),
            payload: payload.into(),
            status: MessageStatus::Ok,
        }
    }

    pub(crate) fn from_wire(m: v1::Message) -> Self {
        Self {
            subject: m.subject,
            reply: (!m.reply.is_empty()).then_some(m.reply),
            headers: Headers::from_wire(m.headers),
            payload: m.payload,
            status: MessageStatus::from_wire(m.status),
        }
    }

    /// The subject as text (subjects are ASCII, so this normally borrows).
    pub fn subject_str(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(&self.subject)
    }

    /// The reply subject as text.
    pub fn reply_str(&self) -> Option<Cow<'_, str>> {
        self.reply.as_deref().map(String::from_utf8_lossy)
    }
}

impl fmt::Debug for Message {
    /// Never shows the payload, only its length.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field("subject", &Ascii(&self.subject))
            .field("reply", &self.reply.as_deref().map(Ascii))
            .field("headers", &self.headers)
            .field("payload_len", &self.payload.len())
            .field("status", &self.status)
            .finish()
    }
}

/// A message to publish: subject, payload, and optionally a reply subject
/// and headers.
#[derive(Clone)]
pub struct OutgoingMessage {
    pub(crate) subject: String,
    pub(crate) reply: Option<String>,
    pub(crate) headers: Headers,
    pub(crate) payload: Bytes,
}

impl OutgoingMessage {
    /// A message for `subject` (a literal subject, no wildcards).
    pub fn new(subject: impl Into<String>, payload: impl Into<Bytes>) -> Self {
        Self {
            subject: subject.into(),
            reply: None,
            headers: Headers::new(),
            payload: payload.into(),
        }
    }

    /// Asks responders to answer on `reply`.
    pub fn reply(mut self, reply: impl Into<String>) -> Self {
        self.reply = Some(reply.into());
        self
    }

    /// Replaces the headers.
    pub fn headers(mut self, headers: Headers) -> Self {
        self.headers = headers;
        self
    }

    /// Appends one header.
    pub fn header(mut self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Self {
        self.headers.append(key, value);
        self
    }
}

impl fmt::Debug for OutgoingMessage {
    /// Never shows the payload, only its length.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutgoingMessage")
            .field("subject", &self.subject)
            .field("reply", &self.reply)
            .field("headers", &self.headers)
            .field("payload_len", &self.payload.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_rules() {
        let ok: Headers = [("content-type", "text/plain"), ("x", "")]
            .into_iter()
            .collect();
        assert_eq!(ok.validate(32), Ok(()));
        assert!(matches!(
            ok.validate(1),
            Err(HeaderError::TooMany { count: 2, max: 1 })
        ));
        for key in ["", "a.b", "a b", "a*", "k\u{e9}"] {
            let h: Headers = [(key, "v")].into_iter().collect();
            assert!(
                matches!(h.validate(32), Err(HeaderError::InvalidKey(_))),
                "{key:?}"
            );
        }
        let long_key: Headers = [("k".repeat(65), "v".to_owned())].into_iter().collect();
        assert!(long_key.validate(32).is_err());
        for value in ["a\nb", "tab\there", &"v".repeat(1025)] {
            let h: Headers = [("k", value)].into_iter().collect();
            assert!(matches!(h.validate(32), Err(HeaderError::InvalidValue(_))));
        }
        let big: Headers = (0..9)
            .map(|i| (format!("k{i}"), "v".repeat(1000)))
            .collect();
        assert!(matches!(big.validate(32), Err(HeaderError::TooLarge(_))));
    }

    #[test]
    fn insert_replaces_and_append_keeps() {
        let mut h = Headers::new();
        h.append("a", "1");
        h.append("a", "2");
        assert_eq!(h.len(), 2);
        assert_eq!(h.get("a"), Some(&b"1"[..]));
        h.insert("a", "3");
        assert_eq!(h.iter().collect::<Vec<_>>(), vec![(&b"a"[..], &b"3"[..])]);
        assert_eq!(h.get("missing"), None);
    }

    #[test]
    fn debug_hides_payloads_and_header_values() {
        let m = Message::from_wire(v1::Message {
            sid: 1,
            subject: Bytes::from_static(b"a.b"),
            reply: Bytes::new(),
            headers: vec![v1::Header {
                key: Bytes::from_static(b"auth"),
                value: Bytes::from_static(b"hunter2"),
            }],
            status: 1,
            payload: Bytes::from_static(b"top secret payload"),
        });
        let debug = format!("{m:?}");
        assert!(!debug.contains("top secret"), "{debug}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(debug.contains("a.b") && debug.contains("auth"), "{debug}");
        assert_eq!(m.status, MessageStatus::NoResponders);
        assert_eq!(m.reply, None);
        let out = OutgoingMessage::new("a", "top secret").header("auth", "hunter2");
        let debug = format!("{out:?}");
        assert!(
            !debug.contains("top secret") && !debug.contains("hunter2"),
            "{debug}"
        );
    }

    #[test]
    fn unknown_status_is_kept() {
        assert_eq!(MessageStatus::from_wire(0), MessageStatus::Ok);
        assert_eq!(MessageStatus::from_wire(7), MessageStatus::Unknown(7));
    }
}
