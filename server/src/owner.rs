//! One owner per listen port.
//!
//! The data plane binds its ports with `SO_REUSEPORT`, so without a guard a
//! second node started by the same user on the same port would silently join
//! the first one's listener group and take part of its new clients. Before a
//! node binds a client port (the native data port and the WebSocket port) it
//! therefore claims it: it binds the abstract Unix socket
//! `arqonbus/port/<port>`. The kernel lets one socket hold an abstract name
//! per network namespace (the namespace the port lives in too) and frees it
//! when its process dies, so `kill -9` leaves no stale lock behind.
//!
//! The claim answers `who` with its holder's identity (pid, data directory,
//! version), so a refused start names the running node, and passes
//! `handover` requests to the node ([`crate::handover`]: a new process
//! taking the node over, the only way a second process joins the port). It
//! answers only peers of the same user or root (`SO_PEERCRED`); anyone else
//! learns that the port is held, not by whom.
//!
//! Invariants:
//! - a port is claimed before it is bound and released only after the node
//!   stopped serving it (the claim is dropped last);
//! - the claim is port-wide: `0.0.0.0:7420`, `127.0.0.1:7420` and
//!   `[::]:7420` all overlap for clients, so they are one claim;
//! - the identity thread spends at most [`PEER_TIMEOUT`] on one peer and
//!   never touches the data path;
//! - a claim moves to another process only as its socket's descriptor
//!   ([`PortClaim::surrender`], [`PortClaim::adopt`]), so the name is never
//!   free in between.

use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc::UnboundedSender;

use crate::handover::{self, HandoverError, Incoming, Outgoing};

/// How long the holder waits for one peer before it moves to the next.
pub const PEER_TIMEOUT: Duration = Duration::from_secs(1);

/// How long a refused start waits for the holder's answer: long enough for
/// a few silent peers queued ahead of it.
const ASK_TIMEOUT: Duration = Duration::from_secs(5);

/// How often the claim thread looks at its stop flag.
const STOP_POLL_MS: i32 = 100;

/// Where a claim passes hand-over requests: the node's main loop.
type Handovers = Arc<Mutex<Option<UnboundedSender<Incoming>>>>;

/// Who holds a port: what a refused start prints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    /// The holder's process id.
    pub pid: u32,
    /// The holder's data directory.
    pub data_dir: PathBuf,
    /// The holder's `arqonbus` version.
    pub version: String,
}

impl Holder {
    /// This process, serving `data_dir`.
    pub fn this_process(data_dir: PathBuf) -> Self {
        Self {
            pid: std::process::id(),
            data_dir,
            version: env!("CARGO_PKG_VERSION").to_owned(),
        }
    }
}

/// Why a port could not be claimed.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    /// Another node serves the port and said who it is.
    #[error(
        "port {port} is held by a running ArqonBus node (pid {}, data directory {}, version {}); stop that node, or give this one another port",
        holder.pid,
        holder.data_dir.display(),
        holder.version
    )]
    Held {
        /// The port asked for.
        port: u16,
        /// The node holding it.
        holder: Holder,
    },
    /// Another node serves the port and did not say who it is (another
    /// user's node, or one too busy to answer).
    #[error(
        "port {port} is held by another ArqonBus node ({reason}); find it with `ss -ltnp 'sport = :{port}'`"
    )]
    HeldUnknown {
        /// The port asked for.
        port: u16,
        /// Why the holder is unknown.
        reason: String,
    },
    /// The claim socket could not be created.
    #[error("cannot claim port {port}: {source}")]
    Io {
        /// The port asked for.
        port: u16,
        /// The socket error.
        source: std::io::Error,
    },
}

/// A held port. Dropping it releases the port for another node.
#[derive(Debug)]
pub struct PortClaim {
    port: u16,
    /// Shared with the thread; taken by [`PortClaim::surrender`].
    listener: Option<Arc<UnixListener>>,
    stop: Arc<AtomicBool>,
    handovers: Handovers,
    thread: Option<JoinHandle<()>>,
}

fn claim_name(port: u16) -> Result<SocketAddr, std::io::Error> {
    SocketAddr::from_abstract_name(format!("arqonbus/port/{port}").as_bytes())
}

