//! RuntimeClasses (pkg/kubelet/runtimeclass): one list+watch of every
//! RuntimeClass; a pod's `runtimeClassName` resolves to the class's handler,
//! which names the containerd runtime its sandbox and containers run under.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use futures::StreamExt;
use k8s_openapi::api::node::v1::RuntimeClass;
use kube::api::Api;
use kube::runtime::{watcher, WatchStreamExt};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

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
    let api: Api<RuntimeClass> = Api::all(client);
    let mut stream = watcher(api, watcher::Config::default()).default_backoff().boxed();
    let mut initial: Vec<RuntimeClass> = Vec::new();
    loop {
        let ev = tokio::select! {
            _ = cancel.cancelled() => return,
            ev = stream.next() => ev,
        };
        match ev {
            None => return,
            Some(Ok(watcher::Event::Init)) => initial.clear(),
            Some(Ok(watcher::Event::InitApply(rc))) => initial.push(rc),
            Some(Ok(watcher::Event::InitDone)) => {
                info!(runtime_classes = initial.len(), "runtime classes listed");
                classes.set(std::mem::take(&mut initial), true);
            }
            Some(Ok(watcher::Event::Apply(rc))) => classes.set([rc], false),
            Some(Ok(watcher::Event::Delete(rc))) => classes.remove(&rc),
            Some(Err(e)) => warn!(error = %e, "runtime class watch failed; retrying with back-off"),
        }
    }
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
