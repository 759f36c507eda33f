//! The NATS text-protocol driver, as lean as the native one.
//!
//! Speaks the client protocol of nats-server 2.9 (`INFO`, `CONNECT`,
//! `PUB`/`HPUB`, `SUB`, `MSG`/`HMSG`, `PING`/`PONG`, `-ERR`), written from
//! its public protocol description. Publishers write pre-encoded `PUB` (or
//! `HPUB`) lines in the same 64 KiB batches as the native driver;
//! subscribers walk `MSG` lines in place in the same 256 KiB buffer, reading
//! only the control line and the last 8 payload bytes of each message.
//!
//! TLS follows 2.9's order: the server's `INFO` arrives in plaintext, then
//! the client upgrades the socket before sending `CONNECT`.
//!
//! The same connection also runs over nats-server's WebSocket listener
//! (`--driver nats-ws`, [`super::nats_ws`]): what it writes then goes out
//! in WebSocket frames, and what it reads is unwrapped before the same
//! parser walks it.

use std::fmt::Write as _;
use std::io::Read;
use std::net::TcpStream;

use super::nats_ws::Unwrap;
use super::{DriverError, Ev, Frame, Role, Stream, Target, Wire, tail_of, ws};

/// The one header sent by `HPUB` when a scenario asks for headers.
const HEADER_BLOCK: &[u8] = b"NATS/1.0\r\nperf: 1\r\n\r\n";

/// Longest `INFO` line accepted.
const MAX_INFO: usize = 64 * 1024;

/// One NATS connection, over TCP or over WebSocket.
pub(crate) struct Conn {
    pub(super) wire: Wire,
    /// How far the WebSocket frames received are unwrapped (`None`: plain
    /// TCP).
    ws: Option<Unwrap>,
}

/// A `PUB` (or `HPUB` with one header) for `payload`.
pub(super) fn publish_frame(subject: &str, reply: &str, payload: &[u8], headers: bool) -> Frame {
    let reply = if reply.is_empty() {
        String::new()
    } else {
        format!(" {reply}")
    };
    let mut bytes = if headers {
        let total = HEADER_BLOCK.len() + payload.len();
        let mut b =
            format!("HPUB {subject}{reply} {} {total}\r\n", HEADER_BLOCK.len()).into_bytes();
        b.extend_from_slice(HEADER_BLOCK);
        b
    } else {
        format!("PUB {subject}{reply} {}\r\n", payload.len()).into_bytes()
    };
    bytes.extend_from_slice(payload);
    let stamp_end = bytes.len();
    bytes.extend_from_slice(b"\r\n");
    Frame { bytes, stamp_end }
}

/// `,"user":…,"pass":…` for a `user:password` credential (a server with
/// accounts), nothing for an empty one.
fn user_fields(credential: &str) -> String {
    if credential.is_empty() {
        return String::new();
    }
    let (user, pass) = credential.split_once(':').unwrap_or((credential, ""));
    let quote = |v: &str| serde_json::Value::from(v).to_string();
    format!(",\"user\":{},\"pass\":{}", quote(user), quote(pass))
}

/// Reads the server's `INFO` line byte by byte from the plain socket (the
/// server sends nothing else before `CONNECT`, and TLS may follow it).
fn read_info(tcp: &mut TcpStream) -> Result<serde_json::Value, DriverError> {
    let mut line = Vec::with_capacity(1024);
    let mut byte = [0u8; 1];
    while !line.ends_with(b"\r\n") {
        if line.len() > MAX_INFO {
            return Err(DriverError::Protocol("INFO line too long".into()));
        }
        if tcp.read(&mut byte)? == 0 {
            return Err(DriverError::Closed("before INFO".into()));
        }
        line.push(byte[0]);
    }
    let json = line
        .strip_prefix(b"INFO ")
        .ok_or_else(|| DriverError::Protocol("first line is not INFO".into()))?;
    serde_json::from_slice(json).map_err(|e| DriverError::Protocol(format!("INFO: {e}")))
}

/// Position of the first `\r\n` in `b`.
fn line_end(b: &[u8]) -> Option<usize> {
    let nl = b.iter().position(|&c| c == b'\n')?;
    (nl > 0 && b[nl - 1] == b'\r').then(|| nl - 1)
}