/// Claims `port` for `me`, or says who holds it.
pub fn claim(port: u16, me: &Holder) -> Result<PortClaim, ClaimError> {
    let io = |source| ClaimError::Io { port, source };
    let name = claim_name(port).map_err(io)?;
    let listener = match UnixListener::bind_addr(&name) {
        Ok(l) => l,
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => return Err(ask(port, &name)),
        Err(e) => return Err(io(e)),
    };
    PortClaim::serve(port, listener, me).map_err(io)
}

impl PortClaim {
    /// Answers on `listener`, the bound claim socket of `port`.
    fn serve(port: u16, listener: UnixListener, me: &Holder) -> std::io::Result<Self> {
        // Non-blocking, polled: the thread sees `stop` without a wake-up
        // connection, which after a hand-over could reach the other process.
        listener.set_nonblocking(true)?;
        let listener = Arc::new(listener);
        let stop = Arc::new(AtomicBool::new(false));
        let handovers = Handovers::default();
        let reply = serde_json::to_string(me).map_err(std::io::Error::other)?;
        let thread = std::thread::Builder::new()
            .name(format!("arqonbus-claim-{port}"))
            .spawn({
                let (listener, stop, handovers) =
                    (listener.clone(), stop.clone(), handovers.clone());
                move || answer(&listener, &reply, &stop, &handovers)
            })?;
        Ok(Self {
            port,
            listener: Some(listener),
            stop,
            handovers,
            thread: Some(thread),
        })
    }

    /// Holds `port` through a claim socket another process surrendered
    /// (an upgrade hand-over).
    pub fn adopt(port: u16, socket: OwnedFd, me: &Holder) -> std::io::Result<Self> {
        Self::serve(port, UnixListener::from(socket), me)
    }

    /// The claimed port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Passes `handover` requests to `to` from now on; without it they are
    /// refused.
    pub fn forward_handovers(&self, to: UnboundedSender<Incoming>) {
        *self
            .handovers
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(to);
    }

