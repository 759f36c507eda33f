//! The monitoring exposition is a contract: every metric name, its labels
//! and its type, and the keys of the JSON endpoints, are compared with the
//! golden file `tests/golden/monitoring.txt` (captured from a running node;
//! values are left out, they differ from run to run).
//!
//! The comparison reads the exposition as a scraper does, so it holds across
//! the Prometheus text format and OpenMetrics: a sample's type is its
//! family's `# TYPE` (an OpenMetrics counter family `x` owns the sample
//! `x_total`), and `le` bounds compare as numbers. `ARQONBUS_UPDATE_GOLDEN=1`
//! rewrites the file (only ever on purpose: a change here breaks dashboards).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};

use arqonbus::testing::TestServer;
use arqonbus_client::{Client, ConnectOptions};
use common::LIMIT;
use futures_util::StreamExt as _;

/// A minimal HTTP/1.1 GET; returns (status, content type, body).
fn get(addr: SocketAddr, path: &str, bearer: Option<&str>) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(LIMIT)).unwrap();
    let auth = bearer.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: test\r\n{auth}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let status = raw[9..12].parse().unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let content_type = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-type")
                .then(|| v.trim().to_owned())
        })
        .unwrap_or_default();
    (status, content_type, body.to_owned())
}

/// Splits `name{a="1",b="2"} value` into the name and its labels.
fn sample(line: &str) -> (String, BTreeMap<String, String>) {
    let head = if line.contains('{') {
        &line[..=line.rfind('}').unwrap()]
    } else {
        line.split(' ').next().unwrap()
    };
    let Some(open) = head.find('{') else {
        return (head.to_owned(), BTreeMap::new());
    };
    let name = head[..open].to_owned();
    let body = &head[open + 1..head.len() - 1];
    let mut labels = BTreeMap::new();
    let mut rest = body;
    while !rest.is_empty() {
        let (key, after) = rest.split_once("=\"").unwrap();
        // The value ends at the first quote not escaped.
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, e)) = chars.next() {
                        value.push('\\');
                        value.push(e);
                    }
                }
                '"' => {
                    end = i;
                    break;
                }
                c => value.push(c),
            }
        }
        let key = key.trim_start_matches(',').to_owned();
        if key == "le" && value != "+Inf" {
            // A bound is a number: "0.00005" and "5e-5" are the same bucket.
            value = value.parse::<f64>().unwrap().to_string();
        }
        labels.insert(key, value);
        rest = after[end + 1..].trim_start_matches(',');
    }
    (name, labels)
}

/// The metric contract of a Prometheus or OpenMetrics exposition: one line
/// per sample (`type name{labels}`) and per family's help text.
fn metric_contract(text: &str) -> BTreeSet<String> {
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut helps: BTreeMap<String, String> = BTreeMap::new();
    let mut out = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (family, kind) = rest.split_once(' ').unwrap();
            types.insert(family.to_owned(), kind.to_owned());
            // Families with no sample yet (errors by code) are part of it too.
            let shown = if kind == "counter" && !family.ends_with("_total") {
                format!("{family}_total")
            } else {
                family.to_owned()
            };
            out.insert(format!("family {kind} {shown}"));
        } else if let Some(rest) = line.strip_prefix("# HELP ") {
            let (family, help) = rest.split_once(' ').unwrap();
            helps.insert(family.to_owned(), help.to_owned());
        } else if line.starts_with('#') || line.is_empty() {
        } else {
            let (name, labels) = sample(line);
            let (family, kind) = ["", "_total", "_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| {
                    let family = name.strip_suffix(suffix)?;
                    let kind = types.get(family)?;
                    let fits = matches!(
                        (*suffix, kind.as_str()),
                        ("" | "_total", "counter")
                            | ("", "gauge")
                            | ("_bucket" | "_sum" | "_count", "histogram")
                    );
                    fits.then(|| (family.to_owned(), kind.clone()))
                })
                .unwrap_or_else(|| panic!("sample without a family type: {line}"));
            let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
            out.insert(format!("{kind} {name}{{{}}}", labels.join(",")));
            let help = helps
                .get(&family)
                .unwrap_or_else(|| panic!("family without help: {family}"));
            // Help is keyed by the name scrapers see for a counter.
            let shown = if kind == "counter" && !family.ends_with("_total") {
                format!("{family}_total")
            } else {
                family
            };
            out.insert(format!("help {shown} {help}"));
        }
    }
    out
}

