//! `arqon`: the ArqonBus command-line client.
//!
//! `arqon pub | sub | req | reply`, on top of the `arqonbus-client` SDK.
//! This binary owns argument parsing, output formatting and turning errors
//! into one clear line on stderr. Invariants: exit code 0 only on success
//! (Ctrl-C on `sub`/`reply` counts as success), 1 for runtime failures, 2
//! for bad arguments (clap's convention); credentials never reach stdout,
//! stderr or logs. Logs (`ARQON_LOG`, e.g. `ARQON_LOG=debug`) go to stderr,
//! with colour only when stderr is a terminal and `NO_COLOR` is unset.
//! What happens to the connection (a drain notice, a lost connection, a
//! reconnect) is reported on stderr as plain `arqon: ...` lines whatever
//! `ARQON_LOG` says; after `--reconnect-attempts` failed attempts in a row
//! the command gives up with exit code 1.

mod args;
mod commands;
mod output;

use std::io;
use std::process::ExitCode;
use std::time::Duration;

use arqonbus_client::{Error, ErrorCode, OptionsError};

use crate::args::{CredentialChoice, Settings};

/// Everything a command can fail with.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CliError {
    /// Connecting failed (options, network, TLS, authentication).
    #[error("{0}")]
    Connect(Error),
    /// An operation on an established connection failed.
    #[error("{0}")]
    Bus(#[from] Error),
    /// The server refused what was sent (a publish to a subject the
    /// credential may not use, a payload over the limit).
    #[error("the server refused the message: {0}")]
    Refused(arqonbus_client::ServerError),
    /// A request found no subscriber.
    #[error("no responders on \"{0}\"")]
    NoResponders(String),
    /// A request got no reply in time.
    #[error("no reply on \"{0}\" within {t}", t = commands::describe_duration(*.1))]
    RequestTimeout(String, Duration),
    /// Stdin could not be read.
    #[error("cannot read the payload from stdin: {0}")]
    Stdin(io::Error),
    /// Stdout could not be written.
    #[error("cannot write to stdout: {0}")]
    Stdout(io::Error),
    /// The connection was lost and reconnecting failed `attempts` times in a
    /// row (`Some(0)`: reconnecting is off).
    #[error("{}", gave_up(*.attempts, .reason))]
    GaveUp {
        /// The budget that ran out.
        attempts: Option<u32>,
        /// The last failure.
        reason: Error,
    },
}

/// `lost the connection ... and gave up after N reconnect attempts: ...`.
fn gave_up(attempts: Option<u32>, reason: &Error) -> String {
    let reason = arqonbus_cli::escape_text(&reason.to_string());
    match attempts {
        Some(0) => {
            format!("lost the connection: {reason} (reconnecting is off: --reconnect-attempts 0)")
        }
        Some(n) => format!(
            "lost the connection and gave up after {n} reconnect attempt{s}: {reason} \
             (raise --reconnect-attempts, or set it to unlimited)",
            s = if n == 1 { "" } else { "s" }
        ),
        None => format!("lost the connection: {reason}"),
    }
}

fn main() -> ExitCode {
    let (cli, sources) = match args::parse_from(std::env::args_os()) {
        Ok(parsed) => parsed,
        // Prints help, version or the usage error, with clap's exit code.
        Err(e) => e.exit(),
    };
    init_logging();
    let settings = cli.conn.settings(sources);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("arqon: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(commands::run(&settings, cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        // `arqon sub ... | head` closing the pipe is a normal way to stop.
        Err(CliError::Stdout(e)) if e.kind() == io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("arqon: {}", explain(&e, &settings));
            ExitCode::FAILURE
        }
    }
}

fn init_logging() {
    // The SDK's own warnings about the connection are reported by `arqon`
    // as plain lines (`commands::report_events`); `ARQON_LOG` shows them.
    let filter = tracing_subscriber::EnvFilter::try_from_env("ARQON_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,arqonbus_client=error"));
    // Fails only if a subscriber is already installed: keep that one.
    let _already_set = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(io::stderr)
        .with_ansi(arqonbus_cli::colour_allowed(&io::stderr()))
        .try_init();
}

