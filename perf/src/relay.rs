//! The raw relay: the physical ceiling for any broker on this host.
//!
//! One glommio (io_uring) executor on one thread. Each connection sends a
//! single hello line (see [`crate::driver::raw`]) and gets `OK\n`; from then
//! on nothing is parsed. A publisher's task reads up to 64 KiB at a time and
//! writes those exact bytes to every subscriber of its channel (`fan`), or to
//! the next member in turn (`queue`), before it reads again. That is the
//! least a broker must do: one read from the publisher's socket into user
//! space, one write per subscriber, no routing table walk, no copy, and no
//! framing except for queue groups, whose chunks are cut at frame boundaries
//! (a walk over 4-byte length prefixes) so each member gets whole frames. A subscriber too slow to take a chunk holds its publisher back
//! (nothing is ever dropped).
//!
//! Not a broker: no authentication, no subjects, no TLS. Loopback only.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;

use futures_lite::future::poll_fn;
use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::{TcpListener, TcpStream};
use glommio::sync::Semaphore;
use glommio::{LocalExecutorBuilder, Placement};

/// Bytes read from a publisher per chunk.
const CHUNK: usize = 64 * 1024;

/// Longest hello line.
const MAX_HELLO: usize = 512;

/// Why the relay could not run.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RelayError {
    /// The executor could not start (io_uring, memlock).
    #[error("executor: {0}")]
    Executor(String),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {reason}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
}

/// One subscriber socket, shared by the publishers writing to it.
struct Sub {
    stream: RefCell<TcpStream>,
    /// One writer at a time, so chunks never interleave.
    writing: Semaphore,
    alive: Cell<bool>,
}

#[derive(Default)]
struct Channel {
    fan: Vec<Rc<Sub>>,
    queue: Vec<Rc<Sub>>,
    next: usize,
}

type Hub = Rc<RefCell<HashMap<String, Channel>>>;

/// What a connection's hello line asks for.
struct Hello {
    publish: Option<String>,
    subscribe: Option<String>,
    queue: bool,
}

fn parse_hello(line: &[u8]) -> Option<Hello> {
    let line = std::str::from_utf8(line).ok()?;
    let mut words = line.split_ascii_whitespace();
    if words.next()? != "RELAY" {
        return None;
    }
    let mut h = Hello {
        publish: None,
        subscribe: None,
        queue: false,
    };
    for w in words {
        let (k, v) = w.split_once('=')?;
        let name = (v != "-").then(|| v.to_owned());
        match k {
            "pub" => h.publish = name,
            "sub" => h.subscribe = name,
            "mode" => h.queue = v == "queue",
            _ => return None,
        }
    }
    Some(h)
}

async fn read_some(stream: &RefCell<TcpStream>, buf: &mut [u8]) -> io::Result<usize> {
    // The borrow lasts one poll, never across a suspension, so writers from
    // other tasks can use the same socket while this read is pending.
    poll_fn(|cx| Pin::new(&mut *stream.borrow_mut()).poll_read(cx, buf)).await
}

async fn write_all(sub: &Sub, mut buf: &[u8]) -> io::Result<()> {
    let _turn = sub
        .writing
        .acquire_permit(1)
        .await
        .map_err(|e| io::Error::other(e.to_string()))?;
    while !buf.is_empty() {
        let n = poll_fn(|cx| Pin::new(&mut *sub.stream.borrow_mut()).poll_write(cx, buf)).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        buf = &buf[n..];
    }
    Ok(())
}

/// Reads the hello line. Clients send nothing else before `OK`, so a read
/// never takes bytes past it.
async fn read_hello(stream: &RefCell<TcpStream>) -> io::Result<Option<Hello>> {
    let mut buf = [0u8; MAX_HELLO];
    let mut len = 0;
    loop {
        let n = read_some(stream, &mut buf[len..]).await?;
        if n == 0 {
            return Ok(None);
        }
        len += n;
        if buf[len - 1] == b'\n' {
            return Ok(parse_hello(&buf[..len - 1]));
        }
        if len == MAX_HELLO {
            return Ok(None);
        }
    }
}

/// Length of the whole raw frames (4-byte big-endian length, then that
/// many bytes) at the front of `buf`.
fn whole_frames(buf: &[u8]) -> usize {
    let mut at = 0;
    while let Some(p) = buf.get(at..).and_then(<[u8]>::first_chunk::<4>) {
        let end = at + 4 + u32::from_be_bytes(*p) as usize;
        if end > buf.len() {
            break;
        }
        at = end;
    }
    at
}

