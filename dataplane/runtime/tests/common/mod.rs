//! A deliberately raw protocol client for data-plane tests: blocking std
//! sockets and the frame codec, nothing else, so tests can also send bytes a
//! real client never would. Read timeouts bound every wait; they are safety
//! nets, never used to synchronise.
#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test support"
)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use arqonbus_core::auth::CredentialHash;
use arqonbus_core::limits::Limits;
use arqonbus_core::placement::TenantPlacement;
use arqonbus_core::policy::Permissions;
use arqonbus_core::snapshot::{
    ConfigSnapshot, CredentialEntry, PrincipalEntry, Quotas, TenantEntry,
};
use arqonbus_core::{CredentialId, PrincipalId, TenantId};
use arqonbus_dataplane::{DataPlane, DataPlaneConfig};
use arqonbus_proto::codec;
use arqonbus_proto::v1::{self, frame::Kind};
use bytes::{Bytes, BytesMut};

pub const TOKEN_A: &str = "abt_tenant_a_token";
pub const TOKEN_B: &str = "abt_tenant_b_token";

/// Two tenants, one principal and bearer credential each, no policies.
/// Both are `spread`: most tests place connections on chosen shards
/// themselves (to force cross-shard paths).
pub fn snapshot(epoch: u64, limits: Limits) -> ConfigSnapshot {
    snapshot_placed(
        epoch,
        limits,
        TenantPlacement::Spread,
        TenantPlacement::Spread,
    )
}

/// [`snapshot`] with tenant "a" placed `a` and tenant "b" placed `b`.
pub fn snapshot_placed(
    epoch: u64,
    limits: Limits,
    a: TenantPlacement,
    b: TenantPlacement,
) -> ConfigSnapshot {
    let mut c = ConfigSnapshot::new(epoch, limits);
    for (i, (token, name)) in [(TOKEN_A, "a"), (TOKEN_B, "b")].into_iter().enumerate() {
        let id = i as u64 + 1;
        c.insert_tenant(TenantEntry {
            id: TenantId(id),
            name: name.into(),
            quotas: Quotas::default(),
            verify_key: None,
            placement: if id == 1 { a } else { b },
        });
        c.insert_principal(PrincipalEntry {
            id: PrincipalId(id),
            tenant: TenantId(id),
            name: "test".into(),
            roles: vec![],
            quotas: Quotas::default(),
            permissions: Arc::new(Permissions::allow_all()),
        })
        .unwrap();
        c.insert_bearer(
            CredentialHash::of(token),
            CredentialEntry {
                id: CredentialId(id),
                principal: PrincipalId(id),
                expires_at_unix: None,
            },
        )
        .unwrap();
    }
    c
}

pub fn config() -> DataPlaneConfig {
    config_with(|_| {})
}

/// The test configuration with adjusted limits.
pub fn config_with(edit: impl FnOnce(&mut Limits)) -> DataPlaneConfig {
    let mut limits = Limits::default();
    edit(&mut limits);
    let mut c = DataPlaneConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        2,
        Arc::new(snapshot(1, limits)),
    );
    c.cpus = vec![0, 1];
    c.tick = Duration::from_millis(20);
    c
}

pub fn start(cfg: &DataPlaneConfig) -> DataPlane {
    DataPlane::start(cfg).expect("data plane starts")
}

pub struct RawClient {
    pub sock: TcpStream,
    buf: BytesMut,
    pub welcome: Option<v1::Welcome>,
    next_sid: u64,
}

impl RawClient {
    pub fn open(addr: SocketAddr) -> Self {
        let sock = TcpStream::connect(addr).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        sock.set_nodelay(true).unwrap();
        Self {
            sock,
            buf: BytesMut::new(),
            welcome: None,
            next_sid: 1,
        }
    }

    pub fn connect(addr: SocketAddr, token: &str) -> Self {
        let mut c = Self::open(addr);
        c.send(&Kind::Connect(v1::Connect {
            protocol_version: 1,
            credential: token.into(),
            client_name: "raw-test".into(),
            ..Default::default()
        }));
        match c.recv() {
            Some(Kind::Welcome(w)) => c.welcome = Some(w),
            other => panic!("expected Welcome, got {other:?}"),
        }
        c
    }

    /// Connects until the connection lands on `shard`.
    pub fn connect_on_shard(addr: SocketAddr, token: &str, shard: u32) -> Self {
        for _ in 0..200 {
            let c = Self::connect(addr, token);
            if c.shard() == shard {
                return c;
            }
        }
        panic!("no connection landed on shard {shard} in 200 tries");
    }

    pub fn shard(&self) -> u32 {
        self.welcome.as_ref().unwrap().shard
    }

    pub fn send(&mut self, kind: &Kind) {
        let mut out = Vec::new();
        codec::encode(kind, &mut out).unwrap();
        self.sock.write_all(&out).unwrap();
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.sock.write_all(bytes).unwrap();
    }

    /// The next frame, or `None` at end of stream.
    pub fn recv(&mut self) -> Option<Kind> {
        loop {
            if let Some(k) = codec::decode(&mut self.buf, u32::MAX).unwrap() {
                return Some(k);
            }
            let mut chunk = [0u8; 16384];
            match self.sock.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
                Err(e) => panic!("read failed: {e}"),
            }
        }
    }

    /// The next frame that is not a server Ping (answered automatically).
    pub fn next(&mut self) -> Option<Kind> {
        loop {
            match self.recv()? {
                Kind::Ping(_) => self.send(&Kind::Pong(v1::Pong {})),
                k => return Some(k),
            }
        }
    }

    pub fn subscribe(&mut self, pattern: &str, queue: Option<&str>) -> u64 {
        let sid = self.next_sid;
        self.next_sid += 1;
        self.send(&Kind::Subscribe(v1::Subscribe {
            sid,
            pattern: Bytes::copy_from_slice(pattern.as_bytes()),
            queue_group: Bytes::copy_from_slice(queue.unwrap_or("").as_bytes()),
        }));
        sid
    }

    pub fn publish(&mut self, subject: &str, payload: &[u8]) {
        self.publish_req(subject, "", payload);
    }

    pub fn publish_req(&mut self, subject: &str, reply: &str, payload: &[u8]) {
        self.send(&Kind::Publish(v1::Publish {
            subject: Bytes::copy_from_slice(subject.as_bytes()),
            reply: Bytes::copy_from_slice(reply.as_bytes()),
            headers: vec![],
            seq: 0,
            payload: Bytes::copy_from_slice(payload),
        }));
    }

    /// A publish the client numbered `seq` (echoed in an error about it).
    pub fn publish_numbered(&mut self, subject: &str, seq: u64, payload: &[u8]) {
        self.send(&Kind::Publish(v1::Publish {
            subject: Bytes::copy_from_slice(subject.as_bytes()),
            seq,
            payload: Bytes::copy_from_slice(payload),
            ..Default::default()
        }));
    }

    /// Ping/Pong barrier: afterwards every earlier subscription change is
    /// live on every shard. Messages that arrive first are returned.
    pub fn flush(&mut self) -> Vec<Kind> {
        self.send(&Kind::Ping(v1::Ping {}));
        let mut before = Vec::new();
        loop {
            match self.next() {
                Some(Kind::Pong(_)) => return before,
                Some(k) => before.push(k),
                None => panic!("closed while waiting for Pong"),
            }
        }
    }

    pub fn message(&mut self) -> v1::Message {
        match self.next() {
            Some(Kind::Message(m)) => m,
            other => panic!("expected Message, got {other:?}"),
        }
    }
}
