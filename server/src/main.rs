//! `arqonbus`: the server binary.
//!
//! `arqonbus serve` runs a node on embedded defaults, or on `--config FILE`
//! with flags overriding the file. Before anything is created it refuses an
//! initialised data directory that lacks a file it needs
//! (`bootstrap::check_data_dir`), unless `--recreate-missing` asks for the
//! missing pieces to be re-created on purpose. The maintenance commands work
//! on a stopped node's data directory (found the same way, from `--config`
//! or `--data-dir`): `restore --from FILE` (a store backup, see
//! `arqonctl backup`), `admin rotate-token`, `ca rotate`. Each prints one
//! result line on stdout, and any failure as one line on stderr with a
//! non-zero exit. The main thread runs a small tokio runtime
//! that watches SIGINT (stop now), SIGTERM (lame duck) and SIGHUP (reload),
//! and carries the OTLP exporter's gRPC channel when `[tracing]` exports
//! spans; the data plane runs on its own pinned executors. The same loop
//! takes hand-over requests: `serve --take-over` in another process asks
//! this one for its ports (an upgrade), and once that process serves this
//! one moves its clients there and exits 0. SIGUSR2 starts that process
//! itself (the binary at this one's path, with `--take-over`), which is how
//! the service manager upgrades in place; readiness goes to it through
//! `NOTIFY_SOCKET` when set (`arqonbus::notify`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use arqonbus::config::{Config, LogFormat, Overrides};
use arqonbus::otlp::TraceExport;
use arqonbus::{Paths, Server};
use arqonbus::{bootstrap, notify};
use clap::{Parser, Subcommand};
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// Messages cross shards as heap blocks allocated on one core and freed on
/// another. glibc's malloc serialises those frees on the allocating arena's
/// lock (22 % of a cross-shard 1→1 run went to that lock's futex), while
/// mimalloc returns them to their owner without a lock. Without transparent
/// huge pages (`no_thp`): with them a fresh node held 31 MB of anonymous
/// memory instead of 3 MB, for no measurable throughput.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "arqonbus",
    version,
    about = "ArqonBus: the real-time message bus"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a node (TLS and authentication on; see deploy/arqonbus.toml).
    Serve(ServeArgs),
    /// Replace the control store with a backup (node stopped). The current
    /// file is kept as control.redb.replaced-<secs>.
    Restore(RestoreArgs),
    /// The control API's admin credential.
    #[command(subcommand)]
    Admin(AdminCommand),
    /// The node's generated certificate authority.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Check this host against what the node needs and what a tuning profile
    /// sets; one line per check. Exit code: 0 ok, 1 warnings, 2 a failure,
    /// 3 could not check (bad configuration or profile).
    Doctor(DoctorArgs),
}

#[derive(Debug, clap::Args)]
struct DoctorArgs {
    /// Tuning profile to check the sysctls and CPU/IRQ layout against:
    /// latency, throughput or connections (tuning/profiles/).
    #[arg(long)]
    profile: Option<String>,
    /// Configuration file (TOML): shards, locked memory, connection limits.
    #[arg(long, short, env = "ARQONBUS_CONFIG")]
    config: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// Where the data directory is, for the maintenance commands.
#[derive(Debug, clap::Args)]
struct DirArgs {
    /// Configuration file (TOML); its `data_dir` is used.
    #[arg(long, short, env = "ARQONBUS_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory (overrides the configuration file's).
    #[arg(long, env = "ARQONBUS_DATA_DIR")]
    data_dir: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct RestoreArgs {
    #[command(flatten)]
    dir: DirArgs,
    /// The backup file (from `arqonctl backup FILE`).
    #[arg(long, value_name = "FILE")]
    from: PathBuf,
}

#[derive(Debug, Subcommand)]
enum AdminCommand {
    /// Write a new admin token to credentials/admin.token (0600) and make
    /// the old one invalid (node stopped). Also the recovery for a lost file.
    RotateToken(DirArgs),
}

#[derive(Debug, Subcommand)]
enum CaCommand {
    /// Create a new CA, cross-signed by the old one for the overlap, and
    /// re-issue the server certificate (takes effect at the next start).
    Rotate(CaRotateArgs),
}

#[derive(Debug, clap::Args)]
struct CaRotateArgs {
    #[command(flatten)]
    dir: DirArgs,
    /// Days during which clients that trust only the old CA keep working.
    #[arg(long, default_value_t = 30)]
    overlap_days: u32,
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// Configuration file (TOML). Without it, embedded defaults are used.
    #[arg(long, short, env = "ARQONBUS_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory (TLS material, tenants, credentials).
    #[arg(long, env = "ARQONBUS_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Address to listen on, e.g. 0.0.0.0:7420.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Number of shards (0: one per CPU).
    #[arg(long)]
    shards: Option<usize>,
    /// Serve plaintext instead of TLS. Only for trusted networks and benchmarks.
    #[arg(long)]
    plaintext: bool,
    /// On an initialised node, re-create on purpose what is missing (a new
    /// CA, an empty control store, a new admin token) instead of refusing.
    #[arg(long)]
    recreate_missing: bool,
    /// Take over the node serving this configuration's port (an upgrade or
    /// a rollback): it hands over its ports, this node serves them, and it
    /// moves its clients here (specs/runbooks.md). Without a running node,
    /// a plain start.
    #[arg(long)]
    take_over: bool,
}

/// Logs to stderr, filtered by `[log] level` (or `RUST_LOG`); with trace
/// export, a second layer with its own filter takes the spans, so the log
/// level is the same either way.
fn init_logging(config: &Config, export: Option<&TraceExport>) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log.level));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let logs = match config.log.format {
        LogFormat::Json => fmt.json().flatten_event(true).with_filter(filter).boxed(),
        LogFormat::Text => fmt.with_filter(filter).boxed(),
    };
    tracing_subscriber::registry()
        .with(logs)
        .with(export.map(TraceExport::layer))
        .init();
}

