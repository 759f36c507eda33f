//! Hot-path workloads, shared by the criterion benches (`benches/hot_paths.rs`,
//! wall time, for people) and the instruction counter (`src/bin/icount.rs`,
//! callgrind, for CI).
//!
//! Each [`Workload`] is built once (its setup is not measured) and then
//! performs one *operation* per [`Workload::run`] call, always the same
//! work, so callgrind's instruction count per operation is deterministic:
//!
//! | workload | one operation |
//! |---|---|
//! | `route_literal_{1k,100k}` | `Router::route` of a subject matching 1 of N literal subscriptions (the same subject each time: a route-cache hit; `index_*` count the walk a miss makes) |
//! | `route_wildcard_{1k,100k}` | `Router::route` of a subject matching 3 of N wildcard subscriptions |
//! | `route_copy_1k` | `Router::route` of a copy from another shard (no queue-group assignment) matching 1 of 1,000 literal subscriptions: the delivering shard's half of a cross-shard publish, a route-cache hit |
//! | `index_literal_100k`, `index_wildcard_100k` | `SubjectIndex::for_each_match` alone, same tries |
//! | `subject_parse` | `Subject::parse` of a 3-token subject (every publish does it) |
//! | `frame_encode_publish` | `codec::encode` of a 128 B `Publish` |
//! | `frame_decode_publish` | `codec::frame_len` + `decode_body` of that frame |
//! | `template_message` | `MessageTemplate::prepare` + `write_prefix` |
//! | `ring_hand_off` | one message copy crossing shards: a batch of [`RING_BATCH`] copies (offsets into one read batch, held once) pushed as one `PeerMsg::Deliver` on an `rtrb` ring, popped and dropped; counted per copy |
//! | `fanout64_assembly` | one 128 B message to 64 subscribers: `push_message` into 64 queues and each queue's iovecs written out |
//! | `outbound_batch64` | 64 messages into one queue, then its iovecs written out |
//! | `publish_path_128` | one 128 B publish, all-in: a read batch of [`PATH_FRAMES`] `Publish` frames landed in a publisher's buffer, decoded, checked (session, permissions, rate limits), routed to one subscriber on the same shard, queued, and the subscriber's queue written out; counted per publish ([`ops_per_run`]) |

use std::hint::black_box;

use arqonbus_core::index::{Slot, SubjectIndex};
use arqonbus_core::router::{Origin, RoutePlan, Router};
use arqonbus_core::subject::{Pattern, Subject};
use arqonbus_core::{ConnId, ShardId, Sid, TenantId};
use arqonbus_dataplane::bench::{NullSink, OutboundQueue, PublishPath, Ring};
use arqonbus_proto::codec::{self, MessageTemplate};
use arqonbus_proto::v1::{self, frame::Kind};
use bytes::{Bytes, BytesMut};

/// Every workload, in report order.
pub const NAMES: &[&str] = &[
    "route_literal_1k",
    "route_literal_100k",
    "route_wildcard_1k",
    "route_wildcard_100k",
    "route_copy_1k",
    "index_literal_100k",
    "index_wildcard_100k",
    "subject_parse",
    "frame_encode_publish",
    "frame_decode_publish",
    "template_message",
    "ring_hand_off",
    "fanout64_assembly",
    "outbound_batch64",
    "publish_path_128",
];

/// Publishes per read batch in `publish_path_128`: a busy publisher's read
/// brings many frames (16 of 150 bytes is 2.4 KB, well within one read).
pub const PATH_FRAMES: usize = 16;

/// Message copies per ring entry in `ring_hand_off` (a busy publisher's
/// read batch fills entries of up to 64).
pub const RING_BATCH: usize = 16;

/// Operations one [`Workload::run`] of `name` performs: instruction counts
/// are reported per operation.
pub fn ops_per_run(name: &str) -> u64 {
    match name {
        "publish_path_128" => PATH_FRAMES as u64,
        "ring_hand_off" => RING_BATCH as u64,
        _ => 1,
    }
}

