//! The subcommands: `pub`, `sub`, `req`, `reply`.
//!
//! Invariants: every command leaves the connection cleanly (flush, drain or
//! close) before returning; stdout carries only the command's output (one
//! line per message), everything else goes to stderr; Ctrl-C ends `sub` and
//! `reply` without an error; a drain notice, a lost connection and a
//! reconnect are each one plain `arqon: ...` line on stderr
//! ([`report_events`]), and a subscription that ends because reconnecting
//! gave up is [`CliError::GaveUp`].

use std::io::{self, IsTerminal as _, Read as _, Write as _};
use std::time::Duration;

use arqonbus_client::{Client, Error, Event, Events, Headers, OutgoingMessage, Subscriber};
use bytes::Bytes;
use futures_util::{FutureExt as _, StreamExt as _};

use crate::CliError;
use crate::args::{Cmd, PubArgs, ReplyArgs, ReqArgs, Settings, SubArgs};
use crate::output;

/// Runs one subcommand against the server.
pub(crate) async fn run(settings: &Settings, command: Cmd) -> Result<(), CliError> {
    // Read stdin before connecting, so a slow pipe does not hold a session.
    let payload = match &command {
        Cmd::Pub(a) => Some(payload_or_stdin(a.payload.as_deref())?),
        Cmd::Req(a) => Some(payload_or_stdin(a.payload.as_deref())?),
        Cmd::Sub(_) | Cmd::Reply(_) => None,
    }
    .unwrap_or_default();
    let client = Client::connect(settings.connect_options())
        .await
        .map_err(CliError::Connect)?;
    tracing::debug!(
        session_id = client.server_info().session_id,
        tenant = %client.server_info().tenant,
        "connected"
    );
    let reporter = tokio::spawn(report_events(
        client.events(),
        settings.url.clone(),
        settings.reconnect_attempts,
    ));
    let attempts = settings.reconnect_attempts;
    let result = match command {
        Cmd::Pub(args) => publish(&client, args, payload).await,
        Cmd::Sub(args) => subscribe(&client, args, attempts).await,
        Cmd::Req(args) => request(&client, args, payload).await,
        Cmd::Reply(args) => reply(&client, args, attempts).await,
    };
    client.close().await;
    // The reporter ends with the client's event stream; its lines are out.
    let _finished = reporter.await;
    result
}

/// One plain stderr line per connection event, while the client lives:
/// what happened, and what `arqon` does next. Payloads never appear here;
/// server text is escaped.
pub(crate) async fn report_events(mut events: Events, url: String, attempts: Option<u32>) {
    let url = output::escape_text(&url);
    while let Some(event) = events.next().await {
        if let Some(line) = describe_event(&event, &url, attempts) {
            eprintln!("{line}");
        }
    }
}

/// The line for `event`, if it deserves one.
pub(crate) fn describe_event(event: &Event, url: &str, attempts: Option<u32>) -> Option<String> {
    match event {
        Event::ServerDraining { deadline, reason } => Some(format!(
            "arqon: the server at {url} is draining ({}): it closes this connection within {}, \
             then arqon reconnects",
            output::escape_text(if reason.is_empty() {
                "no reason given"
            } else {
                reason
            }),
            describe_duration(*deadline)
        )),
        Event::Disconnected { reason } if reconnectable(reason) && attempts != Some(0) => {
            Some(format!(
                "arqon: lost the connection to {url}: {}; reconnecting ({})",
                output::escape_text(&reason.to_string()),
                match attempts {
                    Some(n) => format!("up to {n} attempts"),
                    None => "until it works".to_owned(),
                }
            ))
        }
        Event::Reconnected { .. } => Some(format!("arqon: reconnected to {url}")),
        _ => None,
    }
}

/// The payload argument, or all of stdin.
fn payload_or_stdin(arg: Option<&str>) -> Result<Bytes, CliError> {
    if let Some(text) = arg {
        return Ok(Bytes::copy_from_slice(text.as_bytes()));
    }
    let mut stdin = io::stdin().lock();
    if stdin.is_terminal() {
        eprintln!("Reading the payload from stdin (end with Ctrl-D)...");
    }
    let mut buf = Vec::new();
    stdin.read_to_end(&mut buf).map_err(CliError::Stdin)?;
    Ok(Bytes::from(buf))
}

fn headers(pairs: &[(String, String)]) -> Headers {
    pairs.iter().map(|(k, v)| (k, v)).collect()
}

async fn publish(client: &Client, args: PubArgs, payload: Bytes) -> Result<(), CliError> {
    // The server answers a refused publish with an error frame before the
    // flush's Pong, so every refusal is in the event stream by then.
    let mut events = client.events();
    let mut message = OutgoingMessage::new(args.subject, payload).headers(headers(&args.headers));
    if let Some(reply) = args.reply {
        message = message.reply(reply);
    }
    for _ in 0..args.count {
        client.publish_message(message.clone()).await?;
    }
    client.flush().await?;
    while let Some(Some(event)) = tokio::task::unconstrained(events.next()).now_or_never() {
        if let arqonbus_client::Event::ServerError(e) = event {
            return Err(CliError::Refused(e));
        }
    }
    Ok(())
}

