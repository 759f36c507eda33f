//! Test harness: a private PKI, an in-memory data plane double, a control
//! plane serving on 127.0.0.1 port 0 over TLS, and authenticated clients.

#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code; each test binary uses a part"
)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arqonbus_controlplane::{
    ControlPlane, ControlPlaneConfig, ControlPlaneError, ControlPlaneHandle, DataPlaneControl,
    DataPlaneError, NotApplied,
};
use arqonbus_core::ops::{ConnectionInfo, ShardStatus, SteeringStatus};
use arqonbus_core::placement::SteeringConfig;
use arqonbus_core::snapshot::ConfigSnapshot;
use arqonbus_proto::control::connection_service_client::ConnectionServiceClient;
use arqonbus_proto::control::credential_service_client::CredentialServiceClient;
use arqonbus_proto::control::node_service_client::NodeServiceClient;
use arqonbus_proto::control::policy_service_client::PolicyServiceClient;
use arqonbus_proto::control::principal_service_client::PrincipalServiceClient;
use arqonbus_proto::control::tenant_service_client::TenantServiceClient;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic::{Request, Status};

/// A CA, a server certificate for localhost/127.0.0.1 and a client
/// certificate, all from that CA.
pub struct Pki {
    pub ca_pem: String,
    pub ca_path: PathBuf,
    pub server: Arc<rustls::ServerConfig>,
    pub client_cert_pem: String,
    pub client_key_pem: String,
    _dir: tempfile::TempDir,
}

pub fn pki() -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.distinguished_name.push(DnType::CommonName, "test CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);

    let server_key = KeyPair::generate().unwrap();
    let server = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&server_key, &issuer)
        .unwrap();
    let client_key = KeyPair::generate().unwrap();
    let mut client = CertificateParams::new(vec!["operator".to_owned()]).unwrap();
    client
        .distinguished_name
        .push(DnType::CommonName, "operator");
    let client = client.signed_by(&client_key, &issuer).unwrap();

    let chain = vec![server.der().clone(), ca_cert.der().clone()];
    let key = PrivateKeyDer::from_pem_slice(server_key.serialize_pem().as_bytes()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    // What the data plane uses; the control plane must replace it with h2.
    config.alpn_protocols = vec![b"arqonbus/1".to_vec()];

    let dir = tempfile::tempdir().unwrap();
    let ca_path = dir.path().join("ca.pem");
    std::fs::write(&ca_path, ca_cert.pem()).unwrap();
    let _ = CertificateDer::from_pem_slice(ca_cert.pem().as_bytes()).unwrap();
    Pki {
        ca_pem: ca_cert.pem(),
        ca_path,
        server: Arc::new(config),
        client_cert_pem: client.pem(),
        client_key_pem: client_key.serialize_pem(),
        _dir: dir,
    }
}

/// The data plane double: records snapshots, serves canned connections.
#[derive(Default)]
pub struct FakeDataPlane {
    /// The snapshot the data plane started with (`ControlPlane::open`'s).
    pub started_with: Mutex<Option<Arc<ConfigSnapshot>>>,
    pub applied: Mutex<Vec<Arc<ConfigSnapshot>>>,
    pub connections: Mutex<Vec<ConnectionInfo>>,
    pub draining: Mutex<Vec<u16>>,
}

pub const SHARDS: u16 = 2;

impl FakeDataPlane {
    pub fn last(&self) -> Arc<ConfigSnapshot> {
        self.applied
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("a snapshot was applied")
    }

    pub fn applied_count(&self) -> usize {
        self.applied.lock().unwrap().len()
    }
}

impl DataPlaneControl for FakeDataPlane {
    fn apply(&self, snapshot: Arc<ConfigSnapshot>) -> Result<(), NotApplied> {
        self.applied.lock().unwrap().push(snapshot);
        Ok(())
    }

    fn connections(&self) -> Result<Vec<ConnectionInfo>, DataPlaneError> {
        Ok(self.connections.lock().unwrap().clone())
    }

