//! A minimal blocking ArqonBus client for the hostile scenarios: a TCP
//! connection from a chosen loopback source address, one `Connect` and its
//! answer, pre-encoded control frames. The perf drivers (`crate::driver`)
//! carry the ordinary traffic; this exists because an attacker does what
//! they never do (bind another source address, send a wrong credential,
//! write Pings and never read).
//!
//! Invariants: plaintext only; every read and write is bounded by the
//! timeout given, so no scenario thread can hang; a refusal is reported by
//! its error code's name, never with the credential.

use std::io::{self, Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::os::fd::FromRawFd as _;
use std::time::Duration;

use arqonbus_proto::codec;
use arqonbus_proto::v1::{self, frame::Kind};
use bytes::Bytes;

/// Why a login did not succeed.
#[derive(Debug, thiserror::Error)]
pub(super) enum LoginError {
    /// Socket trouble (refused, reset, timed out).
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    /// The server answered with an error frame: its code's name.
    #[error("refused: {0}")]
    Refused(String),
    /// The server sent something else.
    #[error("protocol: {0}")]
    Protocol(String),
}

/// The bytes of one frame.
pub(super) fn encode(kind: &Kind) -> Vec<u8> {
    let mut out = Vec::new();
    // Encoding a control frame into a Vec cannot fail.
    let _ = codec::encode(kind, &mut out);
    out
}

/// A TCP connection to `addr` from `source` (any port), with `timeout` on
/// every read and write.
pub(super) fn connect(
    addr: SocketAddr,
    source: Option<Ipv4Addr>,
    timeout: Duration,
) -> io::Result<TcpStream> {
    let stream = match (source, addr) {
        (Some(src), SocketAddr::V4(dst)) => connect_from(src, dst)?,
        _ => TcpStream::connect_timeout(&addr, timeout)?,
    };
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    Ok(stream)
}

fn sockaddr(a: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(a.ip().octets()),
        },
        sin_zero: [0; 8],
    }
}

/// socket(2), bind(2) to `src:0`, connect(2) to `dst` (blocking; loopback
/// answers at once).
fn connect_from(src: Ipv4Addr, dst: SocketAddrV4) -> io::Result<TcpStream> {
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: plain socket calls on a descriptor this function owns; the
    // sockaddr structs live on the stack for the duration of each call; the
    // descriptor is closed on every error path and otherwise handed to
    // `TcpStream`, which owns it from then on.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let local = sockaddr(SocketAddrV4::new(src, 0));
        let remote = sockaddr(dst);
        if libc::bind(fd, (&raw const local).cast(), len) != 0
            || libc::connect(fd, (&raw const remote).cast(), len) != 0
        {
            let e = io::Error::last_os_error();
            libc::close(fd);
            return Err(e);
        }
        Ok(TcpStream::from_raw_fd(fd))
    }
}

/// Sends `Connect` with `credential` and reads the answer: the shard of a
/// `Welcome`, or the refusal.
pub(super) fn login(stream: &mut TcpStream, credential: &str) -> Result<u32, LoginError> {
    stream.write_all(&encode(&Kind::Connect(v1::Connect {
        protocol_version: arqonbus_proto::PROTOCOL_VERSION,
        credential: credential.to_owned(),
        client_name: "arqonbus-perf-chaos".into(),
        client_kind: v1::ClientKind::Agent.into(),
        client_version: env!("CARGO_PKG_VERSION").into(),
        no_echo: false,
    })))?;
    let mut buf = Vec::new();
    match read_frame(stream, &mut buf)? {
        Kind::Welcome(w) => Ok(w.shard),
        Kind::Error(e) => Err(LoginError::Refused(code_name(e.code))),
        other => Err(LoginError::Protocol(format!(
            "expected Welcome, got {}",
            kind_name(&other)
        ))),
    }
}

/// A Ping and its Pong on a logged-in connection (frames before the Pong
/// are skipped).
pub(super) fn ping(stream: &mut TcpStream) -> Result<(), LoginError> {
    stream.write_all(&encode(&Kind::Ping(v1::Ping {})))?;
    let mut buf = Vec::new();
    loop {
        match read_frame(stream, &mut buf)? {
            Kind::Pong(_) => return Ok(()),
            Kind::Error(e) if e.close => return Err(LoginError::Refused(code_name(e.code))),
            _ => {}
        }
    }
}

/// The name of an error code without its prefix (`AUTH_THROTTLED`), or the
/// number when this build does not know it.
pub(super) fn code_name(code: i32) -> String {
    v1::ErrorCode::try_from(code).map_or_else(
        |_| format!("code {code}"),
        |c| c.as_str_name().trim_start_matches("ERROR_CODE_").to_owned(),
    )
}

fn kind_name(kind: &Kind) -> &'static str {
    match kind {
        Kind::Welcome(_) => "Welcome",
        Kind::Error(_) => "Error",
        Kind::Pong(_) => "Pong",
        Kind::Ping(_) => "Ping",
        Kind::Message(_) => "Message",
        _ => "another frame",
    }
}

/// Reads one whole frame (`buf` keeps what follows it).
fn read_frame(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<Kind, LoginError> {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(total) =
            codec::frame_len(buf, 1 << 24).map_err(|e| LoginError::Protocol(e.to_string()))?
        {
            let body = Bytes::copy_from_slice(&buf[codec::LEN_PREFIX..total]);
            buf.drain(..total);
            return codec::decode_body(body).map_err(|e| LoginError::Protocol(e.to_string()));
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(LoginError::Io(io::ErrorKind::UnexpectedEof.into()));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}
