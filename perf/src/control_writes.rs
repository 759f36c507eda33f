//! `arqonbus-perf control-writes`: what an admin write costs on a node with
//! many tenants and principals, and whether writes move the data plane's
//! latency (issue 11, point 4).
//!
//! It starts one ArqonBus node ([`Fleet`], pinned like the other runners)
//! whose configuration file seeds `--tenants` tenants with
//! `--principals-per-tenant` principals each (one bearer credential each,
//! hashes of tokens nobody knows), inserted at the node's start, beside
//! the bootstrap tenant `default`, whose token the runner reads. Then:
//! 1. `writes`: `--writes` control writes, one after another over one gRPC
//!    connection, cycling through `UpdatePrincipal` (new roles),
//!    `PutPolicy` (a role policy) and `IssueCredential`, each on a tenant
//!    drawn in turn: writes per second and the latency of each;
//! 2. `rounds` × two request/reply runs at `--rr-rate` for
//!    `--rr-duration` seconds on the `default` tenant: one alone (`quiet`)
//!    and one while the writes of part 1 stream (`writes`): without pause,
//!    or paced at `--write-rate` writes per second; in an order that
//!    alternates from round to round. The figure of merit is the
//!    request/reply p99 with writes over the p99 without. With
//!    `--control-reads`, each round adds a third run (`reads`) in which the
//!    same client sends `GetTenant` calls at the same pace instead: a
//!    control call that touches neither the store's write path nor the
//!    shards, so the difference between `reads` and `writes` is what a
//!    snapshot costs the data plane, and the one between `quiet` and
//!    `reads` is what any control call costs it. The writing
//!    client runs as a background thread (`SCHED_IDLE`): an admin's client
//!    runs on another machine, not on the node's cores, and here it would
//!    otherwise take CPU from the request/reply client and the shards
//!    beside it, which is the client's cost, not the node's.
//!
//! Where things run: the node on `--cpus` (shard `i` on the `i`-th), its
//! control plane on `--control-cpus` (the node's `[control] cpus`), the
//! request/reply client on `--client-cpus` and the writing client on
//! `--writer-cpus`. On a 2-CPU host, `--shards 1 --control-cpus 1
//! --client-cpus 0 --writer-cpus 1` is the latency profile's layout: the
//! shard has CPU 0 (beside the request/reply client, which stands for the
//! clients of another host) and the control plane CPU 1.
//!
//! Results: `<out>/<date>-control-writes/{results.json,README.md}`, with the
//! command line that made them.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use arqonbus_proto::control::credential_service_client::CredentialServiceClient;
use arqonbus_proto::control::policy::Target as PolicyTarget;
use arqonbus_proto::control::policy_service_client::PolicyServiceClient;
use arqonbus_proto::control::principal_service_client::PrincipalServiceClient;
use arqonbus_proto::control::tenant_service_client::TenantServiceClient;
use arqonbus_proto::control::{
    CredentialKind, DeletePrincipalRequest, DeleteTenantRequest, GetTenantRequest,
    IssueCredentialRequest, Policy, PutPolicyRequest, SubjectRules, TenantRef,
    UpdatePrincipalRequest,
};
use serde::Serialize;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::compare::fleet::{ArqonSpec, Fleet, FleetConfig};
use crate::compare::{WorkDir, commit, utc_now};
use crate::driver::{Proto, Target};
use crate::progress::Progress;
use crate::scenario::{self, ReqReplyResult, ReqReplySpec};
use crate::stats::{Latency, Percentiles, busy_cores_now};

/// First id of the generated tenants (the `default` tenant is 1).
const FIRST_TENANT: u64 = 1_000;
/// First id of the generated principals.
const FIRST_PRINCIPAL: u64 = 1_000_000;
/// Roles the writes give principals and write policies for.
const ROLES: u64 = 4;
/// Before each request/reply run the runner waits (at most [`QUIET_WAIT`])
/// until the host uses fewer cores than this: the node is idle then, so
/// anything above is someone else's build on a shared host.
const QUIET_CORES: f64 = 0.5;
/// The longest wait for a quiet host.
const QUIET_WAIT: Duration = Duration::from_secs(30);

