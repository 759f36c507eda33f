//! The ArqonBus protocol driver: lean and blocking.
//!
//! Frames are pre-encoded once (`codec::write_publish_prefix`) and written in
//! batches; received frames are walked by their length prefix and counted by
//! their kind byte, without decoding bodies. Only control frames (`Welcome`,
//! `Error`) and requests answered by a responder are decoded. The NATS driver
//! mirrors this recipe (same batch size, same syscalls per message).

use arqonbus_proto::codec;
use arqonbus_proto::v1::{self, frame::Kind};
use bytes::Bytes;

use super::{DriverError, Ev, Frame, Role, Stream, Target, Wire, tail_of};

/// `Frame` oneof keys (field number << 3 | length-delimited).
pub(super) const TAG_MESSAGE: u8 = (6 << 3) | 2;
/// `Frame.error`.
pub(super) const TAG_ERROR: u8 = (9 << 3) | 2;

/// One ArqonBus connection.
pub(crate) struct Conn {
    pub(super) wire: Wire,
    /// The shard the server put this connection on.
    pub(crate) shard: u32,
}

/// A publish frame, optionally with one header and a reply subject.
pub(super) fn publish_frame(
    subject: &str,
    reply: &str,
    payload: &[u8],
    headers: bool,
) -> Result<Frame, DriverError> {
    let hdrs = if headers {
        vec![v1::Header {
            key: Bytes::from_static(b"perf"),
            value: Bytes::from_static(b"1"),
        }]
    } else {
        Vec::new()
    };
    let mut bytes = Vec::with_capacity(64 + payload.len());
    codec::write_publish_prefix(
        subject.as_bytes(),
        reply.as_bytes(),
        &hdrs,
        payload.len(),
        &mut bytes,
    )
    .map_err(|e| DriverError::Protocol(e.to_string()))?;
    bytes.extend_from_slice(payload);
    let stamp_end = bytes.len();
    Ok(Frame { bytes, stamp_end })
}

/// The `Connect` a driver connection opens with, as a `kind` of client.
pub(super) fn hello(t: &Target, kind: v1::ClientKind) -> Kind {
    Kind::Connect(v1::Connect {
        protocol_version: arqonbus_proto::PROTOCOL_VERSION,
        credential: t.credential.clone(),
        client_name: "arqonbus-perf".into(),
        client_kind: kind.into(),
        client_version: env!("CARGO_PKG_VERSION").into(),
        no_echo: false,
    })
}

/// The shard a `Welcome` names, or why the connection was refused.
pub(super) fn welcomed(frame: Kind) -> Result<u32, DriverError> {
    match frame {
        Kind::Welcome(w) => Ok(w.shard),
        Kind::Error(e) => Err(DriverError::Closed(format!("refused: {}", e.message))),
        other => Err(DriverError::Protocol(format!("unexpected {other:?}"))),
    }
}

/// The `Subscribe` `role` asks for, if any (sid 1).
pub(super) fn subscription(role: &Role<'_>) -> Option<Kind> {
    let pattern = role.subscribe?;
    Some(Kind::Subscribe(v1::Subscribe {
        sid: 1,
        pattern: Bytes::copy_from_slice(pattern.as_bytes()),
        queue_group: role
            .queue
            .map(|q| Bytes::copy_from_slice(q.as_bytes()))
            .unwrap_or_default(),
    }))
}

impl Conn {
    /// Authenticates on `stream`, subscribes as `role` says, and waits for
    /// the subscription to be in effect on every shard (Ping/Pong barrier).
    pub(super) fn open(stream: Stream, t: &Target, role: &Role<'_>) -> Result<Self, DriverError> {
        let mut c = Self {
            wire: Wire::new(stream, t.control_limit())?,
            shard: 0,
        };
        c.send(&hello(t, v1::ClientKind::Agent))?;
        c.shard = welcomed(c.next_frame()?)?;
        if let Some(subscribe) = subscription(role) {
            c.send(&subscribe)?;
            c.barrier()?;
        }
        Ok(c)
    }

