//! Zero-downtime upgrade and rollback: one node hands its ports to another.
//!
//! A node started with `--take-over` finds its native port claimed
//! ([`crate::owner`]) and asks the holder, over the claim socket, to hand
//! the node over. The exchange, one JSON line each way unless said:
//!
//! 1. new → old: `handover {request}` ([`Request`]: hand-over version, pid,
//!    binary version, data directory, listen addresses, TLS).
//! 2. old: refuses what it cannot hand over (another data directory, other
//!    addresses, TLS on one side only, an unknown hand-over version) with
//!    `{"error": …}` and keeps serving. Otherwise it stops its control plane
//!    (the store is closed, the control and metrics ports are free) while
//!    its data plane keeps serving on the last snapshot, and answers
//!    `{"released": holder}`.
//! 3. new: opens the store, binds the control and metrics ports, binds the
//!    data ports into the old node's `SO_REUSEPORT` groups and attaches its
//!    own steering program, which from then on sends every new connection
//!    to the new node's listeners. It answers `serving`, or `failed REASON`
//!    (a closed stream means the same).
//! 4. On `serving`, old sends its claim sockets with `SCM_RIGHTS` (one line
//!    `{"ports": […]}` carrying the descriptors), so the claim never leaves
//!    the pair of nodes, then lame-ducks: steering given up, both listeners
//!    stopped after a short grace, every client told to reconnect (`Drain`)
//!    over `lame_duck_window_ms`. Its clients reconnect to the new node.
//!    On `failed`, old attaches its steering program again and reopens its
//!    control plane; nothing else of it stopped.
//!
//! Rollback is the same exchange with the previous binary as the new node.
//!
//! Invariants:
//! - a port always has exactly one claim holder (the claim sockets move by
//!   descriptor, never by unbinding the name);
//! - the old node's data plane serves throughout; only its control plane
//!   pauses between `released` and `serving`/`failed`;
//! - only the same user or root may ask (the claim socket's `SO_PEERCRED`
//!   check), and every wait is bounded ([`START_TIMEOUT`]).

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::owner::Holder;

/// The hand-over exchange's version: a node refuses a request of another.
pub const VERSION: u32 = 1;

/// How long the old node waits for the new one to serve (store open,
/// migrations, certificate load, shards started).
pub const START_TIMEOUT: Duration = Duration::from_secs(120);

/// How long the new node waits for the old one's answer to its request
/// (the old node stops its control plane first).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// The longest line either side reads.
const MAX_LINE: usize = 4096;

/// The most claim sockets one hand-over carries (native and WebSocket).
const MAX_CLAIMS: usize = 4;

/// What the new node asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// The exchange's version ([`VERSION`]).
    pub handover: u32,
    /// The new node's process id.
    pub pid: u32,
    /// The new node's `arqonbus` version.
    pub version: String,
    /// The new node's data directory (absolute).
    pub data_dir: PathBuf,
    /// The native data port's address.
    pub listen: SocketAddr,
    /// The WebSocket edge's address, when served.
    pub websocket: Option<SocketAddr>,
    /// Whether the data ports speak TLS.
    pub tls: bool,
}

/// What the old node serves, to check a request against.
#[derive(Debug, Clone)]
pub struct Serving {
    /// Its data directory (absolute).
    pub data_dir: PathBuf,
    /// The native data port's address (as bound).
    pub listen: SocketAddr,
    /// The WebSocket edge's address (as bound), when served.
    pub websocket: Option<SocketAddr>,
    /// Whether the data ports speak TLS.
    pub tls: bool,
}

impl Serving {
    /// Why `request` cannot take this node over, if it cannot.
    pub fn refuse(&self, request: &Request) -> Option<String> {
        if request.handover != VERSION {
            return Some(format!(
                "hand-over version {} asked, this node speaks {VERSION}",
                request.handover
            ));
        }
        if request.data_dir != self.data_dir {
            return Some(format!(
                "this node serves data directory {}, the new one {}",
                self.data_dir.display(),
                request.data_dir.display()
            ));
        }
        if request.listen != self.listen {
            return Some(format!(
                "this node listens on {}, the new one on {}",
                self.listen, request.listen
            ));
        }
        if request.websocket != self.websocket {
            return Some(format!(
                "this node's WebSocket edge is {}, the new one's {}",
                show(self.websocket),
                show(request.websocket)
            ));
        }
        if request.tls != self.tls {
            return Some(format!(
                "TLS is {} here and {} in the new configuration",
                on_off(self.tls),
                on_off(request.tls)
            ));
        }
        None
    }
}

