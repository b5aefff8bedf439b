//! Services for container environments (the kubelet's service lister and
//! pkg/kubelet/envvars): one list+watch of every Service, shared by all pods,
//! kept as just what the variables need (cluster IP and ports).
//!
//! A pod gets the variables of `default/kubernetes` always, and of every other
//! Service of its namespace when `enableServiceLinks` is not false
//! (`getServiceEnvVarMap`): `<NAME>_SERVICE_HOST`, `<NAME>_SERVICE_PORT`,
//! `<NAME>_SERVICE_PORT_<PORTNAME>` and the docker-link `<NAME>_PORT*` set.
//! Services without a cluster IP (headless, ExternalName) give none.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use k8s_openapi::api::core::v1::Service;
use kube::api::Api;
use tokio_util::sync::CancellationToken;
use tracing::info;

/// The services the kubelet always links, from the `default` namespace.
const MASTER_SERVICES: &[&str] = &["kubernetes"];

/// What a Service contributes to the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    cluster_ip: String,
    /// (name, port, protocol) in spec order.
    ports: Vec<(String, i32, String)>,
}

impl Entry {
    fn of(s: &Service) -> Option<Entry> {
        let spec = s.spec.as_ref()?;
        let ip = spec.cluster_ip.clone().filter(|ip| !ip.is_empty() && ip != "None")?;
        let ports = spec.ports.iter().flatten().map(|p| (p.name.clone().unwrap_or_default(), p.port, p.protocol.clone().unwrap_or_else(|| "TCP".into()))).collect::<Vec<_>>();
        (!ports.is_empty()).then_some(Entry { cluster_ip: ip, ports })
    }
}

#[derive(Default)]
struct State {
    /// Set once the first list completed (a pod from the API waits for it).
    synced: bool,
    /// namespace → name → entry.
    services: HashMap<String, BTreeMap<String, Entry>>,
}

/// Cheap to clone; filled by [`run`].
#[derive(Clone, Default)]
pub struct Services {
    state: Arc<RwLock<State>>,
}

/// Upstream's error while the services were never listed.
pub const NOT_SYNCED: &str = "services have not yet been read at least once, cannot construct envvars";

impl Services {
    /// Whether the services have been listed at least once.
    pub fn synced(&self) -> bool {
        self.state.read().map(|s| s.synced).unwrap_or(false)
    }

    /// The service variables of a pod in `namespace`.
    pub fn env(&self, namespace: &str, enable_service_links: bool) -> BTreeMap<String, String> {
        let Ok(s) = self.state.read() else { return BTreeMap::new() };
        let mut chosen: BTreeMap<&str, &Entry> = BTreeMap::new();
        if enable_service_links {
            for (name, e) in s.services.get(namespace).into_iter().flatten() {
                chosen.insert(name, e);
            }
        }
        // A service of the pod's namespace named like a master service wins (upstream
        // adds a master service only where no name is taken).
        if let Some(default) = s.services.get("default") {
            for name in MASTER_SERVICES {
                if let Some(e) = default.get(*name) {
                    chosen.entry(name).or_insert(e);
                }
            }
        }
        let mut out = BTreeMap::new();
        for (name, e) in chosen {
            from_service(name, e, &mut out);
        }
        out
    }

    fn replace(&self, all: Vec<Service>) {
        let mut services: HashMap<String, BTreeMap<String, Entry>> = HashMap::new();
        for s in &all {
            if let (Some(ns), Some(name), Some(e)) = (s.metadata.namespace.clone(), s.metadata.name.clone(), Entry::of(s)) {
                services.entry(ns).or_default().insert(name, e);
            }
        }
        if let Ok(mut st) = self.state.write() {
            st.services = services;
            st.synced = true;
        }
    }

    fn apply(&self, s: &Service, deleted: bool) {
        let (Some(ns), Some(name)) = (s.metadata.namespace.clone(), s.metadata.name.clone()) else { return };
        let Ok(mut st) = self.state.write() else { return };
        match Entry::of(s).filter(|_| !deleted) {
            Some(e) => {
                st.services.entry(ns).or_default().insert(name, e);
            }
            None => {
                if let Some(m) = st.services.get_mut(&ns) {
                    m.remove(&name);
                }
            }
        }
    }
}

/// `FOO-BAR` → `FOO_BAR`, as makeEnvVariableName.
fn var_name(s: &str) -> String {
    s.replace('-', "_").to_uppercase()
}

