//! RuntimeClasses (pkg/kubelet/runtimeclass): one list+watch of every
//! RuntimeClass; a pod's `runtimeClassName` resolves to the class's handler,
//! which names the containerd runtime its sandbox and containers run under.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use k8s_openapi::api::node::v1::RuntimeClass;
use kube::api::Api;
use tokio_util::sync::CancellationToken;
use tracing::info;

#[derive(Default)]
struct State {
    synced: bool,
    handlers: HashMap<String, String>,
}

/// Cheap to clone; filled by [`run`].
#[derive(Clone, Default)]
pub struct RuntimeClasses {
    state: Arc<RwLock<State>>,
}

impl RuntimeClasses {
    /// LookupRuntimeHandler: the handler of class `name`, or upstream's errors.
    pub fn handler(&self, name: &str) -> Result<String, String> {
        let s = self.state.read().map_err(|_| format!("failed to lookup RuntimeClass {name}: cache poisoned"))?;
        match s.handlers.get(name) {
            Some(h) => Ok(h.clone()),
            None if s.synced => Err(format!("runtimeclass.node.k8s.io {name:?} not found")),
            None => Err(format!("failed to lookup RuntimeClass {name}: runtime classes have not been listed yet")),
        }
    }

    fn set(&self, rcs: impl IntoIterator<Item = RuntimeClass>, replace: bool) {
        if let Ok(mut s) = self.state.write() {
            if replace {
                s.handlers.clear();
                s.synced = true;
            }
            for rc in rcs {
                if let Some(n) = rc.metadata.name.clone() {
                    s.handlers.insert(n, rc.handler);
                }
            }
        }
    }

    fn remove(&self, rc: &RuntimeClass) {
        if let (Ok(mut s), Some(n)) = (self.state.write(), rc.metadata.name.as_ref()) {
            s.handlers.remove(n);
        }
    }
}

/// Lists and watches RuntimeClasses until `cancel`.
pub async fn run(client: kube::Client, classes: RuntimeClasses, cancel: CancellationToken) {
    super::reflect(Api::<RuntimeClass>::all(client), "runtime class", cancel, |change| match change {
        super::Change::Listed(all) => {
            info!(runtime_classes = all.len(), "runtime classes listed");
            classes.set(all, true);
        }
        super::Change::Applied(rc) => classes.set([rc], false),
        super::Change::Deleted(rc) => classes.remove(&rc),
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rc(name: &str, handler: &str) -> RuntimeClass {
        RuntimeClass { metadata: kube::api::ObjectMeta { name: Some(name.into()), ..Default::default() }, handler: handler.into(), ..Default::default() }
    }

    #[test]
    fn classes_resolve_to_handlers_or_upstreams_errors() {
        let c = RuntimeClasses::default();
        assert!(c.handler("gvisor").unwrap_err().contains("have not been listed"));
        c.set([rc("gvisor", "runsc"), rc("fast", "runc")], true);
        assert_eq!(c.handler("gvisor").unwrap(), "runsc");
        assert_eq!(c.handler("nope").unwrap_err(), "runtimeclass.node.k8s.io \"nope\" not found");
        c.remove(&rc("gvisor", ""));
        assert!(c.handler("gvisor").is_err());
    }
}
