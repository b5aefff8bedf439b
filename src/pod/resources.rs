//! Container resource values for the downward API, as env vars, downwardAPI
//! volume files and projected downwardAPI files alike (pkg/api/v1/resource
//! `ExtractContainerResourceValue`, after the kubelet's
//! `MergeContainerResourceLimits`):
//! * a limit the container does not set is the node's allocatable, a request
//!   it does not set its limit (as defaulted), else 0;
//! * a divisor that is absent or zero (the API server serializes an unset one
//!   as `"0"`) is `1`;
//! * CPU is the millicores divided by the divisor's millicores, memory,
//!   ephemeral-storage and hugepages the bytes by the divisor's value, each
//!   rounded up.

use k8s_openapi::api::core::v1::{Container, Pod};

use crate::quantity::{to_milli, to_value};

/// What the node offers pods: the default of a limit a container does not set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Allocatable {
    pub cpu_milli: i64,
    pub memory: i64,
    pub ephemeral_storage: i64,
}

/// The value of `resource` (`limits.cpu`, `requests.memory`,
/// `limits.hugepages-2Mi`, ...) of container `c`, in units of `divisor`.
pub fn container_value(c: &Container, resource: &str, divisor: Option<&str>, node: &Allocatable) -> Result<String, String> {
    let unsupported = || format!("unsupported container resource : {resource}");
    let (kind, name) = resource.split_once('.').ok_or_else(unsupported)?;
    if !matches!(kind, "limits" | "requests") {
        return Err(unsupported());
    }
    let r = c.resources.as_ref();
    let get = |kind: &str| {
        let m = if kind == "limits" { r.and_then(|r| r.limits.as_ref()) } else { r.and_then(|r| r.requests.as_ref()) };
        m.and_then(|m| m.get(name)).map(|q| q.0.clone())
    };
    // A request not set defaults to the limit (SetDefaults_Pod; the API server has
    // applied it already, a static pod's manifest may not have).
    let set = |kind: &str| get(kind).or_else(|| if kind == "requests" { get("limits") } else { None });
    let e = |e: crate::quantity::QuantityError| e.to_string();
    let divisor = divisor.filter(|d| to_milli(d).map(|m| m != 0).unwrap_or(true)).unwrap_or("1");
    let ceil_div = |v: i64, d: i64| if d <= 0 { 0 } else { v.div_euclid(d) + i64::from(v.rem_euclid(d) != 0) };
    match name {
        "cpu" => {
            let milli = match set(kind) {
                Some(q) => to_milli(&q).map_err(e)?,
                None if kind == "limits" => node.cpu_milli,
                None => 0,
            };
            Ok(ceil_div(milli, to_milli(divisor).map_err(e)?).to_string())
        }
        "memory" | "ephemeral-storage" => {
            let bytes = match set(kind) {
                Some(q) => to_value(&q).map_err(e)?,
                None if kind == "limits" && name == "memory" => node.memory,
                None if kind == "limits" => node.ephemeral_storage,
                None => 0,
            };
            Ok(ceil_div(bytes, to_value(divisor).map_err(e)?).to_string())
        }
        n if n.starts_with("hugepages-") => {
            let bytes = set(kind).map(|q| to_value(&q)).transpose().map_err(e)?.unwrap_or(0);
            Ok(ceil_div(bytes, to_value(divisor).map_err(e)?).to_string())
        }
        _ => Err(unsupported()),
    }
}