/// `arqonbus-perf control-writes` options.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ControlWritesArgs {
    /// Tenants in the store.
    #[arg(long, default_value_t = 10_000)]
    tenants: u64,
    /// Principals (each with one credential) per tenant.
    #[arg(long, default_value_t = 10)]
    principals_per_tenant: u64,
    /// Writes of the `writes` part.
    #[arg(long, default_value_t = 300)]
    writes: usize,
    /// Rounds of request/reply, each once quiet and once with writes (and
    /// once with reads, with `--control-reads`).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Request/reply offered rate, requests per second.
    #[arg(long, default_value_t = 2_000.0)]
    rr_rate: f64,
    /// Request/reply seconds per run.
    #[arg(long, default_value_t = 5.0)]
    rr_duration: f64,
    /// Request/reply payload, bytes.
    #[arg(long, default_value_t = 128)]
    rr_size: usize,
    /// Pace of the writes streamed beside request/reply, writes per second
    /// (0: one after another without pause, as fast as the node answers).
    #[arg(long, default_value_t = 0.0)]
    write_rate: f64,
    /// Deletes at the end, one after another: this many principals (each
    /// with its credential), then this many tenants (each with its
    /// principals and their credentials); at most half the tenants each.
    #[arg(long, default_value_t = 100)]
    deletes: usize,
    /// Adds a run per round with `GetTenant` reads beside request/reply,
    /// paced like the writes.
    #[arg(long)]
    control_reads: bool,
    /// CPUs the server is pinned to.
    #[arg(long, value_delimiter = ',', default_value = "0,1")]
    cpus: Vec<usize>,
    /// ArqonBus shards.
    #[arg(long, default_value_t = 2)]
    shards: usize,
    /// The node's `[control] cpus`: CPUs its control plane runs on (empty:
    /// any of `--cpus`). With `--shards 1 --control-cpus 1`, the control
    /// plane has the CPU the shard does not use (the latency profile).
    #[arg(long, value_delimiter = ',')]
    control_cpus: Vec<usize>,
    /// CPUs the request/reply client runs on (empty: any), and the writing
    /// client unless `--writer-cpus` says otherwise.
    #[arg(long, value_delimiter = ',')]
    client_cpus: Vec<usize>,
    /// CPUs the writing client runs on (empty: the request/reply client's).
    #[arg(long, value_delimiter = ',')]
    writer_cpus: Vec<usize>,
    /// The arqonbus binary (default: next to this one).
    #[arg(long)]
    arqonbus: Option<PathBuf>,
    /// Tiny counts, one round: checks that every part produces numbers.
    #[arg(long)]
    smoke: bool,
    /// Where results go (default perf/results; target/perf-smoke with --smoke).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Keep the server's data directory and log.
    #[arg(long)]
    keep_logs: bool,
}

/// Control writes, measured by the client.
#[derive(Debug, Clone, Serialize)]
struct Writes {
    /// Writes answered OK.
    ok: u64,
    /// Writes answered with an error.
    failed: u64,
    /// The first few distinct errors.
    errors: Vec<String>,
    /// Seconds the writes took.
    secs: f64,
    /// OK writes per second.
    per_sec: f64,
    /// Latency of each write (OK or not).
    latency: Option<Percentiles>,
}

impl Writes {
    /// Rate, latency and failures in one line.
    fn summary(&self) -> String {
        format!(
            "{:.1}/s, p50 {:.0} µs, p99 {:.0} µs ({} failed)",
            self.per_sec,
            self.latency.as_ref().map_or(0.0, |l| l.p50_us),
            self.latency.as_ref().map_or(0.0, |l| l.p99_us),
            self.failed
        )
    }
}

/// One request/reply run.
#[derive(Debug, Clone, Serialize)]
struct Run {
    round: usize,
    /// `quiet`, `reads` or `writes`.
    beside: &'static str,
    reqreply: ReqReplyResult,
    /// Cores the host used just before the run (the node idle).
    host_busy_before: f64,
    /// The control calls streamed during the run (`reads` and `writes`
    /// runs).
    writes: Option<Writes>,
}

