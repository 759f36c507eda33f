//! Request/reply latency at a fixed offered rate, open loop.
//!
//! A responder subscribes to a service subject and answers every request
//! with its payload, published to the request's reply subject (the raw
//! relay: written back on the reply channel). A requester connection
//! subscribes to its reply subject; its writer thread sends request `i` at
//! `start + i / rate` whatever happened to earlier requests (open loop) and
//! stamps it with that *scheduled* time; its reader thread takes each reply's
//! stamp and records `now - scheduled`. A stall therefore counts against
//! every request that should have been sent during it, not just the one in
//! flight: the histogram is corrected for coordinated omission. When the
//! writer is late it sends every request now due in one write.
//!
//! How late the writer itself was (`send_lag`) is reported beside it: that
//! part of the latency is the client's.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{ScenarioError, distinct_errors, run_id};
use crate::driver::{Conn, DriverError, Ev, Role, Target, now_ns};
use crate::progress::Progress;
use crate::stats::{Latency, Percentiles, ThreadClock};

/// One request/reply run.
#[derive(Debug, Clone)]
pub(crate) struct ReqReplySpec {
    /// Payload bytes (at least 8: the stamp).
    pub(crate) size: usize,
    /// Requests per second offered.
    pub(crate) rate: f64,
    /// How long requests are offered.
    pub(crate) duration: Duration,
    /// How long to wait for the last replies.
    pub(crate) drain: Duration,
}

/// What a request/reply run measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ReqReplyResult {
    /// Payload bytes.
    pub(crate) size: usize,
    /// Requests per second offered.
    pub(crate) offered_rate: f64,
    /// Requests sent.
    pub(crate) sent: u64,
    /// Replies received.
    pub(crate) received: u64,
    /// Replies per second over the run.
    pub(crate) achieved_rate: f64,
    /// Latency from each request's scheduled send time to its reply.
    pub(crate) latency: Option<Percentiles>,
    /// How late the writer sent requests versus their schedule.
    pub(crate) send_lag: Option<Percentiles>,
    /// Every request was answered and no connection failed.
    pub(crate) complete: bool,
    /// The busiest client thread's share of one core.
    pub(crate) client_max_thread: f64,
    /// Connection errors, distinct.
    pub(crate) errors: Vec<String>,
}

/// Asks the kernel for precise sleeps on this thread (the default timer
/// slack of 50 µs would show up as client-side latency).
fn precise_sleeps() {
    // SAFETY: PR_SET_TIMERSLACK takes one integer argument and only changes
    // the calling thread's timer slack; no memory is passed.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0);
    }
}

struct Writer {
    sent: u64,
    lag: Latency,
    error: Option<String>,
    busy: f64,
    end: Instant,
}

fn writer(
    mut sock: std::net::TcpStream,
    frame: &crate::driver::Frame,
    spec: &ReqReplySpec,
    sent_shared: &AtomicU64,
    start: Instant,
) -> Writer {
    use std::io::Write;
    precise_sleeps();
    let clock = ThreadClock::start();
    let interval = Duration::from_secs_f64(1.0 / spec.rate.max(1e-3));
    let total = (spec.duration.as_secs_f64() * spec.rate).ceil().max(1.0) as u64;
    let mut out = Vec::with_capacity(frame.bytes.len() * 16);
    let mut lag = Latency::new();
    let mut sent = 0u64;
    let mut error = None;
    thread::sleep(start.saturating_duration_since(Instant::now()));
    while sent < total {
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(start);
        let due = ((elapsed.as_nanos() / interval.as_nanos().max(1)) as u64 + 1).min(total);
        if due <= sent {
            let next = start + interval * (sent as u32);
            thread::sleep(next.saturating_duration_since(Instant::now()));
            continue;
        }
        out.clear();
        let now_stamp = now_ns();
        for i in sent..due {
            let scheduled = start + interval * (i as u32);
            let sched_ns = now_stamp
                .saturating_sub(now.saturating_duration_since(scheduled).as_nanos() as u64);
            let at = out.len();
            out.extend_from_slice(&frame.bytes);
            out[at + frame.stamp_end - 8..at + frame.stamp_end]
                .copy_from_slice(&sched_ns.max(1).to_le_bytes());
            lag.record(now.saturating_duration_since(scheduled).as_nanos() as u64);
        }
        if let Err(e) = sock.write_all(&out) {
            error = Some(e.to_string());
            break;
        }
        sent = due;
        sent_shared.store(sent, Ordering::Relaxed);
    }
    Writer {
        sent,
        lag,
        error,
        busy: clock.busy(),
        end: Instant::now(),
    }
}