/// Forwards everything `stream` sends to the channel's subscribers. For
/// queue members it cuts chunks at frame boundaries (walking the length
/// prefixes: the least a queue group needs); fan-out forwards bytes as read.
async fn forward(hub: &Hub, channel: &str, stream: &RefCell<TcpStream>) -> io::Result<()> {
    let mut buf = vec![0u8; CHUNK];
    let mut filled = 0;
    let mut targets: Vec<Rc<Sub>> = Vec::new();
    loop {
        if filled == buf.len() {
            // One frame larger than the buffer.
            buf.resize(buf.len() * 2, 0);
        }
        let n = read_some(stream, &mut buf[filled..]).await?;
        if n == 0 {
            return Ok(());
        }
        filled += n;
        targets.clear();
        let mut cut = filled;
        if let Some(ch) = hub.borrow_mut().get_mut(channel) {
            targets.extend(ch.fan.iter().filter(|s| s.alive.get()).cloned());
            let members = ch.queue.len();
            if members > 0 {
                cut = whole_frames(&buf[..filled]);
                if cut > 0 {
                    ch.next = (ch.next + 1) % members;
                    targets.push(ch.queue[ch.next].clone());
                }
            }
        }
        if cut == 0 {
            continue;
        }
        for sub in &targets {
            if sub.alive.get() && write_all(sub, &buf[..cut]).await.is_err() {
                sub.alive.set(false);
            }
        }
        buf.copy_within(cut..filled, 0);
        filled -= cut;
    }
}

async fn connection(hub: Hub, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let stream = Rc::new(Sub {
        stream: RefCell::new(stream),
        writing: Semaphore::new(1),
        alive: Cell::new(true),
    });
    let Ok(Some(hello)) = read_hello(&stream.stream).await else {
        return;
    };
    if let Some(ch) = &hello.subscribe {
        let mut hub = hub.borrow_mut();
        let ch = hub.entry(ch.clone()).or_default();
        if hello.queue {
            ch.queue.push(stream.clone());
        } else {
            ch.fan.push(stream.clone());
        }
    }
    if write_all(&stream, b"OK\n").await.is_ok() {
        let result = if let Some(ch) = &hello.publish {
            forward(&hub, ch, &stream.stream).await
        } else {
            // Nothing to forward: wait for the peer to leave.
            let mut sink = vec![0u8; 4096];
            loop {
                match read_some(&stream.stream, &mut sink).await {
                    Ok(0) => break Ok(()),
                    Ok(_) => {}
                    Err(e) => break Err(e),
                }
            }
        };
        drop(result);
    }
    stream.alive.set(false);
    if let Some(ch) = &hello.subscribe
        && let Some(c) = hub.borrow_mut().get_mut(ch)
    {
        c.fan.retain(|s| !Rc::ptr_eq(s, &stream));
        c.queue.retain(|s| !Rc::ptr_eq(s, &stream));
        c.next = 0;
    }
}

/// Runs the relay on this thread until the process is stopped. `ready` is
/// called with the bound address once it accepts connections.
pub(crate) fn serve(
    listen: SocketAddr,
    cpu: Option<usize>,
    ready: impl FnOnce(SocketAddr),
) -> Result<(), RelayError> {
    let placement = cpu.map_or(Placement::Unbound, Placement::Fixed);
    let ex = LocalExecutorBuilder::new(placement)
        .name("arqonbus-relay")
        .io_memory(256 * 1024)
        .make()
        .map_err(|e| RelayError::Executor(e.to_string()))?;
    ex.run(async move {
        let listener = TcpListener::bind(listen).map_err(|e| RelayError::Bind {
            addr: listen,
            reason: e.to_string(),
        })?;
        let addr = listener.local_addr().map_err(|e| RelayError::Bind {
            addr: listen,
            reason: e.to_string(),
        })?;
        ready(addr);
        let hub: Hub = Rc::default();
        loop {
            match listener.accept().await {
                Ok(stream) => {
                    glommio::spawn_local(connection(hub.clone(), stream)).detach();
                }
                Err(e) => {
                    eprintln!("relay: accept failed: {e}");
                    glommio::timer::sleep(std::time::Duration::from_millis(10)).await;
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_at_frame_boundaries() {
        let mut b = Vec::new();
        for len in [3u32, 0, 5] {
            b.extend_from_slice(&len.to_be_bytes());
            b.extend(std::iter::repeat_n(7u8, len as usize));
        }
        assert_eq!(whole_frames(&b), b.len());
        assert_eq!(whole_frames(&b[..b.len() - 1]), 4 + 3 + 4);
        assert_eq!(whole_frames(&b[..2]), 0);
    }

    #[test]
    fn hello_lines() {
        let h = parse_hello(b"RELAY pub=a sub=- mode=fan").unwrap();
        assert_eq!(
            (h.publish.as_deref(), h.subscribe.as_deref(), h.queue),
            (Some("a"), None, false)
        );
        let h = parse_hello(b"RELAY pub=- sub=b mode=queue").unwrap();
        assert_eq!(
            (h.publish, h.subscribe.as_deref(), h.queue),
            (None, Some("b"), true)
        );
        assert!(parse_hello(b"HELLO pub=a").is_none());
        assert!(parse_hello(b"RELAY what").is_none());
    }
}
