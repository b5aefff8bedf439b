//! The pod status manager (pkg/kubelet/status): the latest status of each API pod
//! is queued and patched onto `pods/status` by one task, coalescing updates,
//! skipping unchanged ones and retrying across outages. Also finishes the deletion
//! of pods once the node has cleaned them up. Static pods report on their mirror
//! pod ([`super::mirror`]), once one with their hash exists.

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

use super::mirror::MirrorPods;

/// Status patches sent concurrently.
const MAX_IN_FLIGHT: usize = 8;

#[derive(Clone)]
struct Pending {
    namespace: String,
    name: String,
    uid: String,
    status: PodStatus,
    /// Condition types to delete ([`status_patch`]).
    gone: Vec<String>,
    /// Queue position: patches go out oldest first, and a newer status for a pod
    /// already waiting keeps its place (no pod starves under a burst).
    seq: u64,
}

#[derive(Default)]
struct Inner {
    pending: HashMap<String, Pending>,
    next_seq: u64,
    /// The last status patched per pod UID, with the UID it went to (a static
    /// pod's mirror changes when it is recreated).
    sent: HashMap<String, (String, PodStatus)>,
    /// Static pods with a live worker and their latest status, by UID: queued
    /// again when their mirror pod appears or changes.
    statics: HashMap<String, (Pod, PodStatus)>,
}

/// Cheap to clone; `set` never blocks.
#[derive(Clone, Default)]
pub struct StatusManager {
    inner: Arc<Mutex<Inner>>,
    notify: Arc<Notify>,
    client: Option<kube::Client>,
    mirrors: MirrorPods,
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
///
/// `gone` are condition types the kubelet set before and no longer does (the
/// resize conditions): the patch deletes them.
pub fn status_patch(uid: &str, status: &PodStatus, gone: &[String]) -> serde_json::Value {
    let mut status = status.clone();
    if let Some(cs) = status.conditions.as_mut() {
        cs.retain(crate::pod::status::sent_by_kubelet);
    }
    let mut v = serde_json::to_value(&status).unwrap_or(json!({}));
    if let (Some(o), Some(conds)) = (v.as_object_mut(), status.conditions.as_ref()) {
        let order: Vec<_> = conds.iter().map(|c| json!({"type": c.type_})).collect();
        o.insert("$setElementOrder/conditions".into(), json!(order));
        // Conditions that went away (a finished resize's): deleted by type.
        if let Some(list) = o.get_mut("conditions").and_then(|c| c.as_array_mut()) {
            list.extend(gone.iter().map(|t| json!({"type": t, "$patch": "delete"})));
        }
    }
    json!({ "metadata": { "uid": uid }, "status": v })
}

impl StatusManager {
    /// A manager that talks to the API (or, with `None`, one that drops updates: standalone).
    pub fn new(client: Option<kube::Client>) -> Self {
        Self { client, ..Default::default() }
    }

    /// The mirror pods of this node's static pods.
    pub fn mirrors(&self) -> &MirrorPods {
        &self.mirrors
    }

    /// Queues `status` for `pod` if it differs from the last sent. Static pods report
    /// through their mirror pod, once it exists.
    pub fn set(&self, pod: &Pod, status: &PodStatus) {
        if self.client.is_none() {
            return;
        }
        let Some(uid) = pod.metadata.uid.clone() else { return };
        let target = if is_api_pod(pod) {
            Some(uid.clone())
        } else {
            self.mirrors.hold(pod);
            self.mirrors.target(pod)
        };
        let Ok(mut g) = self.inner.lock() else { return };
        if !is_api_pod(pod) {
            g.statics.insert(uid.clone(), (pod.clone(), status.clone()));
        }
        if Self::queue(&mut g, pod, target, status) {
            drop(g);
            self.notify.notify_one();
        }
    }

    /// Queues a status unless it went to `target` already; true when queued. No
    /// target (a static pod without its mirror yet) queues nothing.
    fn queue(g: &mut Inner, pod: &Pod, target: Option<String>, status: &PodStatus) -> bool {
        let Some(uid) = pod.metadata.uid.clone() else { return false };
        let Some(target) = target else {
            g.pending.remove(&uid);
            return false;
        };
        if g.sent.get(&uid).is_some_and(|(t, s)| *t == target && s == status) {
            g.pending.remove(&uid);
            return false;
        }
        let seq = match g.pending.get(&uid) {
            Some(p) => p.seq,
            None => {
                g.next_seq += 1;
                g.next_seq
            }
        };
        let (namespace, name) = super::mirror::full_name(pod);
        // Resize conditions the server has (as the watch or our last patch shows) but this status does not.
        let had = pod.status.iter().chain(g.sent.get(&uid).map(|(_, s)| s)).flat_map(|s| s.conditions.iter().flatten());
        let mut gone: Vec<String> = had
            .map(|c| c.type_.clone())
            .filter(|t| (t == crate::pod::resize::PENDING || t == crate::pod::resize::IN_PROGRESS) && !status.conditions.iter().flatten().any(|c| c.type_ == *t))
            .collect();
        gone.sort();
        gone.dedup();
        g.pending.insert(uid.clone(), Pending { namespace, name, uid, status: status.clone(), gone, seq });
        true
    }