/// One line that says what went wrong and, where it helps, what to do.
fn explain(err: &CliError, settings: &Settings) -> String {
    let url = &settings.url;
    let credential_hint = match &settings.credential {
        CredentialChoice::File(path) => format!("check the credential in {}", path.display()),
        CredentialChoice::Inline(_) => "check --credential".to_owned(),
        CredentialChoice::Missing => "pass --credential-file".to_owned(),
    };
    let (CliError::Connect(e) | CliError::Bus(e)) = err else {
        return err.to_string();
    };
    match e {
        Error::AuthenticationFailed { .. } => format!("authentication failed: {credential_hint}"),
        Error::InvalidOptions(OptionsError::MissingCredential) => {
            "no credential: pass --credential-file or --data-dir \
             (or set ARQONBUS_CREDENTIAL_FILE)"
                .to_owned()
        }
        Error::InvalidOptions(OptionsError::MissingCa) => {
            "a tls:// server needs its CA certificate: pass --ca or --data-dir \
             (or use a tcp:// URL for a plaintext server)"
                .to_owned()
        }
        Error::Io(io) if io.kind() == io::ErrorKind::ConnectionRefused => {
            format!("cannot connect to {url}: connection refused (is the server running?)")
        }
        Error::Io(io) if matches!(err, CliError::Connect(_)) => {
            format!("cannot connect to {url}: {io}")
        }
        Error::Tls(tls) => format!(
            "TLS handshake with {url} failed: {tls} (is --ca the server's CA, and does the URL \
             name a host on its certificate?)"
        ),
        Error::ConnectTimeout => format!("timed out connecting to {url}"),
        Error::UnsupportedVersion { .. } => {
            format!("the server at {url} does not speak this client's protocol version")
        }
        Error::Server(e) if e.code == ErrorCode::AuthThrottled => format!(
            "too many failed logins from this address: the server at {url} refuses to check \
             credentials for a while; wait and retry"
        ),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::sync::Arc;

    use arqonbus_client::ClientKind;

    use super::*;

    fn settings(credential: CredentialChoice) -> Settings {
        Settings {
            url: "tls://127.0.0.1:7420".into(),
            ca: None,
            credential,
            name: "arqon".into(),
            kind: ClientKind::Human,
            reconnect_attempts: Some(10),
        }
    }

    #[test]
    fn errors_read_as_one_helpful_line() {
        let file = settings(CredentialChoice::File(PathBuf::from("/d/bootstrap.token")));
        let auth = CliError::Connect(Error::AuthenticationFailed {
            message: "x".into(),
        });
        assert_eq!(
            explain(&auth, &file),
            "authentication failed: check the credential in /d/bootstrap.token"
        );
        let refused = CliError::Connect(Error::Io(Arc::new(io::Error::from(
            io::ErrorKind::ConnectionRefused,
        ))));
        assert!(explain(&refused, &file).contains("is the server running?"));
        let missing = CliError::Connect(Error::InvalidOptions(OptionsError::MissingCredential));
        assert!(
            explain(&missing, &settings(CredentialChoice::Missing)).contains("--credential-file")
        );
        let timeout = CliError::RequestTimeout("svc".into(), Duration::from_secs(2));
        assert_eq!(explain(&timeout, &file), "no reply on \"svc\" within 2s");
        let gave_up = CliError::GaveUp {
            attempts: Some(3),
            reason: Error::Io(Arc::new(io::Error::from(io::ErrorKind::ConnectionRefused))),
        };
        let line = explain(&gave_up, &file);
        assert!(
            line.starts_with("lost the connection and gave up after 3 reconnect attempts: "),
            "{line}"
        );
        let off = CliError::GaveUp {
            attempts: Some(0),
            reason: Error::ConnectionReset,
        };
        assert!(explain(&off, &file).contains("--reconnect-attempts 0"));
        let throttled = CliError::Connect(Error::Server(arqonbus_client::ServerError {
            code: ErrorCode::AuthThrottled,
            message: "too many failed logins; retry later".into(),
            fatal: true,
            sid: None,
        }));
        assert!(
            explain(&throttled, &file).starts_with("too many failed logins from this address"),
            "{}",
            explain(&throttled, &file)
        );
        let none = CliError::NoResponders("svc".into());
        assert_eq!(explain(&none, &file), "no responders on \"svc\"");
        for message in [
            explain(
                &auth,
                &settings(CredentialChoice::Inline(
                    arqonbus_client::Credential::new("abt_secret").unwrap(),
                )),
            ),
            format!("{auth:?}"),
        ] {
            assert!(!message.contains("abt_secret"));
            assert!(!message.contains('\n'));
        }
    }

    #[test]
    fn durations_are_described_briefly() {
        assert_eq!(commands::describe_duration(Duration::from_secs(2)), "2s");
        assert_eq!(
            commands::describe_duration(Duration::from_millis(1500)),
            "1500ms"
        );
    }
}
