//! `arqonctl`: the ArqonBus operator CLI for the control API (gRPC over TLS).
//!
//! `arqonctl tenants | principals | credentials | policies | connections |
//! node | steering ...`, one subcommand per RPC. This file owns the process: parsing,
//! the runtime, the overall timeout, printing and turning every failure into
//! one clear line on stderr.
//!
//! Invariants: exit code 0 only on success, 1 for a failed call or setup, 2
//! for bad arguments (clap's convention); stdout carries only the result (a
//! table, a `key: value` block, or one JSON document with `--json`), notes
//! and errors go to stderr; the admin token is never printed or logged, and
//! an issued token is printed exactly once, to stdout. Logs (`ARQONCTL_LOG`,
//! e.g. `ARQONCTL_LOG=debug`) go to stderr, coloured only on a terminal
//! without `NO_COLOR`. `--json` prints u64 ids as strings (see `render`).

mod args;
mod commands;
mod connect;
mod render;
mod requests;

use std::error::Error as _;
use std::io::{self, Write as _};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tonic::{Code, Status};

use crate::args::{ServerUrl, Settings};
use crate::connect::{DialError, SetupError};
use crate::render::{Report, escape_text};

/// Everything a command can fail with.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CliError {
    /// The CA, the token or the TLS configuration could not be set up.
    #[error(transparent)]
    Setup(#[from] SetupError),
    /// The control listener could not be reached (TCP, TLS or HTTP/2).
    #[error("cannot connect: {0}")]
    Connect(tonic::transport::Error),
    /// The server answered a call with an error.
    #[error("{}: {}", code_words(.0.code()), .0.message())]
    Rpc(#[from] Status),
    /// A lookup done by the CLI itself found nothing.
    #[error("not found: {0}")]
    NotFound(String),
    /// Bare digits name one tenant by id and another by name.
    #[error(
        "\"{digits}\" is ambiguous: tenant {digits} and tenant {named_id} named \"{digits}\" \
         both exist (write id:{digits} or name:{digits})"
    )]
    AmbiguousTenant {
        /// The digits as given.
        digits: String,
        /// The id of the tenant named by the digits.
        named_id: u64,
    },
    /// The server's answer lacks a field it must carry.
    #[error("the server's answer has no {0}")]
    IncompleteResponse(&'static str),
    /// The command did not finish within `--timeout`.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The async runtime could not start.
    #[error("cannot start the async runtime: {0}")]
    Runtime(io::Error),
    /// Stdout could not be written.
    #[error("cannot write to stdout: {0}")]
    Stdout(io::Error),
    /// A local file (a backup, a rotated admin token) could not be
    /// received or written; the text says which and why.
    #[error("{0}")]
    Local(String),
}

