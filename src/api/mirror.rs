//! Mirror pods (pkg/kubelet/pod/mirror_client.go, and the mirror parts of
//! syncPod and HandlePodCleanups): the API copy of each static pod, through which
//! `kubectl get pods` shows it and its status is reported.
//!
//! What the node knows of the mirror pods comes from its own pod watch (they are
//! bound to it), never from a GET: the Node authorizer forbids a node to read a
//! pod that is not yet bound to it, so a GET of a mirror that does not exist is
//! Forbidden, not NotFound. One task reconciles, by pod full name:
//! * a static pod without a mirror gets one (`create`; AlreadyExists means the
//!   watch has not shown it yet);
//! * a mirror whose `kubernetes.io/config.mirror` hash is not the static pod's,
//!   or that is being deleted (a user's `kubectl delete pod`), is deleted with
//!   grace 0 and a UID precondition, then created again;
//! * a mirror of no static pod (once both the manifests and the watch have
//!   listed) is deleted, unless its static pod is still terminating.
//!
//! Each of these requests is one a node may make under the Node authorizer and
//! NodeRestriction: create a mirror bound to itself and owned by its Node, delete
//! a pod bound to it.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, PostParams, Preconditions};
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// The annotation that marks a mirror pod, holding the static pod's config hash.
pub const CONFIG_MIRROR: &str = "kubernetes.io/config.mirror";

/// A pod's full name: (namespace, name).
pub type FullName = (String, String);

/// True for mirror pods (the API copy of a static pod): never run from the API.
pub fn is_mirror_pod(pod: &Pod) -> bool {
    pod.metadata.annotations.as_ref().is_some_and(|a| a.contains_key(CONFIG_MIRROR))
}

pub fn full_name(pod: &Pod) -> FullName {
    (pod.metadata.namespace.clone().unwrap_or_else(|| "default".into()), pod.metadata.name.clone().unwrap_or_default())
}

/// The static pod's hash (`kubernetes.io/config.hash`; its UID when absent).
fn static_hash(pod: &Pod) -> String {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(crate::pod::manifest::CONFIG_HASH).cloned())
        .unwrap_or_else(|| pod.metadata.uid.clone().unwrap_or_default())
}

/// The mirror pod upstream creates for a static pod: same metadata and spec, the
/// config annotations plus `kubernetes.io/config.mirror`, one controller owner
/// reference to the Node (NodeRestriction requires it, with the Node's UID).
pub fn mirror_pod(pod: &Pod, node: &str, node_uid: &str) -> Pod {
    let mut m = Pod { metadata: pod.metadata.clone(), spec: pod.spec.clone(), status: None };
    m.metadata.uid = None;
    m.metadata.resource_version = None;
    m.metadata.annotations.get_or_insert_with(Default::default).insert(CONFIG_MIRROR.into(), static_hash(pod));
    m.metadata.owner_references = Some(vec![OwnerReference {
        api_version: "v1".into(),
        kind: "Node".into(),
        name: node.into(),
        uid: node_uid.into(),
        controller: Some(true),
        ..Default::default()
    }]);
    m
}

/// A mirror pod as the watch shows it.
#[derive(Debug, Clone, PartialEq)]
struct Mirror {
    uid: String,
    hash: String,
    deleting: bool,
}

impl Mirror {
    fn of(pod: &Pod) -> Option<Mirror> {
        Some(Mirror {
            uid: pod.metadata.uid.clone()?,
            hash: pod.metadata.annotations.as_ref()?.get(CONFIG_MIRROR)?.clone(),
            deleting: pod.metadata.deletion_timestamp.is_some(),
        })
    }
}

#[derive(Default)]
struct State {
    /// The static pods the manifests want, by full name; `None` until they are listed.
    wanted: Option<HashMap<FullName, Pod>>,
    /// Static pods whose workers still run (terminating after their manifest went), by UID.
    held: HashMap<String, FullName>,
    /// The mirror pods bound to this node as the watch last listed them, by full
    /// name; `None` until it listed.
    seen: Option<HashMap<FullName, Mirror>>,
    /// `seen` with this node's own requests the watch has not shown yet applied.
    existing: Option<HashMap<FullName, Mirror>>,
    /// What this node's own creates and deletes left, until the watch shows it
    /// (a watch snapshot taken before would undo them and repeat the request).
    expected: HashMap<FullName, (Expect, Instant)>,
}

/// The state of a full name after this node's own request.
#[derive(Debug, Clone, PartialEq)]
enum Expect {
    Created(Mirror),
    Deleted(String),
}

/// How long an expectation waits for the watch to show it.
const EXPECT_FOR: Duration = Duration::from_secs(10);

