//! The ConfigMaps and Secrets that pods on this node reference, kept current by
//! one watch per object (pkg/kubelet/util/manager/watch_based_manager.go, used by
//! pkg/kubelet/{configmap,secret}): registering a pod counts a reference to every
//! object it names; the first reference starts a list+watch of that one name
//! (`fieldSelector=metadata.name=<name>` in its namespace), the last one going
//! away stops it. Reads answer from the watched copy, waiting (bounded) for the
//! first list. Changes are broadcast so pod workers can refresh their volumes.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::api::Api;
use kube::runtime::{watcher, WatchStreamExt};
use kube::ResourceExt;
use thiserror::Error;
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, warn};

/// How long a read waits for an object's first list before giving up. Upstream
/// waits 1 s and relies on the pod being synced again; a pod worker here retries
/// a failed volume setup after a back-off, so a longer first wait saves a retry
/// (and a `FailedMount` event) when the API server is merely slow.
pub const DEFAULT_SYNC_TIMEOUT: Duration = Duration::from_secs(10);

/// Change notifications buffered per subscriber before it lags.
const EVENTS_CAPACITY: usize = 256;

/// Errors reading an object from the cache.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ObjectError {
    /// No registered pod references the object (upstream's wording).
    #[error("object {namespace:?}/{name:?} not registered")]
    NotRegistered { namespace: String, name: String },
    /// The object's watch has not listed it within the bound (upstream's wording;
    /// the watch keeps retrying in the background).
    #[error("failed to sync {kind} cache: timed out waiting for the condition")]
    SyncTimeout { kind: ObjectKind, namespace: String, name: String },
}

pub type Result<T, E = ObjectError> = std::result::Result<T, E>;

/// The kinds of object a pod can reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ObjectKind {
    ConfigMap,
    Secret,
}

impl fmt::Display for ObjectKind {
    /// Upstream's group-resource names (`corev1.Resource("configmap")`), as in its messages.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ObjectKind::ConfigMap => "configmap",
            ObjectKind::Secret => "secret",
        })
    }
}

/// One referenced object.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    pub kind: ObjectKind,
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn new(kind: ObjectKind, namespace: &str, name: &str) -> Self {
        Self { kind, namespace: namespace.to_string(), name: name.to_string() }
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

/// Every ConfigMap and Secret the pod references, in its namespace: `configMap` and
/// `secret` volumes, `projected` configMap/secret sources, `env[].valueFrom`
/// key refs and `envFrom[]` refs of all containers (init and ephemeral too), and
/// `imagePullSecrets` (pkg/api/v1/pod/util.go `VisitPodSecretNames`/`VisitPodConfigmapNames`,
/// for the sources rkubelet knows).
pub fn pod_references(pod: &Pod) -> BTreeSet<ObjectKey> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let mut out = BTreeSet::new();
    let mut add = |kind: ObjectKind, name: &str| {
        if !name.is_empty() {
            out.insert(ObjectKey::new(kind, ns, name));
        }
    };
    let Some(spec) = pod.spec.as_ref() else { return out };
    for s in spec.image_pull_secrets.iter().flatten() {
        add(ObjectKind::Secret, &s.name);
    }
    for v in spec.volumes.iter().flatten() {
        if let Some(c) = &v.config_map {
            add(ObjectKind::ConfigMap, &c.name);
        }
        if let Some(name) = v.secret.as_ref().and_then(|s| s.secret_name.as_deref()) {
            add(ObjectKind::Secret, name);
        }
        for s in v.projected.iter().flat_map(|p| p.sources.iter().flatten()) {
            if let Some(c) = &s.config_map {
                add(ObjectKind::ConfigMap, &c.name);
            }
            if let Some(sec) = &s.secret {
                add(ObjectKind::Secret, &sec.name);
            }
        }
    }
    let containers = spec.init_containers.iter().flatten().chain(&spec.containers).map(|c| (&c.env, &c.env_from));
    let ephemeral = spec.ephemeral_containers.iter().flatten().map(|c| (&c.env, &c.env_from));
    for (env, env_from) in containers.chain(ephemeral) {
        for src in env.iter().flatten().filter_map(|e| e.value_from.as_ref()) {
            if let Some(k) = &src.config_map_key_ref {
                add(ObjectKind::ConfigMap, &k.name);
            }
            if let Some(k) = &src.secret_key_ref {
                add(ObjectKind::Secret, &k.name);
            }
        }
        for e in env_from.iter().flatten() {
            if let Some(r) = &e.config_map_ref {
                add(ObjectKind::ConfigMap, &r.name);
            }
            if let Some(r) = &e.secret_ref {
                add(ObjectKind::Secret, &r.name);
            }
        }
    }
    out
}

