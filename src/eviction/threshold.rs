//! Eviction signals, thresholds and the bookkeeping of which are met, as
//! upstream's pkg/kubelet/eviction (helpers.go): hard thresholds act at once,
//! soft ones once met for their grace period, a met threshold stays met until
//! its minimum reclaim is satisfied, and a pressure condition stays for the
//! transition period after its last sighting. Pure: time is passed in.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::Threshold as Value;

/// An eviction signal (`pkg/kubelet/eviction/api`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Signal {
    MemoryAvailable,
    AllocatableMemoryAvailable,
    NodeFsAvailable,
    NodeFsInodesFree,
    ImageFsAvailable,
    ImageFsInodesFree,
    ContainerFsAvailable,
    ContainerFsInodesFree,
    PidAvailable,
}

/// A node condition the eviction manager reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Condition {
    MemoryPressure,
    DiskPressure,
    PIDPressure,
}

impl Condition {
    pub fn as_str(self) -> &'static str {
        match self {
            Condition::MemoryPressure => "MemoryPressure",
            Condition::DiskPressure => "DiskPressure",
            Condition::PIDPressure => "PIDPressure",
        }
    }
}

/// The resource a signal starves (what the eviction message names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Resource {
    Memory,
    EphemeralStorage,
    Inodes,
    Pids,
}

impl Resource {
    pub fn as_str(self) -> &'static str {
        match self {
            Resource::Memory => "memory",
            Resource::EphemeralStorage => "ephemeral-storage",
            Resource::Inodes => "inodes",
            Resource::Pids => "pids",
        }
    }

    /// Canonical quantity text: bytes as BinarySI, counts as DecimalSI.
    pub fn format(self, v: i64) -> String {
        match self {
            Resource::Memory | Resource::EphemeralStorage => crate::quantity::format_binary(v),
            Resource::Inodes | Resource::Pids => crate::quantity::format_decimal(v),
        }
    }
}

impl Signal {
    pub const ALL: [Signal; 9] = [
        Signal::MemoryAvailable,
        Signal::AllocatableMemoryAvailable,
        Signal::NodeFsAvailable,
        Signal::NodeFsInodesFree,
        Signal::ImageFsAvailable,
        Signal::ImageFsInodesFree,
        Signal::ContainerFsAvailable,
        Signal::ContainerFsInodesFree,
        Signal::PidAvailable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Signal::MemoryAvailable => "memory.available",
            Signal::AllocatableMemoryAvailable => "allocatableMemory.available",
            Signal::NodeFsAvailable => "nodefs.available",
            Signal::NodeFsInodesFree => "nodefs.inodesFree",
            Signal::ImageFsAvailable => "imagefs.available",
            Signal::ImageFsInodesFree => "imagefs.inodesFree",
            Signal::ContainerFsAvailable => "containerfs.available",
            Signal::ContainerFsInodesFree => "containerfs.inodesFree",
            Signal::PidAvailable => "pid.available",
        }
    }

    pub fn parse(s: &str) -> Option<Signal> {
        Signal::ALL.into_iter().find(|x| x.as_str() == s)
    }

    pub fn condition(self) -> Condition {
        match self {
            Signal::MemoryAvailable | Signal::AllocatableMemoryAvailable => Condition::MemoryPressure,
            Signal::PidAvailable => Condition::PIDPressure,
            _ => Condition::DiskPressure,
        }
    }

    pub fn resource(self) -> Resource {
        match self {
            Signal::MemoryAvailable | Signal::AllocatableMemoryAvailable => Resource::Memory,
            Signal::NodeFsAvailable | Signal::ImageFsAvailable | Signal::ContainerFsAvailable => Resource::EphemeralStorage,
            Signal::NodeFsInodesFree | Signal::ImageFsInodesFree | Signal::ContainerFsInodesFree => Resource::Inodes,
            Signal::PidAvailable => Resource::Pids,
        }
    }
}

/// One threshold: `signal < value`, acted on after `grace` (zero: a hard one).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Threshold {
    pub signal: Signal,
    pub value: Value,
    pub grace: Duration,
    pub min_reclaim: Option<Value>,
}

impl Threshold {
    pub fn is_hard(&self) -> bool {
        self.grace.is_zero()
    }
}

/// A signal's reading: what is available of how much.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observation {
    pub available: i64,
    pub capacity: i64,
}

pub type Observations = BTreeMap<Signal, Observation>;

