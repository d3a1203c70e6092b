//! Connecting to a coordinator with the bearer token attached to every call.

use crate::v1::{sweep_service_client::SweepServiceClient, worker_service_client::WorkerServiceClient};
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};

/// Adds `authorization: Bearer <token>` to each request.
#[derive(Clone)]
pub struct BearerAuth {
    header: MetadataValue<tonic::metadata::Ascii>,
}

impl std::fmt::Debug for BearerAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BearerAuth(..)")
    }
}

impl BearerAuth {
    pub fn new(token: &str) -> Result<Self, ClientError> {
        let header = format!("Bearer {}", token.trim()).parse().map_err(|_| ClientError::BadToken)?;
        Ok(BearerAuth { header })
    }
}

impl tonic::service::Interceptor for BearerAuth {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        req.metadata_mut().insert("authorization", self.header.clone());
        Ok(req)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("the token holds characters that cannot go in a header (use printable ASCII)")]
    BadToken,
    #[error("invalid coordinator address {url}: {source}")]
    BadUrl { url: String, source: tonic::transport::Error },
    #[error("an https:// coordinator needs {TLS_CA_ENV} set to the CA certificate (PEM) that signed its certificate")]
    NoCa,
    #[error("cannot read the CA certificate {path}: {reason}")]
    Ca { path: String, reason: String },
    /// `error` is shown whole (its causes too) and kept out of the source chain, so that a
    /// caller printing the chain does not repeat it.
    #[error("cannot reach the coordinator at {url}: {} (is `cbsweep coordinator` running there?)", chain(error))]
    Connect { url: String, error: tonic::transport::Error },
    /// It answered, but not as a coordinator this client can use: a wrong port, scheme or CA
    /// (`misdirected`).
    #[error("cannot talk to the coordinator at {url}: {why}")]
    Misdirected { url: String, why: String },
}

/// An error's text and its sources', joined by ": " (tonic's "transport error" alone says
/// nothing of why).
pub fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![error.to_string()];
    let mut next = error.source();
    while let Some(e) = next {
        let text = e.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = e.source();
    }
    parts.join(": ")
}