/// Which objects start and stop being referenced after a registry change.
#[derive(Debug, Default, PartialEq, Eq)]
struct Delta {
    /// First reference: start watching.
    start: Vec<ObjectKey>,
    /// Last reference gone: stop watching.
    stop: Vec<ObjectKey>,
}

/// The reference counts: which pod references what (pure bookkeeping, no I/O).
#[derive(Debug, Default)]
struct Registry {
    pods: HashMap<String, BTreeSet<ObjectKey>>,
    counts: HashMap<ObjectKey, usize>,
}

impl Registry {
    /// Sets the pod's references (replacing what it referenced before).
    fn set(&mut self, uid: &str, refs: BTreeSet<ObjectKey>) -> Delta {
        let old = self.pods.get(uid).cloned().unwrap_or_default();
        if old == refs {
            return Delta::default();
        }
        let mut d = Delta::default();
        for k in refs.difference(&old) {
            let n = self.counts.entry(k.clone()).or_insert(0);
            *n += 1;
            if *n == 1 {
                d.start.push(k.clone());
            }
        }
        for k in old.difference(&refs) {
            d.stop.extend(self.release(k));
        }
        if refs.is_empty() {
            self.pods.remove(uid);
        } else {
            self.pods.insert(uid.to_string(), refs);
        }
        d
    }

    /// Forgets the pod.
    fn remove(&mut self, uid: &str) -> Delta {
        let refs = self.pods.remove(uid).unwrap_or_default();
        Delta { start: Vec::new(), stop: refs.iter().filter_map(|k| self.release(k)).collect() }
    }

    /// Drops one reference; the key when it was the last.
    fn release(&mut self, k: &ObjectKey) -> Option<ObjectKey> {
        let n = self.counts.get_mut(k)?;
        *n = n.saturating_sub(1);
        if *n > 0 {
            return None;
        }
        self.counts.remove(k);
        Some(k.clone())
    }
}

/// A watched object as stored.
#[derive(Debug, Clone, PartialEq)]
enum Object {
    ConfigMap(Arc<ConfigMap>),
    Secret(Arc<Secret>),
}

impl Object {
    fn name(&self) -> String {
        match self {
            Object::ConfigMap(o) => o.name_any(),
            Object::Secret(o) => o.name_any(),
        }
    }

    fn resource_version(&self) -> Option<&str> {
        match self {
            Object::ConfigMap(o) => o.metadata.resource_version.as_deref(),
            Object::Secret(o) => o.metadata.resource_version.as_deref(),
        }
    }

    /// `immutable: true`: it can never change again, so its watch can stop.
    fn is_immutable(&self) -> bool {
        match self {
            Object::ConfigMap(o) => o.immutable == Some(true),
            Object::Secret(o) => o.immutable == Some(true),
        }
    }
}

impl From<ConfigMap> for Object {
    fn from(o: ConfigMap) -> Self {
        Object::ConfigMap(Arc::new(o))
    }
}

impl From<Secret> for Object {
    fn from(o: Secret) -> Self {
        Object::Secret(Arc::new(o))
    }
}

/// Same object version (both absent, or both with the same resourceVersion).
fn same_version(a: &Option<Object>, b: &Option<Object>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => a.resource_version().is_some() && a.resource_version() == b.resource_version(),
        _ => false,
    }
}

/// What one object's watch has established so far.
#[derive(Debug, Clone, Default, PartialEq)]
enum Store {
    /// Not listed yet.
    #[default]
    Unsynced,
    /// Listed: the object, or `None` when it does not exist.
    Synced(Option<Object>),
}

/// What an event did to the visible store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    None,
    /// The first list completed.
    FirstSync,
    /// A synced object was created, modified or deleted.
    Updated,
}