    /// Queues the latest status of every static pod whose mirror changed.
    fn requeue_statics(&self) {
        let Ok(mut g) = self.inner.lock() else { return };
        let statics: Vec<(Pod, PodStatus)> = g.statics.values().cloned().collect();
        let mut any = false;
        for (pod, status) in statics {
            any |= Self::queue(&mut g, &pod, self.mirrors.target(&pod), &status);
        }
        drop(g);
        if any {
            self.notify.notify_one();
        }
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
            match api.patch_status(&name, &PatchParams::default(), &Patch::Strategic(&status_patch(&uid, &p.status, &p.gone))).await {
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

    /// Forgets a pod whose worker is gone; a static pod's mirror may then go too.
    pub fn forget(&self, uid: &str) {
        if let Ok(mut g) = self.inner.lock() {
            g.pending.remove(uid);
            g.sent.remove(uid);
            g.statics.remove(uid);
        }
        self.mirrors.release(uid);
    }

    /// Patches one pod's status (a static pod's on its mirror); false when it
    /// must be retried (it is queued again).
    async fn send(&self, client: &kube::Client, p: Pending) -> bool {
        let statik = self.inner.lock().ok().and_then(|g| g.statics.get(&p.uid).map(|(pod, _)| pod.clone()));
        let target_uid = match &statik {
            None => p.uid.clone(),
            Some(pod) => match self.mirrors.target(pod) {
                Some(t) => t,
                // The mirror went meanwhile: queued again when the next one appears.
                None => return true,
            },
        };
        let api: Api<Pod> = Api::namespaced(client.clone(), &p.namespace);
        let patch = status_patch(&target_uid, &p.status, &p.gone);
        match api.patch_status(&p.name, &PatchParams::default(), &Patch::Strategic(&patch)).await {
            Ok(_) => {
                debug!(pod = %format!("{}/{}", p.namespace, p.name), phase = p.status.phase.as_deref().unwrap_or(""), "pod status patched");
                if let Ok(mut g) = self.inner.lock() {
                    g.sent.insert(p.uid.clone(), (target_uid, p.status));
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

    /// Sends queued statuses until `cancel`.
    pub async fn run(self, cancel: CancellationToken) {
        let Some(client) = self.client.clone() else { return };
        let mut mirrors_changed = self.mirrors.subscribe();
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
                    let (uid, send) = (p.uid.clone(), self.send(&client, p));
                    in_flight.push(async move { (uid, send.await) });
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = self.notify.notified() => {}
                r = mirrors_changed.changed() => {
                    if r.is_ok() {
                        self.requeue_statics();
                    }
                }
                Some((uid, ok)) = in_flight.next(), if !in_flight.is_empty() => {
                    busy.remove(&uid);
                    if ok {
                        backoff = Duration::from_millis(100);
                    } else {
                        retry_at = Some(tokio::time::Instant::now() + backoff);
                        backoff = (backoff * 2).min(Duration::from_secs(10));
                    }
                }
                _ = super::sleep_until(retry_at) => {}
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
        assert_eq!(status_patch("u-1", &with_gate, &[]), status_patch("u-1", &s, &[]), "a readiness gate's condition is not ours to send");
        let p = status_patch("u-1", &s, &[]);
        assert_eq!(p["metadata"]["uid"], "u-1");
        let conds = p["status"]["conditions"].as_array().unwrap();
        assert_eq!(conds.len(), 2);
        assert_eq!(p["status"]["$setElementOrder/conditions"][1]["type"], "PodScheduled");
        // A finished resize's condition is deleted by type, after ours.
        let p = status_patch("u-1", &s, &["PodResizeInProgress".to_string()]);
        assert_eq!(p["status"]["conditions"][2], json!({"type": "PodResizeInProgress", "$patch": "delete"}));
        assert_eq!(p["status"]["$setElementOrder/conditions"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn static_pods_are_not_api_pods() {
        let mut p = Pod::default();
        assert!(is_api_pod(&p));
        p.metadata.annotations = Some([(crate::pod::manifest::CONFIG_SOURCE.to_string(), "file".to_string())].into());
        assert!(!is_api_pod(&p));
    }
}
