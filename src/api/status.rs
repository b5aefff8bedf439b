//! The pod status manager (pkg/kubelet/status): the latest status of each API pod
//! is queued and patched onto `pods/status` by one task, coalescing updates,
//! skipping unchanged ones and retrying across outages. Also finishes the deletion
//! of pods once the node has cleaned them up.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, PodStatus};
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use serde_json::json;
use futures::StreamExt;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// Status patches sent concurrently.
const MAX_IN_FLIGHT: usize = 8;

#[derive(Clone)]
struct Pending {
    namespace: String,
    name: String,
    uid: String,
    status: PodStatus,
    /// Queue position: patches go out oldest first, and a newer status for a pod
    /// already waiting keeps its place (no pod starves under a burst).
    seq: u64,
}

#[derive(Default)]
struct Inner {
    pending: HashMap<String, Pending>,
    next_seq: u64,
    sent: HashMap<String, PodStatus>,
    /// Static pod UID → its mirror pod (namespace, name, mirror UID).
    mirrors: HashMap<String, (String, String, String)>,
    /// Static pods whose mirror still has to be created, with their spec.
    static_pods: HashMap<String, Pod>,
}

/// The annotation that marks a mirror pod, holding the static pod's config hash.
pub const CONFIG_MIRROR: &str = "kubernetes.io/config.mirror";

/// True for mirror pods (the API copy of a static pod): never run from the API.
pub fn is_mirror_pod(pod: &Pod) -> bool {
    pod.metadata.annotations.as_ref().map(|a| a.contains_key(CONFIG_MIRROR)).unwrap_or(false)
}

/// The mirror pod upstream creates for a static pod: same spec, the config
/// annotations plus `kubernetes.io/config.mirror`, owned by the Node.
pub fn mirror_pod(pod: &Pod, node: &str, node_uid: &str) -> Pod {
    let mut m = Pod { metadata: pod.metadata.clone(), spec: pod.spec.clone(), status: None };
    m.metadata.uid = None;
    m.metadata.resource_version = None;
    let hash = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(crate::pod::manifest::CONFIG_HASH).cloned())
        .unwrap_or_else(|| pod.metadata.uid.clone().unwrap_or_default());
    m.metadata.annotations.get_or_insert_with(Default::default).insert(CONFIG_MIRROR.into(), hash);
    m.metadata.owner_references = Some(vec![k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
        api_version: "v1".into(),
        kind: "Node".into(),
        name: node.into(),
        uid: node_uid.into(),
        controller: Some(true),
        ..Default::default()
    }]);
    m
}

/// Cheap to clone; `set` never blocks.
#[derive(Clone, Default)]
pub struct StatusManager {
    inner: Arc<Mutex<Inner>>,
    notify: Arc<Notify>,
    client: Option<kube::Client>,
}

/// True for pods that came from the API server (not a static manifest).
pub fn is_api_pod(pod: &Pod) -> bool {
    pod.metadata.annotations.as_ref().and_then(|a| a.get(crate::pod::manifest::CONFIG_SOURCE)).map(|s| s != "file").unwrap_or(true)
}

/// The strategic merge patch upstream sends: the whole status (conditions merge by
/// type, so the scheduler's own fields survive; the kubelet reports PodScheduled
/// True itself, keeping its transition time), with `$setElementOrder/conditions`
/// and the pod's UID as a precondition.
///
/// Conditions other components own (readiness gates) are left out: they merge by
/// type, so the server keeps its current copy and a controller's concurrent
/// update is never overwritten with an older one.
pub fn status_patch(uid: &str, status: &PodStatus) -> serde_json::Value {
    let mut status = status.clone();
    if let Some(cs) = status.conditions.as_mut() {
        cs.retain(|c| crate::pod::status::KUBELET_CONDITIONS.contains(&c.type_.as_str()));
    }
    let mut v = serde_json::to_value(&status).unwrap_or(json!({}));
    if let (Some(o), Some(conds)) = (v.as_object_mut(), status.conditions.as_ref()) {
        let order: Vec<_> = conds.iter().map(|c| json!({"type": c.type_})).collect();
        o.insert("$setElementOrder/conditions".into(), json!(order));
    }
    json!({ "metadata": { "uid": uid }, "status": v })
}