/// The reflector of one object: applies watcher events to a single-object store.
/// A re-list (`Init` … `InitDone`) is buffered and replaces the store at the end,
/// so readers keep the last known copy during an outage.
#[derive(Debug)]
struct Reflector {
    name: String,
    store: Store,
    relist: Option<Option<Object>>,
}

impl Reflector {
    fn new(name: &str) -> Self {
        Self { name: name.to_string(), store: Store::Unsynced, relist: None }
    }

    fn step(&mut self, ev: watcher::Event<Object>) -> Change {
        let next = match ev {
            watcher::Event::Init => {
                self.relist = Some(None);
                return Change::None;
            }
            watcher::Event::InitApply(o) => {
                if o.name() == self.name {
                    self.relist = Some(Some(o));
                }
                return Change::None;
            }
            watcher::Event::InitDone => self.relist.take().unwrap_or(None),
            watcher::Event::Apply(o) if o.name() == self.name => Some(o),
            watcher::Event::Delete(o) if o.name() == self.name => None,
            watcher::Event::Apply(_) | watcher::Event::Delete(_) => return Change::None,
        };
        let change = match &self.store {
            Store::Unsynced => Change::FirstSync,
            Store::Synced(cur) if same_version(cur, &next) => Change::None,
            Store::Synced(_) => Change::Updated,
        };
        self.store = Store::Synced(next);
        change
    }

    /// Synced on an immutable object: nothing more can happen.
    fn is_final(&self) -> bool {
        matches!(&self.store, Store::Synced(Some(o)) if o.is_immutable())
    }
}

fn event_into<K: Into<Object>>(ev: watcher::Event<K>) -> watcher::Event<Object> {
    match ev {
        watcher::Event::Apply(o) => watcher::Event::Apply(o.into()),
        watcher::Event::Delete(o) => watcher::Event::Delete(o.into()),
        watcher::Event::Init => watcher::Event::Init,
        watcher::Event::InitApply(o) => watcher::Event::InitApply(o.into()),
        watcher::Event::InitDone => watcher::Event::InitDone,
    }
}

/// A watched object: its store as the watch task publishes it, and the task's stop.
struct Entry {
    store: watch::Receiver<Store>,
    cancel: CancellationToken,
}

#[derive(Default)]
struct State {
    registry: Registry,
    entries: HashMap<ObjectKey, Entry>,
}

struct Inner {
    client: kube::Client,
    sync_timeout: Duration,
    state: Mutex<State>,
    events: broadcast::Sender<ObjectKey>,
    /// Parent of every watch task's token: dropping the cache stops them all.
    cancel: CancellationToken,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// The watch-based cache of referenced ConfigMaps and Secrets. Cheap to clone.
#[derive(Clone)]
pub struct ObjectCache {
    inner: Arc<Inner>,
}

impl ObjectCache {
    /// A cache reading through `client`, waiting up to [`DEFAULT_SYNC_TIMEOUT`] for a first list.
    pub fn new(client: kube::Client) -> Self {
        Self::with_sync_timeout(client, DEFAULT_SYNC_TIMEOUT)
    }

