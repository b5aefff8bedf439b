//! Which pod goes first, and what its eviction says: upstream's rank functions
//! (rankMemoryPressure, rankDiskPressureFunc, rankPIDPressure) and
//! evictionMessage. Pure: the pods' usage comes in as [`Candidate`]s.

use std::cmp::Ordering;

use super::threshold::{quantity, Observations, Resource, Threshold};

/// A container's usage and request of the starved resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerUsage {
    pub name: String,
    /// Working set (memory) or rootfs + logs bytes (disk); `None` unknown.
    pub usage: Option<i64>,
    pub request: i64,
}

/// A pod that could be evicted, with what ranking needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub uid: String,
    pub name: String,
    pub priority: i32,
    /// Pod working set (memory ranking); `None` when there are no stats.
    pub memory: Option<i64>,
    pub memory_request: i64,
    /// Pod disk usage (containers' rootfs and logs, local volumes).
    pub disk: Option<i64>,
    pub disk_request: i64,
    pub processes: Option<u64>,
    /// Spec containers then init containers, each with its usage of the starved resource.
    pub containers: Vec<ContainerUsage>,
}

/// true before false (upstream's cmpBool): a pod with the property goes first.
fn first_if(a: bool, b: bool) -> Ordering {
    b.cmp(&a)
}

/// Pods without stats first; then `f` on those with.
fn by_stats<T: Ord>(a: Option<T>, b: Option<T>, f: impl Fn(T, T) -> Ordering) -> Ordering {
    match (a, b) {
        (Some(x), Some(y)) => f(x, y),
        (a, b) => first_if(a.is_none(), b.is_none()),
    }
}

fn exceeds(usage: Option<i64>, request: i64) -> Option<bool> {
    usage.map(|u| u > request)
}

/// Lower priority first.
fn priority(a: &Candidate, b: &Candidate) -> Ordering {
    a.priority.cmp(&b.priority)
}

/// Orders `pods` for eviction under pressure on `resource`, first to go first.
pub fn rank(resource: Resource, pods: &mut [Candidate]) {
    pods.sort_by(|a, b| match resource {
        Resource::Memory => by_stats(exceeds(a.memory, a.memory_request), exceeds(b.memory, b.memory_request), first_if)
            .then_with(|| priority(a, b))
            .then_with(|| by_stats(a.memory.map(|m| m - a.memory_request), b.memory.map(|m| m - b.memory_request), |x, y| y.cmp(&x))),
        Resource::EphemeralStorage | Resource::Inodes => by_stats(exceeds(a.disk, a.disk_request), exceeds(b.disk, b.disk_request), first_if)
            .then_with(|| priority(a, b))
            .then_with(|| by_stats(a.disk.map(|d| d - a.disk_request), b.disk.map(|d| d - b.disk_request), |x, y| y.cmp(&x))),
        Resource::Pids => priority(a, b).then_with(|| b.processes.unwrap_or(0).cmp(&a.processes.unwrap_or(0))),
    });
}

/// The eviction message of `pod` for `resource` (upstream's evictionMessage):
/// the starved resource, the first threshold of that resource with its
/// observation, then each container using more than its request.
pub fn message(resource: Resource, pod: &Candidate, thresholds: &[Threshold], obs: &Observations) -> String {
    let mut m = format!("The node was low on resource: {}. ", resource.as_str());
    let met = thresholds.iter().filter(|t| t.signal.resource() == resource).find_map(|t| obs.get(&t.signal).map(|o| (t, o)));
    if let Some((t, o)) = met {
        m.push_str(&format!("Threshold quantity: {}, available: {}. ", resource.format(quantity(&t.value, o.capacity)), resource.format(o.available)));
    }
    if matches!(resource, Resource::Memory | Resource::EphemeralStorage) {
        for c in &pod.containers {
            if let Some(u) = c.usage.filter(|u| *u > c.request) {
                m.push_str(&format!(
                    "Container {} was using {}, request is {}, has larger consumption of {}. ",
                    c.name,
                    resource.format(u),
                    resource.format(c.request),
                    resource.as_str()
                ));
            }
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::super::threshold::{Observation, Signal};
    use super::*;
    use crate::config::Threshold as Value;
    use std::time::Duration;

    fn pod(name: &str, priority: i32, memory: Option<i64>, request: i64) -> Candidate {
        Candidate {
            uid: name.into(),
            name: name.into(),
            priority,
            memory,
            memory_request: request,
            disk: None,
            disk_request: 0,
            processes: None,
            containers: vec![ContainerUsage { name: "c".into(), usage: memory, request }],
        }
    }

    fn names(p: &[Candidate]) -> Vec<&str> {
        p.iter().map(|c| c.name.as_str()).collect()
    }

    #[test]
    fn memory_ranking_is_over_request_then_priority_then_excess() {
        let mi = 1 << 20;
        let mut p = vec![
            pod("burstable-under", 0, Some(10 * mi), 64 * mi),
            pod("besteffort-small", 0, Some(5 * mi), 0),
            pod("besteffort-big", 0, Some(50 * mi), 0),
            pod("critical-over", 1000, Some(500 * mi), 0),
            pod("no-stats", 0, None, 0),
        ];
        rank(Resource::Memory, &mut p);
        assert_eq!(names(&p), vec!["no-stats", "besteffort-big", "besteffort-small", "critical-over", "burstable-under"]);
    }

    #[test]
    fn pid_ranking_is_priority_then_processes() {
        let mut p = vec![pod("a", 0, None, 0), pod("b", 0, None, 0), pod("c", -1, None, 0)];
        p[0].processes = Some(3);
        p[1].processes = Some(30);
        rank(Resource::Pids, &mut p);
        assert_eq!(names(&p), vec!["c", "b", "a"]);
    }

    #[test]
    fn message_names_threshold_availability_and_the_hungry_containers() {
        let mi = 1 << 20;
        let t = [Threshold { signal: Signal::MemoryAvailable, value: Value::Quantity(100 * mi), grace: Duration::ZERO, min_reclaim: None }];
        let obs: Observations = [(Signal::MemoryAvailable, Observation { available: 50 * mi, capacity: 1 << 30 })].into();
        let mut p = pod("p", 0, Some(40 * mi), 0);
        p.containers.push(ContainerUsage { name: "quiet".into(), usage: Some(mi), request: 2 * mi });
        assert_eq!(
            message(Resource::Memory, &p, &t, &obs),
            "The node was low on resource: memory. Threshold quantity: 100Mi, available: 50Mi. Container c was using 40Mi, request is 0, has larger consumption of memory. "
        );
        assert_eq!(message(Resource::Pids, &p, &t, &obs), "The node was low on resource: pids. ", "no pids threshold met, no container line for pids");
    }
}