impl StatusManager {
    /// A manager that talks to the API (or, with `None`, one that drops updates: standalone).
    pub fn new(client: Option<kube::Client>) -> Self {
        Self { client, ..Default::default() }
    }

    /// Queues `status` for `pod` if it differs from the last sent. Static pods report
    /// through their mirror pod, which is created first.
    pub fn set(&self, pod: &Pod, status: &PodStatus) {
        if self.client.is_none() {
            return;
        }
        let Some(uid) = pod.metadata.uid.clone() else { return };
        let Ok(mut g) = self.inner.lock() else { return };
        if !is_api_pod(pod) && !g.mirrors.contains_key(&uid) {
            g.static_pods.insert(uid.clone(), pod.clone());
        }
        if g.sent.get(&uid) == Some(status) {
            g.pending.remove(&uid);
            return;
        }
        let seq = match g.pending.get(&uid) {
            Some(p) => p.seq,
            None => {
                g.next_seq += 1;
                g.next_seq
            }
        };
        g.pending.insert(
            uid.clone(),
            Pending {
                namespace: pod.metadata.namespace.clone().unwrap_or_default(),
                name: pod.metadata.name.clone().unwrap_or_default(),
                uid,
                status: status.clone(),
                seq,
            },
        );
        drop(g);
        self.notify.notify_one();
    }

