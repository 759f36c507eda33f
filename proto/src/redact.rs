//! `Debug` for the frames that carry secrets or application data.
//!
//! A credential, a payload or a header value (which may hold an
//! `Authorization` token) must never reach a log, and `{:?}` is the easiest
//! way for one to get there. These impls print sizes instead.

use std::fmt;

use crate::v1::{Connect, Header, Message, Publish};

fn keys(headers: &[Header]) -> Vec<String> {
    headers
        .iter()
        .map(|h| h.key.escape_ascii().to_string())
        .collect()
}

impl fmt::Debug for Connect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connect")
            .field("protocol_version", &self.protocol_version)
            .field("credential", &"<redacted>")
            .field("client_name", &self.client_name)
            .field("client_kind", &self.client_kind)
            .field("client_version", &self.client_version)
            .field("no_echo", &self.no_echo)
            .finish()
    }
}

impl fmt::Debug for Header {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Header")
            .field("key", &self.key.escape_ascii().to_string())
            .field("value_len", &self.value.len())
            .finish()
    }
}

impl fmt::Debug for Publish {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Publish")
            .field("subject", &self.subject.escape_ascii().to_string())
            .field("reply", &self.reply.escape_ascii().to_string())
            .field("header_keys", &keys(&self.headers))
            .field("seq", &self.seq)
            .field("payload_len", &self.payload.len())
            .finish()
    }
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field("sid", &self.sid)
            .field("subject", &self.subject.escape_ascii().to_string())
            .field("reply", &self.reply.escape_ascii().to_string())
            .field("header_keys", &keys(&self.headers))
            .field("status", &self.status)
            .field("payload_len", &self.payload.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use crate::v1::{self, frame::Kind};

    #[test]
    fn secrets_and_payloads_stay_out_of_debug_output() {
        let secret = "abt_super-secret-token";
        let header = v1::Header {
            key: Bytes::from_static(b"authorization"),
            value: Bytes::from_static(b"Bearer hidden-value"),
        };
        let frames = [
            Kind::Connect(v1::Connect {
                credential: secret.into(),
                ..Default::default()
            }),
            Kind::Publish(v1::Publish {
                subject: Bytes::from_static(b"a"),
                headers: vec![header.clone()],
                payload: Bytes::from_static(b"private payload"),
                ..Default::default()
            }),
            Kind::Message(v1::Message {
                headers: vec![header],
                payload: Bytes::from_static(b"private payload"),
                ..Default::default()
            }),
        ];
        for f in frames {
            let shown = format!("{f:?}");
            for hidden in [secret, "private payload", "hidden-value"] {
                assert!(!shown.contains(hidden), "{shown}");
            }
        }
    }
}
