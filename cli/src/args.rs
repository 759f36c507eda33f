//! Command-line arguments (clap derive) and how they become
//! [`ConnectOptions`].
//!
//! Invariants: the inline credential is held as a [`Credential`], so it never
//! shows in `Debug` output, and `--help` never prints its environment value;
//! `--data-dir` only fills in a CA or credential file that was not given
//! otherwise.

use std::path::{Path, PathBuf};
use std::time::Duration;

use arqonbus_client::{ClientKind, ConnectOptions, Credential, OptionsError, ReconnectPolicy};
use clap::parser::ValueSource;
use clap::{
    ArgMatches, Args, CommandFactory as _, FromArgMatches as _, Parser, Subcommand, ValueEnum,
};

/// The ArqonBus command-line client.
#[derive(Debug, Parser)]
#[command(name = "arqon", version, about, propagate_version = true)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub(crate) conn: ConnArgs,
    #[command(subcommand)]
    pub(crate) command: Cmd,
}

/// How to reach and authenticate to the server.
#[derive(Debug, Args)]
pub(crate) struct ConnArgs {
    /// Server URL: tls://host:port (TLS, the default) or tcp://host:port
    /// (plaintext, only for servers without TLS). The port defaults to 7420.
    #[arg(
        long,
        short = 's',
        env = "ARQONBUS_URL",
        default_value = "tls://127.0.0.1:7420",
        global = true,
        value_name = "URL"
    )]
    pub(crate) server: String,

    /// CA certificate (PEM) that signed the server's certificate, e.g.
    /// <data_dir>/tls/ca.pem.
    #[arg(long, env = "ARQONBUS_CA", global = true, value_name = "FILE")]
    pub(crate) ca: Option<PathBuf>,

    /// File holding the credential (abt_...), e.g.
    /// <data_dir>/credentials/bootstrap.token.
    #[arg(
        long,
        env = "ARQONBUS_CREDENTIAL_FILE",
        global = true,
        value_name = "FILE"
    )]
    pub(crate) credential_file: Option<PathBuf>,

    /// The credential itself. Discouraged: other local users can read command
    /// lines (ps, /proc); prefer --credential-file. When both are given, the
    /// one on the command line beats the one from the environment, and
    /// otherwise the file wins.
    #[arg(
        long,
        env = "ARQONBUS_CREDENTIAL",
        hide_env_values = true,
        global = true,
        value_name = "TOKEN",
        value_parser = parse_credential
    )]
    pub(crate) credential: Option<Credential>,

    /// Server data directory. Supplies <DIR>/tls/ca.pem and
    /// <DIR>/credentials/bootstrap.token when --ca / a credential are not
    /// given.
    #[arg(long, env = "ARQONBUS_DATA_DIR", global = true, value_name = "DIR")]
    pub(crate) data_dir: Option<PathBuf>,

    /// Client name shown to operators.
    #[arg(long, default_value = "arqon", global = true)]
    pub(crate) name: String,

    /// What kind of client this is.
    #[arg(long, value_enum, default_value_t = KindArg::Human, global = true)]
    pub(crate) kind: KindArg,

    /// After a lost connection, try to reconnect this many times in a row
    /// (with backoff, 50 ms doubling to 5 s) before giving up with exit code
    /// 1; 0 never reconnects, `unlimited` never gives up.
    #[arg(
        long,
        env = "ARQON_RECONNECT_ATTEMPTS",
        default_value = "10",
        global = true,
        value_name = "N",
        value_parser = parse_attempts
    )]
    pub(crate) reconnect_attempts: Attempts,
}

/// A reconnect budget: `Some(n)` attempts, or `None` for no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Attempts(pub(crate) Option<u32>);

impl std::fmt::Display for Attempts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(n) => write!(f, "{n}"),
            None => f.write_str("unlimited"),
        }
    }
}

/// Parses `--reconnect-attempts`: a count or `unlimited`.
fn parse_attempts(raw: &str) -> Result<Attempts, String> {
    if raw.trim().eq_ignore_ascii_case("unlimited") {
        return Ok(Attempts(None));
    }
    raw.trim()
        .parse()
        .map(|n| Attempts(Some(n)))
        .map_err(|_| format!("expected a number of attempts or \"unlimited\", got {raw:?}"))
}

/// `--kind` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum KindArg {
    /// A person's tool.
    Human,
    /// A device or gateway.
    Device,
    /// A service or AI agent.
    Agent,
}

