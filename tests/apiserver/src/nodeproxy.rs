//! `GET pods/<name>/log`: like kube-apiserver, forwards to the kubelet of the pod's
//! node (`https://<InternalIP>:<kubeletEndpoint port>/containerLogs/<ns>/<pod>/<container>`)
//! with a client certificate `CN=kube-apiserver-kubelet-client`, without verifying
//! the kubelet's serving certificate (kube-apiserver's default), and streams the
//! answer back. This is how `kubectl logs` reaches a node.
//!
//! `pods/exec`, `pods/attach` and `pods/portforward` (SPDY or WebSocket upgrade
//! requests) go the same way as an upgrade: the kubelet URL is built from the
//! options like upstream's streamLocation (`command`, `input=1`, `output=1`,
//! `error=1`, `tty=1`), the upgrade headers are passed on, and after the
//! kubelet's 101 the bytes are copied both ways (what kube-apiserver's
//! upgrade-aware proxy did before it learned to translate WebSockets).

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
    let (ip, port) = kubelet_target(shared, &pod, name)?;
    let mut path = format!("/containerLogs/{ns}/{name}/{container}");
    let params: Vec<String> = PASSED.iter().filter_map(|k| q(k).map(|v| format!("{k}={}", percent_encoding::utf8_percent_encode(&v, percent_encoding::NON_ALPHANUMERIC)))).collect();
    if !params.is_empty() {
        path.push('?');
        path.push_str(&params.join("&"));
    }
    let stream = connect_kubelet(shared, &ip, port).await?;
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

/// The kubelet's address for the pod's node: (dial address, port).
fn kubelet_target(shared: &Arc<Shared>, pod: &Value, name: &str) -> Result<(String, u16), ApiError> {
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
    Ok((ip, port as u16))
}

/// A TLS client config presenting `cert_pem`/`key_pem` that does not verify the
/// kubelet's serving certificate (self-signed by default, as kube-apiserver's
/// default `--kubelet-certificate-authority` unset also accepts). Tests that talk
/// to the kubelet directly use it too.
pub fn kubelet_client_tls(cert_pem: &[u8], key_pem: &[u8]) -> Result<rustls::ClientConfig, String> {
    let chain: Vec<_> = rustls::pki_types::CertificateDer::pem_slice_iter(cert_pem).filter_map(|c| c.ok()).collect();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| e.to_string())?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
        .with_client_auth_cert(chain, key)
        .map_err(|e| e.to_string())
}

/// A TLS connection to the kubelet as kube-apiserver's kubelet client (HTTP/1.1 only).
async fn connect_kubelet(shared: &Arc<Shared>, ip: &str, port: u16) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, ApiError> {
    let (cert, key) = shared.pki.issue_client_cert(KUBELET_CLIENT, &["kubeadm:cluster-admins"], Duration::from_secs(3600)).map_err(|e| ApiError::internal(e.to_string()))?;
    let tls = kubelet_client_tls(cert.as_bytes(), key.as_bytes()).map_err(ApiError::internal)?;
    let tcp = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect((ip, port)))
        .await
        .map_err(|_| unavailable(format!("dial tcp {ip}:{port}: i/o timeout")))?
        .map_err(|e| unavailable(format!("dial tcp {ip}:{port}: {e}")))?;
    let server_name = rustls::pki_types::ServerName::try_from(ip.to_string()).map_err(|e| ApiError::internal(e.to_string()))?;
    tokio_rustls::TlsConnector::from(Arc::new(tls)).connect(server_name, tcp).await.map_err(|e| unavailable(format!("kubelet TLS: {e}")))
}

/// Headers of an upgrade that pass through to the kubelet and back.
const UPGRADE_HEADERS: &[&str] = &["connection", "upgrade", "x-stream-protocol-version", "sec-websocket-key", "sec-websocket-version", "sec-websocket-protocol", "sec-websocket-accept", "x-accepted-stream-protocol-versions"];

