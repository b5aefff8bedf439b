//! `GET pods/<name>/log`: like kube-apiserver, forwards to the kubelet of the pod's
//! node (`https://<InternalIP>:<kubeletEndpoint port>/containerLogs/<ns>/<pod>/<container>`)
//! with a client certificate `CN=kube-apiserver-kubelet-client`, without verifying
//! the kubelet's serving certificate (kube-apiserver's default), and streams the
//! answer back. This is how `kubectl logs` reaches a node.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::Response;
use rustls::pki_types::pem::PemObject;
use serde_json::Value;
use tokio_stream::StreamExt;

use crate::error::ApiError;
use crate::server::Body;
use crate::state::{res, Shared};

/// The user kube-apiserver authenticates to kubelets as (kubeadm's name).
pub const KUBELET_CLIENT: &str = "kube-apiserver-kubelet-client";

const PASSED: &[&str] = &["follow", "previous", "sinceSeconds", "sinceTime", "timestamps", "tailLines", "limitBytes"];

#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(&self, m: &[u8], c: &rustls::pki_types::CertificateDer<'_>, d: &rustls::DigitallySignedStruct) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(&self, m: &[u8], c: &rustls::pki_types::CertificateDer<'_>, d: &rustls::DigitallySignedStruct) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn unavailable(msg: String) -> ApiError {
    ApiError::new(503, "ServiceUnavailable", msg)
}

/// Proxies a pod log request to its node's kubelet.
pub async fn pod_log(shared: &Arc<Shared>, ns: &str, name: &str, query: &[(String, String)]) -> Result<Response<Body>, ApiError> {
    let pod = shared.get(res("pods"), ns, name)?;
    let q = |k: &str| query.iter().rev().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let containers: Vec<String> = pod.pointer("/spec/containers").and_then(Value::as_array).into_iter().flatten().filter_map(|c| c["name"].as_str().map(String::from)).collect();
    let container = match q("container") {
        Some(c) => c,
        None if containers.len() == 1 => containers[0].clone(),
        None => return Err(ApiError::bad_request(format!("a container name must be specified for pod {name}, choose one of: [{}]", containers.join(" ")))),
    };
    let node_name = pod.pointer("/spec/nodeName").and_then(Value::as_str).unwrap_or("");
    if node_name.is_empty() {
        return Err(ApiError::bad_request(format!("pod {name} does not have a host assigned")));
    }
    let node = shared.get(res("nodes"), "", node_name)?;
    let internal = node
        .pointer("/status/addresses")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|a| a["type"] == "InternalIP")
        .and_then(|a| a["address"].as_str())
        .ok_or_else(|| unavailable(format!("no InternalIP for node {node_name}")))?
        .to_string();
    let ip = shared.opts.kubelet_dial_address.clone().unwrap_or(internal);
    let port = node.pointer("/status/daemonEndpoints/kubeletEndpoint/Port").and_then(Value::as_u64).unwrap_or(10250);
    let mut path = format!("/containerLogs/{ns}/{name}/{container}");
    let params: Vec<String> = PASSED.iter().filter_map(|k| q(k).map(|v| format!("{k}={}", percent_encoding::utf8_percent_encode(&v, percent_encoding::NON_ALPHANUMERIC)))).collect();
    if !params.is_empty() {
        path.push('?');
        path.push_str(&params.join("&"));
    }

    let (cert, key) = shared.pki.issue_client_cert(KUBELET_CLIENT, &["kubeadm:cluster-admins"], Duration::from_secs(3600)).map_err(|e| ApiError::internal(e.to_string()))?;
    let chain: Vec<_> = rustls::pki_types::CertificateDer::pem_slice_iter(cert.as_bytes()).filter_map(|c| c.ok()).collect();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).map_err(|e| ApiError::internal(e.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| ApiError::internal(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
        .with_client_auth_cert(chain, key)
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let tcp = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect((ip.as_str(), port as u16)))
        .await
        .map_err(|_| unavailable(format!("dial tcp {ip}:{port}: i/o timeout")))?
        .map_err(|e| unavailable(format!("dial tcp {ip}:{port}: {e}")))?;
    let server_name = rustls::pki_types::ServerName::try_from(ip.clone()).map_err(|e| ApiError::internal(e.to_string()))?;
    let stream = tokio_rustls::TlsConnector::from(Arc::new(tls)).connect(server_name, tcp).await.map_err(|e| unavailable(format!("kubelet TLS: {e}")))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.map_err(|e| unavailable(e.to_string()))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = hyper::Request::get(path).header("Host", format!("{ip}:{port}")).body(http_body_util::Empty::<Bytes>::new()).map_err(|e| ApiError::internal(e.to_string()))?;
    let resp = sender.send_request(req).await.map_err(|e| unavailable(e.to_string()))?;
    let status = resp.status();
    if !status.is_success() {
        let body = resp.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        return Err(ApiError::new(status.as_u16(), "BadRequest", String::from_utf8_lossy(&body).trim().to_string()));
    }
    let stream = http_body_util::BodyStream::new(resp.into_body())
        .filter_map(|f| f.ok().and_then(|f| f.into_data().ok()))
        .map(|b| Ok::<_, Infallible>(hyper::body::Frame::data(b)));
    Response::builder()
        .status(200)
        .header("Content-Type", "text/plain")
        .body(BodyExt::boxed(StreamBody::new(stream)))
        .map_err(|e| ApiError::internal(e.to_string()))
}