impl State {
    /// Applies the expectations the watch has not caught up with to `existing`,
    /// and drops those it has.
    fn overlay(&mut self, now: Instant) {
        let Some(seen) = self.seen.as_ref() else { return };
        let mut existing = seen.clone();
        self.expected.retain(|name, (e, at)| {
            let seen = seen.get(name);
            let caught_up = match e {
                Expect::Created(m) => seen.is_some_and(|s| s.uid == m.uid),
                Expect::Deleted(uid) => seen.is_none_or(|s| s.uid != *uid),
            };
            if caught_up || now.duration_since(*at) > EXPECT_FOR {
                return false;
            }
            match e {
                Expect::Created(m) => existing.insert(name.clone(), m.clone()),
                Expect::Deleted(_) => existing.remove(name),
            };
            true
        });
        self.existing = Some(existing);
    }

    fn expect(&mut self, name: &FullName, e: Expect) {
        self.expected.insert(name.clone(), (e, Instant::now()));
        self.overlay(Instant::now());
    }
}

/// Cheap to clone. Inputs come from the agent (manifests), the pod watch
/// (mirrors) and the status manager (static pods still running); [`Self::run`]
/// does the requests.
#[derive(Clone)]
pub struct MirrorPods {
    state: Arc<Mutex<State>>,
    notify: Arc<Notify>,
    /// Bumped whenever the mirror set changes, so statuses find their target.
    changed: Arc<watch::Sender<u64>>,
}

impl Default for MirrorPods {
    fn default() -> Self {
        Self { state: Default::default(), notify: Default::default(), changed: Arc::new(watch::channel(0).0) }
    }
}

/// One request the reconciler decided on.
#[derive(Debug, Clone, PartialEq)]
enum Action {
    Create(FullName),
    /// Delete the mirror with this UID; `recreate` when a static pod wants it back.
    Delete { name: FullName, uid: String, recreate: bool },
}

impl MirrorPods {
    /// The static pods the manifests want now (the whole set).
    pub fn set_static(&self, pods: &[Pod]) {
        let wanted = pods.iter().map(|p| (full_name(p), p.clone())).collect();
        if let Ok(mut s) = self.state.lock() {
            s.wanted = Some(wanted);
        }
        self.notify.notify_one();
    }

    /// The mirror pods the pod watch lists now (the whole set).
    pub fn observe(&self, mirrors: &[Pod]) {
        let existing: HashMap<FullName, Mirror> = mirrors.iter().filter_map(|p| Some((full_name(p), Mirror::of(p)?))).collect();
        let changed = match self.state.lock() {
            Ok(mut s) => {
                let before = s.existing.clone();
                s.seen = Some(existing);
                s.overlay(Instant::now());
                s.existing != before
            }
            Err(_) => false,
        };
        if changed {
            self.changed.send_modify(|g| *g += 1);
            self.notify.notify_one();
        }
    }

    /// A static pod's worker runs: its mirror stays while it terminates.
    pub fn hold(&self, pod: &Pod) {
        if let (Some(uid), Ok(mut s)) = (pod.metadata.uid.clone(), self.state.lock()) {
            s.held.insert(uid, full_name(pod));
        }
    }

    /// A static pod's worker is gone: its mirror may go too.
    pub fn release(&self, uid: &str) {
        let was = self.state.lock().ok().and_then(|mut s| s.held.remove(uid));
        if was.is_some() {
            self.notify.notify_one();
        }
    }

    /// The UID of the mirror pod that reports `pod`'s status: the mirror of the
    /// same full name whose hash is the static pod's, not being deleted.
    pub fn target(&self, pod: &Pod) -> Option<String> {
        let s = self.state.lock().ok()?;
        let m = s.existing.as_ref()?.get(&full_name(pod))?;
        (m.hash == static_hash(pod) && !m.deleting).then(|| m.uid.clone())
    }

    /// Resolves when the mirror set changed since the last call.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// What to do now (pure, under the lock).
    fn plan(s: &State) -> Vec<Action> {
        let (Some(wanted), Some(existing)) = (&s.wanted, &s.existing) else { return Vec::new() };
        let mut out = Vec::new();
        let mut names: Vec<&FullName> = wanted.keys().collect();
        names.sort();
        for name in names {
            let hash = static_hash(&wanted[name]);
            match existing.get(name) {
                Some(m) if m.hash == hash && !m.deleting => {}
                Some(m) => out.push(Action::Delete { name: name.clone(), uid: m.uid.clone(), recreate: true }),
                None => out.push(Action::Create(name.clone())),
            }
        }
        let held: HashSet<&FullName> = s.held.values().collect();
        let mut orphans: Vec<(&FullName, &Mirror)> = existing.iter().filter(|(n, _)| !wanted.contains_key(*n) && !held.contains(n)).collect();
        orphans.sort_by(|a, b| a.0.cmp(b.0));
        for (name, m) in orphans {
            out.push(Action::Delete { name: name.clone(), uid: m.uid.clone(), recreate: false });
        }
        out
    }