#[derive(Debug, Serialize)]
struct Report {
    date: String,
    commit: String,
    command: String,
    tenants: u64,
    principals: u64,
    shards: usize,
    cpus: Vec<usize>,
    /// `[control] cpus` (empty: any of `cpus`).
    control_cpus: Vec<usize>,
    /// The request/reply client's CPUs (empty: any).
    client_cpus: Vec<usize>,
    /// The writing client's CPUs (empty: the request/reply client's).
    writer_cpus: Vec<usize>,
    /// Seconds from starting the node to its control API answering.
    start_secs: f64,
    /// Pace of the writes beside request/reply (0: without pause).
    write_rate: f64,
    writes: Writes,
    runs: Vec<Run>,
    /// The deletes at the end.
    deletes: Vec<Deletes>,
}

/// Deletes of one kind, one after another.
#[derive(Debug, Clone, Serialize)]
struct Deletes {
    /// `principal` or `tenant`.
    what: &'static str,
    calls: Writes,
}

/// The seed tenants of the configuration file: `tenants` tenants with
/// `per_tenant` principals each, inserted at the node's start.
fn seed_tenants(tenants: u64, per_tenant: u64) -> String {
    let mut toml = String::with_capacity(110 * (tenants * (per_tenant + 1)) as usize);
    for t in 0..tenants {
        let _ = write!(
            toml,
            "\n[[tenants]]\nid = {}\nname = \"t{t}\"\n",
            FIRST_TENANT + t
        );
        for p in 0..per_tenant {
            let id = FIRST_PRINCIPAL + t * per_tenant + p;
            // A hash no token has: these credentials only fill the store.
            let _ = write!(
                toml,
                "[[tenants.credentials]]\nprincipal_id = {id}\nprincipal = \"p{p}\"\nsha256 = \"{id:064x}\"\n"
            );
        }
    }
    toml
}

/// Adds the admin credential to every control call.
#[derive(Clone)]
struct AdminAuth(tonic::metadata::MetadataValue<tonic::metadata::Ascii>);

impl tonic::service::Interceptor for AdminAuth {
    fn call(&mut self, mut r: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        r.metadata_mut().insert("authorization", self.0.clone());
        Ok(r)
    }
}

type Authed = InterceptedService<Channel, AdminAuth>;

/// The control API of the node under test.
#[derive(Debug, Clone)]
struct ControlApi {
    addr: SocketAddr,
    ca_pem: String,
    bearer: String,
    tenants: u64,
    per_tenant: u64,
}

/// What a streamed control call does ([`ControlApi::call`]).
#[derive(Debug, Clone, Copy)]
enum Op {
    Write,
    Read,
    DeletePrincipal,
    DeleteTenant,
}

struct Clients {
    tenants: TenantServiceClient<Authed>,
    principals: PrincipalServiceClient<Authed>,
    policies: PolicyServiceClient<Authed>,
    credentials: CredentialServiceClient<Authed>,
}

