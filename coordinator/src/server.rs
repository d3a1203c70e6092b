//! Serving the gRPC API on a socket, behind a bearer-token check.

use crate::scheduler::SchedulerHandle;
use crate::service::{MAX_MESSAGE_BYTES, SweepApi, WorkerApi};
use cbsweep_proto::v1::{sweep_service_server::SweepServiceServer, worker_service_server::WorkerServiceServer};
use std::net::SocketAddr;
use std::time::Duration;
use subtle::ConstantTimeEq;
use tokio::sync::oneshot;
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Status};

/// Most requests one connection has in progress at once.
pub const GRPC_CONCURRENCY_PER_CONNECTION: usize = 256;

/// Longest a request may take, a checkpoint upload's whole stream included.
pub const GRPC_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// How often an idle connection is pinged (HTTP/2 PING), and how long its answer may take
/// before the connection is closed: a peer that vanished without closing lets its connection
/// and its descriptor go.
pub const GRPC_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
pub const GRPC_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// TCP keepalive on accepted connections, for a peer that cannot even answer a ping.
pub const GRPC_TCP_KEEPALIVE: Duration = Duration::from_secs(60);

/// Longest a TLS handshake may take before its connection is closed.
pub const GRPC_TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The shared secret every RPC must carry as `authorization: Bearer <token>`.
#[derive(Clone)]
pub struct Token(pub String);

impl Token {
    /// Whether `given` is this token (constant-time comparison; an empty `given` never is).
    pub fn matches(&self, given: &[u8]) -> bool {
        !given.is_empty() && bool::from(given.ct_eq(self.0.as_bytes()))
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(..)")
    }
}

/// The interceptor that checks the bearer token on every call (constant-time comparison).
#[derive(Clone, Debug)]
pub struct Auth(pub Token);

impl tonic::service::Interceptor for Auth {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        check_token(req, &self.0)
    }
}

/// The token of an `Authorization` header's value: what follows the `Bearer` scheme, whose name
/// is matched without regard to case (RFC 7235: `bearer TOKEN` is as good as `Bearer TOKEN`);
/// empty for any other value. The gRPC side, /metrics and the dashboard all read it here.
pub(crate) fn bearer_token(value: &[u8]) -> &[u8] {
    match value.split_at_checked(7) {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case(b"bearer ") => token,
        _ => b"",
    }
}

fn check_token(req: Request<()>, token: &Token) -> Result<Request<()>, Status> {
    let Some(value) = req.metadata().get("authorization") else {
        return Err(Status::unauthenticated("missing bearer token: pass --token-file or set CBSWEEP_TOKEN"));
    };
    let given = bearer_token(value.as_bytes());
    if token.matches(given) { Ok(req) } else { Err(Status::unauthenticated("wrong bearer token")) }
}

/// A running server; dropping `shutdown` (or sending on it) stops it gracefully.
pub struct Running {
    pub addr: SocketAddr,
    pub shutdown: oneshot::Sender<()>,
    pub task: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

/// A PEM certificate chain and private key for serving gRPC over TLS (rustls).
#[derive(Clone)]
pub struct TlsFiles {
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
}

impl TlsFiles {
    /// A rustls server configuration of this certificate and key (ring), for the HTTP side;
    /// the gRPC side gives the same PEM to tonic.
    pub fn rustls_config(&self) -> std::io::Result<std::sync::Arc<tokio_rustls::rustls::ServerConfig>> {
        use tokio_rustls::rustls::pki_types::pem::PemObject;
        use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let bad = |what: &str, e: &dyn std::fmt::Display| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{what}: {e}"));
        let certs = CertificateDer::pem_slice_iter(&self.cert).collect::<Result<Vec<_>, _>>().map_err(|e| bad("TLS certificate", &e))?;
        let key = PrivateKeyDer::from_pem_slice(&self.key).map_err(|e| bad("TLS key", &e))?;
        let provider = std::sync::Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| bad("TLS versions", &e))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| bad("TLS certificate or key", &e))?;
        Ok(std::sync::Arc::new(config))
    }
}

/// Raises the process's soft limit on open files to its hard limit (the soft one is often 1,024,
/// which a few hundred stuck clients would reach); the soft limit in force afterwards, or None
/// when it cannot be read. Every connection, on either side, holds a descriptor.
pub fn raise_open_file_limit() -> Option<u64> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        return Some(hard);
    }
    Some(soft)
}

/// Binds `listen` (port 0 picks a free one) and serves both services in plain text.
pub async fn serve(listen: SocketAddr, sched: SchedulerHandle, token: Token) -> std::io::Result<Running> {
    serve_with(listen, sched, token, None).await
}

/// Like `serve`, over TLS when `tls` is given.
pub async fn serve_with(listen: SocketAddr, sched: SchedulerHandle, token: Token, tls: Option<TlsFiles>) -> std::io::Result<Running> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let (shutdown, rx) = oneshot::channel::<()>();
    let auth = Auth(token);
    let workers = WorkerServiceServer::new(WorkerApi::new(sched.clone())).max_decoding_message_size(MAX_MESSAGE_BYTES);
    let sweeps = SweepServiceServer::new(SweepApi { sched }).max_decoding_message_size(MAX_MESSAGE_BYTES);
    let mut builder = tonic::transport::Server::builder();
    if let Some(t) = tls {
        let identity = tonic::transport::Identity::from_pem(t.cert, t.key);
        builder = builder
            .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity).timeout(GRPC_TLS_HANDSHAKE_TIMEOUT))
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("TLS certificate or key: {e}")))?;
    }
    let router = builder
        .concurrency_limit_per_connection(GRPC_CONCURRENCY_PER_CONNECTION)
        .timeout(GRPC_REQUEST_TIMEOUT)
        .http2_keepalive_interval(Some(GRPC_KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(GRPC_KEEPALIVE_TIMEOUT))
        .add_service(InterceptedService::new(workers, auth.clone()))
        .add_service(InterceptedService::new(sweeps, auth));
    // Small request/response pairs: without TCP_NODELAY, Nagle's algorithm and delayed ACKs
    // add tens of milliseconds to a round trip.
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)).with_keepalive(Some(GRPC_TCP_KEEPALIVE));
    let task = tokio::spawn(router.serve_with_incoming_shutdown(incoming, async {
        let _ = rx.await;
    }));
    tracing::info!(%addr, "coordinator listening");
    Ok(Running { addr, shutdown, task })
}