/// The eviction settings of the configuration, resolved to thresholds (upstream's
/// ParseThresholdConfig + UpdateContainerFsThresholds for one filesystem).
/// `0%` and `100%` drop a threshold, as upstream does; soft thresholds come after
/// the hard ones; hard `memory.available` is copied to `allocatableMemory.available`
/// (enforceNodeAllocatable: pods); containerfs follows nodefs.
pub fn resolve(
    hard: &BTreeMap<String, Value>,
    soft: &BTreeMap<String, Value>,
    soft_grace: &BTreeMap<String, Duration>,
    min_reclaim: &BTreeMap<String, Value>,
) -> Vec<Threshold> {
    let dropped = |v: &Value| matches!(v, Value::Fraction(f) if *f <= 0.0 || *f >= 1.0);
    let mut out = Vec::new();
    for (map, soft) in [(hard, false), (soft, true)] {
        for (k, v) in map {
            let Some(signal) = Signal::parse(k) else { continue };
            if dropped(v) || matches!(signal, Signal::ContainerFsAvailable | Signal::ContainerFsInodesFree) {
                continue;
            }
            let grace = if soft { soft_grace.get(k).copied().unwrap_or_default() } else { Duration::ZERO };
            out.push(Threshold { signal, value: *v, grace, min_reclaim: min_reclaim.get(k).copied() });
        }
    }
    let mut extra = Vec::new();
    for t in &out {
        match t.signal {
            Signal::MemoryAvailable if t.is_hard() => extra.push(Threshold { signal: Signal::AllocatableMemoryAvailable, ..*t }),
            Signal::NodeFsAvailable => extra.push(Threshold { signal: Signal::ContainerFsAvailable, ..*t }),
            Signal::NodeFsInodesFree => extra.push(Threshold { signal: Signal::ContainerFsInodesFree, ..*t }),
            _ => {}
        }
    }
    out.extend(extra);
    out
}

/// A threshold value against a capacity (percentages truncate, as upstream).
pub fn quantity(v: &Value, capacity: i64) -> i64 {
    v.amount(capacity)
}

/// The thresholds whose signal is below them; with `enforce_min_reclaim`, below
/// them plus their minimum reclaim (so a met threshold stays met until reclaimed).
pub fn met(thresholds: &[Threshold], obs: &Observations, enforce_min_reclaim: bool) -> Vec<Threshold> {
    thresholds
        .iter()
        .filter(|t| {
            let Some(o) = obs.get(&t.signal) else { return false };
            let mut q = quantity(&t.value, o.capacity);
            if let (true, Some(m)) = (enforce_min_reclaim, t.min_reclaim.as_ref()) {
                q += quantity(m, o.capacity);
            }
            q > o.available
        })
        .copied()
        .collect()
}

/// The eviction manager's memory between two passes.
#[derive(Debug, Default)]
pub struct State {
    first_observed: Vec<(Threshold, Instant)>,
    conditions_last_observed: BTreeMap<Condition, Instant>,
    /// Thresholds met past their grace period, not yet reclaimed.
    met: Vec<Threshold>,
    /// The node conditions to report.
    pub conditions: Vec<Condition>,
}