    /// A cache whose reads wait at most `sync_timeout` for an object's first list.
    pub fn with_sync_timeout(client: kube::Client, sync_timeout: Duration) -> Self {
        let (events, _) = broadcast::channel(EVENTS_CAPACITY);
        Self {
            inner: Arc::new(Inner { client, sync_timeout, state: Mutex::new(State::default()), events, cancel: CancellationToken::new() }),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // The state stays consistent across a panic elsewhere (no partial updates), so a
        // poisoned lock is still usable.
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers (or re-registers, after a spec change) the objects the pod
    /// references, starting watches for newly referenced ones and stopping those
    /// no longer referenced by any pod. Cheap when nothing changed; never blocks on I/O.
    pub fn register_pod(&self, pod: &Pod) {
        let Some(uid) = pod.metadata.uid.as_deref() else {
            debug!(pod = ?pod.metadata.name, "pod without a UID; its objects are not registered");
            return;
        };
        let refs = pod_references(pod);
        let mut st = self.state();
        let delta = st.registry.set(uid, refs);
        self.apply(&mut st, delta);
    }

    /// Drops the pod's references; objects nobody references any more stop being watched.
    pub fn unregister_pod(&self, uid: &str) {
        let mut st = self.state();
        let delta = st.registry.remove(uid);
        self.apply(&mut st, delta);
    }

    fn apply(&self, st: &mut State, delta: Delta) {
        for key in delta.stop {
            if let Some(e) = st.entries.remove(&key) {
                debug!(object = %key, "object no longer referenced; stopping its watch");
                e.cancel.cancel();
            }
        }
        for key in delta.start {
            let entry = self.start_watch(&key);
            if let Some(old) = st.entries.insert(key, entry) {
                old.cancel.cancel();
            }
        }
    }

    fn start_watch(&self, key: &ObjectKey) -> Entry {
        let (tx, rx) = watch::channel(Store::Unsynced);
        let cancel = self.inner.cancel.child_token();
        let (client, events, k) = (self.inner.client.clone(), self.inner.events.clone(), key.clone());
        let task = match key.kind {
            ObjectKind::ConfigMap => run_watch(Api::<ConfigMap>::namespaced(client, &key.namespace), k, tx, events, cancel.clone()).boxed(),
            ObjectKind::Secret => run_watch(Api::<Secret>::namespaced(client, &key.namespace), k, tx, events, cancel.clone()).boxed(),
        };
        match tokio::runtime::Handle::try_current() {
            Ok(h) => {
                debug!(object = %key, "watching object");
                h.spawn(task);
            }
            // Reads of this object will report it not registered.
            Err(e) => error!(object = %key, error = %e, "no async runtime to watch the object on"),
        }
        Entry { store: rx, cancel }
    }

    async fn get(&self, key: &ObjectKey) -> Result<Option<Object>> {
        let not_registered = || ObjectError::NotRegistered { namespace: key.namespace.clone(), name: key.name.clone() };
        let mut rx = match self.state().entries.get(key) {
            Some(e) => e.store.clone(),
            None => return Err(not_registered()),
        };
        let synced = tokio::time::timeout(self.inner.sync_timeout, rx.wait_for(|s| matches!(s, Store::Synced(_))))
            .await
            .map(|r| r.map(|s| s.clone()));
        match synced {
            Ok(Ok(Store::Synced(o))) => Ok(o),
            Ok(Ok(Store::Unsynced)) => Ok(None),
            // The watch ended before its first list: unregistered meanwhile.
            Ok(Err(_)) => Err(not_registered()),
            Err(_) => {
                warn!(object = %key, timeout = ?self.inner.sync_timeout, "object not listed in time");
                Err(ObjectError::SyncTimeout { kind: key.kind, namespace: key.namespace.clone(), name: key.name.clone() })
            }
        }
    }

    /// The ConfigMap from the cache: `Ok(None)` when it does not exist. Waits (bounded)
    /// for the first list of a newly registered object.
    pub async fn config_map(&self, namespace: &str, name: &str) -> Result<Option<ConfigMap>> {
        Ok(match self.get(&ObjectKey::new(ObjectKind::ConfigMap, namespace, name)).await? {
            Some(Object::ConfigMap(o)) => Some((*o).clone()),
            _ => None,
        })
    }

    /// The Secret from the cache: `Ok(None)` when it does not exist. Waits (bounded)
    /// for the first list of a newly registered object.
    pub async fn secret(&self, namespace: &str, name: &str) -> Result<Option<Secret>> {
        Ok(match self.get(&ObjectKey::new(ObjectKind::Secret, namespace, name)).await? {
            Some(Object::Secret(o)) => Some((*o).clone()),
            _ => None,
        })
    }

    /// Notifications of watched objects being created, modified or deleted after
    /// their first list. A receiver that lags (`RecvError::Lagged`) should assume
    /// anything changed.
    pub fn subscribe(&self) -> broadcast::Receiver<ObjectKey> {
        self.inner.events.subscribe()
    }

    /// The objects currently watched (for logs and tests).
    pub fn watched(&self) -> BTreeSet<ObjectKey> {
        self.state().entries.keys().cloned().collect()
    }
}

/// One object's reflector task: list+watch of its name (re-listing on 410 and
/// backing off on errors, as kube-runtime's watcher does) until `cancel`, or until
/// an immutable object has been seen.
async fn run_watch<K>(api: Api<K>, key: ObjectKey, tx: watch::Sender<Store>, events: broadcast::Sender<ObjectKey>, cancel: CancellationToken)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + fmt::Debug + Send + 'static + Into<Object>,
{
    let cfg = watcher::Config::default().fields(&format!("metadata.name={}", key.name));
    let mut stream = watcher(api, cfg).default_backoff().boxed();
    let mut reflector = Reflector::new(&key.name);
    loop {
        let ev = tokio::select! {
            _ = cancel.cancelled() => return,
            ev = stream.next() => ev,
        };
        match ev {
            Some(Ok(ev)) => {
                let change = reflector.step(event_into(ev));
                if change == Change::None {
                    continue;
                }
                tx.send_replace(reflector.store.clone());
                let exists = matches!(&reflector.store, Store::Synced(Some(_)));
                if change == Change::Updated {
                    debug!(object = %key, exists, "watched object changed");
                    // No subscribers is fine.
                    let _ = events.send(key.clone());
                } else {
                    debug!(object = %key, exists, "watched object listed");
                }
                if reflector.is_final() {
                    debug!(object = %key, "object is immutable; stopped watching it");
                    return;
                }
            }
            Some(Err(e)) => warn!(object = %key, error = %e, "object watch failed; retrying with back-off"),
            None => {
                // The watcher never ends on its own; keep the last copy until unregistered.
                warn!(object = %key, "object watch ended");
                cancel.cancelled().await;
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        ConfigMapEnvSource, ConfigMapKeySelector, ConfigMapProjection, ConfigMapVolumeSource, Container, EnvFromSource, EnvVar, EnvVarSource,
        EphemeralContainer, LocalObjectReference, PodSpec, ProjectedVolumeSource, SecretEnvSource, SecretKeySelector, SecretProjection,
        SecretVolumeSource, Volume, VolumeProjection,
    };

    fn cm(kind: ObjectKind, name: &str) -> ObjectKey {
        ObjectKey::new(kind, "ns", name)
    }

    fn keys(items: &[(ObjectKind, &str)]) -> BTreeSet<ObjectKey> {
        items.iter().map(|(k, n)| cm(*k, n)).collect()
    }

    fn env_ref(cm: Option<&str>, secret: Option<&str>) -> EnvVar {
        EnvVar {
            name: "V".into(),
            value_from: Some(EnvVarSource {
                config_map_key_ref: cm.map(|n| ConfigMapKeySelector { name: n.into(), key: "k".into(), ..Default::default() }),
                secret_key_ref: secret.map(|n| SecretKeySelector { name: n.into(), key: "k".into(), ..Default::default() }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn env_from(cm: Option<&str>, secret: Option<&str>) -> EnvFromSource {
        EnvFromSource {
            config_map_ref: cm.map(|n| ConfigMapEnvSource { name: n.into(), ..Default::default() }),
            secret_ref: secret.map(|n| SecretEnvSource { name: n.into(), ..Default::default() }),
            ..Default::default()
        }
    }

    fn pod(uid: &str, spec: PodSpec) -> Pod {
        let mut p = Pod::default();
        p.metadata.name = Some("p".into());
        p.metadata.namespace = Some("ns".into());
        p.metadata.uid = Some(uid.into());
        p.spec = Some(spec);
        p
    }

    fn config_map(name: &str, rv: &str, immutable: bool) -> Object {
        let mut c = ConfigMap::default();
        c.metadata.name = Some(name.into());
        c.metadata.resource_version = Some(rv.into());
        c.immutable = immutable.then_some(true);
        c.into()
    }

    #[test]
    fn references_cover_volumes_projections_env_env_from_and_pull_secrets() {
        use ObjectKind::{ConfigMap as C, Secret as S};
        let spec = PodSpec {
            image_pull_secrets: Some(vec![LocalObjectReference { name: "pull".into() }]),
            volumes: Some(vec![
                Volume { name: "a".into(), config_map: Some(ConfigMapVolumeSource { name: "cm-vol".into(), ..Default::default() }), ..Default::default() },
                Volume { name: "b".into(), secret: Some(SecretVolumeSource { secret_name: Some("sec-vol".into()), ..Default::default() }), ..Default::default() },
                Volume {
                    name: "c".into(),
                    projected: Some(ProjectedVolumeSource {
                        sources: Some(vec![
                            VolumeProjection { config_map: Some(ConfigMapProjection { name: "cm-proj".into(), ..Default::default() }), ..Default::default() },
                            VolumeProjection { secret: Some(SecretProjection { name: "sec-proj".into(), ..Default::default() }), ..Default::default() },
                        ]),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                Volume { name: "d".into(), empty_dir: Some(Default::default()), ..Default::default() },
            ]),
            init_containers: Some(vec![Container { name: "i".into(), env: Some(vec![env_ref(Some("cm-init-env"), None)]), ..Default::default() }]),
            containers: vec![Container {
                name: "c".into(),
                env: Some(vec![env_ref(None, Some("sec-env")), EnvVar { name: "plain".into(), value: Some("x".into()), ..Default::default() }]),
                env_from: Some(vec![env_from(Some("cm-env-from"), None), env_from(None, Some("sec-env-from"))]),
                ..Default::default()
            }],
            ephemeral_containers: Some(vec![EphemeralContainer { name: "e".into(), env_from: Some(vec![env_from(Some("cm-debug"), None)]), ..Default::default() }]),
            ..Default::default()
        };
        assert_eq!(
            pod_references(&pod("u", spec)),
            keys(&[
                (C, "cm-vol"),
                (C, "cm-proj"),
                (C, "cm-init-env"),
                (C, "cm-env-from"),
                (C, "cm-debug"),
                (S, "pull"),
                (S, "sec-vol"),
                (S, "sec-proj"),
                (S, "sec-env"),
                (S, "sec-env-from"),
            ])
        );
    }

    #[test]
    fn references_are_in_the_pod_namespace_default_when_unset_and_skip_empty_names() {
        let spec = PodSpec {
            volumes: Some(vec![
                Volume { name: "a".into(), config_map: Some(ConfigMapVolumeSource { name: "x".into(), ..Default::default() }), ..Default::default() },
                Volume { name: "b".into(), secret: Some(SecretVolumeSource { secret_name: None, ..Default::default() }), ..Default::default() },
                Volume { name: "c".into(), config_map: Some(ConfigMapVolumeSource { name: String::new(), ..Default::default() }), ..Default::default() },
            ]),
            ..Default::default()
        };
        let mut p = pod("u", spec);
        p.metadata.namespace = None;
        assert_eq!(pod_references(&p), [ObjectKey::new(ObjectKind::ConfigMap, "default", "x")].into());
        assert!(pod_references(&Pod::default()).is_empty());
    }

    #[test]
    fn same_name_different_kind_are_different_objects() {
        let spec = PodSpec { containers: vec![Container { name: "c".into(), env: Some(vec![env_ref(Some("x"), Some("x"))]), ..Default::default() }], ..Default::default() };
        assert_eq!(pod_references(&pod("u", spec)), keys(&[(ObjectKind::ConfigMap, "x"), (ObjectKind::Secret, "x")]));
    }

    #[test]
    fn registry_starts_on_first_reference_and_stops_on_last() {
        use ObjectKind::ConfigMap as C;
        let mut r = Registry::default();
        let d = r.set("a", keys(&[(C, "x"), (C, "y")]));
        assert_eq!(d, Delta { start: vec![cm(C, "x"), cm(C, "y")], stop: vec![] });
        // A second pod sharing x starts only z.
        assert_eq!(r.set("b", keys(&[(C, "x"), (C, "z")])), Delta { start: vec![cm(C, "z")], stop: vec![] });
        // Re-registering unchanged is a no-op.
        assert_eq!(r.set("a", keys(&[(C, "x"), (C, "y")])), Delta::default());
        // a stops referencing y (only a had it) and x (b still has it).
        assert_eq!(r.set("a", BTreeSet::new()), Delta { start: vec![], stop: vec![cm(C, "y")] });
        assert!(r.counts.contains_key(&cm(C, "x")) && !r.counts.contains_key(&cm(C, "y")));
        assert_eq!(r.remove("b"), Delta { start: vec![], stop: vec![cm(C, "x"), cm(C, "z")] });
        assert!(r.counts.is_empty() && r.pods.is_empty());
        // Unknown pods are harmless.
        assert_eq!(r.remove("nope"), Delta::default());
    }

    #[test]
    fn registry_spec_change_swaps_references() {
        use ObjectKind::{ConfigMap as C, Secret as S};
        let mut r = Registry::default();
        r.set("a", keys(&[(C, "old"), (S, "keep")]));
        let d = r.set("a", keys(&[(C, "new"), (S, "keep")]));
        assert_eq!(d, Delta { start: vec![cm(C, "new")], stop: vec![cm(C, "old")] });
        assert_eq!(r.remove("a"), Delta { start: vec![], stop: vec![cm(C, "new"), cm(S, "keep")] });
    }

    #[test]
    fn reflector_syncs_on_init_done_and_reports_later_changes() {
        let mut r = Reflector::new("x");
        assert_eq!(r.step(watcher::Event::Init), Change::None);
        assert_eq!(r.step(watcher::Event::InitApply(config_map("x", "1", false))), Change::None);
        assert_eq!(r.store, Store::Unsynced);
        assert_eq!(r.step(watcher::Event::InitDone), Change::FirstSync);
        assert_eq!(r.store, Store::Synced(Some(config_map("x", "1", false))));
        assert_eq!(r.step(watcher::Event::Apply(config_map("x", "2", false))), Change::Updated);
        // Another name (cannot happen with the field selector) is ignored.
        assert_eq!(r.step(watcher::Event::Apply(config_map("y", "3", false))), Change::None);
        assert_eq!(r.step(watcher::Event::Delete(config_map("x", "4", false))), Change::Updated);
        assert_eq!(r.store, Store::Synced(None));
        assert_eq!(r.step(watcher::Event::Apply(config_map("x", "5", false))), Change::Updated);
    }

    #[test]
    fn reflector_first_list_of_a_missing_object_is_synced_empty() {
        let mut r = Reflector::new("x");
        r.step(watcher::Event::Init);
        assert_eq!(r.step(watcher::Event::InitDone), Change::FirstSync);
        assert_eq!(r.store, Store::Synced(None));
    }

    #[test]
    fn reflector_relist_keeps_the_old_copy_until_done_and_reports_only_real_changes() {
        let mut r = Reflector::new("x");
        r.step(watcher::Event::Init);
        r.step(watcher::Event::InitApply(config_map("x", "1", false)));
        r.step(watcher::Event::InitDone);
        // A re-list (after 410 or an outage) with the same version: nothing to report.
        r.step(watcher::Event::Init);
        assert_eq!(r.store, Store::Synced(Some(config_map("x", "1", false))));
        r.step(watcher::Event::InitApply(config_map("x", "1", false)));
        assert_eq!(r.step(watcher::Event::InitDone), Change::None);
        // A re-list that no longer finds it: deleted while we were away.
        r.step(watcher::Event::Init);
        assert_eq!(r.step(watcher::Event::InitDone), Change::Updated);
        assert_eq!(r.store, Store::Synced(None));
    }

    #[test]
    fn reflector_is_final_on_an_immutable_object() {
        let mut r = Reflector::new("x");
        r.step(watcher::Event::Init);
        r.step(watcher::Event::InitApply(config_map("x", "1", false)));
        r.step(watcher::Event::InitDone);
        assert!(!r.is_final());
        r.step(watcher::Event::Apply(config_map("x", "2", true)));
        assert!(r.is_final());
    }

    #[test]
    fn errors_use_upstream_wording() {
        let e = ObjectError::NotRegistered { namespace: "ns".into(), name: "x".into() };
        assert_eq!(e.to_string(), r#"object "ns"/"x" not registered"#);
        let e = ObjectError::SyncTimeout { kind: ObjectKind::ConfigMap, namespace: "ns".into(), name: "x".into() };
        assert_eq!(e.to_string(), "failed to sync configmap cache: timed out waiting for the condition");
        let e = ObjectError::SyncTimeout { kind: ObjectKind::Secret, namespace: "ns".into(), name: "x".into() };
        assert_eq!(e.to_string(), "failed to sync secret cache: timed out waiting for the condition");
    }
}