fn show(a: Option<SocketAddr>) -> String {
    a.map_or_else(|| "off".into(), |a| a.to_string())
}

fn on_off(b: bool) -> &'static str {
    if b { "on" } else { "off" }
}

/// Why a hand-over did not happen.
#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    /// The running node refused the request; it keeps serving.
    #[error("the running node refused the hand-over: {0}")]
    Refused(String),
    /// The new node did not start; the old one serves again.
    #[error("the new node did not take over: {0}")]
    NotTaken(String),
    /// The exchange itself failed (a peer died, a malformed line).
    #[error("hand-over exchange: {0}")]
    Io(#[from] io::Error),
}

/// Reads one `\n`-terminated line (without it), at most [`MAX_LINE`] bytes:
/// every line of the claim socket, `who` and `handover` alike. Byte by
/// byte: nothing past the line is consumed, so a later `recvmsg` sees its
/// descriptors.
pub(crate) fn read_line(s: &mut UnixStream) -> io::Result<String> {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    loop {
        match s.read(&mut b)? {
            0 => return Err(io::Error::from(io::ErrorKind::UnexpectedEof)),
            _ if b[0] == b'\n' => break,
            _ if line.len() >= MAX_LINE => {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "line too long"));
            }
            _ => line.push(b[0]),
        }
    }
    String::from_utf8(line).map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "not UTF-8"))
}

fn json_line<T: Serialize>(s: &mut UnixStream, value: &T) -> io::Result<()> {
    let mut line = serde_json::to_vec(value).map_err(io::Error::other)?;
    line.push(b'\n');
    s.write_all(&line)
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Answer {
    Released(Holder),
    Error(String),
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    ports: Vec<u16>,
}

/// The old node's side of one request, from the claim socket.
#[derive(Debug)]
pub struct Incoming {
    /// What the new node asks for.
    pub request: Request,
    stream: UnixStream,
}

impl Incoming {
    /// Parses a request line's JSON (after `handover `).
    pub(crate) fn new(stream: UnixStream, json: &str) -> Result<Self, String> {
        let request = serde_json::from_str(json).map_err(|e| format!("bad request: {e}"))?;
        Ok(Self { request, stream })
    }

    /// Refuses the request; the new node prints `reason`.
    pub fn refuse(mut self, reason: &str) {
        if let Err(e) = json_line(&mut self.stream, &Answer::Error(reason.into())) {
            tracing::debug!(error = %e, "hand-over: the refusal was not delivered");
        }
    }

    /// Says the store and control ports are free, then waits (bounded) for
    /// the new node to serve. `Ok` once it serves; `Err` with its reason
    /// (or the exchange's failure) otherwise.
    pub fn release(&mut self, me: &Holder) -> Result<(), String> {
        let mut exchange = || -> io::Result<String> {
            json_line(&mut self.stream, &Answer::Released(me.clone()))?;
            self.stream.set_read_timeout(Some(START_TIMEOUT))?;
            read_line(&mut self.stream)
        };
        match exchange() {
            Ok(line) if line == "serving" => Ok(()),
            Ok(line) => Err(line
                .strip_prefix("failed ")
                .map_or_else(|| format!("unexpected answer {line:?}"), str::to_owned)),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                Err("the new node closed the exchange without serving".into())
            }
            Err(e) => Err(format!("no answer from the new node: {e}")),
        }
    }

    /// Sends the claim sockets (`ports[i]` is claimed by `fds[i]`).
    pub fn send_claims(mut self, claims: Vec<(u16, OwnedFd)>) -> io::Result<()> {
        let (ports, fds): (Vec<u16>, Vec<OwnedFd>) = claims.into_iter().unzip();
        let mut line = serde_json::to_vec(&Claims { ports }).map_err(io::Error::other)?;
        line.push(b'\n');
        let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
        send_with_fds(&self.stream, &line, &raw)?;
        // Wait for the new node to close its end: it holds the descriptors.
        let mut rest = [0u8; 1];
        self.stream.set_read_timeout(Some(ANSWER_TIMEOUT))?;
        let _ = self.stream.read(&mut rest);
        Ok(())
    }
}

/// The new node's side: an accepted request, the old node's control plane
/// stopped. Dropping it without [`Outgoing::serving`] tells the old node
/// the take-over failed.
#[derive(Debug)]
pub struct Outgoing {
    stream: UnixStream,
    /// The node taking over from us.
    pub old: Holder,
}