/// [`container_value`] of the pod's container (or init container) `name`.
pub fn value_by_container_name(pod: &Pod, name: &str, resource: &str, divisor: Option<&str>, node: &Allocatable) -> Result<String, String> {
    let c = pod
        .spec
        .iter()
        .flat_map(|s| s.containers.iter().chain(s.init_containers.iter().flatten()))
        .find(|c| c.name == name)
        .ok_or_else(|| format!("container {name} not found"))?;
    container_value(c, resource, divisor, node)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ResourceRequirements;
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    const NODE: Allocatable = Allocatable { cpu_milli: 1900, memory: 3 << 30, ephemeral_storage: 50_000_000_000 };

    fn container(limits: &[(&str, &str)], requests: &[(&str, &str)]) -> Container {
        let m = |kv: &[(&str, &str)]| (!kv.is_empty()).then(|| kv.iter().map(|(k, v)| (k.to_string(), Quantity(v.to_string()))).collect());
        Container { name: "c".into(), resources: Some(ResourceRequirements { limits: m(limits), requests: m(requests), ..Default::default() }), ..Default::default() }
    }

    fn v(c: &Container, resource: &str, divisor: Option<&str>) -> String {
        container_value(c, resource, divisor, &NODE).unwrap()
    }

    /// The values upstream's e2e "Downward API should provide container's
    /// limits.cpu/memory and requests.cpu/memory as env vars" expects.
    #[test]
    fn cpu_rounds_up_to_whole_cores_by_default() {
        let c = container(&[("cpu", "1250m"), ("memory", "64Mi")], &[("cpu", "250m"), ("memory", "32Mi")]);
        for d in [None, Some("0"), Some("1")] {
            assert_eq!(v(&c, "limits.cpu", d), "2");
            assert_eq!(v(&c, "requests.cpu", d), "1");
            assert_eq!(v(&c, "limits.memory", d), "67108864");
            assert_eq!(v(&c, "requests.memory", d), "33554432");
        }
        assert_eq!(v(&c, "limits.cpu", Some("1m")), "1250");
        assert_eq!(v(&c, "requests.cpu", Some("1m")), "250");
        assert_eq!(v(&c, "requests.cpu", Some("100m")), "3");
        assert_eq!(v(&c, "limits.memory", Some("1Mi")), "64");
        assert_eq!(v(&c, "requests.memory", Some("1k")), "33555");
        assert_eq!(v(&c, "limits.memory", Some("1M")), "68");
    }

    #[test]
    fn unset_limits_are_the_node_allocatable_and_unset_requests_zero() {
        let c = container(&[], &[]);
        assert_eq!(v(&c, "limits.cpu", None), "2", "1900m rounds up");
        assert_eq!(v(&c, "limits.cpu", Some("1m")), "1900");
        assert_eq!(v(&c, "limits.memory", None), (3i64 << 30).to_string());
        assert_eq!(v(&c, "limits.memory", Some("1Mi")), "3072");
        assert_eq!(v(&c, "limits.ephemeral-storage", Some("1k")), "50000000");
        assert_eq!(v(&c, "requests.cpu", None), "0");
        assert_eq!(v(&c, "requests.memory", None), "0");
        assert_eq!(v(&c, "requests.ephemeral-storage", None), "0");
        let bare = Container { name: "bare".into(), ..Default::default() };
        assert_eq!(v(&bare, "limits.cpu", Some("1m")), "1900");
        let limits_only = container(&[("cpu", "500m")], &[]);
        assert_eq!(v(&limits_only, "requests.cpu", Some("1m")), "500", "requests default to limits");
    }

    #[test]
    fn ephemeral_storage_and_hugepages_divide_bytes() {
        let c = container(&[("ephemeral-storage", "1Gi"), ("hugepages-2Mi", "4Mi")], &[("ephemeral-storage", "100M"), ("hugepages-2Mi", "4Mi")]);
        assert_eq!(v(&c, "limits.ephemeral-storage", None), "1073741824");
        assert_eq!(v(&c, "limits.ephemeral-storage", Some("1Mi")), "1024");
        assert_eq!(v(&c, "requests.ephemeral-storage", Some("1Mi")), "96");
        assert_eq!(v(&c, "limits.hugepages-2Mi", Some("1Mi")), "4");
        assert_eq!(v(&c, "requests.hugepages-2Mi", Some("1k")), "4195");
        assert_eq!(v(&c, "limits.hugepages-1Gi", None), "0");
    }

    #[test]
    fn unknown_resources_and_containers_are_errors() {
        let c = container(&[], &[]);
        assert_eq!(container_value(&c, "limits.gpu", None, &NODE).unwrap_err(), "unsupported container resource : limits.gpu");
        assert!(container_value(&c, "cpu", None, &NODE).is_err());
        let pod = Pod { spec: Some(k8s_openapi::api::core::v1::PodSpec { containers: vec![c], ..Default::default() }), ..Default::default() };
        assert_eq!(value_by_container_name(&pod, "c", "limits.cpu", Some("1m"), &NODE).unwrap(), "1900");
        assert_eq!(value_by_container_name(&pod, "x", "limits.cpu", None, &NODE).unwrap_err(), "container x not found");
    }
}
