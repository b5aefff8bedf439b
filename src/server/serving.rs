//! `serverTLSBootstrap`: the serving certificate comes from the cluster, like
//! upstream's kubelet serving certificate manager — a CSR for signer
//! `kubernetes.io/kubelet-serving` with the node's DNS names and IPs as SANs,
//! stored as `<cert-dir>/kubelet-server-current.pem` (dated files + symlink), and
//! renewed at 70–90 % of its lifetime. Until one is issued (an admin or an
//! approver must approve serving CSRs), TLS handshakes fail, as upstream.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::tls::Resolver;
use crate::api::bootstrap::{request_serving_certificate, CertStore};

/// How long one CSR waits for approval before a new one is made.
const CSR_WAIT: Duration = Duration::from_secs(15 * 60);

/// Keeps `resolver` presenting a valid cluster-signed serving certificate until `cancel`.
pub async fn run(resolver: Arc<Resolver>, store: CertStore, client: kube::Client, node: String, dns: Vec<String>, ips: Vec<IpAddr>, cancel: CancellationToken) {
    let mut backoff = Duration::from_secs(1);
    loop {
        let current = store.current().ok().flatten().filter(|p| !p.is_expired(SystemTime::now()));
        if let Some(pair) = &current {
            if let Err(e) = resolver.set_pem(pair.certs_pem.as_bytes(), pair.key_pem.as_bytes(), "kubelet-server-current.pem") {
                warn!(error = %e, "the stored serving certificate is unusable");
            } else {
                let deadline = pair.rotation_deadline(rand::random::<f64>());
                let wait = deadline.duration_since(SystemTime::now()).unwrap_or_default();
                info!(wait = ?wait, "serving certificate in use; waiting for its rotation");
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
        let got = tokio::select! {
            _ = cancel.cancelled() => return,
            r = request_serving_certificate(&client, &node, &dns, &ips, CSR_WAIT) => r,
        };
        match got.and_then(|(cert, key)| store.update(&cert, &key)) {
            Ok(pair) => {
                backoff = Duration::from_secs(1);
                if let Err(e) = resolver.set_pem(pair.certs_pem.as_bytes(), pair.key_pem.as_bytes(), "kubelet-server-current.pem") {
                    warn!(error = %e, "the issued serving certificate is unusable");
                } else {
                    info!("serving certificate issued; the kubelet API presents it");
                }
            }
            Err(e) => {
                warn!(error = %e, retry_in = ?backoff, "serving certificate request failed");
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(60));
            }
        }
    }
}
