//! How results are shown: aligned tables and `key: value` blocks for people,
//! one JSON document for `--json`.
//!
//! Invariants: every text cell has its control characters escaped, so a
//! value that came from a client (a connection's name, say) can neither
//! break a table's lines nor send escape sequences to the terminal; JSON is
//! produced by `serde_json`, so it is always valid; JSON field names are the
//! proto field names (snake_case); u64 ids (tenants, principals,
//! credentials, policies, connections) are JSON strings of their decimal
//! digits, since JSON numbers lose precision above 2^53 in most readers;
//! counters, versions and shard numbers are JSON numbers; times are Unix
//! milliseconds and enums are the lower-case names the flags use.
//! Text output never ends a line with spaces.

use std::fmt::Write as _;

use arqonbus_proto::control::{
    Connection, Credential, CredentialKind, NodeStatus, Policy, Principal, Quotas, ShardStatus,
    SlowConsumerPolicy, Steering, SubjectRules, Tenant, policy,
};
use serde_json::{Value, json};

/// A command's result, ready to print.
pub(crate) struct Report {
    /// The `--json` output.
    pub(crate) json: Value,
    /// The text output (whole lines, each ending in `\n`).
    pub(crate) text: String,
    /// Lines for stderr in both modes (warnings).
    pub(crate) notes: Vec<String>,
}

impl Report {
    fn new(json: Value, text: String) -> Self {
        Self {
            json,
            text,
            notes: Vec::new(),
        }
    }
}

// ------------------------------------------------------------ primitives

pub(crate) use arqonbus_cli::escape_text;