    /// Stops answering and gives up the claim socket, still bound, to be
    /// sent to the process taking the node over.
    pub fn surrender(mut self) -> std::io::Result<(u16, OwnedFd)> {
        self.halt();
        match self.listener.take().map(Arc::try_unwrap) {
            Some(Ok(l)) => Ok((self.port, OwnedFd::from(l))),
            _ => Err(std::io::Error::other("the claim socket is still in use")),
        }
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for PortClaim {
    fn drop(&mut self) {
        self.halt();
    }
}

/// Asks the node holding `port` to hand itself over to this process.
pub fn request_handover(port: u16, request: &handover::Request) -> Result<Outgoing, HandoverError> {
    let stream = UnixStream::connect_addr(&claim_name(port)?)?;
    handover::request(stream, request)
}

/// The claim thread: one short exchange per peer until `stop`.
fn answer(listener: &UnixListener, reply: &str, stop: &AtomicBool, handovers: &Handovers) {
    while !stop.load(Ordering::Acquire) {
        let mut poll = libc::pollfd {
            fd: listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the listener this thread borrows.
        let ready = unsafe { libc::poll(&raw mut poll, 1, STOP_POLL_MS) };
        if ready <= 0 {
            continue;
        }
        let peer = match listener.accept() {
            Ok((peer, _)) => peer,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => {
                tracing::debug!(error = %e, "port claim: accept failed");
                continue;
            }
        };
        if let Err(e) = answer_one(peer, reply, handovers) {
            tracing::debug!(error = %e, "port claim: request not answered");
        }
    }
}

fn answer_one(mut peer: UnixStream, reply: &str, handovers: &Handovers) -> std::io::Result<()> {
    peer.set_nonblocking(false)?;
    peer.set_read_timeout(Some(PEER_TIMEOUT))?;
    peer.set_write_timeout(Some(PEER_TIMEOUT))?;
    if !same_user_or_root(&peer)? {
        return writeln!(peer, r#"{{"error":"held by another user"}}"#);
    }
    let line = handover::read_line(&mut peer)?;
    let line = line.trim_end();
    if line == "who" {
        return writeln!(peer, "{reply}");
    }
    let Some(json) = line.strip_prefix("handover ") else {
        return writeln!(peer, r#"{{"error":"unknown request"}}"#);
    };
    let to = handovers
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let Some(to) = to else {
        return writeln!(
            peer,
            r#"{{"error":"this port's node takes hand-overs on its native port"}}"#
        );
    };
    let refusal = match Incoming::new(peer.try_clone()?, json) {
        Ok(incoming) => match to.send(incoming) {
            Ok(()) => return Ok(()),
            Err(_) => "the node is stopping".to_owned(),
        },
        Err(reason) => reason,
    };
    writeln!(peer, "{}", serde_json::json!({ "error": refusal }))
}

/// Whether the peer runs as this process's user, or as root.
fn same_user_or_root(peer: &UnixStream) -> std::io::Result<bool> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` is plain data of the size passed; the kernel writes at
    // most `len` bytes of it. The descriptor is the open peer socket.
    let rc = unsafe {
        libc::getsockopt(
            peer.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&raw mut cred).cast(),
            &raw mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: geteuid cannot fail and has no preconditions.
    let me = unsafe { libc::geteuid() };
    Ok(cred.uid == me || cred.uid == 0)
}

/// Asks the holder of `name` who it is.
fn ask(port: u16, name: &SocketAddr) -> ClaimError {
    let unknown = |reason: String| ClaimError::HeldUnknown { port, reason };
    let exchange = || -> std::io::Result<String> {
        let mut s = UnixStream::connect_addr(name)?;
        s.set_read_timeout(Some(ASK_TIMEOUT))?;
        s.set_write_timeout(Some(ASK_TIMEOUT))?;
        s.write_all(b"who\n")?;
        handover::read_line(&mut s)
    };
    match exchange() {
        Ok(line) => match serde_json::from_str::<Holder>(&line) {
            Ok(holder) => ClaimError::Held { port, holder },
            Err(_) => match serde_json::from_str::<serde_json::Value>(&line) {
                Ok(v) => unknown(
                    v.get("error")
                        .and_then(serde_json::Value::as_str)
                        .unwrap_or("it gave no identity")
                        .to_owned(),
                ),
                Err(_) => unknown("it gave no identity".into()),
            },
        },
        Err(e) => unknown(format!("it did not answer: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead as _, BufReader};

    use super::*;

    /// A port number no other test claims (the claim is only a name; nothing
    /// binds the TCP port here).
    fn port(n: u16) -> u16 {
        // Spread by pid so concurrent test binaries do not collide.
        60_000 + ((std::process::id() as u16).wrapping_mul(7).wrapping_add(n)) % 5_000
    }

    #[test]
    fn a_second_claim_names_the_first_holder() -> Result<(), ClaimError> {
        let p = port(1);
        let me = Holder::this_process("/var/lib/first".into());
        let first = claim(p, &me)?;
        match claim(p, &Holder::this_process("/var/lib/second".into())) {
            Err(ClaimError::Held { port, holder }) => {
                assert_eq!(port, p);
                assert_eq!(holder, me);
            }
            other => panic!("expected Held, got {other:?}"),
        }
        drop(first);
        // Released: the next node claims it.
        let again = claim(p, &me)?;
        assert_eq!(again.port(), p);
        Ok(())
    }

    #[test]
    fn the_refusal_names_pid_and_data_directory() {
        let e = ClaimError::Held {
            port: 7420,
            holder: Holder {
                pid: 4242,
                data_dir: "/var/lib/arqonbus".into(),
                version: "0.1.0".into(),
            },
        };
        let text = e.to_string();
        assert!(text.contains("port 7420"), "{text}");
        assert!(text.contains("pid 4242"), "{text}");
        assert!(text.contains("/var/lib/arqonbus"), "{text}");
    }

    #[test]
    fn an_unknown_request_gets_an_error_not_the_identity() -> Result<(), Box<dyn std::error::Error>>
    {
        let p = port(2);
        let _held = claim(p, &Holder::this_process("/d".into()))?;
        let mut s = UnixStream::connect_addr(&claim_name(p)?)?;
        s.set_read_timeout(Some(PEER_TIMEOUT))?;
        s.write_all(b"handover\n")?;
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line)?;
        assert_eq!(line.trim_end(), r#"{"error":"unknown request"}"#);
        Ok(())
    }

    #[test]
    fn a_silent_peer_does_not_block_the_next_one() -> Result<(), Box<dyn std::error::Error>> {
        let p = port(3);
        let me = Holder::this_process("/d".into());
        let _held = claim(p, &me)?;
        // Connects and says nothing: the thread gives up on it after
        // PEER_TIMEOUT and answers the next request.
        let _silent = UnixStream::connect_addr(&claim_name(p)?)?;
        match claim(p, &me) {
            Err(ClaimError::Held { holder, .. }) => assert_eq!(holder, me),
            other => panic!("expected Held, got {other:?}"),
        }
        Ok(())
    }
}