impl From<KindArg> for ClientKind {
    fn from(kind: KindArg) -> Self {
        match kind {
            KindArg::Human => Self::Human,
            KindArg::Device => Self::Device,
            KindArg::Agent => Self::Agent,
        }
    }
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum Cmd {
    /// Publish a message (the payload is read from stdin when omitted).
    Pub(PubArgs),
    /// Subscribe and print each message as one line.
    Sub(SubArgs),
    /// Send a request and print the reply.
    Req(ReqArgs),
    /// Answer every request on a subject with a fixed response.
    Reply(ReplyArgs),
}

/// `arqon pub`.
#[derive(Debug, Args)]
pub(crate) struct PubArgs {
    /// Subject to publish on.
    pub(crate) subject: String,
    /// Payload; read from stdin when omitted.
    pub(crate) payload: Option<String>,
    /// Publish the message this many times.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) count: u64,
    /// Header (repeatable).
    #[arg(long = "header", short = 'H', value_name = "KEY=VALUE", value_parser = parse_header)]
    pub(crate) headers: Vec<(String, String)>,
    /// Reply subject for responders.
    #[arg(long, value_name = "SUBJECT")]
    pub(crate) reply: Option<String>,
}

/// `arqon sub`.
#[derive(Debug, Args)]
pub(crate) struct SubArgs {
    /// Subject pattern (`*` matches one token, `>` the rest).
    pub(crate) pattern: String,
    /// Join this queue group (each message goes to one member).
    #[arg(long, value_name = "GROUP")]
    pub(crate) queue: Option<String>,
    /// Exit after this many messages.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) count: Option<u64>,
    /// Print one JSON object per message instead of text.
    #[arg(long)]
    pub(crate) json: bool,
}

/// `arqon req`.
#[derive(Debug, Args)]
pub(crate) struct ReqArgs {
    /// Subject to send the request to.
    pub(crate) subject: String,
    /// Payload; read from stdin when omitted.
    pub(crate) payload: Option<String>,
    /// How long to wait for the reply (e.g. 500ms, 2s, 1m).
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub(crate) timeout: Duration,
    /// Header (repeatable).
    #[arg(long = "header", short = 'H', value_name = "KEY=VALUE", value_parser = parse_header)]
    pub(crate) headers: Vec<(String, String)>,
}

/// `arqon reply`.
#[derive(Debug, Args)]
pub(crate) struct ReplyArgs {
    /// Subject (or pattern) to answer on.
    pub(crate) subject: String,
    /// The response sent to every request.
    pub(crate) response: String,
    /// Join this queue group, so several responders share the requests.
    #[arg(long, value_name = "GROUP")]
    pub(crate) queue: Option<String>,
    /// Exit after answering this many requests.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) count: Option<u64>,
}

/// Parses the process arguments (or `args` in tests).
pub(crate) fn parse_from<I, T>(args: I) -> Result<(Cli, Sources), clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let matches = Cli::command().try_get_matches_from(args)?;
    let cli = Cli::from_arg_matches(&matches)?;
    Ok((cli, Sources::of(&matches)))
}

/// Where the two credential arguments came from (to rank them).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Sources {
    credential: Option<ValueSource>,
    credential_file: Option<ValueSource>,
}

impl Sources {
    fn of(matches: &ArgMatches) -> Self {
        Self {
            credential: matches.value_source("credential"),
            credential_file: matches.value_source("credential_file"),
        }
    }
}

/// Where the credential comes from, after precedence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CredentialChoice {
    Inline(Credential),
    File(PathBuf),
    Missing,
}

/// The connection settings after precedence rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Settings {
    pub(crate) url: String,
    pub(crate) ca: Option<PathBuf>,
    pub(crate) credential: CredentialChoice,
    pub(crate) name: String,
    pub(crate) kind: ClientKind,
    /// Reconnect attempts in a row before giving up (`None`: never).
    pub(crate) reconnect_attempts: Option<u32>,
}

impl ConnArgs {
    /// Applies the precedence rules: a command-line value beats an
    /// environment value; between equals the credential file beats the inline
    /// credential; `--data-dir` fills in what is still missing.
    pub(crate) fn settings(&self, sources: Sources) -> Settings {
        let inline_wins = match (&self.credential, &self.credential_file) {
            (Some(_), None) => true,
            (Some(_), Some(_)) => sources.credential > sources.credential_file,
            _ => false,
        };
        let credential = match (&self.credential, &self.credential_file, &self.data_dir) {
            (Some(token), _, _) if inline_wins => CredentialChoice::Inline(token.clone()),
            (_, Some(file), _) => CredentialChoice::File(file.clone()),
            (_, None, Some(dir)) => CredentialChoice::File(bootstrap_token(dir)),
            _ => CredentialChoice::Missing,
        };
        let ca = self
            .ca
            .clone()
            .or_else(|| self.data_dir.as_deref().map(data_dir_ca));
        Settings {
            url: self.server.clone(),
            ca,
            credential,
            name: self.name.clone(),
            kind: self.kind.into(),
            reconnect_attempts: self.reconnect_attempts.0,
        }
    }
}

