//! Connecting to a coordinator with the bearer token attached to every call.

use crate::v1::{sweep_service_client::SweepServiceClient, worker_service_client::WorkerServiceClient};
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status};

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
    #[error("cannot reach the coordinator at {url}: {source} (is `cbsweep coordinator` running there?)")]
    Connect { url: String, source: tonic::transport::Error },
}

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
        let pem =
            std::fs::read(&ca_path).map_err(|e| ClientError::Ca { path: ca_path.to_string_lossy().into_owned(), reason: e.to_string() })?;
        let tls = tonic::transport::ClientTlsConfig::new().ca_certificate(tonic::transport::Certificate::from_pem(pem));
        endpoint = endpoint.tls_config(tls).map_err(|source| ClientError::BadUrl { url: url.into(), source })?;
    }
    endpoint.connect().await.map_err(|source| ClientError::Connect { url: url.into(), source })
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
