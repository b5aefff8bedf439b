//! Probe handlers as upstream's pkg/probe: `exec` (through containerd exec in the
//! container), `httpGet`, `tcpSocket` and `grpc` (grpc.health.v1). Each returns a
//! [`ProbeResult`] with the output the kubelet puts into its events. The
//! scheduling of probes (periods, thresholds, startup gating) is `pod::prober`;
//! lifecycle hooks reuse the exec and http handlers (`pod::lifecycle`).

pub mod exec;
pub mod grpc;
pub mod http;
pub mod tcp;

use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use thiserror::Error;

use crate::runtime::containers::Containers;

/// The outcome of one probe (pkg/probe Result).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeResult {
    Success,
    /// Success, with something worth an event (e.g. a redirect that was not followed).
    Warning,
    Failure,
    Unknown,
}

impl ProbeResult {
    pub fn as_str(self) -> &'static str {
        match self {
            ProbeResult::Success => "success",
            ProbeResult::Warning => "warning",
            ProbeResult::Failure => "failure",
            ProbeResult::Unknown => "unknown",
        }
    }
}

/// A result with its output (body, command output or error text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub result: ProbeResult,
    pub output: String,
}

impl Outcome {
    pub fn success(output: impl Into<String>) -> Self {
        Self { result: ProbeResult::Success, output: output.into() }
    }
    pub fn failure(output: impl Into<String>) -> Self {
        Self { result: ProbeResult::Failure, output: output.into() }
    }
}

/// A probe that could not be run at all (upstream: probe.Unknown with an error).
#[derive(Debug, Error)]
pub enum ProbeError {
    /// A named port is not among the container's ports and is not a number.
    #[error("port {0} not found")]
    PortNotFound(String),
    /// The port is out of range.
    #[error("invalid port number: {0}")]
    InvalidPort(i64),
    /// The pod has no IP to connect to.
    #[error("pod has no IP address")]
    NoPodIp,
    /// The probe has no handler.
    #[error("missing probe handler for {0}")]
    NoHandler(String),
    /// Exec through containerd failed (not the command: the exec itself).
    #[error(transparent)]
    Exec(#[from] crate::runtime::exec::ExecError),
}

pub type Result<T, E = ProbeError> = std::result::Result<T, E>;

/// Upstream's `User-Agent` for probes: `kube-probe/<major>.<minor>`.
pub fn user_agent(prefix: &str) -> String {
    let v = crate::config::KUBERNETES_VERSION.trim_start_matches('v');
    let mut parts = v.split('.');
    let major = parts.next().unwrap_or("1");
    let minor = parts.next().unwrap_or("0");
    format!("{prefix}/{major}.{minor}")
}

/// Where a probe runs: the container (for exec) and the pod's IP (for network probes).
pub struct Target<'a> {
    pub containers: &'a Containers,
    pub container_id: &'a str,
    pub container: &'a Container,
    pub pod_ip: Option<&'a str>,
    /// A directory for exec output files (under the pod directory).
    pub scratch: &'a Path,
}

/// Upstream's probe.ResolveContainerPort: a number, a container port's name, or a
/// number in a string.
pub fn resolve_port(p: &IntOrString, c: &Container) -> Result<u16> {
    let port: i64 = match p {
        IntOrString::Int(n) => *n as i64,
        IntOrString::String(s) => match c.ports.iter().flatten().find(|cp| cp.name.as_deref() == Some(s.as_str())) {
            Some(cp) => cp.container_port as i64,
            None => s.parse().map_err(|_| ProbeError::PortNotFound(s.clone()))?,
        },
    };
    if port > 0 && port < 65536 {
        Ok(port as u16)
    } else {
        Err(ProbeError::InvalidPort(port))
    }
}

/// Runs the probe's handler once (pkg/kubelet/prober/prober.go runProbe).
pub async fn run(p: &Probe, t: &Target<'_>, timeout: Duration) -> Result<Outcome> {
    if let Some(e) = &p.exec {
        return exec::probe(t, e.command.as_deref().unwrap_or(&[]), timeout).await;
    }
    if let Some(h) = &p.http_get {
        let req = http::HttpRequest::from_action(h, t.container, t.pod_ip, "kube-probe")?;
        return Ok(http::probe(&req, timeout).await);
    }
    if let Some(s) = &p.tcp_socket {
        let port = resolve_port(&s.port, t.container)?;
        let host = s.host.as_deref().filter(|h| !h.is_empty()).or(t.pod_ip).ok_or(ProbeError::NoPodIp)?;
        return Ok(tcp::probe(host, port, timeout).await);
    }
    if let Some(g) = &p.grpc {
        let host = t.pod_ip.ok_or(ProbeError::NoPodIp)?;
        let port = u16::try_from(g.port).ok().filter(|p| *p > 0).ok_or(ProbeError::InvalidPort(g.port as i64))?;
        return Ok(grpc::probe(host, port, g.service.as_deref().unwrap_or(""), timeout).await);
    }
    Err(ProbeError::NoHandler(t.container.name.clone()))
}

/// `host:port`, bracketing IPv6 addresses (Go's net.JoinHostPort).
pub fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ContainerPort;

    fn container() -> Container {
        Container {
            name: "c".into(),
            ports: Some(vec![ContainerPort { name: Some("http".into()), container_port: 8080, ..Default::default() }]),
            ..Default::default()
        }
    }

    #[test]
    fn ports_resolve_by_number_name_or_numeric_string() {
        let c = container();
        assert_eq!(resolve_port(&IntOrString::Int(80), &c).unwrap(), 80);
        assert_eq!(resolve_port(&IntOrString::String("http".into()), &c).unwrap(), 8080);
        assert_eq!(resolve_port(&IntOrString::String("81".into()), &c).unwrap(), 81);
        assert_eq!(resolve_port(&IntOrString::String("nope".into()), &c).unwrap_err().to_string(), "port nope not found");
        assert_eq!(resolve_port(&IntOrString::Int(0), &c).unwrap_err().to_string(), "invalid port number: 0");
        assert!(resolve_port(&IntOrString::Int(70000), &c).is_err());
    }

    #[test]
    fn user_agent_is_major_minor() {
        assert_eq!(user_agent("kube-probe"), "kube-probe/1.36");
    }

    #[test]
    fn ipv6_hosts_are_bracketed() {
        assert_eq!(join_host_port("10.0.0.1", 80), "10.0.0.1:80");
        assert_eq!(join_host_port("fd00::1", 80), "[fd00::1]:80");
    }
}
