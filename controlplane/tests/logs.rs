//! Secrets never reach the logs: every event at TRACE level, from this
//! crate and its dependencies, is captured while credentials are issued and
//! a wrong admin token is tried, and none holds a token.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use arqonbus_proto::control::*;
use common::*;

#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl Write for Buffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_never_logged() {
    let logs = Buffer::default();
    let writer = logs.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .init();

    let dir = tempfile::tempdir().unwrap();
    let pki = pki();
    let node = start(dir.path(), &pki, |_| {}).await;
    let ch = channel(&node, &pki).await;
    let mut c = clients(&ch, &Bearer::new(&node.token));
    let t = c.create_tenant("acme").await;
    let p = c
        .principals
        .create_principal(CreatePrincipalRequest {
            tenant_id: t.id,
            name: "svc".into(),
            roles: vec![],
            quotas: None,
        })
        .await
        .unwrap()
        .into_inner();
    let mut tokens = vec![node.token.clone()];
    for (kind, ttl_seconds) in [(CredentialKind::Bearer, 0), (CredentialKind::Signed, 60)] {
        let issued = c
            .credentials
            .issue_credential(IssueCredentialRequest {
                principal_id: p.id,
                kind: kind.into(),
                ttl_seconds,
            })
            .await
            .unwrap()
            .into_inner();
        tokens.push(issued.token);
    }
    let wrong = "abt_thisisnottheadmintokenbutshouldnotbelogged";
    let mut bad = clients(&ch, &Bearer::new(wrong));
    bad.tenants
        .list_tenants(ListTenantsRequest {})
        .await
        .unwrap_err();
    tokens.push(wrong.to_owned());
    drop((c, bad, ch));
    node.stop().await;

    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(text.contains("IssueCredential"), "the RPC was logged");
    assert!(
        text.contains("no valid admin credential"),
        "the refusal was logged"
    );
    for token in &tokens {
        // The secret part, without the public prefix.
        assert!(!text.contains(&token[4..]), "a token reached the logs");
    }
}