    fn kick(&self, connection_id: u64) -> Result<bool, DataPlaneError> {
        let mut c = self.connections.lock().unwrap();
        let before = c.len();
        c.retain(|x| x.id != connection_id);
        Ok(c.len() < before)
    }

    fn drain(&self, shard: u16) -> Result<(), DataPlaneError> {
        if shard >= SHARDS {
            return Err(DataPlaneError::NoSuchShard(shard));
        }
        self.draining.lock().unwrap().push(shard);
        Ok(())
    }

    fn resume(&self, shard: u16) -> Result<(), DataPlaneError> {
        if shard >= SHARDS {
            return Err(DataPlaneError::NoSuchShard(shard));
        }
        self.draining.lock().unwrap().retain(|s| *s != shard);
        Ok(())
    }

    fn status(&self) -> Result<Vec<ShardStatus>, DataPlaneError> {
        let epoch = self.applied.lock().unwrap().last().map_or(0, |s| s.epoch());
        let draining = self.draining.lock().unwrap().clone();
        let conns = self.connections.lock().unwrap().clone();
        Ok((0..SHARDS)
            .map(|id| ShardStatus {
                id,
                draining: draining.contains(&id),
                connections: conns.iter().filter(|c| c.shard == id).count() as u64,
                subscriptions: 0,
                config_epoch: epoch,
                moved_in: u64::from(id) * 10,
                moved_out: u64::from(id) * 10 + 1,
            })
            .collect())
    }

    /// What the last snapshot (applied, or started with) asks for, as the
    /// real data plane reports it: the API's steering when the snapshot
    /// carries one, the built-in default otherwise; never attached (there
    /// is no program here).
    fn steering(&self) -> SteeringStatus {
        let last = self
            .applied
            .lock()
            .unwrap()
            .last()
            .cloned()
            .or_else(|| self.started_with.lock().unwrap().clone());
        let (config, source) = match last.as_ref().and_then(|s| s.steering()) {
            Some(s) => ((**s).clone(), "api"),
            None => (SteeringConfig::default(), "config"),
        };
        SteeringStatus {
            config,
            source,
            active: false,
            fallback_reason: Some(FAKE_FALLBACK.into()),
        }
    }

    fn shard_count(&self) -> usize {
        usize::from(SHARDS)
    }
}

/// The fallback reason the data plane double reports.
pub const FAKE_FALLBACK: &str = "no steering program in the test double";

/// A serving control plane.
pub struct Node {
    pub addr: SocketAddr,
    pub token: String,
    pub token_path: PathBuf,
    pub token_created: bool,
    pub first: Arc<ConfigSnapshot>,
    pub handle: ControlPlaneHandle,
    pub dp: Arc<FakeDataPlane>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), ControlPlaneError>>>,
}

impl Node {
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            tokio::time::timeout(std::time::Duration::from_secs(10), t)
                .await
                .expect("the control plane stops")
                .unwrap()
                .unwrap();
        }
    }
}

/// Opens and serves a control plane on `dir`; `tweak` edits the config.
pub async fn start(dir: &Path, pki: &Pki, tweak: impl FnOnce(&mut ControlPlaneConfig)) -> Node {
    let mut config = ControlPlaneConfig::new(dir, pki.server.clone());
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.server_id = "test-node".into();
    tweak(&mut config);
    // Opening blocks (disk, key generation): off the runtime's workers.
    let (cp, first) = tokio::task::spawn_blocking(move || ControlPlane::open(config))
        .await
        .unwrap()
        .unwrap();
    let token_path = cp.admin_token_path().to_owned();
    let token = std::fs::read_to_string(&token_path)
        .map(|t| t.trim().to_owned())
        .unwrap_or_default();
    let dp = Arc::new(FakeDataPlane {
        started_with: Mutex::new(Some(first.clone())),
        ..FakeDataPlane::default()
    });
    let (tx, rx) = oneshot::channel::<()>();
    let addr = cp.local_addr();
    let token_created = cp.admin_token_created();
    let handle = cp.handle();
    let task = tokio::spawn(cp.serve(dp.clone(), async {
        let _ = rx.await;
    }));
    Node {
        addr,
        token,
        token_path,
        token_created,
        first,
        handle,
        dp,
        stop: Some(tx),
        task: Some(task),
    }
}