    /// Encodes and writes one control frame.
    fn send(&mut self, kind: &Kind) -> Result<(), DriverError> {
        let mut out = Vec::new();
        codec::encode(kind, &mut out).map_err(|e| DriverError::Protocol(e.to_string()))?;
        self.wire.write_all(&out)
    }

    /// The next frame, fully decoded (control frames only).
    fn next_frame(&mut self) -> Result<Kind, DriverError> {
        loop {
            if let Some(total) = codec::frame_len(self.wire.avail(), u32::MAX)
                .map_err(|e| DriverError::Protocol(e.to_string()))?
            {
                let body = Bytes::copy_from_slice(&self.wire.avail()[codec::LEN_PREFIX..total]);
                self.wire.consume(total);
                return codec::decode_body(body).map_err(|e| DriverError::Protocol(e.to_string()));
            }
            self.wire.fill_to(self.wire.avail().len() + 1)?;
        }
    }

    /// Ping, then read until the Pong: everything sent before has been
    /// processed on every shard. Messages arriving meanwhile are skipped.
    pub(super) fn barrier(&mut self) -> Result<(), DriverError> {
        self.send(&Kind::Ping(v1::Ping {}))?;
        loop {
            match self.next_frame()? {
                Kind::Pong(_) => return Ok(()),
                Kind::Error(e) => return Err(closed(&e)),
                _ => {}
            }
        }
    }

    /// Walks every whole frame buffered.
    pub(super) fn drain(&mut self, mut on: impl FnMut(Ev)) -> Result<(), DriverError> {
        let mut used = 0;
        let avail = self.wire.avail();
        while let Some(p) = avail[used..].first_chunk::<4>() {
            let len = u32::from_be_bytes(*p) as usize;
            let Some(body) = avail.get(used + 4..used + 4 + len) else {
                break;
            };
            used += 4 + len;
            match body.first().copied() {
                Some(TAG_MESSAGE) => on(Ev::Msg {
                    tail: tail_of(body),
                }),
                Some(TAG_ERROR) => {
                    let err = codec::decode_body(Bytes::copy_from_slice(body));
                    self.wire.consume(used);
                    return Err(match err {
                        Ok(Kind::Error(e)) => closed(&e),
                        _ => DriverError::Protocol("undecodable error frame".into()),
                    });
                }
                _ => on(Ev::Other),
            }
        }
        self.wire.consume(used);
        Ok(())
    }

    /// Answers every buffered request: publishes its payload to its reply.
    pub(super) fn echo(&mut self, out: &mut Vec<u8>) -> Result<u64, DriverError> {
        out.clear();
        let mut answered = 0;
        while let Some(total) = codec::frame_len(self.wire.avail(), u32::MAX)
            .map_err(|e| DriverError::Protocol(e.to_string()))?
        {
            let body = Bytes::copy_from_slice(&self.wire.avail()[codec::LEN_PREFIX..total]);
            self.wire.consume(total);
            match codec::decode_body(body) {
                Ok(Kind::Message(m)) if !m.reply.is_empty() => {
                    codec::write_publish_prefix(&m.reply, b"", &[], m.payload.len(), out)
                        .map_err(|e| DriverError::Protocol(e.to_string()))?;
                    out.extend_from_slice(&m.payload);
                    answered += 1;
                }
                Ok(Kind::Error(e)) => return Err(closed(&e)),
                Ok(_) => {}
                Err(e) => return Err(DriverError::Protocol(e.to_string())),
            }
        }
        if !out.is_empty() {
            self.wire.write_all(out)?;
        }
        Ok(answered)
    }
}

pub(super) fn closed(e: &v1::Error) -> DriverError {
    let code = v1::ErrorCode::try_from(e.code)
        .map_or_else(|_| e.code.to_string(), |c| c.as_str_name().to_owned());
    DriverError::Closed(format!("{code}: {}", e.message))
}