fn main() -> ExitCode {
    let cli = match args::parse_from(std::env::args_os()) {
        Ok(cli) => cli,
        // Prints help, version or the usage error, with clap's exit code.
        Err(e) => e.exit(),
    };
    init_logging();
    let settings = cli.conn.settings();
    let result = execute(&settings, cli.command).and_then(|report| emit(&report, cli.json));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // `arqonctl ... | head` closing the pipe is a normal way to stop.
        Err(CliError::Stdout(e)) if e.kind() == io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("arqonctl: {}", explain(&e, &settings));
            ExitCode::FAILURE
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("ARQONCTL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    // Fails only if a subscriber is already installed: keep that one.
    let _already_set = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(io::stderr)
        .with_ansi(arqonbus_cli::colour_allowed(&io::stderr()))
        .try_init();
}

/// Reads the CA and token, connects and runs the command, all within
/// `--timeout`.
fn execute(settings: &Settings, command: args::Cmd) -> Result<Report, CliError> {
    let command = command.with_settings(settings);
    // Local files first: a missing token fails before any network traffic.
    let prepared = connect::prepare(settings)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(CliError::Runtime)?;
    runtime.block_on(async {
        let work = async {
            let control = prepared.connect().await.map_err(CliError::Connect)?;
            commands::run(&control, command, now_unix_ms()).await
        };
        tokio::time::timeout(settings.timeout, work)
            .await
            .unwrap_or(Err(CliError::Timeout(settings.timeout)))
    })
}

/// Prints the report: the result to stdout, notes to stderr.
fn emit(report: &Report, json: bool) -> Result<(), CliError> {
    let mut stdout = io::stdout().lock();
    if json {
        writeln!(stdout, "{}", report.json)
    } else {
        stdout.write_all(report.text.as_bytes())
    }
    .and_then(|()| stdout.flush())
    .map_err(CliError::Stdout)?;
    for note in &report.notes {
        eprintln!("{note}");
    }
    Ok(())
}

fn now_unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// One line that says what went wrong and, where it helps, what to do.
fn explain(err: &CliError, settings: &Settings) -> String {
    let url = &settings.server;
    match err {
        CliError::Setup(e @ SetupError::ReadCa { .. }) => {
            format!("{e} (pass --ca or --data-dir)")
        }
        CliError::Setup(
            e @ (SetupError::ReadToken { .. }
            | SetupError::EmptyToken { .. }
            | SetupError::MalformedToken { .. }),
        ) => format!("{e} (pass --admin-token-file or --data-dir)"),
        CliError::Setup(e @ SetupError::Tls(rustls::Error::InconsistentKeys(_))) => {
            format!("{e} (does --client-key belong to --client-cert?)")
        }
        CliError::Connect(e) => connection_failure(e, url)
            .unwrap_or_else(|| format!("cannot reach {url}: {}", error_chain(e))),
        CliError::Rpc(status) => describe_status(status, settings),
        CliError::Timeout(d) => format!(
            "no answer from {url} within {} (is the address right? raise --timeout for slow \
             operations)",
            describe_duration(*d)
        ),
        CliError::NotFound(what) => format!("not found: {}", escape_text(what)),
        other => escape_text(&other.to_string()),
    }
}

/// A gRPC status as `<code in words>: <server message>`, with hints for the
/// codes an operator can act on.
fn describe_status(status: &Status, settings: &Settings) -> String {
    let url = &settings.server;
    // A call that failed because the connection did: say so plainly.
    if matches!(
        status.code(),
        Code::Unavailable | Code::Unknown | Code::Cancelled
    ) && let Some(message) = status.source().and_then(|s| connection_failure(s, url))
    {
        return message;
    }
    let words = code_words(status.code());
    let message = escape_text(status.message());
    match status.code() {
        Code::Unauthenticated => format!(
            "{words}: check the admin token in {}",
            settings.token_file.display()
        ),
        Code::Unimplemented => format!(
            "{words}: the server at {url} does not offer this call (is it older than arqonctl, \
             or is this not the control port?)"
        ),
        _ if message.is_empty() => words.to_owned(),
        _ => format!("{words}: {message}"),
    }
}

/// The gRPC code as the words operators read (`invalid argument`).
fn code_words(code: Code) -> &'static str {
    match code {
        Code::Ok => "ok",
        Code::Cancelled => "cancelled",
        Code::Unknown => "unknown error",
        Code::InvalidArgument => "invalid argument",
        Code::DeadlineExceeded => "deadline exceeded",
        Code::NotFound => "not found",
        Code::AlreadyExists => "already exists",
        Code::PermissionDenied => "permission denied",
        Code::ResourceExhausted => "resource exhausted",
        Code::FailedPrecondition => "failed precondition",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out of range",
        Code::Unimplemented => "unimplemented",
        Code::Internal => "internal error",
        Code::Unavailable => "unavailable",
        Code::DataLoss => "data loss",
        Code::Unauthenticated => "unauthenticated",
    }
}