pub fn tls(pki: &Pki) -> ClientTlsConfig {
    ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&pki.ca_pem))
        .domain_name("localhost")
}

pub async fn connect(
    addr: SocketAddr,
    tls: ClientTlsConfig,
) -> Result<Channel, tonic::transport::Error> {
    Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)?
        .connect()
        .await
}

pub async fn channel(node: &Node, pki: &Pki) -> Channel {
    connect(node.addr, tls(pki)).await.unwrap()
}

pub fn identity(pki: &Pki) -> Identity {
    Identity::from_pem(&pki.client_cert_pem, &pki.client_key_pem)
}

/// Adds `authorization: Bearer <token>`.
#[derive(Clone)]
pub struct Bearer(pub Option<MetadataValue<Ascii>>);

impl Bearer {
    pub fn new(token: &str) -> Self {
        Self(Some(format!("Bearer {token}").parse().unwrap()))
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = &self.0 {
            request.metadata_mut().insert("authorization", v.clone());
        }
        Ok(request)
    }
}

pub type Authed = InterceptedService<Channel, Bearer>;

/// One client per service, all with the same credential.
pub struct Clients {
    pub tenants: TenantServiceClient<Authed>,
    pub principals: PrincipalServiceClient<Authed>,
    pub credentials: CredentialServiceClient<Authed>,
    pub policies: PolicyServiceClient<Authed>,
    pub connections: ConnectionServiceClient<Authed>,
    pub node: NodeServiceClient<Authed>,
}

pub fn clients(channel: &Channel, auth: &Bearer) -> Clients {
    Clients {
        tenants: TenantServiceClient::with_interceptor(channel.clone(), auth.clone()),
        principals: PrincipalServiceClient::with_interceptor(channel.clone(), auth.clone()),
        credentials: CredentialServiceClient::with_interceptor(channel.clone(), auth.clone()),
        policies: PolicyServiceClient::with_interceptor(channel.clone(), auth.clone()),
        connections: ConnectionServiceClient::with_interceptor(channel.clone(), auth.clone()),
        node: NodeServiceClient::with_interceptor(channel.clone(), auth.clone()),
    }
}

impl Clients {
    /// Creates tenant `name` with default quotas; panics if refused.
    pub async fn create_tenant(&mut self, name: &str) -> arqonbus_proto::control::Tenant {
        self.tenants
            .create_tenant(arqonbus_proto::control::CreateTenantRequest {
                name: name.into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
    }

    /// Puts a new policy letting role `role` of `tenant_id` publish to
    /// `pattern`; panics if refused.
    pub async fn allow_role_to_publish(
        &mut self,
        tenant_id: u64,
        role: &str,
        pattern: &str,
    ) -> arqonbus_proto::control::Policy {
        use arqonbus_proto::control::policy::Target;
        use arqonbus_proto::control::{Policy, PutPolicyRequest, SubjectRules};
        self.policies
            .put_policy(PutPolicyRequest {
                policy: Some(Policy {
                    tenant_id,
                    target: Some(Target::Role(role.into())),
                    publish: Some(SubjectRules {
                        allow: vec![pattern.into()],
                        deny: vec![],
                    }),
                    ..Policy::default()
                }),
                expected_version: 0,
            })
            .await
            .unwrap()
            .into_inner()
    }
}

/// Asserts `result` failed with `code` and a message containing `needle`.
#[track_caller]
pub fn assert_status<T: std::fmt::Debug>(
    result: Result<T, Status>,
    code: tonic::Code,
    needle: &str,
) {
    let status = result.expect_err("the call should fail");
    assert_eq!(status.code(), code, "{status:?}");
    assert!(
        status.message().contains(needle),
        "message {:?} should contain {needle:?}",
        status.message()
    );
}

/// Now, Unix seconds.
pub fn now_unix() -> i64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    i64::try_from(d.as_secs()).unwrap()
}