/// Payload of the codec and fan-out workloads.
const PAYLOAD: usize = 128;

/// Why a workload could not be built.
#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    /// No workload has that name.
    #[error("unknown workload {0:?}")]
    Unknown(String),
    /// Building the fixture failed (a bug in the fixture).
    #[error("fixture {name}: {reason}")]
    Fixture {
        /// The workload.
        name: String,
        /// What failed.
        reason: String,
    },
}

/// One benchmarkable operation with its state.
pub struct Workload {
    name: &'static str,
    op: Box<dyn FnMut() -> usize>,
}

impl std::fmt::Debug for Workload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workload")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Workload {
    /// The workload's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Performs one operation; the result only keeps it from being
    /// optimized away.
    pub fn run(&mut self) -> usize {
        (self.op)()
    }
}

/// Runs `iters` operations. Callgrind counts instructions inside this
/// function only (`--toggle-collect`), so it must never be inlined.
#[inline(never)]
pub fn icount_measure(w: &mut Workload, iters: u64) -> usize {
    let mut acc = 0usize;
    for _ in 0..iters {
        acc = acc.wrapping_add(black_box(w.run()));
    }
    black_box(acc)
}

fn fixture_err(name: &str, e: impl std::fmt::Display) -> WorkloadError {
    WorkloadError::Fixture {
        name: name.to_owned(),
        reason: e.to_string(),
    }
}

fn subject(name: &str, s: &str) -> Result<Subject, WorkloadError> {
    Subject::parse(Bytes::copy_from_slice(s.as_bytes()), 256).map_err(|e| fixture_err(name, e))
}

fn pattern(name: &str, s: &str) -> Result<Pattern, WorkloadError> {
    Pattern::parse(Bytes::copy_from_slice(s.as_bytes()), 256).map_err(|e| fixture_err(name, e))
}

/// `n` literal patterns `lit.<i>.events`, and a subject matching one.
fn literal_patterns(name: &str, n: usize) -> Result<(Vec<Pattern>, Subject), WorkloadError> {
    let pats = (0..n)
        .map(|i| pattern(name, &format!("lit.{i}.events")))
        .collect::<Result<_, _>>()?;
    Ok((pats, subject(name, &format!("lit.{}.events", n / 2))?))
}

/// `n` wildcard patterns, a third each of `wc.<i>.*`, `wc.*.<i>` and
/// `wc.<i>.>`, and a subject matching three of them.
fn wildcard_patterns(name: &str, n: usize) -> Result<(Vec<Pattern>, Subject), WorkloadError> {
    let third = (n / 3).max(1);
    let mut pats = Vec::with_capacity(n);
    for i in 0..n {
        let k = i % third;
        let p = match i / third {
            0 => format!("wc.{k}.*"),
            1 => format!("wc.*.{k}"),
            _ => format!("wc.{k}.>"),
        };
        pats.push(pattern(name, &p)?);
    }
    let k = third / 2;
    Ok((pats, subject(name, &format!("wc.{k}.{k}"))?))
}

/// A router holding `patterns` as subscriptions of 1,000 connections.
fn route(
    name: &'static str,
    (patterns, subject): (Vec<Pattern>, Subject),
    origin: Origin<'static>,
) -> Result<Workload, WorkloadError> {
    let tenant = TenantId(1);
    let mut router = Router::new(ShardId(0), 0x5eed);
    let mut interest = Vec::new();
    for (i, p) in patterns.into_iter().enumerate() {
        let conn = ConnId(i as u64 % 1000);
        let sid = Sid(i as u64 + 1);
        router
            .subscribe(tenant, conn, sid, p, None, u32::MAX, &mut interest)
            .map_err(|e| fixture_err(name, e))?;
        interest.clear();
    }
    let mut plan = RoutePlan::default();
    Ok(Workload {
        name,
        op: Box::new(move || {
            router.route(tenant, &subject, origin, &mut plan);
            plan.local.len()
        }),
    })
}