impl ControlApi {
    async fn connect(&self) -> Result<Clients, String> {
        let tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(&self.ca_pem))
            .domain_name("localhost");
        let channel = Channel::from_shared(format!("https://{}", self.addr))
            .map_err(|e| e.to_string())?
            .tls_config(tls)
            .map_err(|e| e.to_string())?
            .connect()
            .await
            .map_err(|e| format!("control API {}: {e}", self.addr))?;
        let auth = AdminAuth(
            self.bearer
                .parse()
                .map_err(|_| "admin token is not ASCII".to_owned())?,
        );
        Ok(Clients {
            tenants: TenantServiceClient::with_interceptor(channel.clone(), auth.clone()),
            principals: PrincipalServiceClient::with_interceptor(channel.clone(), auth.clone()),
            policies: PolicyServiceClient::with_interceptor(channel.clone(), auth.clone()),
            credentials: CredentialServiceClient::with_interceptor(channel, auth),
        })
    }

    /// Write number `k`: a principal's roles, a role policy or a credential,
    /// on tenant `k * 7919 mod tenants` (every tenant in turn, scattered).
    async fn write(&self, c: &mut Clients, k: u64) -> Result<(), tonic::Status> {
        let t = k.wrapping_mul(7_919) % self.tenants;
        let p = FIRST_PRINCIPAL + t * self.per_tenant + (k / 3) % self.per_tenant;
        let role = format!("r{}", k % ROLES);
        match k % 3 {
            0 => {
                c.principals
                    .update_principal(UpdatePrincipalRequest {
                        id: p,
                        roles: vec![role],
                        ..UpdatePrincipalRequest::default()
                    })
                    .await?;
            }
            1 => {
                let rules = |s: String| SubjectRules {
                    allow: vec![s],
                    deny: Vec::new(),
                };
                c.policies
                    .put_policy(PutPolicyRequest {
                        policy: Some(Policy {
                            tenant_id: FIRST_TENANT + t,
                            target: Some(PolicyTarget::Role(role)),
                            publish: Some(rules(format!("w{k}.>"))),
                            subscribe: Some(rules(format!("w{k}.>"))),
                            ..Policy::default()
                        }),
                        expected_version: 0,
                    })
                    .await?;
            }
            _ => {
                c.credentials
                    .issue_credential(IssueCredentialRequest {
                        principal_id: p,
                        kind: CredentialKind::Bearer.into(),
                        ttl_seconds: 0,
                    })
                    .await?;
            }
        }
        Ok(())
    }

    /// Call number `k` of kind `op`: a write as above; `GetTenant` on the
    /// tenant write `k` would change; or a delete: of the last principal
    /// of tenant `k` (with its credential), or of the `k`-th tenant from
    /// the end (with its principals and credentials).
    async fn call(&self, c: &mut Clients, op: Op, k: u64) -> Result<(), tonic::Status> {
        match op {
            Op::Write => self.write(c, k).await,
            Op::Read => {
                let t = k.wrapping_mul(7_919) % self.tenants;
                c.tenants
                    .get_tenant(GetTenantRequest {
                        tenant: Some(TenantRef {
                            id: FIRST_TENANT + t,
                            name: String::new(),
                        }),
                    })
                    .await?;
                Ok(())
            }
            Op::DeletePrincipal => {
                let t = k % self.tenants;
                let id = FIRST_PRINCIPAL + t * self.per_tenant + self.per_tenant - 1;
                c.principals
                    .delete_principal(DeletePrincipalRequest { id })
                    .await?;
                Ok(())
            }
            Op::DeleteTenant => {
                let id = FIRST_TENANT + self.tenants - 1 - k % self.tenants;
                c.tenants.delete_tenant(DeleteTenantRequest { id }).await?;
                Ok(())
            }
        }
    }

    /// Calls of kind `op` one after another, starting at write `first`, until `count`
    /// were sent or `stop` is set (then the one in flight completes); with
    /// a `rate` above 0, write n starts no earlier than n / `rate` seconds
    /// after the first.
    fn stream(
        &self,
        first: u64,
        count: Option<usize>,
        rate: f64,
        op: Op,
        stop: &AtomicBool,
    ) -> Result<Writes, String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        runtime.block_on(async {
            let mut clients = self.connect().await?;
            let mut latency = Latency::new();
            let (mut ok, mut failed) = (0u64, 0u64);
            let mut errors: Vec<String> = Vec::new();
            let started = Instant::now();
            let mut k = first;
            while count.is_none_or(|n| (ok + failed) < n as u64) && !stop.load(Ordering::Relaxed) {
                if rate > 0.0 {
                    let due = started + Duration::from_secs_f64((ok + failed) as f64 / rate);
                    tokio::time::sleep_until(due.into()).await;
                }
                let t = Instant::now();
                let r = self.call(&mut clients, op, k).await;
                latency.record(u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX));
                match r {
                    Ok(()) => ok += 1,
                    Err(e) => {
                        failed += 1;
                        let text = format!("{:?}: {}", e.code(), e.message());
                        if errors.len() < 5 && !errors.contains(&text) {
                            errors.push(text);
                        }
                    }
                }
                k += 1;
            }
            let secs = started.elapsed().as_secs_f64();
            Ok(Writes {
                ok,
                failed,
                errors,
                secs,
                per_sec: if secs > 0.0 { ok as f64 / secs } else { 0.0 },
                latency: latency.summary(),
            })
        })
    }
}