/// Flushes exported spans (bounded by `[tracing] export_timeout_ms`) while
/// `rt` drives the exporter's channel.
fn flush_traces(rt: &tokio::runtime::Runtime, export: TraceExport) {
    let flushed = rt.block_on(rt.spawn_blocking(move || export.shutdown()));
    match flushed {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "trace export: spans were not all flushed"),
        Err(e) => tracing::warn!(error = %e, "trace export: the flush did not finish"),
    }
}

fn announce(
    paths: &Paths,
    addr: SocketAddr,
    tls: bool,
    control: Option<SocketAddr>,
    metrics: Option<SocketAddr>,
) {
    let scheme = if tls { "tls" } else { "tcp" };
    tracing::info!(%addr, tls, "ArqonBus is serving");
    if let Some(ca) = &paths.ca {
        tracing::info!(path = %ca.display(), generated = paths.generated_tls, "clients verify this server with this CA");
    }
    if let Some(token) = &paths.bootstrap_token {
        tracing::info!(path = %token.display(), created = paths.created_credential, "bootstrap credential file");
    }
    if let Some(admin) = &paths.admin_token {
        tracing::info!(path = %admin.display(), "control API admin credential file");
    }
    // A short human summary; the secret itself is never printed.
    let mut lines = vec![format!("ArqonBus listening on {scheme}://{addr}")];
    if let Some(ca) = &paths.ca {
        lines.push(format!("  CA certificate:       {}", ca.display()));
    }
    if let Some(token) = &paths.bootstrap_token {
        lines.push(format!(
            "  bootstrap credential: {} (mode 0600)",
            token.display()
        ));
    }
    if let (Some(control), Some(admin)) = (control, &paths.admin_token) {
        lines.push(format!(
            "  control API:          https://{control} (admin credential: {})",
            admin.display()
        ));
    }
    if let Some(metrics) = metrics {
        lines.push(format!(
            "  metrics and health:   http://{metrics}/metrics /healthz /readyz"
        ));
    }
    eprintln!("{}", lines.join("\n"));
}

fn serve(args: ServeArgs) -> Result<(), String> {
    let mut config = match &args.config {
        Some(path) => Config::load(path).map_err(|e| e.to_string())?,
        None => Config::default(),
    };
    config.apply(&Overrides {
        data_dir: args.data_dir,
        listen: args.listen,
        shards: args.shards,
        plaintext: args.plaintext,
    });
    config.validate().map_err(|e| e.to_string())?;

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the signal runtime: {e}"))?;
    // The exporter's channel lives on this runtime, which the main thread
    // drives while it waits for signals and while it flushes at exit.
    let export = {
        let _entered = rt.enter();
        TraceExport::start(&config.tracing).map_err(|e| e.to_string())?
    };
    init_logging(&config, export.as_ref());
    let how = Start {
        recreate_missing: args.recreate_missing,
        take_over: args.take_over,
    };
    let result = run(&config, args.config.as_deref(), how, &rt);
    if let Some(export) = export {
        flush_traces(&rt, export);
    }
    result
}