/// Parses an ASCII decimal.
fn num(tok: &[u8]) -> Option<usize> {
    if tok.is_empty() || tok.len() > 12 {
        return None;
    }
    tok.iter().try_fold(0usize, |n, &c| {
        c.is_ascii_digit().then(|| n * 10 + usize::from(c - b'0'))
    })
}

/// What a `MSG`/`HMSG` control line says.
struct MsgLine<'a> {
    /// The reply subject (empty when none).
    reply: &'a [u8],
    /// Bytes after the control line, before the trailing `\r\n`.
    total: usize,
    /// Header bytes at the front of those.
    headers: usize,
}

/// Parses `MSG subj sid [reply] n` or `HMSG subj sid [reply] h n`.
fn parse_msg(line: &[u8]) -> Option<MsgLine<'_>> {
    let (hmsg, rest) = if let Some(r) = line.strip_prefix(b"MSG ") {
        (false, r)
    } else {
        (true, line.strip_prefix(b"HMSG ")?)
    };
    let mut toks: [&[u8]; 5] = [&[]; 5];
    let mut n = 0;
    for t in rest.split(|&c| c == b' ').filter(|t| !t.is_empty()) {
        if n == toks.len() {
            return None;
        }
        toks[n] = t;
        n += 1;
    }
    // subject, sid, [reply], [header bytes], total bytes
    let fixed = if hmsg { 4 } else { 3 };
    let reply = match n.checked_sub(fixed)? {
        0 => &[][..],
        1 => toks[2],
        _ => return None,
    };
    let total = num(toks[n - 1])?;
    let headers = if hmsg { num(toks[n - 2])? } else { 0 };
    (headers <= total).then_some(MsgLine {
        reply,
        total,
        headers,
    })
}

