//! The node Lease in `kube-node-lease` (pkg/kubelet/nodelease, component-helpers
//! lease controller): created with an owner reference to the Node, then renewed
//! with an update every `nodeLeaseDurationSeconds / 4`.

use std::time::Duration;

use chrono::Utc;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, OwnerReference};
use kube::api::{Api, ObjectMeta, PostParams};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::is_not_found;

pub const LEASE_NAMESPACE: &str = "kube-node-lease";

fn now_micro() -> MicroTime {
    MicroTime(crate::pod::k8s_time(Utc::now()).0)
}

/// The Lease as upstream creates it.
pub fn new_lease(node: &str, node_uid: Option<&str>, duration_seconds: i32) -> Lease {
    Lease {
        metadata: ObjectMeta {
            name: Some(node.into()),
            namespace: Some(LEASE_NAMESPACE.into()),
            owner_references: node_uid.map(|uid| {
                vec![OwnerReference { api_version: "v1".into(), kind: "Node".into(), name: node.into(), uid: uid.into(), ..Default::default() }]
            }),
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(node.into()),
            lease_duration_seconds: Some(duration_seconds),
            renew_time: Some(now_micro()),
            ..Default::default()
        }),
    }
}

/// Renews the node's Lease until `cancel`. Waits for the Node's UID first (the
/// owner reference), like upstream.
pub async fn run(client: kube::Client, node: String, duration_seconds: i32, mut node_uid: watch::Receiver<Option<String>>, cancel: CancellationToken) {
    let api: Api<Lease> = Api::namespaced(client, LEASE_NAMESPACE);
    let interval = Duration::from_secs((duration_seconds.max(4) / 4) as u64);
    loop {
        if node_uid.borrow().is_some() {
            break;
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            r = node_uid.changed() => if r.is_err() { return },
        }
    }
    let mut current: Option<Lease> = None;
    loop {
        let uid = node_uid.borrow().clone();
        let mut retry = Duration::from_millis(200);
        for _attempt in 0..5 {
            match renew(&api, &node, uid.as_deref(), duration_seconds, current.take()).await {
                Ok(l) => {
                    current = Some(l);
                    break;
                }
                Err(e) => {
                    warn!(node = %node, error = %e, "failed to renew the node lease; retrying");
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(retry) => {}
                    }
                    retry = (retry * 2).min(Duration::from_secs(7));
                }
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

/// One renewal: update the cached Lease, or get (create on 404) then update.
async fn renew(api: &Api<Lease>, node: &str, node_uid: Option<&str>, duration: i32, cached: Option<Lease>) -> Result<Lease, kube::Error> {
    let mut lease = match cached {
        Some(l) => l,
        None => match api.get(node).await {
            Ok(l) => l,
            Err(e) if is_not_found(&e) => {
                let l = api.create(&PostParams::default(), &new_lease(node, node_uid, duration)).await?;
                debug!(node, "node lease created");
                return Ok(l);
            }
            Err(e) => return Err(e),
        },
    };
    let spec = lease.spec.get_or_insert_with(Default::default);
    spec.holder_identity = Some(node.into());
    spec.lease_duration_seconds = Some(duration);
    spec.renew_time = Some(now_micro());
    if lease.metadata.owner_references.as_ref().map(|o| o.is_empty()).unwrap_or(true) {
        lease.metadata.owner_references = new_lease(node, node_uid, duration).metadata.owner_references;
    }
    // On a conflict or 404 the caller retries without a cached copy, i.e. from the
    // server's current Lease.
    api.replace(node, &PostParams::default(), &lease).await
}