/// Finds the dial or I/O failure in an error's source chain.
fn connection_failure(err: &(dyn std::error::Error + 'static), url: &ServerUrl) -> Option<String> {
    let mut current = Some(err);
    while let Some(e) = current {
        if let Some(dial) = e.downcast_ref::<DialError>() {
            return Some(describe_dial(dial, url));
        }
        if let Some(io) = e.downcast_ref::<io::Error>() {
            // TLS 1.3 reports some refusals (a missing client certificate)
            // only after the handshake.
            if let Some(tls) = io.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) {
                return Some(describe_tls(tls, url));
            }
            return Some(if io.kind() == io::ErrorKind::TimedOut {
                format!("cannot reach {url}: timed out")
            } else {
                format!("connection to {url} failed: {io}")
            });
        }
        current = e.source();
    }
    None
}

fn describe_dial(err: &DialError, url: &ServerUrl) -> String {
    match err {
        DialError::Connect(io) if io.kind() == io::ErrorKind::ConnectionRefused => {
            format!("cannot reach {url}: connection refused (is the control plane running?)")
        }
        DialError::Connect(io) => format!("cannot reach {url}: {io}"),
        DialError::Handshake(e) => describe_tls(e, url),
        DialError::HandshakeIo(io) => format!("TLS handshake with {url} failed: {io}"),
    }
}

/// A TLS failure, with what the operator can do about it.
fn describe_tls(err: &rustls::Error, url: &ServerUrl) -> String {
    use rustls::{AlertDescription as Alert, Error as Tls};
    let hint = match err {
        Tls::AlertReceived(Alert::NoApplicationProtocol) => {
            return format!(
                "TLS handshake with {url} failed: the server does not offer gRPC (ALPN h2) \
                 there; is this the control port (default 7421) rather than the data port?"
            );
        }
        Tls::AlertReceived(Alert::CertificateRequired) => {
            return format!(
                "TLS handshake with {url} failed: the control plane requires a client \
                 certificate (pass --client-cert and --client-key)"
            );
        }
        Tls::AlertReceived(
            Alert::BadCertificate
            | Alert::UnknownCA
            | Alert::CertificateExpired
            | Alert::CertificateRevoked
            | Alert::CertificateUnknown
            | Alert::UnsupportedCertificate
            | Alert::AccessDenied,
        ) => " (the control plane did not accept --client-cert)",
        Tls::AlertReceived(Alert::ProtocolVersion) | Tls::PeerIncompatible(_) => {
            " (arqonctl speaks TLS 1.3 only)"
        }
        Tls::InvalidCertificate(_) => {
            " (is --ca the control plane's CA, and does the URL name a host on its certificate?)"
        }
        _ => "",
    };
    format!("TLS handshake with {url} failed: {err}{hint}")
}

/// `outer: inner: innermost` for errors without a better description.
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut current = err.source();
    while let Some(e) = current {
        out.push_str(": ");
        out.push_str(&e.to_string());
        current = e.source();
    }
    escape_text(&out)
}