/// What the next whole item in the buffer is.
enum Item<'a> {
    /// A message: its control line, and its payload.
    Msg(MsgLine<'a>, &'a [u8]),
    /// `PING` from the server.
    Ping,
    /// Any other line (`PONG`, `+OK`, `INFO`).
    Line(&'a [u8]),
    /// `-ERR ...`.
    Err(&'a [u8]),
}

/// The first whole item of `b` and its length, if `b` holds one.
fn next_item(b: &[u8]) -> Result<Option<(Item<'_>, usize)>, DriverError> {
    let Some(eol) = line_end(b) else {
        if b.len() > MAX_INFO {
            return Err(DriverError::Protocol("control line too long".into()));
        }
        return Ok(None);
    };
    let line = &b[..eol];
    let after = eol + 2;
    if line.starts_with(b"MSG ") || line.starts_with(b"HMSG ") {
        let m = parse_msg(line).ok_or_else(|| {
            DriverError::Protocol(format!("bad line {:?}", String::from_utf8_lossy(line)))
        })?;
        let end = after + m.total + 2;
        if b.len() < end {
            return Ok(None);
        }
        let payload = &b[after + m.headers..after + m.total];
        return Ok(Some((Item::Msg(m, payload), end)));
    }
    let item = if line == b"PING" {
        Item::Ping
    } else if line.starts_with(b"-ERR") {
        Item::Err(line)
    } else {
        Item::Line(line)
    };
    Ok(Some((item, after)))
}

fn err_line(line: &[u8]) -> DriverError {
    DriverError::Closed(String::from_utf8_lossy(line).into_owned())
}

impl Conn {
    /// Reads `INFO`, upgrades to TLS when the target says so, sends
    /// `CONNECT`, subscribes as `role` says, and waits for `PONG`.
    pub(super) fn open(
        mut tcp: TcpStream,
        t: &Target,
        role: &Role<'_>,
    ) -> Result<Self, DriverError> {
        let info = read_info(&mut tcp)?;
        let server_tls = info
            .get("tls_required")
            .and_then(serde_json::Value::as_bool)
            .unwrap_or(false);
        if server_tls != t.is_tls() {
            return Err(DriverError::Tls(format!(
                "server tls_required = {server_tls}, target tls = {}",
                t.is_tls()
            )));
        }
        let mut c = Self {
            wire: Wire::new(t.secure(tcp)?, t.control_limit())?,
            ws: None,
        };
        c.hello(t, role)?;
        Ok(c)
    }

    /// Upgrades `stream` to WebSocket (TLS, if any, comes before the
    /// upgrade and is done already), waits for `INFO`, then goes on like
    /// [`open`](Self::open).
    pub(super) fn open_ws(
        stream: Stream,
        t: &Target,
        role: &Role<'_>,
    ) -> Result<Self, DriverError> {
        let mut c = Self::with_ws(Wire::new(stream, t.control_limit())?);
        ws::upgrade(&mut c.wire, &t.addr, None)?;
        c.until(|item| matches!(item, Item::Line(l) if l.starts_with(b"INFO ")))?;
        c.hello(t, role)?;
        Ok(c)
    }

    /// A connection whose bytes travel in WebSocket frames on `wire`
    /// (upgraded already).
    pub(super) fn with_ws(wire: Wire) -> Self {
        Self {
            wire,
            ws: Some(Unwrap::default()),
        }
    }

    /// True when the connection is carried over WebSocket.
    pub(super) fn over_ws(&self) -> bool {
        self.ws.is_some()
    }

    /// Sends `CONNECT` (and `SUB` as `role` says) and waits for `PONG`.
    fn hello(&mut self, t: &Target, role: &Role<'_>) -> Result<(), DriverError> {
        let mut hello = format!(
            "CONNECT {{\"verbose\":false,\"pedantic\":false,\"tls_required\":{},\"name\":\"arqonbus-perf\",\"lang\":\"rust\",\"version\":\"{}\",\"protocol\":1,\"echo\":true,\"headers\":true,\"no_responders\":true{}}}\r\n",
            t.is_tls(),
            env!("CARGO_PKG_VERSION"),
            user_fields(&t.credential)
        );
        if let Some(subject) = role.subscribe {
            match role.queue {
                Some(q) => {
                    let _ = write!(hello, "SUB {subject} {q} 1\r\n");
                }
                None => {
                    let _ = write!(hello, "SUB {subject} 1\r\n");
                }
            }
        }
        self.send(hello.as_bytes())?;
        self.barrier()
    }

    /// Writes protocol bytes (in one WebSocket frame when carried so).
    fn send(&mut self, bytes: &[u8]) -> Result<(), DriverError> {
        if self.ws.is_none() {
            return self.wire.write_all(bytes);
        }
        let mut out = Vec::with_capacity(ws::MAX_CLIENT_HEADER + bytes.len());
        ws::client_header(ws::OP_BINARY, bytes.len(), &mut out);
        out.extend_from_slice(bytes);
        self.wire.write_all(&out)
    }

    /// The protocol bytes received and not consumed (over WebSocket: those
    /// unwrapped so far).
    fn bytes(&self) -> &[u8] {
        let avail = self.wire.avail();
        self.ws.as_ref().map_or(avail, |u| &avail[..u.plain()])
    }

    fn consume(&mut self, n: usize) {
        self.wire.consume(n);
        if let Some(u) = &mut self.ws {
            u.consumed(n);
        }
    }

    /// Over WebSocket: unwraps more of the buffered frames; true when that
    /// brought protocol bytes. Plain TCP has nothing to unwrap.
    fn unwrap_more(&mut self) -> Result<bool, DriverError> {
        match &mut self.ws {
            Some(u) => u.next(&mut self.wire),
            None => Ok(false),
        }
    }

    /// Hands every whole item buffered to `on` until it returns true,
    /// answering server `PING`s and failing on `-ERR`. Returns whether `on`
    /// stopped it. Over WebSocket it unwraps one frame at a time, walking
    /// what each brought, so a header is only ever cut out from behind a
    /// partial message.
    fn walk(&mut self, mut on: impl FnMut(Item<'_>) -> bool) -> Result<bool, DriverError> {
        loop {
            let (mut used, mut pings, mut stop) = (0, 0, false);
            let b = self.bytes();
            while let Some((item, n)) = next_item(&b[used..])? {
                used += n;
                match item {
                    Item::Ping => pings += 1,
                    Item::Err(line) => return Err(err_line(line)),
                    item => {
                        if on(item) {
                            stop = true;
                            break;
                        }
                    }
                }
            }
            self.consume(used);
            for _ in 0..pings {
                self.send(b"PONG\r\n")?;
            }
            if stop || !self.unwrap_more()? {
                return Ok(stop);
            }
        }
    }

    /// Reads until `on` returns true for an item (each read bounded by the
    /// wire's limit).
    fn until(&mut self, mut on: impl FnMut(Item<'_>) -> bool) -> Result<(), DriverError> {
        while !self.walk(&mut on)? {
            self.wire.fill_to(self.wire.avail().len() + 1)?;
        }
        Ok(())
    }

    /// `PING`, then read until `PONG`: the server has processed everything
    /// sent before. Messages arriving meanwhile are skipped.
    pub(super) fn barrier(&mut self) -> Result<(), DriverError> {
        self.send(b"PING\r\n")?;
        self.until(|item| matches!(item, Item::Line(b"PONG")))
    }

    /// Walks every whole item buffered (answering server `PING`s).
    pub(super) fn drain(&mut self, mut on: impl FnMut(Ev)) -> Result<(), DriverError> {
        self.walk(|item| {
            on(match item {
                Item::Msg(_, payload) => Ev::Msg {
                    tail: tail_of(payload),
                },
                _ => Ev::Other,
            });
            false
        })?;
        Ok(())
    }

    /// Answers every buffered request with a `PUB` of its payload to its
    /// reply subject, all answers in one write.
    pub(super) fn echo(&mut self, out: &mut Vec<u8>) -> Result<u64, DriverError> {
        // Over WebSocket the answers go out as one frame, its header
        // written into the room kept in front.
        let head = if self.ws.is_some() {
            ws::MAX_CLIENT_HEADER
        } else {
            0
        };
        out.clear();
        out.resize(head, 0);
        let mut answered = 0;
        self.walk(|item| {
            if let Item::Msg(m, payload) = item
                && !m.reply.is_empty()
            {
                out.extend_from_slice(b"PUB ");
                out.extend_from_slice(m.reply);
                out.extend_from_slice(format!(" {}\r\n", payload.len()).as_bytes());
                out.extend_from_slice(payload);
                out.extend_from_slice(b"\r\n");
                answered += 1;
            }
            false
        })?;
        let body = out.len() - head;
        if body > 0 {
            let at = if head > 0 {
                ws::seal(out, head, body)
            } else {
                0
            };
            self.wire.write_all(&out[at..])?;
        }
        Ok(answered)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_msg_and_hmsg_lines() {
        let m = parse_msg(b"MSG a.b 1 12").unwrap();
        assert_eq!((m.reply, m.total, m.headers), (&b""[..], 12, 0));
        let m = parse_msg(b"MSG a.b 1 _INBOX.x 5").unwrap();
        assert_eq!((m.reply, m.total), (&b"_INBOX.x"[..], 5));
        let m = parse_msg(b"HMSG a.b 9 r 22 30").unwrap();
        assert_eq!((m.reply, m.headers, m.total), (&b"r"[..], 22, 30));
        let m = parse_msg(b"HMSG a.b 9 22 30").unwrap();
        assert_eq!((m.reply, m.headers, m.total), (&b""[..], 22, 30));
        assert!(parse_msg(b"MSG a.b").is_none());
        assert!(parse_msg(b"HMSG a 1 40 30").is_none(), "headers > total");
        assert!(parse_msg(b"MSG a 1 x").is_none());
    }

    #[test]
    fn walks_items_and_waits_for_whole_messages() {
        let buf = b"PING\r\nMSG a 1 3\r\nabc\r\nHMSG a 1 r 21 29\r\nNATS/1.0\r\nperf: 1\r\n\r\n12345678\r\nMSG a 1 5\r\nab";
        let mut used = 0;
        let mut seen = Vec::new();
        while let Some((item, n)) = next_item(&buf[used..]).unwrap() {
            used += n;
            seen.push(match item {
                Item::Msg(_, p) => String::from_utf8_lossy(p).into_owned(),
                Item::Ping => "PING".into(),
                Item::Line(l) | Item::Err(l) => String::from_utf8_lossy(l).into_owned(),
            });
        }
        assert_eq!(seen, ["PING", "abc", "12345678"]);
        assert_eq!(&buf[used..], b"MSG a 1 5\r\nab");
    }

    #[test]
    fn credentials_become_user_and_pass() {
        assert_eq!(user_fields(""), "");
        assert_eq!(user_fields("u1:p\"1"), r#","user":"u1","pass":"p\"1""#);
    }

    #[test]
    fn publish_frames_match_the_protocol() {
        let f = publish_frame("a.b", "", b"hi", false);
        assert_eq!(f.bytes, b"PUB a.b 2\r\nhi\r\n");
        assert_eq!(f.stamp_end, f.bytes.len() - 2);
        let f = publish_frame("a.b", "r.1", b"hi", true);
        assert_eq!(
            f.bytes,
            b"HPUB a.b r.1 21 23\r\nNATS/1.0\r\nperf: 1\r\n\r\nhi\r\n".as_slice()
        );
    }
}