/// Every key path of a JSON document with its value's kind; array items
/// are merged under `[]`.
fn json_contract(prefix: &str, v: &serde_json::Value, out: &mut BTreeSet<String>) {
    use serde_json::Value;
    match v {
        Value::Object(map) => {
            out.insert(format!("{prefix} object"));
            for (k, v) in map {
                json_contract(&format!("{prefix}.{k}"), v, out);
            }
        }
        Value::Array(items) => {
            out.insert(format!("{prefix} array"));
            for v in items {
                json_contract(&format!("{prefix}[]"), v, out);
            }
        }
        Value::String(_) => {
            out.insert(format!("{prefix} string"));
        }
        Value::Number(_) => {
            out.insert(format!("{prefix} number"));
        }
        Value::Bool(_) => {
            out.insert(format!("{prefix} bool"));
        }
        Value::Null => {
            out.insert(format!("{prefix} null"));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exposition_names_labels_and_types_are_stable() {
    let s = TestServer::start();
    let metrics = s.metrics_addr();
    let options = ConnectOptions::new()
        .url(s.url())
        .ca_file(s.ca_path())
        .credential_file(s.token_path());
    let c = Client::connect(options.name("golden")).await.unwrap();
    let mut sub = c.subscribe("g.*").await.unwrap();
    for _ in 0..10 {
        c.publish("g.x", "payload").await.unwrap();
    }
    c.flush().await.unwrap();
    for _ in 0..10 {
        tokio::time::timeout(LIMIT, sub.next())
            .await
            .unwrap()
            .unwrap();
    }
    let admin = std::fs::read_to_string(s.admin_token_path()).unwrap();
    let admin = admin.trim().to_owned();

    let mut contract = BTreeSet::new();
    let (code, content_type, text) =
        tokio::task::spawn_blocking(move || get(metrics, "/metrics", None))
            .await
            .unwrap();
    assert_eq!(code, 200, "{text}");
    assert!(
        content_type.starts_with("text/plain")
            || content_type.starts_with("application/openmetrics-text")
    );
    for line in metric_contract(&text) {
        contract.insert(format!("/metrics {line}"));
    }
    for (path, bearer) in [
        ("/readyz", None),
        ("/varz", Some(admin.clone())),
        ("/connz", Some(admin.clone())),
        ("/subsz", Some(admin.clone())),
    ] {
        let (code, content_type, body) =
            tokio::task::spawn_blocking(move || get(metrics, path, bearer.as_deref()))
                .await
                .unwrap();
        assert_eq!(code, 200, "{path}: {body}");
        assert!(content_type.starts_with("application/json"), "{path}");
        let v: serde_json::Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("{path} is not JSON ({e}): {body}"));
        json_contract(path, &v, &mut contract);
    }

    let got: String = contract.iter().flat_map(|l| [l.as_str(), "\n"]).collect();
    let golden =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/monitoring.txt");
    if std::env::var_os("ARQONBUS_UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(golden.parent().unwrap()).unwrap();
        std::fs::write(&golden, &got).unwrap();
    }
    let want = std::fs::read_to_string(&golden).unwrap();
    let want: BTreeSet<&str> = want.lines().collect();
    let got: BTreeSet<&str> = got.lines().collect();
    let missing: Vec<&&str> = want.difference(&got).collect();
    let extra: Vec<&&str> = got.difference(&want).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "the monitoring contract changed\nmissing: {missing:#?}\nnew: {extra:#?}"
    );
}