/// envvars.FromServices for one service.
fn from_service(name: &str, e: &Entry, out: &mut BTreeMap<String, String>) {
    let prefix = var_name(name);
    out.insert(format!("{prefix}_SERVICE_HOST"), e.cluster_ip.clone());
    let port_var = format!("{prefix}_SERVICE_PORT");
    out.insert(port_var.clone(), e.ports[0].1.to_string());
    for (pname, port, _) in &e.ports {
        if !pname.is_empty() {
            out.insert(format!("{port_var}_{}", var_name(pname)), port.to_string());
        }
    }
    // Docker-compatible link variables.
    let host = if e.cluster_ip.contains(':') { format!("[{}]", e.cluster_ip) } else { e.cluster_ip.clone() };
    for (i, (_, port, proto)) in e.ports.iter().enumerate() {
        let url = format!("{}://{host}:{port}", proto.to_lowercase());
        if i == 0 {
            out.insert(format!("{prefix}_PORT"), url.clone());
        }
        let pp = format!("{prefix}_PORT_{port}_{}", proto.to_uppercase());
        out.insert(pp.clone(), url);
        out.insert(format!("{pp}_PROTO"), proto.to_lowercase());
        out.insert(format!("{pp}_PORT"), port.to_string());
        out.insert(format!("{pp}_ADDR"), e.cluster_ip.clone());
    }
}

/// Lists and watches every Service until `cancel`.
pub async fn run(client: kube::Client, services: Services, cancel: CancellationToken) {
    super::reflect(Api::<Service>::all(client), "service", cancel, |change| match change {
        super::Change::Listed(all) => {
            if !services.synced() {
                info!(services = all.len(), "services listed");
            }
            services.replace(all);
        }
        super::Change::Applied(s) => services.apply(&s, false),
        super::Change::Deleted(s) => services.apply(&s, true),
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(ns: &str, name: &str, ip: &str, ports: &[(&str, i32, &str)]) -> Service {
        serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": ns, "name": name},
            "spec": {"clusterIP": ip, "ports": ports.iter().map(|(n, p, proto)| {
                let mut v = serde_json::json!({"port": p, "protocol": proto});
                if !n.is_empty() { v["name"] = serde_json::json!(n); }
                v
            }).collect::<Vec<_>>()}
        }))
        .unwrap()
    }

    fn services() -> Services {
        let s = Services::default();
        s.replace(vec![
            svc("default", "kubernetes", "10.96.0.1", &[("https", 443, "TCP")]),
            svc("default", "other", "10.96.0.9", &[("", 80, "TCP")]),
            svc("app", "my-db", "10.96.3.4", &[("", 5432, "TCP"), ("metrics", 9187, "TCP"), ("dns", 53, "UDP")]),
            svc("app", "headless", "None", &[("", 80, "TCP")]),
            svc("app", "v6", "fd00::10", &[("", 8080, "TCP")]),
        ]);
        s
    }

    #[test]
    fn the_kubernetes_service_is_always_there() {
        let env = services().env("app", false);
        let want: BTreeMap<String, String> = [
            ("KUBERNETES_SERVICE_HOST", "10.96.0.1"),
            ("KUBERNETES_SERVICE_PORT", "443"),
            ("KUBERNETES_SERVICE_PORT_HTTPS", "443"),
            ("KUBERNETES_PORT", "tcp://10.96.0.1:443"),
            ("KUBERNETES_PORT_443_TCP", "tcp://10.96.0.1:443"),
            ("KUBERNETES_PORT_443_TCP_PROTO", "tcp"),
            ("KUBERNETES_PORT_443_TCP_PORT", "443"),
            ("KUBERNETES_PORT_443_TCP_ADDR", "10.96.0.1"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(env, want);
    }

    #[test]
    fn service_links_bring_the_namespaces_services() {
        let env = services().env("app", true);
        assert_eq!(env["MY_DB_SERVICE_HOST"], "10.96.3.4");
        assert_eq!(env["MY_DB_SERVICE_PORT"], "5432");
        assert_eq!(env["MY_DB_SERVICE_PORT_METRICS"], "9187");
        assert_eq!(env["MY_DB_SERVICE_PORT_DNS"], "53");
        assert_eq!(env["MY_DB_PORT"], "tcp://10.96.3.4:5432");
        assert_eq!(env["MY_DB_PORT_53_UDP"], "udp://10.96.3.4:53");
        assert_eq!(env["MY_DB_PORT_53_UDP_PROTO"], "udp");
        assert_eq!(env["V6_PORT"], "tcp://[fd00::10]:8080");
        assert_eq!(env["V6_SERVICE_HOST"], "fd00::10");
        assert!(!env.keys().any(|k| k.starts_with("HEADLESS_")), "no cluster IP, no variables");
        assert!(!env.keys().any(|k| k.starts_with("OTHER_")), "other namespaces' services are not linked");
        assert!(env.contains_key("KUBERNETES_SERVICE_HOST"));
        let default = services().env("default", true);
        assert_eq!(default["OTHER_SERVICE_PORT"], "80");
        assert_eq!(default["KUBERNETES_SERVICE_PORT"], "443");
    }

    #[test]
    fn watch_events_update_the_set() {
        let s = services();
        s.apply(&svc("app", "late", "10.96.7.7", &[("", 1, "TCP")]), false);
        assert_eq!(s.env("app", true)["LATE_SERVICE_HOST"], "10.96.7.7");
        s.apply(&svc("app", "late", "10.96.7.7", &[("", 1, "TCP")]), true);
        assert!(!s.env("app", true).contains_key("LATE_SERVICE_HOST"));
        assert!(s.synced());
        assert!(!Services::default().synced());
    }
}