/// What a failed connection or call to `url` says of a wrong port, scheme or CA, with what to do;
/// None when it says nothing of the kind (the coordinator is away or starting, say). For a
/// plain `http://` URL whose call failed for no reason it names, the port is asked whether it
/// speaks TLS.
pub async fn misdirected(url: &str, error: &(dyn std::error::Error + Send + Sync + 'static)) -> Option<String> {
    // a refusal of the coordinator's own (a bad spec, an unknown sweep, the token) says nothing of it
    if let Some(status) = error.downcast_ref::<Status>()
        && !matches!(status.code(), Code::Unknown | Code::Unavailable | Code::Cancelled | Code::Internal | Code::Unimplemented)
    {
        return None;
    }
    let url = coordinator_url(url);
    let text = chain(error);
    let ca = || {
        std::env::var_os(TLS_CA_ENV).map_or_else(|| format!("{TLS_CA_ENV} (unset)"), |p| format!("{TLS_CA_ENV} ({})", p.to_string_lossy()))
    };
    if let Some(rest) = text.split("grpc-status header missing, mapped from HTTP status code ").nth(1) {
        let code: String = rest.chars().take_while(char::is_ascii_digit).collect();
        return Some(format!(
            "it answered HTTP (status {code}), not gRPC: is this the coordinator's HTTP port (--http-listen) rather than its gRPC port (--listen)?"
        ));
    }
    if text.contains("UnknownIssuer") {
        return Some(format!(
            "TLS handshake failed: the server's certificate is not signed by the CA in {}: set it to the CA that signed the coordinator's --tls-cert",
            ca()
        ));
    }
    if text.contains("NotValidForName") {
        return Some(
            "TLS handshake failed: the server's certificate does not name this host: connect by a name or address its certificate names (its subjectAltName)".into(),
        );
    }
    if text.contains("invalid peer certificate") {
        return Some(format!("TLS handshake failed: the server's certificate was refused ({text}); check it and the CA in {}", ca()));
    }
    let https = url.starts_with("https://");
    if https && (text.contains("InvalidContentType") || text.contains("corrupt message")) {
        return Some(format!(
            "the server does not speak TLS: use http://{} (or start the coordinator with --tls-cert and --tls-key)",
            url.trim_start_matches("https://")
        ));
    }
    if https && (text.contains("HTTP/2 was not negotiated") || text.contains("no application protocol")) {
        return Some(
            "it speaks TLS but not gRPC: is this the coordinator's HTTP port (--http-listen) rather than its gRPC port (--listen)?".into(),
        );
    }
    if !https && !text.contains("tcp connect error") && answers_http1(&url).await {
        return Some(
            "it answered HTTP/1.1, not gRPC: is this the coordinator's HTTP port (--http-listen) rather than its gRPC port (--listen)?"
                .into(),
        );
    }
    if !https && !text.contains("tcp connect error") && speaks_tls(&url).await {
        return Some(format!(
            "the coordinator speaks TLS: use https://{} and set {TLS_CA_ENV} to the CA that signed its certificate",
            url.trim_start_matches("http://")
        ));
    }
    None
}

/// Whether the server at `url` (host and port) answers a TLS ClientHello with a TLS record (a
/// ServerHello or an alert): a plain HTTP/2 server answers it otherwise or not at all.
async fn speaks_tls(url: &str) -> bool {
    // a handshake (22) or alert (21) record of TLS 1.x
    probe(url, &CLIENT_HELLO).await.is_some_and(|head| matches!(head, [21 | 22, 3, ..]))
}

/// Whether the server at `url` answers a plain HTTP/1.1 request as an HTTP/1 server does (the
/// coordinator's HTTP side, which speaks no HTTP/2 and so no gRPC).
async fn answers_http1(url: &str) -> bool {
    probe(url, b"GET /healthz HTTP/1.1\r\nHost: cbsweep\r\nConnection: close\r\n\r\n")
        .await
        .is_some_and(|head| head.starts_with(b"HTTP/1."))
}

/// The first bytes the server at `url` (host and port) answers `request` with, within 3 s.
async fn probe(url: &str, request: &[u8]) -> Option<[u8; 7]> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let authority = url.parse::<tonic::codegen::http::Uri>().ok()?.authority().cloned()?;
    let addr = format!("{}:{}", authority.host().trim_start_matches('[').trim_end_matches(']'), authority.port_u16().unwrap_or(80));
    let ask = async {
        let mut s = tokio::net::TcpStream::connect(&addr).await.ok()?;
        s.write_all(request).await.ok()?;
        let mut head = [0u8; 7];
        s.read_exact(&mut head).await.ok()?;
        Some(head)
    };
    tokio::time::timeout(std::time::Duration::from_secs(3), ask).await.ok().flatten()
}

/// A TLS 1.2 ClientHello offering one cipher suite and no extensions: enough for a TLS server to
/// answer with a record of its own (a ServerHello, or an alert refusing it).
const CLIENT_HELLO: [u8; 50] = {
    let mut m = [0u8; 50];
    // record header: handshake (22), TLS 1.0 on the wire, 45 bytes
    (m[0], m[1], m[2], m[4]) = (22, 3, 1, 45);
    // ClientHello (1) of 41 bytes: TLS 1.2, 32 bytes of random (zeros), no session id,
    (m[5], m[8], m[9], m[10]) = (1, 41, 3, 3);
    // one cipher suite (TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256), the null compression
    (m[45], m[46], m[47], m[48]) = (2, 0xc0, 0x2f, 1);
    m
};

pub type WorkerClient = WorkerServiceClient<InterceptedService<Channel, BearerAuth>>;
pub type SweepClient = SweepServiceClient<InterceptedService<Channel, BearerAuth>>;