impl Settings {
    /// The SDK options for these settings.
    pub(crate) fn connect_options(&self) -> ConnectOptions {
        let mut opts = ConnectOptions::new()
            .url(self.url.clone())
            .name(self.name.clone())
            .kind(self.kind)
            .reconnect(ReconnectPolicy::new().max_attempts(self.reconnect_attempts));
        if let Some(ca) = &self.ca {
            opts = opts.ca_file(ca);
        }
        match &self.credential {
            CredentialChoice::Inline(token) => opts.with_credential(token.clone()),
            CredentialChoice::File(path) => opts.credential_file(path),
            CredentialChoice::Missing => opts,
        }
    }
}

fn data_dir_ca(dir: &Path) -> PathBuf {
    dir.join("tls").join("ca.pem")
}

fn bootstrap_token(dir: &Path) -> PathBuf {
    dir.join("credentials").join("bootstrap.token")
}

fn parse_credential(raw: &str) -> Result<Credential, OptionsError> {
    Credential::new(raw)
}

/// Parses `KEY=VALUE` (the value may contain `=`).
fn parse_header(raw: &str) -> Result<(String, String), String> {
    match raw.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got {raw:?}")),
    }
}

/// Parses a duration such as `250ms`, `2s`, `1.5s`, `1m`, `1h`; a bare
/// number is seconds.
pub(crate) fn parse_duration(raw: &str) -> Result<Duration, String> {
    let raw = raw.trim();
    let split = raw
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(raw.len());
    let (number, unit) = raw.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("invalid duration {raw:?} (examples: 500ms, 2s, 1m)"))?;
    let seconds_per_unit = match unit.trim() {
        "ms" => 0.001,
        "" | "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        other => {
            return Err(format!(
                "unknown duration unit {other:?} (use ms, s, m or h)"
            ));
        }
    };
    let duration = Duration::try_from_secs_f64(value * seconds_per_unit)
        .map_err(|_| format!("duration {raw:?} is out of range"))?;
    if duration.is_zero() {
        return Err("the duration must be greater than zero".into());
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<(Cli, Sources), clap::Error> {
        parse_from(std::iter::once("arqon").chain(args.iter().copied()))
    }

    #[test]
    fn the_command_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn pub_arguments() {
        let (cli, _) = parse(&[
            "pub",
            "orders.eu",
            "hello",
            "--count",
            "3",
            "-H",
            "a=b=c",
            "--header",
            "x=",
            "--reply",
            "r.1",
        ])
        .unwrap();
        let Cmd::Pub(p) = cli.command else {
            panic!("not pub")
        };
        assert_eq!(p.subject, "orders.eu");
        assert_eq!(p.payload.as_deref(), Some("hello"));
        assert_eq!(p.count, 3);
        assert_eq!(
            p.headers,
            vec![("a".into(), "b=c".into()), ("x".into(), String::new())]
        );
        assert_eq!(p.reply.as_deref(), Some("r.1"));
        assert!(parse(&["pub", "a", "--count", "0"]).is_err());
        assert!(parse(&["pub", "a", "-H", "novalue"]).is_err());
        assert!(parse(&["pub"]).is_err());
    }

    #[test]
    fn sub_req_and_reply_arguments() {
        let (cli, _) = parse(&["sub", "a.>", "--queue", "q", "--count", "5", "--json"]).unwrap();
        let Cmd::Sub(s) = cli.command else {
            panic!("not sub")
        };
        assert_eq!(
            (s.pattern.as_str(), s.queue.as_deref(), s.count, s.json),
            ("a.>", Some("q"), Some(5), true)
        );
        let (cli, _) = parse(&["req", "svc", "--timeout", "250ms"]).unwrap();
        let Cmd::Req(r) = cli.command else {
            panic!("not req")
        };
        assert_eq!(r.timeout, Duration::from_millis(250));
        assert_eq!(r.payload, None);
        let (cli, _) = parse(&["reply", "svc", "ok", "--count", "1"]).unwrap();
        let Cmd::Reply(r) = cli.command else {
            panic!("not reply")
        };
        assert_eq!((r.response.as_str(), r.count), ("ok", Some(1)));
    }

    #[test]
    fn global_options_work_before_and_after_the_subcommand() {
        let (cli, _) = parse(&["--server", "tcp://h:1", "sub", "a", "--kind", "agent"]).unwrap();
        assert_eq!(cli.conn.server, "tcp://h:1");
        assert_eq!(cli.conn.kind, KindArg::Agent);
        assert!(parse(&["--kind", "robot", "sub", "a"]).is_err());
    }

    #[test]
    fn data_dir_fills_in_missing_paths_only() {
        let (cli, sources) = parse(&["--data-dir", "/d", "sub", "a"]).unwrap();
        let s = cli.conn.settings(sources);
        assert_eq!(s.ca, Some(PathBuf::from("/d/tls/ca.pem")));
        assert_eq!(
            s.credential,
            CredentialChoice::File(PathBuf::from("/d/credentials/bootstrap.token"))
        );

        let (cli, sources) = parse(&[
            "--data-dir",
            "/d",
            "--ca",
            "/ca.pem",
            "--credential-file",
            "/t",
            "sub",
            "a",
        ])
        .unwrap();
        let s = cli.conn.settings(sources);
        assert_eq!(s.ca, Some(PathBuf::from("/ca.pem")));
        assert_eq!(s.credential, CredentialChoice::File(PathBuf::from("/t")));

        let (cli, sources) =
            parse(&["--data-dir", "/d", "--credential", "abt_x", "sub", "a"]).unwrap();
        let s = cli.conn.settings(sources);
        assert_eq!(
            s.credential,
            CredentialChoice::Inline(Credential::new("abt_x").unwrap())
        );
    }

    #[test]
    fn credential_precedence_between_equal_sources_prefers_the_file() {
        let (cli, sources) = parse(&[
            "--credential",
            "abt_x",
            "--credential-file",
            "/t",
            "sub",
            "a",
        ])
        .unwrap();
        assert_eq!(
            cli.conn.settings(sources).credential,
            CredentialChoice::File(PathBuf::from("/t"))
        );
        let (cli, sources) = parse(&["sub", "a"]).unwrap();
        assert_eq!(
            cli.conn.settings(sources).credential,
            CredentialChoice::Missing
        );
    }

    #[test]
    fn the_inline_credential_is_redacted() {
        let (cli, _) = parse(&["--credential", "abt_supersecret", "sub", "a"]).unwrap();
        let debug = format!("{cli:?}");
        assert!(!debug.contains("supersecret"), "{debug}");
        assert!(parse(&["--credential", "", "sub", "a"]).is_err());
    }

    #[test]
    fn the_reconnect_budget_is_bounded_by_default() {
        let (cli, sources) = parse(&["sub", "a"]).unwrap();
        if std::env::var_os("ARQON_RECONNECT_ATTEMPTS").is_none() {
            assert_eq!(cli.conn.settings(sources).reconnect_attempts, Some(10));
        }
        let (cli, sources) = parse(&["sub", "a", "--reconnect-attempts", "0"]).unwrap();
        assert_eq!(cli.conn.settings(sources).reconnect_attempts, Some(0));
        let (cli, sources) = parse(&["--reconnect-attempts", "unlimited", "sub", "a"]).unwrap();
        assert_eq!(cli.conn.settings(sources).reconnect_attempts, None);
        for bad in ["", "-1", "many", "1.5"] {
            assert!(
                parse(&["sub", "a", "--reconnect-attempts", bad]).is_err(),
                "{bad:?}"
            );
        }
        assert_eq!(Attempts(None).to_string(), "unlimited");
        assert_eq!(Attempts(Some(3)).to_string(), "3");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        for bad in ["", "s", "0", "0ms", "-1s", "2 days", "1e9999s", "1.2.3s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn settings_become_connect_options() {
        let (cli, sources) = parse(&[
            "--server",
            "tcp://127.0.0.1:9",
            "--credential",
            "abt_x",
            "--name",
            "n",
            "pub",
            "a",
            "b",
        ])
        .unwrap();
        let opts = cli.conn.settings(sources).connect_options();
        let debug = format!("{opts:?}");
        assert!(debug.contains("tcp://127.0.0.1:9"), "{debug}");
        assert!(!debug.contains("abt_x"), "{debug}");
    }
}