    /// Reconciles until `cancel`; `node_uid` is the registered Node's UID (mirror
    /// pods are owned by it, so nothing is created before registration).
    pub async fn run(self, client: kube::Client, node: String, mut node_uid: watch::Receiver<Option<String>>, cancel: CancellationToken) {
        let mut backoff = Duration::from_secs(1);
        let mut retry_at: Option<tokio::time::Instant> = None;
        loop {
            let uid = node_uid.borrow().clone();
            if let Some(uid) = uid {
                let actions = match self.state.lock() {
                    Ok(s) => Self::plan(&s),
                    Err(_) => return,
                };
                let mut failed = false;
                for a in actions {
                    if cancel.is_cancelled() {
                        return;
                    }
                    failed |= !self.act(&client, &node, &uid, a).await;
                }
                retry_at = failed.then(|| tokio::time::Instant::now() + backoff);
                backoff = if failed { (backoff * 2).min(Duration::from_secs(60)) } else { Duration::from_secs(1) };
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = self.notify.notified() => {}
                r = node_uid.changed() => if r.is_err() { return },
                _ = super::sleep_until(retry_at) => {}
            }
        }
    }

    /// Does one action; false when it failed and must be retried.
    async fn act(&self, client: &kube::Client, node: &str, node_uid: &str, action: Action) -> bool {
        match action {
            Action::Create(name) => self.create(client, node, node_uid, &name).await,
            Action::Delete { name, uid, recreate } => {
                let api: Api<Pod> = Api::namespaced(client.clone(), &name.0);
                let dp = DeleteParams { grace_period_seconds: Some(0), preconditions: Some(Preconditions { uid: Some(uid.clone()), resource_version: None }), ..Default::default() };
                let pod = format!("{}/{}", name.0, name.1);
                match api.delete(&name.1, &dp).await {
                    Ok(_) => info!(pod = %pod, mirror_uid = %uid, "mirror pod deleted"),
                    // Gone already, or replaced (the UID precondition failed).
                    Err(e) if super::is_not_found(&e) || super::is_conflict(&e) => debug!(pod = %pod, error = %e, "mirror pod already gone"),
                    Err(e) => {
                        warn!(pod = %pod, error = %e, "cannot delete the mirror pod; will retry");
                        return false;
                    }
                }
                self.forget_existing(&name, &uid);
                // Upstream creates the replacement in the same sync.
                !recreate || self.create(client, node, node_uid, &name).await
            }
        }
    }

    async fn create(&self, client: &kube::Client, node: &str, node_uid: &str, name: &FullName) -> bool {
        let Some(pod) = self.state.lock().ok().and_then(|s| s.wanted.as_ref()?.get(name).cloned()) else { return true };
        let api: Api<Pod> = Api::namespaced(client.clone(), &name.0);
        let pod_name = format!("{}/{}", name.0, name.1);
        match api.create(&PostParams::default(), &mirror_pod(&pod, node, node_uid)).await {
            Ok(created) => {
                info!(pod = %pod_name, mirror_uid = created.metadata.uid.as_deref().unwrap_or(""), "mirror pod created");
                // Until the watch shows it: so that the next pass does not create it again.
                if let (Some(m), Ok(mut s)) = (Mirror::of(&created), self.state.lock()) {
                    s.expect(name, Expect::Created(m));
                }
                self.changed.send_modify(|g| *g += 1);
                true
            }
            // The watch has not shown the existing one yet: the next pass compares it.
            Err(e) if matches!(&e, kube::Error::Api(s) if s.code == 409) => {
                debug!(pod = %pod_name, "mirror pod exists already; waiting for the watch");
                true
            }
            Err(e) => {
                warn!(pod = %pod_name, error = %e, "cannot create the mirror pod; will retry");
                false
            }
        }
    }

