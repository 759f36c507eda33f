//! `arqonbus`: the server binary.
//!
//! `arqonbus serve` runs a node on embedded defaults, or on `--config FILE`
//! with flags overriding the file. The main thread runs a small tokio runtime
//! that watches SIGINT (stop now), SIGTERM (lame duck) and SIGHUP (reload),
//! and carries the OTLP exporter's gRPC channel when `[tracing]` exports
//! spans; the data plane runs on its own pinned executors.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use arqonbus::config::{Config, LogFormat, Overrides};
use arqonbus::otlp::TraceExport;
use arqonbus::{Paths, Server};
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
    let result = run(&config, args.config.as_deref(), &rt);
    if let Some(export) = export {
        flush_traces(&rt, export);
    }
    result
}

/// Runs the server until a signal stops it.
fn run(
    config: &Config,
    config_path: Option<&std::path::Path>,
    rt: &tokio::runtime::Runtime,
) -> Result<(), String> {
    // Signals are watched before the server starts and says where it
    // listens: a SIGTERM or SIGHUP sent as soon as the banner appears must
    // reach these handlers, not the default action (which kills the process).
    let (mut int, mut term, mut hup) = {
        use tokio::signal::unix::{SignalKind, signal};
        let _entered = rt.enter();
        let watch = |kind: SignalKind, name: &str| {
            signal(kind).map_err(|e| format!("cannot watch {name}: {e}"))
        };
        (
            watch(SignalKind::interrupt(), "SIGINT")?,
            watch(SignalKind::terminate(), "SIGTERM")?,
            watch(SignalKind::hangup(), "SIGHUP")?,
        )
    };

    let server = Server::start_with(config, config_path).map_err(|e| e.to_string())?;
    announce(
        server.paths(),
        server.local_addr(),
        config.tls.enabled,
        server.control_addr(),
        server.metrics_addr(),
    );

    let graceful = rt.block_on(async {
        loop {
            tokio::select! {
                _ = int.recv() => {
                    tracing::info!("SIGINT: shutting down now");
                    break false;
                }
                _ = term.recv() => {
                    tracing::info!("SIGTERM: lame duck, then shutting down");
                    break true;
                }
                _ = hup.recv() => match server.reload() {
                    Ok(epoch) => tracing::info!(epoch, "SIGHUP: configuration reloaded"),
                    Err(e) => tracing::error!(error = %e, "SIGHUP: reload failed; nothing changed"),
                },
            }
        }
    });
    if graceful {
        server.shutdown_gracefully();
    } else {
        server.shutdown();
    }
    tracing::info!("stopped");
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("arqonbus: {e}");
            ExitCode::FAILURE
        }
    }
}