/// Environment variable naming the CA certificate (PEM) that signed an https:// coordinator's
/// certificate; without it the system's roots are not consulted and TLS needs it.
pub const TLS_CA_ENV: &str = "CBSWEEP_TLS_CA";

/// A coordinator address as a URL: `127.0.0.1:50187` (what a coordinator prints as it listens)
/// reads as `http://127.0.0.1:50187`; an address with a scheme is kept as given.
pub fn coordinator_url(address: &str) -> String {
    let address = address.trim();
    if address.contains("://") { address.to_string() } else { format!("http://{address}") }
}

async fn channel(url: &str) -> Result<Channel, ClientError> {
    let url = &coordinator_url(url);
    let mut endpoint = Endpoint::from_shared(url.to_string())
        .map_err(|source| ClientError::BadUrl { url: url.into(), source })?
        .connect_timeout(std::time::Duration::from_secs(5))
        .timeout(std::time::Duration::from_secs(60))
        .tcp_nodelay(true);
    if url.starts_with("https://") {
        let ca_path = std::env::var_os(TLS_CA_ENV).ok_or(ClientError::NoCa)?;
        let ca_err = |reason: String| ClientError::Ca { path: ca_path.to_string_lossy().into_owned(), reason };
        let pem = std::fs::read(&ca_path).map_err(|e| ca_err(e.to_string()))?;
        if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
            return Err(ca_err(format!(
                "no PEM certificate in it (a -----BEGIN CERTIFICATE----- block): set {TLS_CA_ENV} to the CA certificate that signed the coordinator's --tls-cert"
            )));
        }
        let tls = tonic::transport::ClientTlsConfig::new().ca_certificate(tonic::transport::Certificate::from_pem(pem));
        endpoint = endpoint.tls_config(tls).map_err(|source| ClientError::BadUrl { url: url.into(), source })?;
    }
    match endpoint.connect().await {
        Ok(channel) => Ok(channel),
        Err(source) => Err(match misdirected(url, &source).await {
            Some(why) => ClientError::Misdirected { url: url.into(), why },
            None => ClientError::Connect { url: url.into(), error: source },
        }),
    }
}

pub async fn worker_client(url: &str, token: &str) -> Result<WorkerClient, ClientError> {
    let auth = BearerAuth::new(token)?;
    Ok(WorkerServiceClient::with_interceptor(channel(url).await?, auth).max_decoding_message_size(16 * 1024 * 1024))
}

pub async fn sweep_client(url: &str, token: &str) -> Result<SweepClient, ClientError> {
    let auth = BearerAuth::new(token)?;
    Ok(SweepServiceClient::with_interceptor(channel(url).await?, auth).max_decoding_message_size(16 * 1024 * 1024))
}

/// Reads a token: the file if given, else the CBSWEEP_TOKEN environment variable. A file that
/// holds no token (empty, or only whitespace) is an error naming it: no call could pass with it.
pub fn read_token(file: Option<&std::path::Path>) -> Result<Option<String>, std::io::Error> {
    if let Some(f) = file {
        let t = std::fs::read_to_string(f)
            .map_err(|e| std::io::Error::new(e.kind(), format!("cannot read token file {}: {e}", f.display())))?;
        if t.trim().is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "token file {} is empty (or only whitespace): put the coordinator's token in it (the coordinator prints where it wrote its token)",
                    f.display()
                ),
            ));
        }
        return Ok(Some(t.trim().to_string()));
    }
    Ok(std::env::var("CBSWEEP_TOKEN").ok().map(|t| t.trim().to_string()).filter(|t| !t.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::coordinator_url;

    #[test]
    fn an_address_without_a_scheme_is_a_plain_http_coordinator() {
        assert_eq!(coordinator_url("127.0.0.1:50187"), "http://127.0.0.1:50187");
        assert_eq!(coordinator_url(" coord:50051 "), "http://coord:50051");
        assert_eq!(coordinator_url("https://coord:50051"), "https://coord:50051");
        assert_eq!(coordinator_url("http://[::1]:1"), "http://[::1]:1");
    }
}
