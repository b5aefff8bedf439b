//! The API pod source (pkg/kubelet/config/apiserver.go): a list+watch of pods with
//! `fieldSelector=spec.nodeName=<node>`, resumed from the last resourceVersion and
//! re-listed on `410 Gone` (kube-runtime's watcher), published as the full set of
//! this node's pods, with the mirror pods of its static pods apart (they are
//! never run; [`super::mirror`] keeps them in line). During an outage the last
//! set stays published, so running pods keep running.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::{watcher, WatchStreamExt};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// The pods bound to this node, as last seen; `None` until the first full list.
pub type PodSet = Option<Arc<ApiPods>>;

/// The pods bound to this node: those to run, and the mirror pods.
#[derive(Debug, Default)]
pub struct ApiPods {
    pub pods: Vec<Pod>,
    pub mirrors: Vec<Pod>,
}

/// Watches this node's pods until `cancel`, publishing the full set on `tx`.
pub async fn run(client: kube::Client, node: String, tx: watch::Sender<PodSet>, cancel: CancellationToken) {
    let api: Api<Pod> = Api::all(client);
    let cfg = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
    let mut stream = watcher(api, cfg).default_backoff().boxed();
    let mut pods: BTreeMap<String, Pod> = BTreeMap::new();
    let mut initial: Option<BTreeMap<String, Pod>> = None;
    let mut synced = false;
    loop {
        let ev = tokio::select! {
            _ = cancel.cancelled() => return,
            ev = stream.next() => ev,
        };
        let Some(ev) = ev else { return };
        let changed = match ev {
            Ok(watcher::Event::Init) => {
                initial = Some(BTreeMap::new());
                false
            }
            Ok(watcher::Event::InitApply(p)) => {
                if let (Some(init), Some(uid)) = (initial.as_mut(), p.metadata.uid.clone()) {
                    init.insert(uid, p);
                }
                false
            }
            Ok(watcher::Event::InitDone) => {
                pods = initial.take().unwrap_or_default();
                if !synced {
                    info!(pods = pods.len(), "pods from the API server listed");
                }
                synced = true;
                true
            }
            Ok(watcher::Event::Apply(p)) => {
                if let Some(uid) = p.metadata.uid.clone() {
                    pods.insert(uid, p);
                }
                synced
            }
            Ok(watcher::Event::Delete(p)) => {
                if let Some(uid) = p.metadata.uid.as_ref() {
                    pods.remove(uid);
                }
                synced
            }
            Err(e) => {
                warn!(error = %e, "pod watch failed; retrying with back-off (running pods are kept)");
                false
            }
        };
        if changed {
            debug!(pods = pods.len(), "API pod set changed");
            // Mirror pods are the API copies of this node's static pods: never run them.
            let (mirrors, pods) = pods.values().cloned().partition(super::mirror::is_mirror_pod);
            let _ = tx.send(Some(Arc::new(ApiPods { pods, mirrors })));
        }
    }
}