#[derive(Debug, Default)]
struct Count(u32);

impl Slot for Count {
    fn is_empty(&self) -> bool {
        self.0 == 0
    }
}

fn index(name: &'static str, (patterns, subject): (Vec<Pattern>, Subject)) -> Workload {
    let mut idx = SubjectIndex::<Count>::new();
    for p in &patterns {
        idx.slot_mut(p).0 += 1;
    }
    Workload {
        name,
        op: Box::new(move || {
            let mut n = 0;
            idx.for_each_match(&subject, |c| n += c.0 as usize);
            n
        }),
    }
}

fn publish(subject: &'static [u8]) -> Kind {
    Kind::Publish(v1::Publish {
        subject: Bytes::from_static(subject),
        reply: Bytes::new(),
        headers: Vec::new(),
        seq: 0,
        payload: Bytes::from(vec![0x5a; PAYLOAD]),
    })
}

/// A publish from a connection of this shard (none of the subscribers).
const LOCAL: Origin<'static> = Origin::Local {
    conn: ConnId(u64::MAX),
    echo: true,
};

/// A copy from another shard that assigns no queue group here.
const COPY: Origin<'static> = Origin::Remote { groups: &[] };

/// Builds the workload called `name`.
pub fn workload(name: &str) -> Result<Workload, WorkloadError> {
    let w = match name {
        "route_literal_1k" => route("route_literal_1k", literal_patterns(name, 1_000)?, LOCAL)?,
        "route_literal_100k" => route(
            "route_literal_100k",
            literal_patterns(name, 100_000)?,
            LOCAL,
        )?,
        "route_wildcard_1k" => route("route_wildcard_1k", wildcard_patterns(name, 1_000)?, LOCAL)?,
        "route_wildcard_100k" => route(
            "route_wildcard_100k",
            wildcard_patterns(name, 100_000)?,
            LOCAL,
        )?,
        "route_copy_1k" => route("route_copy_1k", literal_patterns(name, 1_000)?, COPY)?,
        "index_literal_100k" => index("index_literal_100k", literal_patterns(name, 100_000)?),
        "index_wildcard_100k" => index("index_wildcard_100k", wildcard_patterns(name, 100_000)?),
        "subject_parse" => {
            let raw = Bytes::from_static(b"orders.eu.created");
            Workload {
                name: "subject_parse",
                op: Box::new(move || {
                    Subject::parse(black_box(raw.clone()), 256).map_or(0, |s| s.as_bytes().len())
                }),
            }
        }
        "frame_encode_publish" => {
            let kind = publish(b"orders.eu.created");
            let mut out = Vec::with_capacity(512);
            Workload {
                name: "frame_encode_publish",
                op: Box::new(move || {
                    out.clear();
                    codec::encode(black_box(&kind), &mut out).map_or(0, |()| out.len())
                }),
            }
        }
        "frame_decode_publish" => {
            let mut buf = BytesMut::new();
            codec::encode(&publish(b"orders.eu.created"), &mut buf)
                .map_err(|e| fixture_err(name, e))?;
            let frame = buf.freeze();
            Workload {
                name: "frame_decode_publish",
                op: Box::new(move || {
                    let f = black_box(&frame);
                    match codec::frame_len(f, u32::MAX) {
                        Ok(Some(total)) => {
                            match codec::decode_body(f.slice(codec::LEN_PREFIX..total)) {
                                Ok(Kind::Publish(p)) => p.payload.len(),
                                _ => 0,
                            }
                        }
                        _ => 0,
                    }
                }),
            }
        }
        "template_message" => {
            let mut t = MessageTemplate::new();
            let mut out = Vec::with_capacity(256);
            Workload {
                name: "template_message",
                op: Box::new(move || {
                    out.clear();
                    t.prepare(black_box(b"orders.eu.created"), b"", &[], 0, PAYLOAD);
                    t.write_prefix(black_box(7), &mut out)
                        .map_or(0, |()| out.len())
                }),
            }
        }
        "ring_hand_off" => {
            let mut ring = Ring::new(8 * 1024);
            // A publisher's read batch, as the copies' fields lie in it.
            let batch = Bytes::from(vec![0x5a; PAYLOAD]);
            Workload {
                name: "ring_hand_off",
                op: Box::new(move || ring.hand_off(RING_BATCH, TenantId(1), &batch)),
            }
        }
        "fanout64_assembly" => {
            let mut queues: Vec<OutboundQueue> = (0..64).map(|_| OutboundQueue::new()).collect();
            let mut t = MessageTemplate::new();
            // The payload lies in its publisher's read batch, as it does
            // on the shard.
            let batch = Bytes::from(vec![0x5a; 16 * PAYLOAD]);
            let mut sink = NullSink::default();
            Workload {
                name: "fanout64_assembly",
                op: Box::new(move || {
                    let payload = &batch[PAYLOAD..2 * PAYLOAD];
                    t.prepare(b"orders.eu.created", b"", &[], 0, payload.len());
                    for (sid, q) in queues.iter_mut().enumerate() {
                        q.push_message(&t, sid as u64 + 1, &batch, payload);
                    }
                    queues
                        .iter_mut()
                        .map(|q| q.flush_into(&mut sink).unwrap_or(0))
                        .sum()
                }),
            }
        }
        "outbound_batch64" => {
            let mut q = OutboundQueue::new();
            let mut t = MessageTemplate::new();
            // 64 payloads of one read batch, as a publisher's batch brings them.
            let batch = Bytes::from(vec![0x5a; 64 * PAYLOAD]);
            let mut sink = NullSink::default();
            Workload {
                name: "outbound_batch64",
                op: Box::new(move || {
                    t.prepare(b"orders.eu.created", b"", &[], 0, PAYLOAD);
                    for (sid, payload) in (1..=64).zip(batch.chunks(PAYLOAD)) {
                        q.push_message(&t, sid, &batch, payload);
                    }
                    q.flush_into(&mut sink).unwrap_or(0)
                }),
            }
        }
        "publish_path_128" => {
            let mut path = PublishPath::new("orders.eu.created", PAYLOAD, PATH_FRAMES)
                .map_err(|e| fixture_err(name, e))?;
            Workload {
                name: "publish_path_128",
                op: Box::new(move || path.read_batch()),
            }
        }
        other => return Err(WorkloadError::Unknown(other.to_owned())),
    };
    Ok(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_workload_builds_and_does_its_work() {
        for name in NAMES {
            // The 100k fixtures are slow in debug builds; their 1k twins
            // cover the same code.
            if name.ends_with("100k") {
                continue;
            }
            let mut w = workload(name).unwrap();
            assert_eq!(w.name(), *name);
            let a = w.run();
            let b = w.run();
            assert_eq!(a, b, "{name} is not repeatable");
            assert!(a > 0, "{name} did nothing");
        }
        assert!(workload("nope").is_err());
    }

    #[test]
    fn routes_find_the_expected_subscribers() {
        assert_eq!(workload("route_literal_1k").unwrap().run(), 1);
        assert_eq!(workload("route_wildcard_1k").unwrap().run(), 3);
        assert_eq!(workload("route_copy_1k").unwrap().run(), 1);
        let mut t = MessageTemplate::new();
        t.prepare(b"orders.eu.created", b"", &[], 0, PAYLOAD);
        let expected: usize = (1..=64).map(|sid| t.frame_len(sid)).sum();
        assert_eq!(workload("fanout64_assembly").unwrap().run(), expected);
        assert_eq!(workload("outbound_batch64").unwrap().run(), expected);
        // Every publish of a read batch reaches the subscriber (sid 1) as
        // one whole `Message` frame.
        assert_eq!(
            workload("publish_path_128").unwrap().run(),
            PATH_FRAMES * t.frame_len(1)
        );
    }
}