/// `pods/{exec,attach,portforward}`: upgrades the request through to the pod's kubelet.
pub async fn upgrade(shared: &Arc<Shared>, ns: &str, name: &str, subresource: &str, query: &[(String, String)], mut req: hyper::Request<hyper::body::Incoming>) -> Result<Response<Body>, ApiError> {
    let pod = shared.get(res("pods"), ns, name)?;
    let all = |k: &str| query.iter().filter(|(n, _)| n == k).map(|(_, v)| v.clone()).collect::<Vec<_>>();
    let flag = |k: &str| all(k).last().is_some_and(|v| v == "true" || v == "1");
    let path = if subresource == "portforward" {
        format!("/portForward/{ns}/{name}")
    } else {
        let containers: Vec<String> = pod.pointer("/spec/containers").and_then(Value::as_array).into_iter().flatten().filter_map(|c| c["name"].as_str().map(String::from)).collect();
        let container = match all("container").pop() {
            Some(c) => c,
            None if containers.len() == 1 => containers[0].clone(),
            None => return Err(ApiError::bad_request(format!("a container name must be specified for pod {name}, choose one of: [{}]", containers.join(" ")))),
        };
        // Any container of the pod: app, init or ephemeral (upstream's podHasContainerWithName).
        let any = ["initContainers", "ephemeralContainers"].iter().flat_map(|k| pod.pointer(&format!("/spec/{k}")).and_then(Value::as_array).into_iter().flatten()).any(|c| c["name"].as_str() == Some(container.as_str()));
        if !containers.contains(&container) && !any {
            return Err(ApiError::bad_request(format!("container {container} is not valid for pod {name}")));
        }
        let enc = |v: &str| percent_encoding::utf8_percent_encode(v, percent_encoding::NON_ALPHANUMERIC).to_string();
        let mut params: Vec<String> = Vec::new();
        if subresource == "exec" {
            let cmd = all("command");
            if cmd.is_empty() {
                return Err(ApiError::bad_request("you must specify at least one command for the container"));
            }
            params.extend(cmd.iter().map(|c| format!("command={}", enc(c))));
        }
        for (opt, param) in [("stdin", "input"), ("stdout", "output"), ("stderr", "error"), ("tty", "tty")] {
            if flag(opt) {
                params.push(format!("{param}=1"));
            }
        }
        format!("/{subresource}/{ns}/{name}/{container}?{}", params.join("&"))
    };
    let (ip, port) = kubelet_target(shared, &pod, name)?;
    let stream = connect_kubelet(shared, &ip, port).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.map_err(|e| unavailable(e.to_string()))?;
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    let mut out = hyper::Request::builder().method(req.method().clone()).uri(path).header("Host", format!("{ip}:{port}"));
    for h in UPGRADE_HEADERS {
        for v in req.headers().get_all(*h) {
            out = out.header(*h, v.clone());
        }
    }
    let out = out.body(http_body_util::Empty::<Bytes>::new()).map_err(|e| ApiError::internal(e.to_string()))?;
    let mut resp = sender.send_request(out).await.map_err(|e| unavailable(e.to_string()))?;
    let status = resp.status();
    if status != hyper::StatusCode::SWITCHING_PROTOCOLS {
        // The kubelet's refusal goes back as it is.
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        let mut b = Response::builder().status(status);
        for (k, v) in headers.iter().filter(|(k, _)| *k == "content-type" || UPGRADE_HEADERS.contains(&k.as_str())) {
            b = b.header(k, v);
        }
        return b.body(BodyExt::boxed(http_body_util::Full::new(body))).map_err(|e| ApiError::internal(e.to_string()));
    }
    let mut b = Response::builder().status(status);
    for (k, v) in resp.headers().iter().filter(|(k, _)| UPGRADE_HEADERS.contains(&k.as_str())) {
        b = b.header(k, v);
    }
    let client_up = hyper::upgrade::on(&mut req);
    let kubelet_up = hyper::upgrade::on(&mut resp);
    tokio::spawn(async move {
        let (Ok(c), Ok(k)) = (client_up.await, kubelet_up.await) else { return };
        let (mut c, mut k) = (hyper_util::rt::TokioIo::new(c), hyper_util::rt::TokioIo::new(k));
        let _ = tokio::io::copy_bidirectional(&mut c, &mut k).await;
    });
    b.body(BodyExt::boxed(http_body_util::Empty::<Bytes>::new())).map_err(|e| ApiError::internal(e.to_string()))
}
