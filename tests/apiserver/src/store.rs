//! Object storage: one map of JSON objects keyed by (resource, namespace, name), one global
//! resourceVersion counter bumped by every write, and a bounded history of changes that
//! watches replay from (like the watch cache in front of etcd).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::broadcast;

use crate::meta;

/// Kind of a change, as watch events name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChangeType {
    Added,
    Modified,
    Deleted,
}

impl ChangeType {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeType::Added => "ADDED",
            ChangeType::Modified => "MODIFIED",
            ChangeType::Deleted => "DELETED",
        }
    }
}

/// One write, as stored in the history and broadcast to watchers.
#[derive(Debug, Clone)]
pub struct Change {
    pub rv: u64,
    /// Qualified resource (`pods`, `leases.coordination.k8s.io`).
    pub resource: String,
    pub namespace: String,
    pub name: String,
    pub kind: ChangeType,
    /// The object after the change (for deletes: the last state, carrying the delete's RV).
    pub object: Arc<Value>,
    /// The object before the change (modifications and deletes).
    pub prev: Option<Arc<Value>>,
}

type Key = (String, String, String);

/// The object store.
pub struct Store {
    rv: u64,
    objects: BTreeMap<Key, Arc<Value>>,
    history: VecDeque<Arc<Change>>,
    history_cap: usize,
    /// Every change with an RV above this is in `history`.
    floor: u64,
    tx: broadcast::Sender<Arc<Change>>,
}

/// What `Store::snapshot` saves to disk.
#[derive(Serialize, Deserialize)]
pub struct Snapshot {
    pub resource_version: u64,
    pub objects: Vec<(String, String, String, Value)>,
}

/// Result of subscribing a watch from a resourceVersion.
pub struct Subscription {
    pub replay: Vec<Arc<Change>>,
    pub rx: broadcast::Receiver<Arc<Change>>,
    pub current_rv: u64,
}

impl Store {
    pub fn new(history_cap: usize) -> Self {
        let (tx, _) = broadcast::channel(8192);
        Store {
            rv: 1,
            objects: BTreeMap::new(),
            history: VecDeque::new(),
            history_cap: history_cap.max(1),
            floor: 1,
            tx,
        }
    }

    pub fn resource_version(&self) -> u64 {
        self.rv
    }

    /// Oldest resourceVersion a watch may resume from.
    pub fn floor(&self) -> u64 {
        self.floor
    }

    pub fn get(&self, resource: &str, ns: &str, name: &str) -> Option<Arc<Value>> {
        self.objects
            .get(&(resource.to_string(), ns.to_string(), name.to_string()))
            .cloned()
    }

    /// All objects of a resource, in key order (namespace, name), optionally in one namespace.
    pub fn list(&self, resource: &str, ns: Option<&str>) -> Vec<Arc<Value>> {
        let lo = (
            resource.to_string(),
            ns.unwrap_or("").to_string(),
            String::new(),
        );
        self.objects
            .range(lo..)
            .take_while(|((r, n, _), _)| r == resource && ns.is_none_or(|ns| ns == n))
            .map(|(_, v)| v.clone())
            .collect()
    }

    fn record(&mut self, change: Change) {
        let change = Arc::new(change);
        self.history.push_back(change.clone());
        while self.history.len() > self.history_cap {
            if let Some(old) = self.history.pop_front() {
                self.floor = old.rv;
            }
        }
        let _ = self.tx.send(change);
    }

    fn bump(&mut self, obj: &mut Value) -> u64 {
        self.rv += 1;
        meta::meta_mut(obj).insert("resourceVersion".into(), Value::String(self.rv.to_string()));
        self.rv
    }

    /// Store a new object (caller checked it does not exist). Sets its resourceVersion.
    pub fn insert(&mut self, resource: &str, ns: &str, name: &str, mut obj: Value) -> Arc<Value> {
        let rv = self.bump(&mut obj);
        let obj = Arc::new(obj);
        self.objects
            .insert((resource.into(), ns.into(), name.into()), obj.clone());
        self.record(Change {
            rv,
            resource: resource.into(),
            namespace: ns.into(),
            name: name.into(),
            kind: ChangeType::Added,
            object: obj.clone(),
            prev: None,
        });
        obj
    }

    /// Replace an existing object. Sets its resourceVersion.
    pub fn replace(&mut self, resource: &str, ns: &str, name: &str, mut obj: Value) -> Arc<Value> {
        let rv = self.bump(&mut obj);
        let obj = Arc::new(obj);
        let prev = self
            .objects
            .insert((resource.into(), ns.into(), name.into()), obj.clone());
        self.record(Change {
            rv,
            resource: resource.into(),
            namespace: ns.into(),
            name: name.into(),
            kind: if prev.is_some() {
                ChangeType::Modified
            } else {
                ChangeType::Added
            },
            object: obj.clone(),
            prev,
        });
        obj
    }

    /// Remove an object; returns its last state carrying the delete's resourceVersion.
    pub fn remove(&mut self, resource: &str, ns: &str, name: &str) -> Option<Arc<Value>> {
        let prev = self
            .objects
            .remove(&(resource.into(), ns.into(), name.into()))?;
        let mut last = (*prev).clone();
        let rv = self.bump(&mut last);
        let last = Arc::new(last);
        self.record(Change {
            rv,
            resource: resource.into(),
            namespace: ns.into(),
            name: name.into(),
            kind: ChangeType::Deleted,
            object: last.clone(),
            prev: Some(prev),
        });
        Some(last)
    }

    /// Subscribe to changes after `from` (None: from now). Errors with the floor if `from`
    /// is older than the history.
    pub fn subscribe(&self, from: Option<u64>) -> Result<Subscription, u64> {
        let replay = match from {
            Some(rv) if rv < self.floor => return Err(self.floor),
            Some(rv) => self.history.iter().filter(|c| c.rv > rv).cloned().collect(),
            None => Vec::new(),
        };
        Ok(Subscription {
            replay,
            rx: self.tx.subscribe(),
            current_rv: self.rv,
        })
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            resource_version: self.rv,
            objects: self
                .objects
                .iter()
                .map(|((r, n, m), v)| (r.clone(), n.clone(), m.clone(), (**v).clone()))
                .collect(),
        }
    }

    /// Load a snapshot (history starts empty: watches from older RVs get 410 Gone).
    pub fn restore(&mut self, snap: Snapshot) {
        self.rv = snap.resource_version.max(self.rv);
        self.floor = self.rv;
        self.history.clear();
        self.objects = snap
            .objects
            .into_iter()
            .map(|(r, n, m, v)| ((r, n, m), Arc::new(v)))
            .collect();
    }
}