    fn forget_existing(&self, name: &FullName, uid: &str) {
        if let Ok(mut s) = self.state.lock() {
            s.expect(name, Expect::Deleted(uid.to_string()));
        }
        self.changed.send_modify(|g| *g += 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn static_pod(name: &str, hash: &str) -> Pod {
        let mut p = Pod::default();
        p.metadata.name = Some(name.into());
        p.metadata.namespace = Some("default".into());
        p.metadata.uid = Some(format!("uid-{hash}"));
        p.metadata.annotations = Some([(crate::pod::manifest::CONFIG_HASH.to_string(), hash.to_string())].into());
        p
    }

    fn mirror(name: &str, hash: &str, uid: &str, deleting: bool) -> Pod {
        let mut m = mirror_pod(&static_pod(name, hash), "n1", "node-uid");
        m.metadata.uid = Some(uid.into());
        if deleting {
            m.metadata.deletion_timestamp = Some(crate::pod::k8s_time(chrono::Utc::now()));
        }
        m
    }

    fn n(name: &str) -> FullName {
        ("default".into(), name.into())
    }

    #[test]
    fn mirror_pods_carry_the_config_hash_and_a_controller_node_owner() {
        let m = mirror_pod(&static_pod("web-n1", "abc"), "n1", "node-uid");
        assert!(is_mirror_pod(&m));
        assert_eq!(m.metadata.annotations.as_ref().unwrap()[CONFIG_MIRROR], "abc");
        assert!(m.metadata.uid.is_none());
        let o = &m.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!((o.api_version.as_str(), o.kind.as_str(), o.name.as_str(), o.uid.as_str(), o.controller, o.block_owner_deletion), ("v1", "Node", "n1", "node-uid", Some(true), None));
    }

    #[test]
    fn nothing_is_done_before_both_sides_listed() {
        let m = MirrorPods::default();
        m.set_static(&[static_pod("a", "1")]);
        assert!(MirrorPods::plan(&m.state.lock().unwrap()).is_empty());
        let m = MirrorPods::default();
        m.observe(&[mirror("a", "1", "m1", false)]);
        assert!(MirrorPods::plan(&m.state.lock().unwrap()).is_empty(), "no orphan deletes before the manifests are listed");
    }

    #[test]
    fn missing_stale_deleting_and_orphaned_mirrors() {
        let m = MirrorPods::default();
        m.set_static(&[static_pod("ok", "1"), static_pod("missing", "2"), static_pod("stale", "3"), static_pod("deleting", "4"), static_pod("held-new", "5")]);
        m.observe(&[mirror("ok", "1", "m-ok", false), mirror("stale", "old", "m-stale", false), mirror("deleting", "4", "m-del", true), mirror("orphan", "9", "m-orphan", false), mirror("terminating", "8", "m-term", false)]);
        m.hold(&static_pod("terminating", "8"));
        let plan = MirrorPods::plan(&m.state.lock().unwrap());
        assert_eq!(
            plan,
            vec![
                Action::Delete { name: n("deleting"), uid: "m-del".into(), recreate: true },
                Action::Create(n("held-new")),
                Action::Create(n("missing")),
                Action::Delete { name: n("stale"), uid: "m-stale".into(), recreate: true },
                Action::Delete { name: n("orphan"), uid: "m-orphan".into(), recreate: false },
            ]
        );
        // Status goes to a mirror of the same hash that is not being deleted.
        assert_eq!(m.target(&static_pod("ok", "1")).as_deref(), Some("m-ok"));
        assert_eq!(m.target(&static_pod("stale", "3")), None);
        assert_eq!(m.target(&static_pod("deleting", "4")), None);
        assert_eq!(m.target(&static_pod("terminating", "8")).as_deref(), Some("m-term"));
        m.release("uid-8");
        assert!(MirrorPods::plan(&m.state.lock().unwrap()).contains(&Action::Delete { name: n("terminating"), uid: "m-term".into(), recreate: false }));
    }

    #[test]
    fn own_requests_are_not_undone_by_an_older_watch_snapshot() {
        let m = MirrorPods::default();
        m.set_static(&[static_pod("a", "1"), static_pod("b", "2")]);
        m.observe(&[mirror("b", "2", "m-b", false)]);
        let created = Mirror::of(&mirror("a", "1", "m-a", false)).unwrap();
        m.state.lock().unwrap().expect(&n("a"), Expect::Created(created));
        m.forget_existing(&n("b"), "m-b");
        // A snapshot from before both requests: neither is repeated.
        m.observe(&[mirror("b", "2", "m-b", false)]);
        assert_eq!(MirrorPods::plan(&m.state.lock().unwrap()), vec![Action::Create(n("b"))], "b was deleted by us, a created");
        assert_eq!(m.target(&static_pod("a", "1")).as_deref(), Some("m-a"));
        // The watch catches up; later snapshots are the truth again.
        m.observe(&[mirror("a", "1", "m-a", false)]);
        assert!(m.state.lock().unwrap().expected.is_empty());
        m.observe(&[]);
        assert_eq!(MirrorPods::plan(&m.state.lock().unwrap()), vec![Action::Create(n("a")), Action::Create(n("b"))]);
    }

    #[test]
    fn a_changed_mirror_set_is_announced() {
        let m = MirrorPods::default();
        let rx = m.subscribe();
        m.observe(&[mirror("a", "1", "m1", false)]);
        assert!(rx.has_changed().unwrap());
        let mut rx = m.subscribe();
        rx.mark_unchanged();
        m.observe(&[mirror("a", "1", "m1", false)]);
        assert!(!rx.has_changed().unwrap(), "the same set again is no change");
    }
}