/// Asks the node at the other end of `stream` (its claim socket) to hand
/// over; returns once it released its store and control ports.
pub(crate) fn request(
    mut stream: UnixStream,
    request: &Request,
) -> Result<Outgoing, HandoverError> {
    stream.set_read_timeout(Some(ANSWER_TIMEOUT))?;
    stream.set_write_timeout(Some(ANSWER_TIMEOUT))?;
    let mut line = b"handover ".to_vec();
    line.extend(serde_json::to_vec(request).map_err(io::Error::other)?);
    line.push(b'\n');
    stream.write_all(&line)?;
    let answer = read_line(&mut stream)?;
    match serde_json::from_str::<Answer>(&answer) {
        Ok(Answer::Released(old)) => Ok(Outgoing { stream, old }),
        Ok(Answer::Error(reason)) => Err(HandoverError::Refused(reason)),
        Err(_) => Err(HandoverError::Io(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected answer {answer:?}"),
        ))),
    }
}

impl Outgoing {
    /// Tells the old node we serve, and takes its claim sockets.
    pub fn serving(mut self) -> Result<Vec<(u16, OwnedFd)>, HandoverError> {
        self.stream.write_all(b"serving\n")?;
        let (line, fds) = recv_with_fds(&self.stream, MAX_CLAIMS)?;
        let claims: Claims = serde_json::from_slice(line.trim_ascii_end())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("claims line: {e}")))?;
        if claims.ports.len() != fds.len() {
            return Err(HandoverError::Io(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{} ports named, {} descriptors received",
                    claims.ports.len(),
                    fds.len()
                ),
            )));
        }
        Ok(claims.ports.into_iter().zip(fds).collect())
    }

    /// Tells the old node we did not start, and why; it serves again.
    pub fn abort(mut self, reason: &str) {
        let line = format!("failed {}\n", reason.replace('\n', " "));
        if let Err(e) = self.stream.write_all(line.as_bytes()) {
            tracing::debug!(error = %e, "hand-over: the failure was not delivered");
        }
    }
}

/// Sends `bytes` with `fds` attached (`SCM_RIGHTS`).
fn send_with_fds(stream: &UnixStream, bytes: &[u8], fds: &[RawFd]) -> io::Result<()> {
    let fds_len = std::mem::size_of_val(fds);
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(fds_len as u32) } as usize;
    // u64 storage keeps the control buffer aligned for `cmsghdr`.
    let mut control = vec![0u64; space.div_ceil(8)];
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr().cast_mut().cast(),
        iov_len: bytes.len(),
    };
    // SAFETY: msghdr is plain data; every pointer set below points to live
    // buffers (`iov`, `control`) that outlive the sendmsg call, the
    // control length is the CMSG_SPACE of the descriptors written into it,
    // and CMSG_FIRSTHDR of that buffer is non-null and in bounds.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &raw mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space;
        let cmsg = libc::CMSG_FIRSTHDR(&raw const msg);
        if cmsg.is_null() {
            return Err(io::Error::other("no room for the descriptors"));
        }
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(fds_len as u32) as usize;
        std::ptr::copy_nonoverlapping(fds.as_ptr().cast::<u8>(), libc::CMSG_DATA(cmsg), fds_len);
        let sent = libc::sendmsg(stream.as_raw_fd(), &raw const msg, libc::MSG_NOSIGNAL);
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        if sent.cast_unsigned() != bytes.len() {
            return Err(io::Error::new(io::ErrorKind::WriteZero, "short write"));
        }
    }
    Ok(())
}