impl State {
    /// One pass (upstream's synchronize up to the choice of what to reclaim):
    /// returns the thresholds to act on now, in eviction priority (memory first).
    pub fn step(&mut self, all: &[Threshold], obs: &Observations, transition: Duration, now: Instant) -> Vec<Threshold> {
        let mut current = met(all, obs, false);
        for t in met(&self.met, obs, true) {
            if !current.contains(&t) {
                current.push(t);
            }
        }
        let first: Vec<(Threshold, Instant)> =
            current.iter().map(|t| (*t, self.first_observed.iter().find(|(p, _)| p == t).map(|(_, at)| *at).unwrap_or(now))).collect();
        let mut conditions: Vec<Condition> = Vec::new();
        for t in &current {
            if !conditions.contains(&t.signal.condition()) {
                conditions.push(t.signal.condition());
            }
        }
        for c in &conditions {
            self.conditions_last_observed.insert(*c, now);
        }
        self.conditions = self.conditions_last_observed.iter().filter(|(_, at)| now.duration_since(**at) < transition).map(|(c, _)| *c).collect();
        let mut ready: Vec<Threshold> = first.iter().filter(|(t, at)| now.duration_since(*at) >= t.grace).map(|(t, _)| *t).collect();
        self.first_observed = first;
        self.met = ready.clone();
        // Memory first (byEvictionPriority), otherwise as configured.
        ready.sort_by_key(|t| t.signal.resource() != Resource::Memory);
        ready
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(pairs: &[(Signal, i64, i64)]) -> Observations {
        pairs.iter().map(|(s, a, c)| (*s, Observation { available: *a, capacity: *c })).collect()
    }

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, Value> {
        pairs.iter().map(|(k, v)| (k.to_string(), Value::parse(v).unwrap())).collect()
    }

    #[test]
    fn config_resolves_as_upstream() {
        let hard = map(&[("memory.available", "100Mi"), ("nodefs.available", "10%"), ("imagefs.available", "0%"), ("containerfs.available", "1%")]);
        let soft = map(&[("memory.available", "1Gi")]);
        let grace = [("memory.available".to_string(), Duration::from_secs(30))].into();
        let t = resolve(&hard, &soft, &grace, &map(&[("memory.available", "50Mi")]));
        let sigs: Vec<(&str, bool)> = t.iter().map(|t| (t.signal.as_str(), t.is_hard())).collect();
        assert_eq!(
            sigs,
            vec![("memory.available", true), ("nodefs.available", true), ("memory.available", false), ("allocatableMemory.available", true), ("containerfs.available", true)],
            "0% drops imagefs; a containerfs setting gives way to nodefs's"
        );
        assert_eq!(t[2].grace, Duration::from_secs(30));
        assert_eq!(t[0].min_reclaim, Some(Value::Quantity(50 << 20)));
        assert_eq!(t[4].value, Value::Fraction(0.10));
    }

    #[test]
    fn met_compares_strictly_and_adds_min_reclaim_on_demand() {
        let t = [Threshold { signal: Signal::MemoryAvailable, value: Value::Quantity(100), grace: Duration::ZERO, min_reclaim: Some(Value::Quantity(50)) }];
        assert!(met(&t, &obs(&[(Signal::MemoryAvailable, 100, 1000)]), false).is_empty(), "available == threshold is not met");
        assert_eq!(met(&t, &obs(&[(Signal::MemoryAvailable, 99, 1000)]), false).len(), 1);
        assert_eq!(met(&t, &obs(&[(Signal::MemoryAvailable, 120, 1000)]), true).len(), 1, "still under threshold + min reclaim");
        assert!(met(&t, &obs(&[]), false).is_empty(), "no observation, not met");
        let pct = [Threshold { signal: Signal::NodeFsAvailable, value: Value::Fraction(0.1), grace: Duration::ZERO, min_reclaim: None }];
        assert_eq!(met(&pct, &obs(&[(Signal::NodeFsAvailable, 99, 1000)]), false).len(), 1);
    }

    #[test]
    fn soft_thresholds_wait_and_conditions_outlive_the_pressure() {
        let s = Duration::from_secs;
        let t0 = Instant::now();
        let all = [
            Threshold { signal: Signal::MemoryAvailable, value: Value::Quantity(100), grace: Duration::ZERO, min_reclaim: Some(Value::Quantity(50)) },
            Threshold { signal: Signal::PidAvailable, value: Value::Quantity(10), grace: s(30), min_reclaim: None },
        ];
        let mut st = State::default();
        let low = obs(&[(Signal::MemoryAvailable, 10, 1000), (Signal::PidAvailable, 5, 100)]);
        let act = st.step(&all, &low, s(60), t0);
        assert_eq!(act.iter().map(|t| t.signal).collect::<Vec<_>>(), vec![Signal::MemoryAvailable], "the soft one waits for its grace");
        assert_eq!(st.conditions, vec![Condition::MemoryPressure, Condition::PIDPressure], "conditions at once");
        let act = st.step(&all, &low, s(60), t0 + s(31));
        assert_eq!(act.len(), 2, "grace period over");
        // Memory back above the threshold but not above threshold + min reclaim: still acted on.
        let act = st.step(&all, &obs(&[(Signal::MemoryAvailable, 120, 1000), (Signal::PidAvailable, 50, 100)]), s(60), t0 + s(40));
        assert_eq!(act.iter().map(|t| t.signal).collect::<Vec<_>>(), vec![Signal::MemoryAvailable]);
        // Reclaimed: nothing to do; the conditions stay for the transition period.
        let fine = obs(&[(Signal::MemoryAvailable, 500, 1000), (Signal::PidAvailable, 50, 100)]);
        assert!(st.step(&all, &fine, s(60), t0 + s(50)).is_empty());
        assert_eq!(st.conditions, vec![Condition::MemoryPressure, Condition::PIDPressure]);
        st.step(&all, &fine, s(60), t0 + s(95));
        assert_eq!(st.conditions, vec![Condition::MemoryPressure], "PID last seen at 31 s: gone after 60 s");
        st.step(&all, &fine, s(60), t0 + s(101));
        assert!(st.conditions.is_empty());
    }
}