/// How `serve` starts the node.
#[derive(Debug, Clone, Copy)]
struct Start {
    recreate_missing: bool,
    take_over: bool,
}

/// How the main loop ended.
enum Exit {
    /// SIGINT: stop now.
    Now,
    /// SIGTERM: lame duck, then stop.
    Graceful,
    /// Another process took the node over: move the clients to it.
    HandedOver,
}

/// Runs the server until a signal stops it or another process takes it
/// over.
fn run(
    config: &Config,
    config_path: Option<&std::path::Path>,
    how: Start,
    rt: &tokio::runtime::Runtime,
) -> Result<(), String> {
    // Signals are watched before the server starts and says where it
    // listens: a SIGTERM or SIGHUP sent as soon as the banner appears must
    // reach these handlers, not the default action (which kills the process).
    let (mut int, mut term, mut hup, mut usr2) = {
        use tokio::signal::unix::{SignalKind, signal};
        let _entered = rt.enter();
        let watch = |kind: SignalKind, name: &str| {
            signal(kind).map_err(|e| format!("cannot watch {name}: {e}"))
        };
        (
            watch(SignalKind::interrupt(), "SIGINT")?,
            watch(SignalKind::terminate(), "SIGTERM")?,
            watch(SignalKind::hangup(), "SIGHUP")?,
            watch(SignalKind::user_defined2(), "SIGUSR2")?,
        )
    };
    // Captured now: after a package upgrade the file at this path is the
    // new binary, which SIGUSR2 starts to take this node over.
    let respawn = notify::Respawn::capture()
        .inspect_err(|e| tracing::warn!(error = %e, "this process's binary is unknown: SIGUSR2 cannot upgrade in place"))
        .ok();

    if how.recreate_missing {
        bootstrap::recreate_missing(config).map_err(|e| e.to_string())?;
    } else {
        bootstrap::check_data_dir(config).map_err(|e| e.to_string())?;
    }
    let mut server = if how.take_over {
        Server::take_over(config, config_path)
    } else {
        Server::start_with(config, config_path)
    }
    .map_err(|e| e.to_string())?;
    // Requests from a node started with --take-over; without a claimed
    // native port none arrive.
    let mut handovers = server.handovers();
    announce(
        server.paths(),
        server.local_addr(),
        config.tls.enabled,
        server.control_addr(),
        server.metrics_addr(),
    );
    notify::ready();

    let mut taking = handovers.is_some();
    let exit = rt.block_on(async {
        loop {
            tokio::select! {
                _ = int.recv() => {
                    tracing::info!("SIGINT: shutting down now");
                    break Exit::Now;
                }
                _ = term.recv() => {
                    tracing::info!("SIGTERM: lame duck, then shutting down");
                    notify::notify("STOPPING=1");
                    break Exit::Graceful;
                }
                _ = usr2.recv() => upgrade_in_place(respawn.as_ref()),
                incoming = next_handover(&mut handovers), if taking => match incoming {
                    // Blocks this loop until the new node serves or fails
                    // (bounded by handover::START_TIMEOUT); signals wait.
                    Some(incoming) => match server.hand_over(incoming) {
                        Ok(()) => break Exit::HandedOver,
                        Err(e) => tracing::warn!(error = %e, "hand-over did not happen; serving on"),
                    },
                    None => taking = false,
                },
                _ = hup.recv() => match server.reload() {
                    Ok(epoch) => tracing::info!(epoch, "SIGHUP: configuration reloaded"),
                    Err(e) if e.took_effect() => tracing::warn!(
                        error = %e,
                        "SIGHUP: configuration reloaded, but not yet applied by every shard; they have it queued"
                    ),
                    Err(e) => tracing::error!(error = %e, "SIGHUP: reload failed; nothing changed"),
                },
            }
        }
    });
    match exit {
        Exit::Now => server.shutdown(),
        Exit::Graceful => server.shutdown_gracefully(),
        Exit::HandedOver => server.finish_hand_off(),
    }
    tracing::info!("stopped");
    Ok(())
}