fn describe_duration(d: Duration) -> String {
    if d.subsec_millis() == 0 && d.as_secs() > 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn settings() -> Settings {
        Settings {
            server: "https://127.0.0.1:7421".parse().unwrap(),
            ca: PathBuf::from("/d/tls/ca.pem"),
            token_file: PathBuf::from("/d/credentials/admin.token"),
            client_identity: None,
            timeout: Duration::from_secs(30),
        }
    }

    fn explained(err: impl Into<CliError>) -> String {
        let line = explain(&err.into(), &settings());
        assert!(!line.contains('\n'), "{line:?}");
        line
    }

    #[test]
    fn statuses_read_as_one_line() {
        assert_eq!(
            explained(Status::invalid_argument("name: must be 1..=64 characters")),
            "invalid argument: name: must be 1..=64 characters"
        );
        assert_eq!(
            explained(Status::unauthenticated("bad token")),
            "unauthenticated: check the admin token in /d/credentials/admin.token"
        );
        assert_eq!(
            explained(Status::failed_precondition("version is 4, expected 3")),
            "failed precondition: version is 4, expected 3"
        );
        assert_eq!(explained(Status::not_found("")), "not found");
        assert_eq!(
            explained(Status::unavailable("store unreadable")),
            "unavailable: store unreadable"
        );
        assert_eq!(
            explained(Status::already_exists("line 1\nline 2\u{1b}[2J")),
            "already exists: line 1\\nline 2\\u{1b}[2J"
        );
        assert!(explained(Status::unimplemented("")).contains("does not offer this call"));
    }

    #[test]
    fn connection_failures_name_the_server() {
        #[derive(Debug, thiserror::Error)]
        #[error("transport error")]
        struct Wrapper(#[source] DialError);

        let url: ServerUrl = "https://127.0.0.1:7421".parse().unwrap();
        let refused = DialError::Connect(io::Error::from(io::ErrorKind::ConnectionRefused));
        assert_eq!(
            describe_dial(&refused, &url),
            "cannot reach https://127.0.0.1:7421: connection refused (is the control plane running?)"
        );
        let alpn = DialError::Handshake(rustls::Error::AlertReceived(
            rustls::AlertDescription::NoApplicationProtocol,
        ));
        assert!(describe_dial(&alpn, &url).contains("control port"));
        let unknown_ca = DialError::Handshake(rustls::Error::InvalidCertificate(
            rustls::CertificateError::UnknownIssuer,
        ));
        assert!(describe_dial(&unknown_ca, &url).contains("is --ca the control plane's CA"));
        let tls12 = rustls::Error::AlertReceived(rustls::AlertDescription::ProtocolVersion);
        assert!(describe_tls(&tls12, &url).ends_with("(arqonctl speaks TLS 1.3 only)"));
        let no_cert = rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRequired);
        assert!(describe_tls(&no_cert, &url).contains("pass --client-cert and --client-key"));
        let bad_cert = rustls::Error::AlertReceived(rustls::AlertDescription::UnknownCA);
        assert!(describe_tls(&bad_cert, &url).contains("did not accept --client-cert"));
        // Reported after the handshake, inside an I/O error.
        let late = io::Error::other(no_cert);
        assert!(
            connection_failure(&late, &url)
                .unwrap()
                .contains("--client-cert")
        );

        // Found through a chain of wrappers, as tonic reports it.
        let wrapped = Wrapper(refused);
        assert!(
            connection_failure(&wrapped, &url)
                .unwrap()
                .contains("connection refused")
        );
        let status = Status::from_error(Box::new(Wrapper(DialError::Connect(io::Error::from(
            io::ErrorKind::ConnectionRefused,
        )))));
        assert!(explained(status).starts_with("cannot reach https://127.0.0.1:7421"));
    }

    #[test]
    fn setup_failures_say_what_to_pass() {
        let missing = CliError::Setup(SetupError::ReadToken {
            path: PathBuf::from("/d/credentials/admin.token"),
            source: io::Error::from(io::ErrorKind::NotFound),
        });
        let line = explained(missing);
        assert!(line.starts_with("cannot read the admin token /d/credentials/admin.token: "));
        assert!(
            line.ends_with("(pass --admin-token-file or --data-dir)"),
            "{line}"
        );
        let ca = CliError::Setup(SetupError::ReadCa {
            path: PathBuf::from("/d/tls/ca.pem"),
            source: io::Error::from(io::ErrorKind::NotFound),
        });
        assert!(explained(ca).ends_with("(pass --ca or --data-dir)"));
        assert_eq!(
            explained(CliError::Timeout(Duration::from_secs(30))),
            "no answer from https://127.0.0.1:7421 within 30s (is the address right? raise \
             --timeout for slow operations)"
        );
        assert_eq!(
            explained(CliError::NotFound("no principal 5".into())),
            "not found: no principal 5"
        );
    }
}