/// Columns separated by two spaces, each as wide as its widest cell.
#[derive(Debug)]
pub(crate) struct Table {
    header: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub(crate) fn new(header: &[&'static str]) -> Self {
        Self {
            header: header.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; cells are escaped here.
    pub(crate) fn row(&mut self, cells: Vec<String>) {
        self.rows
            .push(cells.into_iter().map(|c| escape_text(&c)).collect());
    }

    /// The table, or `empty` (one line) when it has no rows.
    pub(crate) fn render_or(&self, empty: &str) -> String {
        if self.rows.is_empty() {
            return format!("{empty}\n");
        }
        self.render()
    }

    pub(crate) fn render(&self) -> String {
        let columns = self.header.len();
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate().take(columns) {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
        let mut out = String::new();
        let header: Vec<String> = self.header.iter().map(|h| (*h).to_owned()).collect();
        for row in std::iter::once(&header).chain(&self.rows) {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate().take(columns) {
                if i > 0 {
                    line.push_str("  ");
                }
                line.push_str(cell);
                let pad = widths[i].saturating_sub(cell.chars().count());
                line.extend(std::iter::repeat_n(' ', pad));
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// `key:  value` lines with the values aligned.
#[derive(Debug, Default)]
pub(crate) struct Fields(Vec<(&'static str, String)>);

impl Fields {
    /// Adds a line; the value is escaped here.
    pub(crate) fn add(&mut self, key: &'static str, value: impl AsRef<str>) -> &mut Self {
        self.0.push((key, escape_text(value.as_ref())));
        self
    }

    pub(crate) fn render(&self) -> String {
        let width = self.0.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        let mut out = String::new();
        for (key, value) in &self.0 {
            let line = format!("{key}:{:pad$} {value}", "", pad = width - key.len());
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// `2025-06-01T10:00:00Z` (RFC 3339, UTC, second precision); `-` for 0
/// (unset). A time RFC 3339 cannot show (a year before 0000 or after 9999)
/// is written as the raw milliseconds.
pub(crate) fn format_unix_ms(ms: i64) -> String {
    if ms == 0 {
        return "-".into();
    }
    time::OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000))
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| ms.to_string())
}

/// A limit for a table cell: `-` for 0 (unlimited).
fn limit<T: Into<u64>>(value: T) -> String {
    match value.into() {
        0 => "-".into(),
        n => n.to_string(),
    }
}

/// A limit for a `key: value` line.
fn limit_long<T: Into<u64>>(value: T, zero: &str) -> String {
    match value.into() {
        0 => zero.into(),
        n => n.to_string(),
    }
}

/// The flag name of a slow-consumer policy (`unspecified` for the default).
fn slow_consumer_name(raw: i32) -> String {
    match SlowConsumerPolicy::try_from(raw) {
        Ok(SlowConsumerPolicy::Unspecified) => "unspecified".into(),
        Ok(SlowConsumerPolicy::Disconnect) => "disconnect".into(),
        Ok(SlowConsumerPolicy::DropOldest) => "drop-oldest".into(),
        Ok(SlowConsumerPolicy::StallPublisher) => "stall-publisher".into(),
        Err(_) => format!("unknown({raw})"),
    }
}

fn credential_kind_name(raw: i32) -> String {
    match CredentialKind::try_from(raw) {
        Ok(CredentialKind::Unspecified) => "unspecified".into(),
        Ok(CredentialKind::Bearer) => "bearer".into(),
        Ok(CredentialKind::Signed) => "signed".into(),
        Err(_) => format!("unknown({raw})"),
    }
}

fn join(items: &[String]) -> String {
    if items.is_empty() {
        "-".into()
    } else {
        items.join(",")
    }
}

/// A u64 identifier as a JSON string: ids above 2^53 (connection ids on
/// shards 1 and up) do not survive JSON numbers in JavaScript or `jq`.
pub(crate) fn json_id(id: u64) -> Value {
    Value::String(id.to_string())
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

// ---------------------------------------------------------------- quotas

pub(crate) fn quotas_json(q: &Quotas) -> Value {
    json!({
        "max_connections": q.max_connections,
        "max_subscriptions": q.max_subscriptions,
        "max_payload": q.max_payload,
        "messages_per_second": q.messages_per_second,
        "bytes_per_second": q.bytes_per_second,
        "slow_consumer": slow_consumer_name(q.slow_consumer),
        "stall_max_ms": q.stall_max_ms,
    })
}

const QUOTA_COLUMNS: [&str; 6] = [
    "MAX_CONNS",
    "MAX_SUBS",
    "MAX_PAYLOAD",
    "MSGS/S",
    "BYTES/S",
    "SLOW_CONSUMER",
];

fn quota_cells(q: &Quotas) -> [String; 6] {
    let slow = match slow_consumer_name(q.slow_consumer).as_str() {
        "unspecified" => "default".to_owned(),
        other => other.to_owned(),
    };
    [
        limit(q.max_connections),
        limit(q.max_subscriptions),
        limit(q.max_payload),
        limit(q.messages_per_second),
        limit(q.bytes_per_second),
        slow,
    ]
}

fn quota_fields(fields: &mut Fields, q: &Quotas) {
    let slow = match slow_consumer_name(q.slow_consumer).as_str() {
        "unspecified" => "server default (disconnect)".to_owned(),
        other => other.to_owned(),
    };
    let stall = match q.stall_max_ms {
        0 => "100 ms (default)".to_owned(),
        ms => format!("{ms} ms"),
    };
    fields
        .add(
            "max connections",
            limit_long(q.max_connections, "unlimited"),
        )
        .add(
            "max subscriptions",
            limit_long(q.max_subscriptions, "unlimited"),
        )
        .add("max payload", limit_long(q.max_payload, "server limit"))
        .add("messages/s", limit_long(q.messages_per_second, "unlimited"))
        .add("bytes/s", limit_long(q.bytes_per_second, "unlimited"))
        .add("slow consumer", slow)
        .add("stall max", stall);
}

// --------------------------------------------------------------- tenants

/// A tenant's placement; empty (a server that predates placement, or a
/// record stored before it) is `home`.
fn placement_name(t: &Tenant) -> &str {
    if t.placement.is_empty() {
        "home"
    } else {
        &t.placement
    }
}

pub(crate) fn tenant_json(t: &Tenant) -> Value {
    json!({
        "id": json_id(t.id),
        "name": t.name,
        "placement": placement_name(t),
        "allowed_origins": t.allowed_origins,
        "quotas": quotas_json(&t.quotas.unwrap_or_default()),
        "created_at_unix_ms": t.created_at_unix_ms,
        "version": t.version,
    })
}

/// One tenant (`tenants create | get | update`).
pub(crate) fn tenant(t: &Tenant) -> Report {
    let mut f = Fields::default();
    f.add("id", t.id.to_string())
        .add("name", &t.name)
        .add("placement", placement_name(t))
        .add(
            "allowed origins",
            if t.allowed_origins.is_empty() {
                "any".to_owned()
            } else {
                join(&t.allowed_origins)
            },
        )
        .add("version", t.version.to_string())
        .add("created", format_unix_ms(t.created_at_unix_ms));
    quota_fields(&mut f, &t.quotas.unwrap_or_default());
    Report::new(tenant_json(t), f.render())
}

pub(crate) fn tenants(list: &[Tenant]) -> Report {
    let mut header = vec!["ID", "NAME", "PLACEMENT", "VERSION"];
    header.extend(QUOTA_COLUMNS);
    header.push("CREATED");
    let mut table = Table::new(&header);
    for t in list {
        let mut row = vec![
            t.id.to_string(),
            t.name.clone(),
            placement_name(t).to_owned(),
            t.version.to_string(),
        ];
        row.extend(quota_cells(&t.quotas.unwrap_or_default()));
        row.push(format_unix_ms(t.created_at_unix_ms));
        table.row(row);
    }
    Report::new(
        json!({ "tenants": list.iter().map(tenant_json).collect::<Vec<_>>() }),
        table.render_or("No tenants."),
    )
}

pub(crate) fn tenant_deleted(id: u64, connections_closed: u64) -> Report {
    Report::new(
        json!({ "id": json_id(id), "deleted": true, "connections_closed": connections_closed }),
        format!("Deleted tenant {id} (closed {connections_closed} connections).\n"),
    )
}

// ------------------------------------------------------------ principals

pub(crate) fn principal_json(p: &Principal) -> Value {
    json!({
        "id": json_id(p.id),
        "tenant_id": json_id(p.tenant_id),
        "name": p.name,
        "roles": p.roles,
        "quotas": quotas_json(&p.quotas.unwrap_or_default()),
        "created_at_unix_ms": p.created_at_unix_ms,
        "version": p.version,
    })
}

pub(crate) fn principal(p: &Principal) -> Report {
    let mut f = Fields::default();
    f.add("id", p.id.to_string())
        .add("tenant", p.tenant_id.to_string())
        .add("name", &p.name)
        .add("roles", join(&p.roles))
        .add("version", p.version.to_string())
        .add("created", format_unix_ms(p.created_at_unix_ms));
    quota_fields(&mut f, &p.quotas.unwrap_or_default());
    Report::new(principal_json(p), f.render())
}

pub(crate) fn principals(list: &[Principal]) -> Report {
    let mut header = vec!["ID", "TENANT", "NAME", "ROLES", "VERSION"];
    header.extend(QUOTA_COLUMNS);
    header.push("CREATED");
    let mut table = Table::new(&header);
    for p in list {
        let mut row = vec![
            p.id.to_string(),
            p.tenant_id.to_string(),
            p.name.clone(),
            join(&p.roles),
            p.version.to_string(),
        ];
        row.extend(quota_cells(&p.quotas.unwrap_or_default()));
        row.push(format_unix_ms(p.created_at_unix_ms));
        table.row(row);
    }
    Report::new(
        json!({ "principals": list.iter().map(principal_json).collect::<Vec<_>>() }),
        table.render_or("No principals."),
    )
}

pub(crate) fn principal_deleted(id: u64) -> Report {
    Report::new(
        json!({ "id": json_id(id), "deleted": true }),
        format!("Deleted principal {id}.\n"),
    )
}

// ----------------------------------------------------------- credentials

/// `active`, `revoked` or `expired` at `now_ms`.
pub(crate) fn credential_status(c: &Credential, now_ms: i64) -> &'static str {
    if c.revoked {
        "revoked"
    } else if c.expires_at_unix_ms != 0 && c.expires_at_unix_ms <= now_ms {
        "expired"
    } else {
        "active"
    }
}

fn expires(c: &Credential) -> String {
    match c.expires_at_unix_ms {
        0 => "never".into(),
        ms => format_unix_ms(ms),
    }
}

pub(crate) fn credential_json(c: &Credential) -> Value {
    json!({
        "id": json_id(c.id),
        "tenant_id": json_id(c.tenant_id),
        "principal_id": json_id(c.principal_id),
        "kind": credential_kind_name(c.kind),
        "fingerprint": c.fingerprint,
        "created_at_unix_ms": c.created_at_unix_ms,
        "expires_at_unix_ms": c.expires_at_unix_ms,
        "revoked": c.revoked,
        "revoked_at_unix_ms": c.revoked_at_unix_ms,
    })
}

/// The one time a token is shown: alone on stdout in text mode (so
/// `> file` captures exactly the token), a `token` field in JSON; the
/// details and a warning go to stderr.
pub(crate) fn issued(c: &Credential, token: &str) -> Report {
    let mut report = Report::new(
        json!({ "credential": credential_json(c), "token": token }),
        format!("{}\n", escape_text(token)),
    );
    report.notes.push(format!(
        "Issued {} credential {} for principal {} (tenant {}, fingerprint {}, expires {}).",
        credential_kind_name(c.kind),
        c.id,
        c.principal_id,
        c.tenant_id,
        escape_text(&c.fingerprint),
        expires(c),
    ));
    report.notes.push(
        "warning: this is the only time the token is shown; it cannot be retrieved again. \
         Store it now."
            .into(),
    );
    report
}

pub(crate) fn credentials(list: &[Credential], now_ms: i64) -> Report {
    let mut table = Table::new(&[
        "ID",
        "TENANT",
        "PRINCIPAL",
        "KIND",
        "FINGERPRINT",
        "STATUS",
        "CREATED",
        "EXPIRES",
    ]);
    for c in list {
        table.row(vec![
            c.id.to_string(),
            c.tenant_id.to_string(),
            c.principal_id.to_string(),
            credential_kind_name(c.kind),
            c.fingerprint.clone(),
            credential_status(c, now_ms).into(),
            format_unix_ms(c.created_at_unix_ms),
            expires(c),
        ]);
    }
    Report::new(
        json!({ "credentials": list.iter().map(credential_json).collect::<Vec<_>>() }),
        table.render_or("No credentials."),
    )
}

pub(crate) fn revoked(c: &Credential) -> Report {
    Report::new(
        json!({ "credential": credential_json(c) }),
        format!(
            "Revoked credential {} (fingerprint {}, principal {}).\n",
            c.id,
            escape_text(&c.fingerprint),
            c.principal_id
        ),
    )
}

// -------------------------------------------------------------- policies

fn rules_json(r: &SubjectRules) -> Value {
    json!({ "allow": r.allow, "deny": r.deny })
}

fn target_text(p: &Policy) -> String {
    match &p.target {
        Some(policy::Target::PrincipalId(id)) => format!("principal {id}"),
        Some(policy::Target::Role(role)) => format!("role {role}"),
        None => "-".into(),
    }
}

pub(crate) fn policy_json(p: &Policy) -> Value {
    let mut v = json!({
        "id": json_id(p.id),
        "tenant_id": json_id(p.tenant_id),
        "publish": rules_json(&p.publish.clone().unwrap_or_default()),
        "subscribe": rules_json(&p.subscribe.clone().unwrap_or_default()),
        "presence": rules_json(&p.presence.clone().unwrap_or_default()),
        "allow_responses": p.allow_responses,
        "version": p.version,
    });
    if let Value::Object(map) = &mut v {
        match &p.target {
            Some(policy::Target::PrincipalId(id)) => {
                map.insert("principal_id".into(), json_id(*id));
            }
            Some(policy::Target::Role(role)) => {
                map.insert("role".into(), json!(role));
            }
            None => {}
        }
    }
    v
}

pub(crate) fn policy(p: &Policy) -> Report {
    let publish = p.publish.clone().unwrap_or_default();
    let subscribe = p.subscribe.clone().unwrap_or_default();
    let presence = p.presence.clone().unwrap_or_default();
    let mut f = Fields::default();
    f.add("id", p.id.to_string())
        .add("tenant", p.tenant_id.to_string())
        .add("target", target_text(p))
        .add("publish allow", join(&publish.allow))
        .add("publish deny", join(&publish.deny))
        .add("subscribe allow", join(&subscribe.allow))
        .add("subscribe deny", join(&subscribe.deny))
        .add("presence allow", join(&presence.allow))
        .add("presence deny", join(&presence.deny))
        .add("allow responses", yes_no(p.allow_responses))
        .add("version", p.version.to_string());
    Report::new(policy_json(p), f.render())
}

pub(crate) fn policies(list: &[Policy]) -> Report {
    let mut table = Table::new(&[
        "ID",
        "TENANT",
        "TARGET",
        "PUB_ALLOW",
        "PUB_DENY",
        "SUB_ALLOW",
        "SUB_DENY",
        "PRES_ALLOW",
        "PRES_DENY",
        "RESPONSES",
        "VERSION",
    ]);
    for p in list {
        let publish = p.publish.clone().unwrap_or_default();
        let subscribe = p.subscribe.clone().unwrap_or_default();
        let presence = p.presence.clone().unwrap_or_default();
        table.row(vec![
            p.id.to_string(),
            p.tenant_id.to_string(),
            target_text(p),
            join(&publish.allow),
            join(&publish.deny),
            join(&subscribe.allow),
            join(&subscribe.deny),
            join(&presence.allow),
            join(&presence.deny),
            yes_no(p.allow_responses).into(),
            p.version.to_string(),
        ]);
    }
    Report::new(
        json!({ "policies": list.iter().map(policy_json).collect::<Vec<_>>() }),
        table.render_or("No policies."),
    )
}

pub(crate) fn policy_deleted(id: u64) -> Report {
    Report::new(
        json!({ "id": json_id(id), "deleted": true }),
        format!("Deleted policy {id}.\n"),
    )
}

// ----------------------------------------------------------- connections

pub(crate) fn connection_json(c: &Connection) -> Value {
    json!({
        "id": json_id(c.id),
        "shard": c.shard,
        "tenant_id": json_id(c.tenant_id),
        "principal_id": json_id(c.principal_id),
        "principal": c.principal,
        "client_name": c.client_name,
        "client_kind": c.client_kind,
        "remote_addr": c.remote_addr,
        "subscriptions": c.subscriptions,
        "msgs_in": c.msgs_in,
        "bytes_in": c.bytes_in,
        "msgs_out": c.msgs_out,
        "bytes_out": c.bytes_out,
        "connected_at_unix_ms": c.connected_at_unix_ms,
    })
}

pub(crate) fn connections(list: &[Connection]) -> Report {
    let mut table = Table::new(&[
        "ID",
        "SHARD",
        "TENANT",
        "PRINCIPAL",
        "CLIENT",
        "KIND",
        "REMOTE",
        "SUBS",
        "MSGS_IN",
        "BYTES_IN",
        "MSGS_OUT",
        "BYTES_OUT",
        "CONNECTED",
    ]);
    let or_dash = |s: &str| {
        if s.is_empty() {
            "-".to_owned()
        } else {
            s.to_owned()
        }
    };
    for c in list {
        table.row(vec![
            c.id.to_string(),
            c.shard.to_string(),
            c.tenant_id.to_string(),
            if c.principal.is_empty() {
                c.principal_id.to_string()
            } else {
                format!("{} ({})", c.principal, c.principal_id)
            },
            or_dash(&c.client_name),
            or_dash(&c.client_kind),
            or_dash(&c.remote_addr),
            c.subscriptions.to_string(),
            c.msgs_in.to_string(),
            c.bytes_in.to_string(),
            c.msgs_out.to_string(),
            c.bytes_out.to_string(),
            format_unix_ms(c.connected_at_unix_ms),
        ]);
    }
    Report::new(
        json!({ "connections": list.iter().map(connection_json).collect::<Vec<_>>() }),
        table.render_or("No connections."),
    )
}

pub(crate) fn kicked(id: u64) -> Report {
    Report::new(
        json!({ "id": json_id(id), "kicked": true }),
        format!("Kicked connection {id}.\n"),
    )
}

// -------------------------------------------------------------- steering

pub(crate) fn steering_json(s: &Steering) -> Value {
    json!({
        "mode": s.mode,
        "affinity": s
            .affinity
            .iter()
            .map(|r| json!({ "prefix": r.prefix, "shard": r.shard }))
            .collect::<Vec<_>>(),
        "active": s.active,
        "fallback_reason": s.fallback_reason,
        "source": s.source,
    })
}

/// `yes`, or `NO` with what places connections instead and why.
fn steering_active(s: &Steering) -> String {
    match (s.active, s.fallback_reason.is_empty()) {
        (true, _) => "yes".into(),
        (false, true) => "NO (kernel hash in use)".into(),
        (false, false) => format!("NO (kernel hash in use: {})", s.fallback_reason),
    }
}

/// `steering get | set`: the mode, where it comes from, whether the
/// program runs, and the affinity rules.
pub(crate) fn steering(s: &Steering) -> Report {
    let mut f = Fields::default();
    f.add("mode", &s.mode)
        .add("source", &s.source)
        .add("active", steering_active(s));
    let mut table = Table::new(&["PREFIX", "SHARD"]);
    for r in &s.affinity {
        table.row(vec![r.prefix.clone(), r.shard.to_string()]);
    }
    let mut text = f.render();
    let _infallible = write!(text, "\n{}", table.render_or("No affinity rules."));
    Report::new(steering_json(s), text)
}

// ------------------------------------------------------------------ node

fn shard_json(s: &ShardStatus) -> Value {
    json!({
        "id": s.id,
        "draining": s.draining,
        "connections": s.connections,
        "subscriptions": s.subscriptions,
        "config_epoch": s.config_epoch,
        "moved_in": s.moved_in,
        "moved_out": s.moved_out,
    })
}

pub(crate) fn node_json(n: &NodeStatus) -> Value {
    json!({
        "server_id": n.server_id,
        "version": n.version,
        "config_epoch": n.config_epoch,
        "accepting": n.accepting,
        "reason": n.reason,
        "steering": n.steering.as_ref().map(steering_json),
        "shards": n.shards.iter().map(shard_json).collect::<Vec<_>>(),
    })
}

/// One line: the mode and its source, and what places connections when the
/// program does not run.
fn steering_summary(s: Option<&Steering>) -> String {
    match s {
        None => "-".into(),
        Some(s) if s.active => format!("{} ({})", s.mode, s.source),
        Some(s) => format!("{} ({}), active: {}", s.mode, s.source, steering_active(s)),
    }
}

pub(crate) fn node(n: &NodeStatus) -> Report {
    let accepting = match (n.accepting, n.reason.is_empty()) {
        (true, _) => "yes".to_owned(),
        (false, true) => "NO".to_owned(),
        (false, false) => format!("NO ({})", n.reason),
    };
    let mut f = Fields::default();
    f.add("server", &n.server_id)
        .add("version", &n.version)
        .add("config epoch", n.config_epoch.to_string())
        .add("accepting", accepting)
        .add("steering", steering_summary(n.steering.as_ref()));
    let mut table = Table::new(&[
        "SHARD",
        "STATE",
        "CONNECTIONS",
        "SUBSCRIPTIONS",
        "MOVED_IN",
        "MOVED_OUT",
        "CONFIG_EPOCH",
    ]);
    for s in &n.shards {
        let state = if s.draining { "draining" } else { "serving" };
        table.row(vec![
            s.id.to_string(),
            state.into(),
            s.connections.to_string(),
            s.subscriptions.to_string(),
            s.moved_in.to_string(),
            s.moved_out.to_string(),
            s.config_epoch.to_string(),
        ]);
    }
    let mut text = f.render();
    let _infallible = write!(text, "\n{}", table.render_or("No shards."));
    Report::new(node_json(n), text)
}

#[cfg(test)]
mod tests {
    use arqonbus_proto::control::AffinityRule;

    use super::*;

    const T0: i64 = 1_748_772_000_000; // 2025-06-01T10:00:00Z

    #[test]
    fn times() {
        assert_eq!(format_unix_ms(0), "-");
        assert_eq!(format_unix_ms(1), "1970-01-01T00:00:00Z");
        assert_eq!(format_unix_ms(T0), "2025-06-01T10:00:00Z");
        assert_eq!(format_unix_ms(T0 + 999), "2025-06-01T10:00:00Z");
        assert_eq!(format_unix_ms(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(format_unix_ms(4_107_542_399_000), "2100-02-28T23:59:59Z");
        assert_eq!(format_unix_ms(-1000), "1969-12-31T23:59:59Z");
        assert_eq!(format_unix_ms(-1), "1969-12-31T23:59:59Z");
        assert_eq!(format_unix_ms(-62_167_219_200_000), "0000-01-01T00:00:00Z");
        assert_eq!(format_unix_ms(253_402_300_799_999), "9999-12-31T23:59:59Z");
        // Never panics, whatever the server sends: what RFC 3339 cannot
        // show is the raw milliseconds.
        assert_eq!(format_unix_ms(253_402_300_800_000), "253402300800000");
        assert_eq!(format_unix_ms(i64::MAX), i64::MAX.to_string());
        assert_eq!(format_unix_ms(i64::MIN), i64::MIN.to_string());
    }

    #[test]
    fn tables_align_and_escape() {
        let mut t = Table::new(&["ID", "NAME", "X"]);
        t.row(vec!["1".into(), "a".into(), String::new()]);
        t.row(vec!["100".into(), "evil\n\u{1b}[2J".into(), "z".into()]);
        assert_eq!(
            t.render(),
            "ID   NAME             X\n\
             1    a\n\
             100  evil\\n\\u{1b}[2J  z\n"
        );
        assert_eq!(Table::new(&["A"]).render_or("Nothing."), "Nothing.\n");
        // Wide characters count as one column each; the line never breaks.
        let mut t = Table::new(&["N", "V"]);
        t.row(vec!["é✓".into(), "1".into()]);
        assert_eq!(t.render(), "N   V\né✓  1\n");
    }

    #[test]
    fn fields_align_and_escape() {
        let mut f = Fields::default();
        f.add("id", "1").add("long name", "x\ty").add("empty", "");
        assert_eq!(f.render(), "id:        1\nlong name: x\\ty\nempty:\n");
    }

    fn tenant_fixture() -> Tenant {
        Tenant {
            id: 3,
            name: "acme".into(),
            quotas: Some(Quotas {
                max_connections: 100,
                messages_per_second: 1000,
                slow_consumer: SlowConsumerPolicy::DropOldest.into(),
                ..Quotas::default()
            }),
            created_at_unix_ms: T0,
            version: 2,
            placement: "spread".into(),
            allowed_origins: Vec::new(),
        }
    }

    #[test]
    fn tenant_output() {
        let t = tenant_fixture();
        let r = tenants(std::slice::from_ref(&t));
        assert_eq!(
            r.text,
            "ID  NAME  PLACEMENT  VERSION  MAX_CONNS  MAX_SUBS  MAX_PAYLOAD  MSGS/S  BYTES/S  SLOW_CONSUMER  CREATED\n\
             3   acme  spread     2        100        -         -            1000    -        drop-oldest    2025-06-01T10:00:00Z\n"
        );
        assert_eq!(
            r.json,
            json!({"tenants": [{
                "id": "3",
                "name": "acme",
                "placement": "spread",
                "allowed_origins": [],
                "quotas": {
                    "max_connections": 100,
                    "max_subscriptions": 0,
                    "max_payload": 0,
                    "messages_per_second": 1000,
                    "bytes_per_second": 0,
                    "slow_consumer": "drop-oldest",
                    "stall_max_ms": 0,
                },
                "created_at_unix_ms": 1_748_772_000_000_i64,
                "version": 2,
            }]})
        );
        assert_eq!(tenants(&[]).text, "No tenants.\n");
        assert_eq!(tenants(&[]).json, json!({"tenants": []}));

        let one = tenant(&Tenant {
            quotas: None,
            placement: "shard:1".into(),
            allowed_origins: vec!["https://app.example".into()],
            ..t.clone()
        });
        assert_eq!(
            one.text,
            "id:                3\n\
             name:              acme\n\
             placement:         shard:1\n\
             allowed origins:   https://app.example\n\
             version:           2\n\
             created:           2025-06-01T10:00:00Z\n\
             max connections:   unlimited\n\
             max subscriptions: unlimited\n\
             max payload:       server limit\n\
             messages/s:        unlimited\n\
             bytes/s:           unlimited\n\
             slow consumer:     server default (disconnect)\n\
             stall max:         100 ms (default)\n"
        );
        assert_eq!(one.json["quotas"]["slow_consumer"], "unspecified");
        assert_eq!(one.json["placement"], "shard:1");
        // A server that predates placement sends none: home.
        let old = tenant(&Tenant {
            placement: String::new(),
            ..t
        });
        assert!(
            old.text.contains("placement:         home\n"),
            "{}",
            old.text
        );
        assert_eq!(old.json["placement"], "home");
        let deleted = tenant_deleted(3, 12);
        assert_eq!(deleted.text, "Deleted tenant 3 (closed 12 connections).\n");
        assert_eq!(
            deleted.json,
            json!({"id": "3", "deleted": true, "connections_closed": 12})
        );
    }

    #[test]
    fn json_escapes_and_keeps_large_numbers_exact() {
        let c = Connection {
            id: u64::MAX,
            client_name: "say \"hi\"\n\u{1b}[31m\\".into(),
            bytes_out: u64::MAX,
            ..Connection::default()
        };
        let r = connections(std::slice::from_ref(&c));
        let text = r.json.to_string();
        assert!(
            text.contains(r#""client_name":"say \"hi\"\n\u001b[31m\\""#),
            "{text}"
        );
        // Ids are strings (exact in every JSON reader); counters numbers.
        assert!(text.contains(r#""id":"18446744073709551615""#), "{text}");
        let back: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(back["connections"][0]["client_name"], c.client_name);
        assert_eq!(back["connections"][0]["bytes_out"].as_u64(), Some(u64::MAX));
        // The table shows the same name escaped, on one line.
        assert_eq!(r.text.lines().count(), 2);
        assert!(r.text.contains(r#"say "hi"\n\u{1b}[31m\  "#), "{}", r.text);
    }

    #[test]
    fn principal_output() {
        let p = Principal {
            id: 5,
            tenant_id: 3,
            name: "alice".into(),
            roles: vec!["ops".into(), "dev".into()],
            quotas: None,
            created_at_unix_ms: T0,
            version: 1,
        };
        let r = principals(std::slice::from_ref(&p));
        let mut lines = r.text.lines();
        assert!(
            lines
                .next()
                .unwrap()
                .starts_with("ID  TENANT  NAME   ROLES    VERSION  MAX_CONNS")
        );
        assert!(
            lines
                .next()
                .unwrap()
                .starts_with("5   3       alice  ops,dev  1        -")
        );
        assert_eq!(r.json["principals"][0]["roles"], json!(["ops", "dev"]));
        let one = principal(&Principal { roles: vec![], ..p });
        assert!(one.text.contains("roles:             -\n"), "{}", one.text);
        assert_eq!(principal_deleted(5).text, "Deleted principal 5.\n");
    }

    #[test]
    fn credential_output() {
        let c = Credential {
            id: 7,
            tenant_id: 3,
            principal_id: 5,
            kind: CredentialKind::Signed.into(),
            created_at_unix_ms: T0,
            expires_at_unix_ms: T0 + 3_600_000,
            revoked: false,
            revoked_at_unix_ms: 0,
            fingerprint: "ab12cd34".into(),
        };
        assert_eq!(credential_status(&c, T0), "active");
        assert_eq!(credential_status(&c, T0 + 3_600_000), "expired");
        let revoked_c = Credential {
            revoked: true,
            revoked_at_unix_ms: T0 + 1,
            ..c.clone()
        };
        assert_eq!(credential_status(&revoked_c, T0), "revoked");
        let forever = Credential {
            expires_at_unix_ms: 0,
            kind: CredentialKind::Bearer.into(),
            ..c.clone()
        };
        assert_eq!(credential_status(&forever, i64::MAX), "active");

        let r = credentials(&[c.clone(), forever.clone()], T0);
        assert_eq!(
            r.text,
            "ID  TENANT  PRINCIPAL  KIND    FINGERPRINT  STATUS  CREATED               EXPIRES\n\
             7   3       5          signed  ab12cd34     active  2025-06-01T10:00:00Z  2025-06-01T11:00:00Z\n\
             7   3       5          bearer  ab12cd34     active  2025-06-01T10:00:00Z  never\n"
        );
        assert_eq!(r.json["credentials"][0]["kind"], "signed");

        let issued_r = issued(&forever, "abt_s3cret");
        assert_eq!(issued_r.text, "abt_s3cret\n");
        assert_eq!(issued_r.json["token"], "abt_s3cret");
        assert_eq!(issued_r.json["credential"]["id"], "7");
        assert_eq!(issued_r.json["credential"]["principal_id"], "5");
        assert_eq!(issued_r.notes.len(), 2);
        assert!(issued_r.notes.iter().all(|n| !n.contains("s3cret")));
        assert!(issued_r.notes[1].starts_with("warning: "));
        assert!(issued_r.notes[0].contains("expires never"));

        let r = revoked(&revoked_c);
        assert_eq!(
            r.text,
            "Revoked credential 7 (fingerprint ab12cd34, principal 5).\n"
        );
        assert_eq!(r.json["credential"]["revoked"], true);
    }

    #[test]
    fn policy_output() {
        let p = Policy {
            id: 8,
            tenant_id: 3,
            target: Some(policy::Target::Role("sensor".into())),
            publish: Some(SubjectRules {
                allow: vec!["telemetry.>".into(), "status.*".into()],
                deny: vec![],
            }),
            subscribe: None,
            presence: Some(SubjectRules {
                allow: vec!["rooms.>".into()],
                deny: vec![],
            }),
            allow_responses: true,
            version: 4,
        };
        let r = policies(std::slice::from_ref(&p));
        assert_eq!(
            r.text,
            "ID  TENANT  TARGET       PUB_ALLOW             PUB_DENY  SUB_ALLOW  SUB_DENY  PRES_ALLOW  PRES_DENY  RESPONSES  VERSION\n\
             8   3       role sensor  telemetry.>,status.*  -         -          -         rooms.>     -          yes        4\n"
        );
        assert_eq!(
            r.json,
            json!({"policies": [{
                "id": "8",
                "tenant_id": "3",
                "role": "sensor",
                "publish": {"allow": ["telemetry.>", "status.*"], "deny": []},
                "subscribe": {"allow": [], "deny": []},
                "presence": {"allow": ["rooms.>"], "deny": []},
                "allow_responses": true,
                "version": 4,
            }]})
        );
        let by_principal = Policy {
            target: Some(policy::Target::PrincipalId(5)),
            ..p
        };
        let one = policy(&by_principal);
        assert!(
            one.text.contains("target:          principal 5\n"),
            "{}",
            one.text
        );
        assert_eq!(one.json["principal_id"], "5");
        assert!(one.json.get("role").is_none());
        assert_eq!(policy_deleted(8).json, json!({"id": "8", "deleted": true}));
    }

    #[test]
    fn connection_output() {
        let c = Connection {
            id: 42,
            shard: 1,
            tenant_id: 3,
            principal_id: 5,
            principal: "alice".into(),
            client_name: "sensor-7".into(),
            client_kind: "device".into(),
            remote_addr: "10.0.0.9:51234".into(),
            subscriptions: 2,
            msgs_in: 10,
            bytes_in: 1000,
            msgs_out: 20,
            bytes_out: 2000,
            connected_at_unix_ms: T0,
        };
        let r = connections(std::slice::from_ref(&c));
        assert_eq!(
            (
                &r.json["connections"][0]["id"],
                &r.json["connections"][0]["tenant_id"],
                &r.json["connections"][0]["principal_id"],
                &r.json["connections"][0]["shard"],
            ),
            (&json!("42"), &json!("3"), &json!("5"), &json!(1))
        );
        // A connection id of shard 1 (above 2^53) survives a JSON reader
        // that parses numbers as doubles.
        let big = Connection {
            id: (1 << 56) + 1,
            ..c
        };
        let text = connections(&[big]).json.to_string();
        assert!(text.contains(r#""id":"72057594037927937""#), "{text}");
        assert_eq!(
            r.text,
            "ID  SHARD  TENANT  PRINCIPAL  CLIENT    KIND    REMOTE          SUBS  MSGS_IN  BYTES_IN  MSGS_OUT  BYTES_OUT  CONNECTED\n\
             42  1      3       alice (5)  sensor-7  device  10.0.0.9:51234  2     10       1000      20        2000       2025-06-01T10:00:00Z\n"
        );
        assert_eq!(connections(&[]).text, "No connections.\n");
        assert_eq!(kicked(42).text, "Kicked connection 42.\n");
        assert_eq!(kicked(42).json, json!({"id": "42", "kicked": true}));
    }

    fn steering_fixture() -> Steering {
        Steering {
            mode: "affinity".into(),
            affinity: vec![
                AffinityRule {
                    prefix: "10.0.0.0/8".into(),
                    shard: 1,
                },
                AffinityRule {
                    prefix: "fd00::/8".into(),
                    shard: 0,
                },
            ],
            active: true,
            fallback_reason: String::new(),
            source: "api".into(),
        }
    }

    #[test]
    fn steering_output() {
        let s = steering_fixture();
        let r = steering(&s);
        assert_eq!(
            r.text,
            "mode:   affinity\n\
             source: api\n\
             active: yes\n\
             \n\
             PREFIX      SHARD\n\
             10.0.0.0/8  1\n\
             fd00::/8    0\n"
        );
        assert_eq!(
            r.json,
            json!({
                "mode": "affinity",
                "affinity": [
                    {"prefix": "10.0.0.0/8", "shard": 1},
                    {"prefix": "fd00::/8", "shard": 0},
                ],
                "active": true,
                "fallback_reason": "",
                "source": "api",
            })
        );

        // Not attached: the kernel's hash places connections, and why.
        let fallback = Steering {
            mode: "balance".into(),
            affinity: vec![],
            active: false,
            fallback_reason: "loading the program needs CAP_BPF\n".into(),
            source: "config".into(),
        };
        let r = steering(&fallback);
        assert_eq!(
            r.text,
            "mode:   balance\n\
             source: config\n\
             active: NO (kernel hash in use: loading the program needs CAP_BPF\\n)\n\
             \n\
             No affinity rules.\n"
        );
        assert_eq!(r.json["active"], false);
        assert_eq!(r.json["affinity"], json!([]));
        let silent = Steering {
            fallback_reason: String::new(),
            ..fallback
        };
        assert!(
            steering(&silent)
                .text
                .contains("active: NO (kernel hash in use)\n")
        );
    }

    #[test]
    fn node_output() {
        let n = NodeStatus {
            server_id: "node-a".into(),
            version: "0.1.0".into(),
            config_epoch: 9,
            shards: vec![
                ShardStatus {
                    id: 0,
                    draining: false,
                    connections: 3,
                    subscriptions: 10,
                    config_epoch: 9,
                    moved_in: 12,
                    moved_out: 1,
                },
                ShardStatus {
                    id: 1,
                    draining: true,
                    connections: 0,
                    subscriptions: 0,
                    config_epoch: 8,
                    moved_in: 0,
                    moved_out: 7,
                },
            ],
            accepting: false,
            reason: "store unreadable".into(),
            steering: Some(Steering {
                active: false,
                fallback_reason: "no CAP_BPF".into(),
                ..steering_fixture()
            }),
        };
        let r = node(&n);
        assert_eq!(
            r.text,
            "server:       node-a\n\
             version:      0.1.0\n\
             config epoch: 9\n\
             accepting:    NO (store unreadable)\n\
             steering:     affinity (api), active: NO (kernel hash in use: no CAP_BPF)\n\
             \n\
             SHARD  STATE     CONNECTIONS  SUBSCRIPTIONS  MOVED_IN  MOVED_OUT  CONFIG_EPOCH\n\
             0      serving   3            10             12        1          9\n\
             1      draining  0            0              0         7          8\n"
        );
        assert_eq!(r.json["shards"][1]["draining"], true);
        assert_eq!(r.json["shards"][0]["moved_in"], 12);
        assert_eq!(r.json["shards"][1]["moved_out"], 7);
        assert_eq!(r.json["accepting"], false);
        assert_eq!(r.json["reason"], "store unreadable");
        assert_eq!(r.json["steering"]["mode"], "affinity");
        assert_eq!(r.json["steering"]["active"], false);
        assert_eq!(r.json["steering"]["fallback_reason"], "no CAP_BPF");
        assert_eq!(r.json["steering"]["affinity"][1]["prefix"], "fd00::/8");

        // Attached: just the mode and its source. An older server: none.
        let active = node(&NodeStatus {
            steering: Some(steering_fixture()),
            ..n.clone()
        });
        assert!(
            active.text.contains("steering:     affinity (api)\n"),
            "{}",
            active.text
        );
        let old = node(&NodeStatus {
            steering: None,
            ..n
        });
        assert!(old.text.contains("steering:     -\n"), "{}", old.text);
        assert_eq!(old.json["steering"], Value::Null);
    }

    #[test]
    fn unknown_enum_values_are_shown_not_guessed() {
        assert_eq!(slow_consumer_name(42), "unknown(42)");
        assert_eq!(credential_kind_name(-1), "unknown(-1)");
    }
}