/// Runs the measurement and writes the report.
pub(crate) fn run(args: &ControlWritesArgs) -> Result<(), String> {
    let mut a = args.clone();
    if a.smoke {
        a.tenants = a.tenants.min(50);
        a.principals_per_tenant = a.principals_per_tenant.min(2);
        a.writes = a.writes.min(20);
        a.deletes = a.deletes.min(5);
        a.rounds = 1;
        a.rr_duration = a.rr_duration.min(1.0);
        a.rr_rate = a.rr_rate.min(500.0);
    }
    if a.tenants == 0 || a.principals_per_tenant == 0 {
        return Err("--tenants and --principals-per-tenant must be at least 1".into());
    }
    if !(a.write_rate.is_finite() && a.write_rate >= 0.0) {
        return Err("--write-rate must be a number of writes per second, 0 or more".into());
    }
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let arqonbus = a
        .arqonbus
        .clone()
        .unwrap_or_else(|| exe.with_file_name("arqonbus"));
    if !arqonbus.exists() {
        return Err(format!(
            "{} not found: cargo build --release --locked -p arqonbus",
            arqonbus.display()
        ));
    }
    crate::compare::fleet::install_signal_handler()?;
    let arms: &[&'static str] = if a.control_reads {
        &["quiet", "reads", "writes"]
    } else {
        &["quiet", "writes"]
    };
    let deletes_each = a
        .deletes
        .min(usize::try_from(a.tenants / 2).unwrap_or(usize::MAX));
    let progress =
        Progress::suite(1 + (arms.len() * a.rounds) as u64 + if deletes_each > 0 { 2 } else { 0 });
    let work = WorkDir::create(a.keep_logs).map_err(|e| e.to_string())?;
    let mut fleet = Fleet::empty(work.path(), "control-writes").map_err(|e| e.to_string())?;
    let cfg = FleetConfig {
        arqonbus,
        nats: PathBuf::from("nats-server"),
        nats_latest: PathBuf::from("nats-server"),
        relay: exe,
        cpus: a.cpus.clone(),
        shards: a.shards,
        systems: Vec::new(),
        tls: false,
        default_placement: None,
    };
    progress.println(&format!(
        "starting a node with {} tenants × {} principals",
        a.tenants, a.principals_per_tenant,
    ));
    let spec = ArqonSpec {
        name: "arqonbus".into(),
        default_placement: Some("spread".into()),
        extra_config: seed_tenants(a.tenants, a.principals_per_tenant),
        start_timeout: Some(Duration::from_secs(600)),
        control_cpus: a.control_cpus.clone(),
        ..ArqonSpec::default()
    };
    let data = fleet.dir().join(&spec.name);
    let started = Instant::now();
    let endpoint = fleet
        .arqonbus_with(&cfg, &spec)
        .map_err(|e| e.to_string())?;
    let admin = endpoint
        .admin
        .clone()
        .ok_or("an ArqonBus endpoint without its admin addresses")?;
    let read =
        |p: PathBuf| std::fs::read_to_string(&p).map_err(|e| format!("{}: {e}", p.display()));
    let api = ControlApi {
        addr: admin.control,
        ca_pem: read(data.join("tls/ca.pem"))?,
        bearer: format!(
            "Bearer {}",
            read(data.join("credentials/admin.token"))?.trim()
        ),
        tenants: a.tenants,
        per_tenant: a.principals_per_tenant,
    };
    // The control API answers once the import and the first snapshot are done.
    let never = AtomicBool::new(false);
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut first = 0u64;
    loop {
        match api.stream(first, Some(1), 0.0, Op::Write, &never) {
            Ok(w) if w.ok == 1 => break,
            Ok(w) if Instant::now() > deadline => {
                return Err(format!("the first write failed: {:?}", w.errors));
            }
            Err(e) if Instant::now() > deadline => return Err(e),
            _ => std::thread::sleep(Duration::from_millis(200)),
        }
        first += 1;
    }
    first += 1;
    let start_secs = started.elapsed().as_secs_f64();

    let run = progress.run("writes");
    run.update(0.0, &format!("{} writes", a.writes));
    let writes = api.stream(first, Some(a.writes), 0.0, Op::Write, &never)?;
    first += a.writes as u64;
    progress.run_done();
    progress.println(&format!("writes: {}", writes.summary()));

    let target = Target::new(
        Proto::Native,
        &endpoint.url,
        None,
        endpoint.credential.clone(),
    )
    .map_err(|e| e.to_string())?;
    let rr = ReqReplySpec {
        size: a.rr_size,
        rate: a.rr_rate,
        duration: Duration::from_secs_f64(a.rr_duration),
        drain: Duration::from_secs(3),
    };
    // The clients' threads start from this one and keep its CPUs.
    keep_on(&a.client_cpus).map_err(|e| format!("--client-cpus {:?}: {e}", a.client_cpus))?;
    let mut runs = Vec::new();
    for round in 0..a.rounds {
        // Each arm goes first in turn: a drift of the host over the run
        // then falls on every arm alike.
        let order = arms
            .iter()
            .cycle()
            .skip(round % arms.len())
            .take(arms.len());
        for &beside in order {
            let p = progress.run(&format!("round {round} {beside}"));
            let waited = Instant::now();
            let mut host_busy_before = 0.0;
            while let Some(busy) = busy_cores_now(Duration::from_millis(200)) {
                host_busy_before = busy;
                if busy < QUIET_CORES || waited.elapsed() > QUIET_WAIT {
                    break;
                }
                p.update(0.0, "waiting for the host to be quiet");
            }
            let stop = AtomicBool::new(false);
            let (reqreply, streamed) = std::thread::scope(|s| {
                let writer = (beside != "quiet").then(|| {
                    s.spawn(|| {
                        background(&a.writer_cpus);
                        api.stream(
                            first,
                            None,
                            a.write_rate,
                            if beside == "reads" {
                                Op::Read
                            } else {
                                Op::Write
                            },
                            &stop,
                        )
                    })
                });
                let r = scenario::reqreply::run(&target, &rr, &p);
                stop.store(true, Ordering::Relaxed);
                let w = writer.map(|h| h.join().map_err(|_| "the writer panicked".to_owned()));
                (r, w)
            });
            let reqreply = reqreply.map_err(|e| e.to_string())?;
            let writes = match streamed {
                Some(w) => Some(w??),
                None => None,
            };
            if let (Some(w), "writes") = (&writes, beside) {
                first += w.ok + w.failed;
            }
            progress.println(&format!(
                "round {round} {beside}: request/reply p50 {:.0} µs p99 {:.0} µs{}",
                reqreply.latency.as_ref().map_or(0.0, |l| l.p50_us),
                reqreply.latency.as_ref().map_or(0.0, |l| l.p99_us),
                writes.as_ref().map_or(String::new(), |w| format!(
                    "; {} {beside} at {:.1}/s",
                    w.ok, w.per_sec
                ))
            ));
            runs.push(Run {
                round,
                beside,
                reqreply,
                host_busy_before,
                writes,
            });
            progress.run_done();
        }
    }
    // Deletes last: the writes above may touch any principal.
    let mut deletes = Vec::new();
    if deletes_each > 0 {
        for (what, op) in [
            ("principal", Op::DeletePrincipal),
            ("tenant", Op::DeleteTenant),
        ] {
            let run = progress.run(&format!("{what} deletes"));
            run.update(0.0, &format!("{deletes_each} {what} deletes"));
            let calls = api.stream(0, Some(deletes_each), 0.0, op, &never)?;
            progress.run_done();
            progress.println(&format!("{what} deletes: {}", calls.summary()));
            deletes.push(Deletes { what, calls });
        }
    }
    fleet.stop();
    progress.finish();

    let (date, _) = utc_now();
    let report = Report {
        date: date.clone(),
        commit: commit(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        tenants: a.tenants,
        principals: a.tenants * a.principals_per_tenant,
        shards: a.shards,
        cpus: a.cpus.clone(),
        control_cpus: a.control_cpus.clone(),
        client_cpus: a.client_cpus.clone(),
        writer_cpus: a.writer_cpus.clone(),
        start_secs,
        write_rate: a.write_rate,
        writes,
        runs,
        deletes,
    };
    let out = a.out.clone().unwrap_or_else(|| {
        PathBuf::from(if a.smoke {
            "target/perf-smoke"
        } else {
            "perf/results"
        })
    });
    let dir = next_free(&out.join(format!("{date}-control-writes")));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let json = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("results.json"), json).map_err(|e| e.to_string())?;
    let md = markdown(&report);
    std::fs::write(dir.join("README.md"), &md).map_err(|e| e.to_string())?;
    eprintln!("{md}");
    eprintln!("written to {}", dir.display());
    drop(work);
    Ok(())
}