async fn subscribe(client: &Client, args: SubArgs, attempts: Option<u32>) -> Result<(), CliError> {
    // Polled while subscribing, which installs the handler before the
    // "Listening" line: a Ctrl-C from then on is a clean exit.
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut sub = tokio::select! {
        _ = &mut ctrl_c => return Ok(()),
        sub = open_subscription(client, &args.pattern, args.queue.as_deref()) => sub?,
    };
    if let Some(count) = args.count {
        sub.unsubscribe_after(count)?;
    }
    eprintln!("Listening on \"{}\"", output::escape_text(&args.pattern));
    let mut stdout = io::stdout().lock();
    let mut received = 0u64;
    loop {
        let message = tokio::select! {
            _ = &mut ctrl_c => break,
            message = sub.next() => message,
        };
        let Some(message) = message else {
            break;
        };
        received += 1;
        let line = if args.json {
            output::json_line(received, &message)
        } else {
            output::text_line(received, &message)
        };
        writeln!(stdout, "{line}").map_err(CliError::Stdout)?;
        stdout.flush().map_err(CliError::Stdout)?;
    }
    finish_subscription(&sub, attempts)
}

async fn request(client: &Client, args: ReqArgs, payload: Bytes) -> Result<(), CliError> {
    let message =
        OutgoingMessage::new(args.subject.clone(), payload).headers(headers(&args.headers));
    let reply = client
        .request_message(message, args.timeout)
        .await
        .map_err(|e| match e {
            Error::NoResponders => CliError::NoResponders(args.subject.clone()),
            Error::Timeout => CliError::RequestTimeout(args.subject.clone(), args.timeout),
            other => CliError::Bus(other),
        })?;
    let mut stdout = io::stdout().lock();
    stdout.write_all(&reply.payload).map_err(CliError::Stdout)?;
    if !reply.payload.ends_with(b"\n") {
        stdout.write_all(b"\n").map_err(CliError::Stdout)?;
    }
    stdout.flush().map_err(CliError::Stdout)
}

async fn reply(client: &Client, args: ReplyArgs, attempts: Option<u32>) -> Result<(), CliError> {
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut sub = tokio::select! {
        _ = &mut ctrl_c => return Ok(()),
        sub = open_subscription(client, &args.subject, args.queue.as_deref()) => sub?,
    };
    eprintln!(
        "Answering requests on \"{}\"",
        output::escape_text(&args.subject)
    );
    let response = Bytes::from(args.response);
    let mut stdout = io::stdout().lock();
    let mut answered = 0u64;
    while args.count.is_none_or(|count| answered < count) {
        let request = tokio::select! {
            _ = &mut ctrl_c => break,
            request = sub.next() => request,
        };
        let Some(request) = request else {
            break;
        };
        let Some(reply_to) = request.reply_str() else {
            tracing::debug!("ignoring a message without a reply subject");
            continue;
        };
        client.publish(&reply_to, response.clone()).await?;
        answered += 1;
        writeln!(
            stdout,
            "[#{answered}] Answered request on \"{}\"",
            output::escape_text(&request.subject_str())
        )
        .map_err(CliError::Stdout)?;
        stdout.flush().map_err(CliError::Stdout)?;
    }
    // Make sure the last answer left before the connection closes.
    if sub.error().is_none() {
        client.flush().await?;
    }
    finish_subscription(&sub, attempts)
}

async fn open_subscription(
    client: &Client,
    pattern: &str,
    queue: Option<&str>,
) -> Result<Subscriber, CliError> {
    Ok(match queue {
        Some(group) => client.queue_subscribe(pattern, group).await?,
        None => client.subscribe(pattern).await?,
    })
}

/// Reports a subscription that ended because of an error: a connection
/// failure that reconnecting could have cured means the budget ran out.
fn finish_subscription(sub: &Subscriber, attempts: Option<u32>) -> Result<(), CliError> {
    if sub.dropped() > 0 {
        eprintln!(
            "warning: {} messages were dropped because output was too slow",
            sub.dropped()
        );
    }
    match sub.error() {
        Some(err) if reconnectable(err) => Err(CliError::GaveUp {
            attempts,
            reason: err.clone(),
        }),
        Some(err) => Err(CliError::Bus(err.clone())),
        None => Ok(()),
    }
}

/// Whether the SDK reconnects after losing a connection to `err` (its own
/// rule: retryable errors, and TLS failures the server side may fix).
fn reconnectable(err: &Error) -> bool {
    matches!(err, Error::Tls(_)) || err.is_retryable()
}

/// How long `req` waited, for messages.
pub(crate) fn describe_duration(d: Duration) -> String {
    if d.subsec_millis() == 0 && d.as_secs() > 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}