/// SIGUSR2: starts this binary again to take the node over, and says how
/// that went; the hand-over itself arrives as a request like any other.
fn upgrade_in_place(respawn: Option<&notify::Respawn>) {
    let Some(how) = respawn else {
        tracing::error!("SIGUSR2: this process's binary is unknown; serving on");
        return;
    };
    match notify::respawn(how) {
        Ok(pid) => {
            tracing::info!(pid, command = %how.describe(), "SIGUSR2: started the binary again to take this node over");
        }
        Err(e) => {
            tracing::error!(error = %e, command = %how.describe(), "SIGUSR2: cannot start the binary; serving on");
        }
    }
}

/// The next hand-over request, if any can still come.
async fn next_handover(
    rx: &mut Option<tokio::sync::mpsc::UnboundedReceiver<arqonbus::handover::Incoming>>,
) -> Option<arqonbus::handover::Incoming> {
    match rx {
        Some(rx) => rx.recv().await,
        None => None,
    }
}

/// The configuration a maintenance command works on.
fn dir_config(args: DirArgs) -> Result<Config, String> {
    let mut config = match &args.config {
        Some(path) => Config::load(path).map_err(|e| e.to_string())?,
        None => Config::default(),
    };
    config.apply(&Overrides {
        data_dir: args.data_dir,
        ..Overrides::default()
    });
    Ok(config)
}

/// Logs of the maintenance commands: warnings and errors, as text.
fn init_tool_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter)
        .init();
}

/// One result line on stdout.
fn say(line: &str) -> Result<(), String> {
    use std::io::Write as _;
    writeln!(std::io::stdout(), "{line}").map_err(|e| format!("cannot write to stdout: {e}"))
}

fn restore(args: RestoreArgs) -> Result<(), String> {
    let config = dir_config(args.dir)?;
    let dir = &config.data_dir;
    // The restored store must accept the admin token the operator holds.
    let admin = arqonbus_controlplane::admin::token_file_hash(dir).map_err(|e| e.to_string())?;
    let report =
        arqonbus_controlplane::store::restore(&args.from, dir, admin).map_err(|e| e.to_string())?;
    let replaced = report.replaced.map_or_else(String::new, |p| {
        format!("; the previous file is {}", p.display())
    });
    say(&format!(
        "restored {} from {}: {} tenants, {} principals, {} credentials{replaced}",
        dir.join(arqonbus_controlplane::store::STORE_FILE).display(),
        args.from.display(),
        report.tenants,
        report.principals,
        report.credentials,
    ))
}

fn rotate_admin(args: DirArgs) -> Result<(), String> {
    let config = dir_config(args)?;
    let dir = &config.data_dir;
    let path = dir.join(arqonbus_controlplane::store::STORE_FILE);
    if !path.exists() {
        return Err(format!("{}: no control store here", path.display()));
    }
    let store = arqonbus_controlplane::store::RedbStore::open(dir).map_err(|e| {
        let text = e.to_string();
        if text.contains("in use by another process") {
            format!("{text}; on a running node use `arqonctl admin rotate`")
        } else {
            text
        }
    })?;
    let rotated = arqonbus_controlplane::admin::rotate(&store, dir).map_err(|e| e.to_string())?;
    say(&format!(
        "new admin credential in {} (mode 0600, fingerprint {}); the old one no longer works",
        rotated.path.display(),
        rotated.fingerprint
    ))
}

fn rotate_ca(args: CaRotateArgs) -> Result<(), String> {
    let config = dir_config(args.dir)?;
    if config.tls.cert.is_some() && config.tls.key.is_some() {
        return Err(
            "tls.cert and tls.key are configured: the operator's CA is not rotated here".into(),
        );
    }
    let r = arqonbus::tls::rotate_ca(&config.data_dir, &config.tls.extra_names, args.overlap_days)
        .map_err(|e| e.to_string())?;
    say(&format!(
        "new CA in {} (new CA first, then the old one): give it to clients before {}; restart the node to serve the new certificate",
        r.ca_pem.display(),
        r.overlap_ends
    ))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Doctor(args) => {
            return ExitCode::from(arqonbus::doctor::command::run(
                args.config.as_deref(),
                args.profile.as_deref(),
                args.json,
            ));
        }
        Command::Serve(args) => serve(args),
        Command::Restore(args) => {
            init_tool_logging();
            restore(args)
        }
        Command::Admin(AdminCommand::RotateToken(args)) => {
            init_tool_logging();
            rotate_admin(args)
        }
        Command::Ca(CaCommand::Rotate(args)) => {
            init_tool_logging();
            rotate_ca(args)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("arqonbus: {e}");
            ExitCode::FAILURE
        }
    }
}