/// Runs one request/reply scenario against `t` (plaintext only: the
/// requester reads and writes its socket from two threads).
pub(crate) fn run(
    t: &Target,
    spec: &ReqReplySpec,
    progress: &Progress,
) -> Result<ReqReplyResult, ScenarioError> {
    if spec.size < 8 {
        return Err(ScenarioError::Measure(
            "request/reply needs payloads of at least 8 bytes".into(),
        ));
    }
    let id = run_id();
    let svc = format!("perf.{id}.svc");
    let inbox = format!("perf.{id}.inbox");
    let mut responder = Conn::open(
        t,
        &Role {
            subscribe: Some(&svc),
            publish: Some(&inbox),
            ..Role::default()
        },
    )?;
    let mut requester = Conn::open_near(
        t,
        &Role {
            subscribe: Some(&inbox),
            publish: Some(&svc),
            ..Role::default()
        },
        responder.shard(),
    )?;
    let frame = t.publish_frame(&svc, &inbox, &vec![0u8; spec.size], false)?;
    let sock = requester.writer()?;

    let stop = Arc::new(AtomicBool::new(false));
    let responder_thread = {
        let stop = stop.clone();
        thread::spawn(move || -> Result<u64, DriverError> {
            let mut out = Vec::new();
            let mut answered = 0;
            while !stop.load(Ordering::Relaxed) {
                answered += responder.echo(&mut out)?;
                responder.fill()?;
            }
            responder.close();
            Ok(answered)
        })
    };

    let sent_shared = Arc::new(AtomicU64::new(0));
    let writer_done = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicU64::new(0));
    let start = Instant::now() + Duration::from_millis(20);
    let writer_thread = {
        let (spec, sent, done) = (spec.clone(), sent_shared.clone(), writer_done.clone());
        thread::spawn(move || {
            let w = writer(sock, &frame, &spec, &sent, start);
            done.store(true, Ordering::Release);
            w
        })
    };
    let reader_thread = {
        let (sent, done, received) = (sent_shared.clone(), writer_done.clone(), received.clone());
        let drain = spec.drain;
        thread::spawn(move || {
            let clock = ThreadClock::start();
            let mut lat = Latency::new();
            let mut got = 0u64;
            let mut error = None;
            let mut give_up: Option<Instant> = None;
            loop {
                let drained = requester.drain(|ev| {
                    if let Ev::Msg { tail } = ev {
                        got += 1;
                        if tail != 0 {
                            lat.record(now_ns().saturating_sub(tail));
                        }
                    }
                });
                received.store(got, Ordering::Relaxed);
                if let Err(e) = drained {
                    error = Some(e.to_string());
                    break;
                }
                if done.load(Ordering::Acquire) {
                    if got >= sent.load(Ordering::Relaxed) {
                        break;
                    }
                    let g = *give_up.get_or_insert_with(|| Instant::now() + drain);
                    if Instant::now() > g {
                        break;
                    }
                }
                if let Err(e) = requester.fill() {
                    error = Some(e.to_string());
                    break;
                }
            }
            let busy = clock.busy();
            requester.close();
            (got, lat, error, busy, Instant::now())
        })
    };

    while !reader_thread.is_finished() {
        thread::sleep(Duration::from_millis(100));
        let secs = start.elapsed().as_secs_f64();
        progress.update(
            secs / spec.duration.as_secs_f64().max(1e-3),
            &format!(
                "{} requests, {} replies",
                sent_shared.load(Ordering::Relaxed),
                received.load(Ordering::Relaxed)
            ),
        );
    }
    let w = writer_thread.join().map_err(|_| ScenarioError::Panicked)?;
    let (got, lat, read_error, read_busy, _) =
        reader_thread.join().map_err(|_| ScenarioError::Panicked)?;
    stop.store(true, Ordering::Relaxed);
    let responder_result = responder_thread
        .join()
        .map_err(|_| ScenarioError::Panicked)?;

    let secs = w
        .end
        .saturating_duration_since(start)
        .as_secs_f64()
        .max(1e-9);
    let errors = distinct_errors(
        [
            w.error,
            read_error,
            responder_result.err().map(|e| e.to_string()),
        ]
        .into_iter()
        .flatten(),
    );
    Ok(ReqReplyResult {
        size: spec.size,
        offered_rate: spec.rate,
        sent: w.sent,
        received: got,
        achieved_rate: got as f64 / secs,
        latency: lat.summary(),
        send_lag: w.lag.summary(),
        complete: errors.is_empty() && got == w.sent,
        client_max_thread: w.busy.max(read_busy),
        errors,
    })
}