/// Receives one line and the descriptors attached to it (at most `max`;
/// more, or a cut control message, is an error and closes what came).
fn recv_with_fds(stream: &UnixStream, max: usize) -> io::Result<(Vec<u8>, Vec<OwnedFd>)> {
    let mut buf = vec![0u8; MAX_LINE];
    let fds_room = max * std::mem::size_of::<RawFd>();
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(fds_room as u32) } as usize;
    let mut control = vec![0u64; space.div_ceil(8)];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut fds = Vec::new();
    // SAFETY: as in `send_with_fds`: the pointers point to live buffers of
    // the lengths given. Each SCM_RIGHTS header the kernel wrote lies inside
    // `control` (CMSG_NXTHDR checks bounds), its data holds
    // `(cmsg_len - CMSG_LEN(0)) / size_of::<RawFd>()` descriptors, which are
    // new and ours (MSG_CMSG_CLOEXEC), so each is owned exactly once.
    let got = unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &raw mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space;
        let got = libc::recvmsg(stream.as_raw_fd(), &raw mut msg, libc::MSG_CMSG_CLOEXEC);
        if got < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut cmsg = libc::CMSG_FIRSTHDR(&raw const msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg);
                let n =
                    ((*cmsg).cmsg_len - libc::CMSG_LEN(0) as usize) / std::mem::size_of::<RawFd>();
                for i in 0..n {
                    let at = data.add(i * std::mem::size_of::<RawFd>());
                    let fd = std::ptr::read_unaligned(at.cast::<[u8; 4]>());
                    let fd = RawFd::from_ne_bytes(fd);
                    fds.push(OwnedFd::from_raw_fd(fd));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&raw const msg, cmsg);
        }
        if msg.msg_flags & libc::MSG_CTRUNC != 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "too many descriptors",
            ));
        }
        got.cast_unsigned()
    };
    buf.truncate(got);
    // The rest of the line, if the first read cut it.
    let mut s = stream;
    while !buf.ends_with(b"\n") {
        if buf.len() > MAX_LINE {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "line too long"));
        }
        let mut b = [0u8; 256];
        match s.read(&mut b)? {
            0 => return Err(io::Error::from(io::ErrorKind::UnexpectedEof)),
            n => buf.extend_from_slice(&b[..n]),
        }
    }
    Ok((buf, fds))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> Request {
        Request {
            handover: VERSION,
            pid: 2,
            version: "0.1.0".into(),
            data_dir: "/var/lib/arqonbus".into(),
            listen: "0.0.0.0:7420".parse().unwrap(),
            websocket: None,
            tls: true,
        }
    }

    fn serving() -> Serving {
        let r = request();
        Serving {
            data_dir: r.data_dir,
            listen: r.listen,
            websocket: r.websocket,
            tls: r.tls,
        }
    }

    /// One edit of a request, for the table below.
    type Change = fn(&mut Request);

    #[test]
    fn a_matching_request_is_taken_and_each_difference_is_named() {
        let here = serving();
        assert_eq!(here.refuse(&request()), None);
        let cases: [(Change, &str); 5] = [
            (|r| r.handover = 2, "hand-over version 2"),
            (|r| r.data_dir = "/srv/other".into(), "/srv/other"),
            (
                |r| r.listen = "127.0.0.1:7420".parse().unwrap(),
                "127.0.0.1:7420",
            ),
            (
                |r| r.websocket = "0.0.0.0:7422".parse().ok(),
                "WebSocket edge is off",
            ),
            (|r| r.tls = false, "TLS is on here and off"),
        ];
        for (change, expect) in cases {
            let mut r = request();
            change(&mut r);
            let reason = here.refuse(&r).unwrap();
            assert!(reason.contains(expect), "{reason:?} lacks {expect:?}");
        }
    }

    #[test]
    fn descriptors_cross_with_their_line() -> io::Result<()> {
        let (a, b) = UnixStream::pair()?;
        let (keep, _peer) = UnixStream::pair()?;
        send_with_fds(&a, b"{\"ports\":[7420]}\n", &[keep.as_raw_fd()])?;
        let (line, fds) = recv_with_fds(&b, MAX_CLAIMS)?;
        assert_eq!(line, b"{\"ports\":[7420]}\n");
        assert_eq!(fds.len(), 1);
        // A new descriptor for the same socket.
        assert_ne!(fds[0].as_raw_fd(), keep.as_raw_fd());
        let got = UnixStream::from(fds.into_iter().next().unwrap());
        assert_eq!(got.local_addr()?.as_pathname(), None);
        Ok(())
    }

    #[test]
    fn more_descriptors_than_asked_are_refused() -> io::Result<()> {
        let (a, b) = UnixStream::pair()?;
        let pairs: Vec<_> = (0..3)
            .map(|_| UnixStream::pair())
            .collect::<Result<_, _>>()?;
        let raw: Vec<RawFd> = pairs.iter().map(|(x, _)| x.as_raw_fd()).collect();
        send_with_fds(&a, b"{}\n", &raw)?;
        let e = recv_with_fds(&b, 1).err().map(|e| e.kind());
        assert_eq!(e, Some(io::ErrorKind::InvalidData));
        Ok(())
    }
}
