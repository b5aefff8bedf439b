//! The kubelet's own Prometheus metrics, under upstream's names
//! (pkg/kubelet/metrics, pkg/kubelet/prober/prober_manager.go): `/metrics` and
//! `/metrics/probes` of the kubelet API. Encoded by prometheus-client (OpenMetrics
//! text, which Prometheus scrapes like the classic format).

use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Upstream's buckets for `kubelet_pod_start_duration_seconds`.
const POD_START_BUCKETS: [f64; 25] = [0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 20.0, 30.0, 45.0, 60.0, 120.0, 180.0, 240.0, 300.0, 360.0, 480.0, 600.0, 900.0, 1200.0, 1800.0, 2700.0, 3600.0];
/// Prometheus' default buckets (upstream's runtime operation histogram uses exponential
/// buckets from 5 ms; these cover the same range).
const OP_BUCKETS: [f64; 11] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeLabel {
    node: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabel {
    operation_type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EvictionLabel {
    eviction_signal: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ContainerStateLabel {
    container_state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProbeLabels {
    probe_type: String,
    result: String,
    container: String,
    pod: String,
    namespace: String,
    pod_uid: String,
}

/// The metrics; cheap to share (`Arc<Metrics>` in the pod context and the server).
pub struct Metrics {
    registry: Registry,
    probes_registry: Registry,
    pod_start: Histogram,
    operations: Family<OperationLabel, Counter>,
    operation_errors: Family<OperationLabel, Counter>,
    operation_duration: Family<OperationLabel, Histogram>,
    running_pods: Gauge,
    running_containers: Family<ContainerStateLabel, Gauge>,
    probes: Family<ProbeLabels, Counter>,
    evictions: Family<EvictionLabel, Counter>,
    images_collected: Family<ReasonLabel, Counter>,
    /// Serializes the gauge refresh and the encoding of one scrape.
    scrape: Mutex<()>,
}

impl Metrics {
    pub fn new(node: &str) -> Metrics {
        let mut registry = Registry::default();
        let node_name = Family::<NodeLabel, Gauge>::default();
        node_name.get_or_create(&NodeLabel { node: node.to_string() }).set(1);
        registry.register("kubelet_node_name", "The node's name. The count is always 1.", node_name);
        let pod_start = Histogram::new(POD_START_BUCKETS);
        registry.register(
            "kubelet_pod_start_duration_seconds",
            "Duration in seconds from kubelet seeing a pod for the first time to the pod starting to run",
            pod_start.clone(),
        );
        let operations = Family::<OperationLabel, Counter>::default();
        registry.register("kubelet_runtime_operations", "Cumulative number of runtime operations by operation type.", operations.clone());
        let operation_errors = Family::<OperationLabel, Counter>::default();
        registry.register("kubelet_runtime_operations_errors", "Cumulative number of runtime operation errors by operation type.", operation_errors.clone());
        let operation_duration = Family::<OperationLabel, Histogram>::new_with_constructor(|| Histogram::new(OP_BUCKETS));
        registry.register("kubelet_runtime_operations_duration_seconds", "Duration in seconds of runtime operations. Broken down by operation type.", operation_duration.clone());
        let running_pods = Gauge::default();
        registry.register("kubelet_running_pods", "Number of pods that have a running pod sandbox", running_pods.clone());
        let running_containers = Family::<ContainerStateLabel, Gauge>::default();
        registry.register("kubelet_running_containers", "Number of containers currently running", running_containers.clone());
        // OpenMetrics names counters *_total: upstream's `kubelet_evictions` reads `kubelet_evictions_total` here.
        let evictions = Family::<EvictionLabel, Counter>::default();
        registry.register("kubelet_evictions", "Cumulative number of pod evictions by eviction signal", evictions.clone());
        let images_collected = Family::<ReasonLabel, Counter>::default();
        registry.register("kubelet_image_garbage_collected", "Total number of images garbage collected by the kubelet, whether through disk usage or image age.", images_collected.clone());
        let mut probes_registry = Registry::default();
        let probes = Family::<ProbeLabels, Counter>::default();
        probes_registry.register("prober_probe", "Cumulative number of a liveness, readiness or startup probe for a container by result.", probes.clone());
        Metrics { registry, probes_registry, pod_start, operations, operation_errors, operation_duration, running_pods, running_containers, probes, evictions, images_collected, scrape: Mutex::new(()) }
    }

    /// A pod evicted for `signal` (`memory.available`, ...).
    pub fn eviction(&self, signal: &str) {
        self.evictions.get_or_create(&EvictionLabel { eviction_signal: signal.to_string() }).inc();
    }

    /// An image garbage collected, for `reason` (`space` or `age`).
    pub fn image_garbage_collected(&self, reason: &str) {
        self.images_collected.get_or_create(&ReasonLabel { reason: reason.to_string() }).inc();
    }

    /// A pod's first start: from when the agent first saw it to all its containers running.
    pub fn pod_started(&self, after: Duration) {
        self.pod_start.observe(after.as_secs_f64());
    }

    /// One runtime operation (`run_podsandbox`, `create_container`, `start_container`,
    /// `pull_image`, `stop_container`, ... as upstream names the CRI calls).
    pub fn operation(&self, op: &str, took: Duration, ok: bool) {
        let l = OperationLabel { operation_type: op.to_string() };
        self.operations.get_or_create(&l).inc();
        self.operation_duration.get_or_create(&l).observe(took.as_secs_f64());
        if !ok {
            self.operation_errors.get_or_create(&l).inc();
        }
    }

    /// One probe run: `probe_type` Liveness/Readiness/Startup, `result`
    /// successful/failed/unknown (an errored probe).
    pub fn probe(&self, probe_type: &str, result: &str, container: &str, pod: &k8s_openapi::api::core::v1::Pod) {
        self.probes
            .get_or_create(&ProbeLabels {
                probe_type: probe_type.to_string(),
                result: result.to_string(),
                container: container.to_string(),
                pod: pod.metadata.name.clone().unwrap_or_default(),
                namespace: pod.metadata.namespace.clone().unwrap_or_default(),
                pod_uid: pod.metadata.uid.clone().unwrap_or_default(),
            })
            .inc();
    }

    /// `/metrics`: the gauges refreshed from `pods` (the agent's saved pod states), then
    /// everything encoded.
    pub fn encode(&self, pods: &[k8s_openapi::api::core::v1::Pod]) -> String {
        let _g = self.scrape.lock();
        let running = |p: &&k8s_openapi::api::core::v1::Pod| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
        self.running_pods.set(pods.iter().filter(running).count() as i64);
        let mut states = [("running", 0i64), ("exited", 0), ("created", 0)];
        for s in pods.iter().filter_map(|p| p.status.as_ref()) {
            for cs in s.container_statuses.iter().flatten().chain(s.init_container_statuses.iter().flatten()) {
                let st = cs.state.clone().unwrap_or_default();
                let i = if st.running.is_some() { 0 } else if st.terminated.is_some() { 1 } else { 2 };
                states[i].1 += 1;
            }
        }
        for (state, n) in states {
            self.running_containers.get_or_create(&ContainerStateLabel { container_state: state.into() }).set(n);
        }
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// `/metrics/probes`.
    pub fn encode_probes(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.probes_registry);
        out
    }
}

/// The Content-Type of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ContainerState, ContainerStateRunning, ContainerStatus, Pod, PodStatus};

    #[test]
    fn eviction_and_image_gc_counters() {
        let m = Metrics::new("n1");
        m.eviction("memory.available");
        m.eviction("memory.available");
        m.image_garbage_collected("space");
        let out = m.encode(&[]);
        assert!(out.contains("kubelet_evictions_total{eviction_signal=\"memory.available\"} 2"), "{out}");
        assert!(out.contains("kubelet_image_garbage_collected_total{reason=\"space\"} 1"), "{out}");
    }

    #[test]
    fn upstream_names_and_values() {
        let m = Metrics::new("n1");
        m.pod_started(Duration::from_millis(700));
        m.operation("create_container", Duration::from_millis(3), true);
        m.operation("pull_image", Duration::from_millis(30), false);
        let mut p = Pod::default();
        p.metadata.name = Some("web".into());
        p.metadata.namespace = Some("default".into());
        p.metadata.uid = Some("u1".into());
        p.status = Some(PodStatus {
            phase: Some("Running".into()),
            container_statuses: Some(vec![ContainerStatus { name: "c".into(), state: Some(ContainerState { running: Some(ContainerStateRunning::default()), ..Default::default() }), ..Default::default() }]),
            ..Default::default()
        });
        m.probe("Readiness", "successful", "c", &p);
        let text = m.encode(&[p]);
        for want in [
            "kubelet_node_name{node=\"n1\"} 1",
            "kubelet_pod_start_duration_seconds_count 1",
            "kubelet_pod_start_duration_seconds_bucket{le=\"1.0\"} 1",
            "kubelet_runtime_operations_total{operation_type=\"create_container\"} 1",
            "kubelet_runtime_operations_errors_total{operation_type=\"pull_image\"} 1",
            "kubelet_runtime_operations_duration_seconds_count{operation_type=\"pull_image\"} 1",
            "kubelet_running_pods 1",
            "kubelet_running_containers{container_state=\"running\"} 1",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
        let probes = m.encode_probes();
        assert!(
            probes.contains("prober_probe_total{probe_type=\"Readiness\",result=\"successful\",container=\"c\",pod=\"web\",namespace=\"default\",pod_uid=\"u1\"} 1"),
            "{probes}"
        );
    }
}