/// Makes the calling thread run only when nothing else wants its core
/// (`SCHED_IDLE`) and, when `cpus` names CPUs, only on those; a failure
/// is reported and changes nothing.
fn background(cpus: &[usize]) {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` outlives the call; 0 names the calling thread.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &raw const param) } != 0 {
        eprintln!(
            "cannot make the writing client a background thread: {}",
            std::io::Error::last_os_error()
        );
    }
    if let Err(e) = keep_on(cpus) {
        eprintln!("cannot keep the writing client on CPUs {cpus:?}: {e}");
    }
}

/// Keeps the calling thread (and the threads it starts later) on `cpus`;
/// nothing when empty.
fn keep_on(cpus: &[usize]) -> std::io::Result<()> {
    if cpus.is_empty() {
        return Ok(());
    }
    // SAFETY: `cpu_set_t` is a plain bit array; all zeroes is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &c in cpus {
        if c >= libc::CPU_SETSIZE as usize {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("CPU {c} is beyond CPU_SETSIZE"),
            ));
        }
        // SAFETY: `c` is below `CPU_SETSIZE` (checked above), within `set`.
        unsafe { libc::CPU_SET(c, &mut set) };
    }
    // SAFETY: `set` outlives the call and its size is passed; 0 names the
    // calling thread.
    let rc = unsafe {
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &raw const set)
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// A CPU list for the report, or "any CPU".
fn cpu_text(cpus: &[usize]) -> String {
    if cpus.is_empty() {
        "any CPU".to_owned()
    } else {
        format!("CPUs {cpus:?}")
    }
}

/// `dir`, or `dir-2`, `dir-3`, … if it exists (a second run the same day).
fn next_free(dir: &Path) -> PathBuf {
    (1..1_000)
        .map(|n| {
            if n == 1 {
                dir.to_owned()
            } else {
                PathBuf::from(format!("{}-{n}", dir.display()))
            }
        })
        .find(|d| !d.exists())
        .unwrap_or_else(|| dir.to_owned())
}

fn us(p: Option<&Percentiles>, f: fn(&Percentiles) -> f64) -> String {
    p.map_or_else(|| "–".into(), |p| format!("{:.0}", f(p)))
}

fn markdown(report: &Report) -> String {
    let r = report;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# Control writes with {} tenants and {} principals\n",
        r.tenants, r.principals
    );
    let _ = writeln!(
        s,
        "{} (commit {}), {} shards pinned to CPUs {:?}; control plane on {}, request/reply \
         client on {}, writing client on {}.\n\n```sh\n{}\n```\n",
        r.date,
        r.commit,
        r.shards,
        r.cpus,
        cpu_text(&r.control_cpus),
        cpu_text(&r.client_cpus),
        if r.writer_cpus.is_empty() {
            "the same".to_owned()
        } else {
            cpu_text(&r.writer_cpus)
        },
        r.command
    );
    let _ = writeln!(
        s,
        "Node start to the first write answered (the seed tenants inserted first): {:.1} s.\n",
        r.start_secs
    );
    let writes = &r.writes;
    let _ = writeln!(s, "## Control writes, one after another\n");
    let _ = writeln!(
        s,
        "| writes OK | failed | writes/s | p50 µs | p99 µs | max µs |"
    );
    let _ = writeln!(s, "|---:|---:|---:|---:|---:|---:|");
    let _ = writeln!(
        s,
        "| {} | {} | {:.1} | {} | {} | {} |\n",
        writes.ok,
        writes.failed,
        writes.per_sec,
        us(writes.latency.as_ref(), |p| p.p50_us),
        us(writes.latency.as_ref(), |p| p.p99_us),
        us(writes.latency.as_ref(), |p| p.max_us),
    );
    if !r.deletes.is_empty() {
        let _ = writeln!(
            s,
            "## Deletes, one after another\n\nA principal's delete takes its credential with it; a tenant's, its {} principals and their credentials.\n",
            r.principals / r.tenants.max(1)
        );
        let _ = writeln!(
            s,
            "| deleted | OK | failed | per s | p50 µs | p99 µs | max µs |"
        );
        let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|");
        for d in &r.deletes {
            let c = &d.calls;
            let l = c.latency.as_ref();
            let _ = writeln!(
                s,
                "| {} | {} | {} | {:.1} | {} | {} | {} |",
                d.what,
                c.ok,
                c.failed,
                c.per_sec,
                us(l, |p| p.p50_us),
                us(l, |p| p.p99_us),
                us(l, |p| p.max_us),
            );
        }
        let _ = writeln!(s);
    }
    if r.runs.is_empty() {
        return s;
    }
    let _ = writeln!(
        s,
        "## Request/reply on the data plane, quiet and while writes stream\n"
    );
    let pace = if r.write_rate > 0.0 {
        format!("paced at {:.0} writes/s", r.write_rate)
    } else {
        "one after another without pause".to_owned()
    };
    let _ = writeln!(
        s,
        "Control calls beside request/reply (writes, and reads in `reads` runs): {pace}.\n"
    );
    let _ = writeln!(
        s,
        "| round | beside | host busy before (cores) | replies | p50 µs | p99 µs | p99.9 µs | control calls | calls/s | call p99 µs |"
    );
    let _ = writeln!(s, "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for run in &r.runs {
        let l = run.reqreply.latency.as_ref();
        let (n, rate, wp99) = run.writes.as_ref().map_or_else(
            || ("–".into(), "–".into(), "–".into()),
            |w| {
                (
                    w.ok.to_string(),
                    format!("{:.1}", w.per_sec),
                    us(w.latency.as_ref(), |p| p.p99_us),
                )
            },
        );
        let _ = writeln!(
            s,
            "| {} | {} | {:.2} | {}/{} | {} | {} | {} | {n} | {rate} | {wp99} |",
            run.round,
            run.beside,
            run.host_busy_before,
            run.reqreply.received,
            run.reqreply.sent,
            us(l, |p| p.p50_us),
            us(l, |p| p.p99_us),
            us(l, |p| p.p999_us),
        );
    }
    // Mean and median of each arm's p99 over the rounds: on a shared host
    // one noisy round moves a mean, so both are given, with the spread of
    // the quiet runs (this host's noise between runs with nothing beside).
    let p99s = |beside: &str| -> Vec<f64> {
        let mut v: Vec<f64> = r
            .runs
            .iter()
            .filter(|x| x.beside == beside)
            .filter_map(|x| x.reqreply.latency.as_ref().map(|l| l.p99_us))
            .collect();
        v.sort_by(f64::total_cmp);
        v
    };
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let median = |v: &[f64]| {
        let m = v.len() / 2;
        if v.len().is_multiple_of(2) {
            f64::midpoint(v[m - 1], v[m])
        } else {
            v[m]
        }
    };
    let (quiet, busy, reads) = (p99s("quiet"), p99s("writes"), p99s("reads"));
    if !quiet.is_empty() && !busy.is_empty() {
        let (quiet_mean, quiet_median) = (mean(&quiet), median(&quiet));
        let (busy_mean, busy_median) = (mean(&busy), median(&busy));
        let _ = writeln!(
            s,
            "\nRequest/reply p99 over the rounds, mean (median): quiet {quiet_mean:.0} ({quiet_median:.0}) µs, with writes {busy_mean:.0} ({busy_median:.0}) µs: {:.2}× ({:.2}×) (goal: at most 1.10×).",
            busy_mean / quiet_mean,
            busy_median / quiet_median
        );
        if !reads.is_empty() {
            let (reads_mean, reads_median) = (mean(&reads), median(&reads));
            let _ = writeln!(
                s,
                "With reads (`GetTenant`) at the same pace: {reads_mean:.0} ({reads_median:.0}) µs, {:.2}× ({:.2}×) quiet; writes are {:.2}× ({:.2}×) reads.",
                reads_mean / quiet_mean,
                reads_median / quiet_median,
                busy_mean / reads_mean,
                busy_median / reads_median
            );
        }
        let (lo, hi) = (quiet[0], quiet[quiet.len() - 1]);
        let _ = writeln!(
            s,
            "The quiet runs alone span {lo:.0}–{hi:.0} µs ({:.2}×): this host's noise between runs with nothing beside.",
            hi / lo
        );
    }
    s
}