    /// Finishes a graceful deletion after the node cleaned the pod up: DELETE with
    /// `gracePeriodSeconds=0` and a UID precondition, like upstream.
    pub async fn finish_deletion(&self, pod: &Pod) {
        let Some(client) = &self.client else { return };
        if !is_api_pod(pod) {
            return;
        }
        let (ns, name, uid) = (
            pod.metadata.namespace.clone().unwrap_or_default(),
            pod.metadata.name.clone().unwrap_or_default(),
            pod.metadata.uid.clone().unwrap_or_default(),
        );
        let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
        // The terminal status (containers terminated, not Ready) goes out before the
        // delete, as upstream's status manager does.
        let last = self.inner.lock().ok().and_then(|mut g| g.pending.remove(&uid));
        if let Some(p) = last {
            match api.patch_status(&name, &PatchParams::default(), &Patch::Strategic(&status_patch(&uid, &p.status))).await {
                Ok(_) => debug!(pod = %format!("{ns}/{name}"), "final pod status patched"),
                Err(e) => debug!(pod = %format!("{ns}/{name}"), error = %e, "final pod status not patched"),
            }
        }
        let dp = DeleteParams { grace_period_seconds: Some(0), preconditions: Some(Preconditions { uid: Some(uid.clone()), resource_version: None }), ..Default::default() };
        for attempt in 0..5u32 {
            match api.delete(&name, &dp).await {
                Ok(_) => {
                    info!(pod = %format!("{ns}/{name}"), "pod deleted from the API server");
                    break;
                }
                Err(e) if super::is_not_found(&e) || super::is_conflict(&e) => break,
                Err(e) => {
                    warn!(pod = %format!("{ns}/{name}"), error = %e, attempt, "final pod delete failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                }
            }
        }
        if let Ok(mut g) = self.inner.lock() {
            g.pending.remove(&uid);
            g.sent.remove(&uid);
        }
    }

    /// Forgets a pod (removed from every source); a static pod's mirror is deleted.
    pub fn forget(&self, uid: &str) {
        let mirror = match self.inner.lock() {
            Ok(mut g) => {
                g.pending.remove(uid);
                g.sent.remove(uid);
                g.static_pods.remove(uid);
                g.mirrors.remove(uid)
            }
            Err(_) => None,
        };
        if let (Some((ns, name, muid)), Some(client)) = (mirror, self.client.clone()) {
            tokio::spawn(async move {
                let api: Api<Pod> = Api::namespaced(client, &ns);
                let dp = DeleteParams { grace_period_seconds: Some(0), preconditions: Some(Preconditions { uid: Some(muid), resource_version: None }), ..Default::default() };
                match api.delete(&name, &dp).await {
                    Ok(_) => info!(pod = %format!("{ns}/{name}"), "mirror pod deleted"),
                    Err(e) => debug!(pod = %format!("{ns}/{name}"), error = %e, "mirror pod delete failed"),
                }
            });
        }
    }

    /// Creates (or adopts) the mirror pod of a static pod; returns (ns, name, mirror UID).
    async fn ensure_mirror(client: &kube::Client, node: &str, pod: &Pod) -> Result<(String, String, String), kube::Error> {
        let ns = pod.metadata.namespace.clone().unwrap_or_else(|| "default".into());
        let name = pod.metadata.name.clone().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let hash = pod.metadata.annotations.as_ref().and_then(|a| a.get(crate::pod::manifest::CONFIG_HASH).cloned());
        if let Some(existing) = api.get_opt(&name).await? {
            let same = existing.metadata.annotations.as_ref().and_then(|a| a.get(CONFIG_MIRROR).cloned()) == hash;
            if same {
                return Ok((ns, name, existing.metadata.uid.unwrap_or_default()));
            }
            // An outdated mirror (or a regular pod of that name): replace it, like upstream.
            let dp = DeleteParams { grace_period_seconds: Some(0), ..Default::default() };
            let _ = api.delete(&name, &dp).await;
        }
        let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client.clone());
        let node_uid = nodes.get(node).await?.metadata.uid.unwrap_or_default();
        let created = api.create(&kube::api::PostParams::default(), &mirror_pod(pod, node, &node_uid)).await?;
        info!(pod = %format!("{ns}/{name}"), "mirror pod created");
        Ok((ns, name, created.metadata.uid.unwrap_or_default()))
    }

    /// Patches one pod's status (creating a static pod's mirror first); false when
    /// it must be retried (it is queued again).
    async fn send(&self, client: &kube::Client, node: &str, p: Pending) -> bool {
        // Static pods report on their mirror pod.
        let statik = self.inner.lock().ok().and_then(|g| g.static_pods.get(&p.uid).cloned());
        let mut target_uid = p.uid.clone();
        if let Some(sp) = statik {
            match Self::ensure_mirror(client, node, &sp).await {
                Ok(m) => {
                    if let Ok(mut g) = self.inner.lock() {
                        g.static_pods.remove(&p.uid);
                        g.mirrors.insert(p.uid.clone(), m);
                    }
                }
                Err(e) => {
                    warn!(pod = %format!("{}/{}", p.namespace, p.name), error = %e, "cannot create the mirror pod; will retry");
                    self.requeue(p);
                    return false;
                }
            }
        }
        if let Some((_, _, muid)) = self.inner.lock().ok().and_then(|g| g.mirrors.get(&p.uid).cloned()) {
            target_uid = muid;
        }
        let api: Api<Pod> = Api::namespaced(client.clone(), &p.namespace);
        let patch = status_patch(&target_uid, &p.status);
        match api.patch_status(&p.name, &PatchParams::default(), &Patch::Strategic(&patch)).await {
            Ok(_) => {
                debug!(pod = %format!("{}/{}", p.namespace, p.name), phase = p.status.phase.as_deref().unwrap_or(""), "pod status patched");
                if let Ok(mut g) = self.inner.lock() {
                    g.sent.insert(p.uid.clone(), p.status);
                }
                true
            }
            Err(e) if super::is_not_found(&e) || super::is_conflict(&e) => {
                debug!(pod = %format!("{}/{}", p.namespace, p.name), error = %e, "pod gone or replaced; status dropped");
                true
            }
            Err(e) => {
                warn!(pod = %format!("{}/{}", p.namespace, p.name), error = %e, "pod status update failed; will retry");
                self.requeue(p);
                false
            }
        }
    }

    /// Queues a status again unless a newer one arrived meanwhile.
    fn requeue(&self, p: Pending) {
        if let Ok(mut g) = self.inner.lock() {
            g.pending.entry(p.uid.clone()).or_insert(p);
        }
    }

    /// Sends queued statuses until `cancel`. `node` is this node's name (mirror pods).
    pub async fn run(self, node: String, cancel: CancellationToken) {
        let Some(client) = self.client.clone() else { return };
        let mut backoff = Duration::from_millis(100);
        // Up to MAX_IN_FLIGHT patches at once, one per pod, each started as soon as a
        // slot is free: under a burst, one pod's Ready waits for a slot, not a batch.
        let mut in_flight = futures::stream::FuturesUnordered::new();
        let mut busy: std::collections::HashSet<String> = std::collections::HashSet::new();
        let mut retry_at: Option<tokio::time::Instant> = None;
        loop {
            if retry_at.map(|t| tokio::time::Instant::now() >= t).unwrap_or(true) {
                retry_at = None;
                let free = MAX_IN_FLIGHT.saturating_sub(in_flight.len());
                let start: Vec<Pending> = match self.inner.lock() {
                    Ok(mut g) => {
                        let mut ready: Vec<(u64, &String)> = g.pending.iter().filter(|(u, _)| !busy.contains(*u)).map(|(u, p)| (p.seq, u)).collect();
                        ready.sort_unstable();
                        let uids: Vec<String> = ready.into_iter().take(free).map(|(_, u)| u.clone()).collect();
                        uids.iter().filter_map(|u| g.pending.remove(u)).collect()
                    }
                    Err(_) => return,
                };
                for p in start {
                    busy.insert(p.uid.clone());
                    let (uid, send) = (p.uid.clone(), self.send(&client, &node, p));
                    in_flight.push(async move { (uid, send.await) });
                }
            }
            let retry = async {
                match retry_at {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = self.notify.notified() => {}
                Some((uid, ok)) = in_flight.next(), if !in_flight.is_empty() => {
                    busy.remove(&uid);
                    if ok {
                        backoff = Duration::from_millis(100);
                    } else {
                        retry_at = Some(tokio::time::Instant::now() + backoff);
                        backoff = (backoff * 2).min(Duration::from_secs(10));
                    }
                }
                _ = retry => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::PodCondition;

    #[test]
    fn the_patch_keeps_condition_order_and_pins_the_uid() {
        let s = PodStatus {
            phase: Some("Running".into()),
            conditions: Some(vec![
                PodCondition { type_: "Ready".into(), status: "True".into(), ..Default::default() },
                PodCondition { type_: "PodScheduled".into(), status: "True".into(), ..Default::default() },
            ]),
            ..Default::default()
        };
        let mut with_gate = s.clone();
        with_gate.conditions.as_mut().unwrap().insert(0, PodCondition { type_: "example.com/gate".into(), status: "False".into(), ..Default::default() });
        assert_eq!(status_patch("u-1", &with_gate), status_patch("u-1", &s), "a readiness gate's condition is not ours to send");
        let p = status_patch("u-1", &s);
        assert_eq!(p["metadata"]["uid"], "u-1");
        let conds = p["status"]["conditions"].as_array().unwrap();
        assert_eq!(conds.len(), 2);
        assert_eq!(p["status"]["$setElementOrder/conditions"][1]["type"], "PodScheduled");
    }

    #[test]
    fn mirror_pods_carry_the_config_hash_and_a_node_owner() {
        let mut p = Pod::default();
        p.metadata.name = Some("web-n1".into());
        p.metadata.uid = Some("abc".into());
        p.metadata.annotations = Some([(crate::pod::manifest::CONFIG_HASH.to_string(), "abc".to_string())].into());
        let m = mirror_pod(&p, "n1", "node-uid");
        assert!(is_mirror_pod(&m));
        assert_eq!(m.metadata.annotations.as_ref().unwrap()[CONFIG_MIRROR], "abc");
        assert!(m.metadata.uid.is_none());
        let o = &m.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!((o.kind.as_str(), o.name.as_str(), o.uid.as_str(), o.controller), ("Node", "n1", "node-uid", Some(true)));
    }

    #[test]
    fn static_pods_are_not_api_pods() {
        let mut p = Pod::default();
        assert!(is_api_pod(&p));
        p.metadata.annotations = Some([(crate::pod::manifest::CONFIG_SOURCE.to_string(), "file".to_string())].into());
        assert!(!is_api_pod(&p));
    }
}
