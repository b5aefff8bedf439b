//! Reading CNI results: the pod IPs out of a plugin chain's final result.
//!
//! Understands the 0.3.x/0.4.0 and 1.x layout (`interfaces[]`, `ips[]` with
//! `address` in CIDR form and `interface` indexing into `interfaces`; pkg/types
//! 040 and 100) and the legacy 0.1/0.2 layout (`ip4.ip`, `ip6.ip`; pkg/types 020).
//! Like containerd's go-cni + CRI, the pod IPs are those on the requested
//! interface inside the sandbox, IPv4 first.

use std::net::IpAddr;

use serde::Deserialize;
use serde_json::Value;

/// Why a plugin's output could not be used as a result.
#[derive(Debug, thiserror::Error)]
pub enum ResultError {
    /// The output is not JSON.
    #[error("output is not valid JSON: {source}")]
    Json {
        /// The parser error.
        #[source]
        source: serde_json::Error,
    },
    /// The output is JSON but not an object.
    #[error("output is not a JSON object")]
    NotAnObject,
    /// The result's fields do not have the types the spec prescribes.
    #[error("malformed result: {source}")]
    Shape {
        /// The decoding error.
        #[source]
        source: serde_json::Error,
    },
    /// An `address`/`ip` is not `IP/prefix`.
    #[error("invalid IP address {address:?} in result")]
    InvalidAddress {
        /// The offending value.
        address: String,
    },
    /// The result assigns no IP to the pod's interface.
    #[error("no IP address assigned to interface {ifname:?} in the result")]
    NoPodIp {
        /// The interface that was looked for.
        ifname: String,
    },
}

#[derive(Debug, Default, Deserialize)]
struct RawResult {
    #[serde(default)]
    interfaces: Vec<RawInterface>,
    #[serde(default)]
    ips: Vec<RawIp>,
    #[serde(default)]
    ip4: Option<RawLegacyIp>,
    #[serde(default)]
    ip6: Option<RawLegacyIp>,
}

#[derive(Debug, Default, Deserialize)]
struct RawInterface {
    #[serde(default)]
    name: String,
    #[serde(default)]
    sandbox: String,
}

#[derive(Debug, Deserialize)]
struct RawIp {
    address: String,
    #[serde(default)]
    interface: Option<i64>,
}

#[derive(Debug, Deserialize)]
struct RawLegacyIp {
    ip: String,
}

/// Decodes a plugin's stdout as a result document (any version).
pub fn parse_output(stdout: &[u8]) -> Result<Value, ResultError> {
    let v: Value = serde_json::from_slice(stdout).map_err(|source| ResultError::Json { source })?;
    if v.is_object() {
        Ok(v)
    } else {
        Err(ResultError::NotAnObject)
    }
}

/// The pod's IPs from a final result: the addresses on `ifname` inside the
/// sandbox (an interface entry with `sandbox` set), IPv4 first. If no address
/// is tied to an interface at all (IPAM-only chains), the unattributed ones
/// are used. Fails with [`ResultError::NoPodIp`] when nothing is left.
pub fn pod_ips(result: &Value, ifname: &str) -> Result<Vec<IpAddr>, ResultError> {
    let raw = RawResult::deserialize(result).map_err(|source| ResultError::Shape { source })?;

    let mut ips = Vec::new();
    if !raw.ips.is_empty() {
        let on_pod_if = |idx: i64| {
            usize::try_from(idx)
                .ok()
                .and_then(|i| raw.interfaces.get(i))
                .is_some_and(|intf| intf.name == ifname && !intf.sandbox.is_empty())
        };
        let mut chosen: Vec<&RawIp> = raw
            .ips
            .iter()
            .filter(|ip| ip.interface.is_some_and(on_pod_if))
            .collect();
        if chosen.is_empty() {
            chosen = raw.ips.iter().filter(|ip| ip.interface.is_none()).collect();
        }
        for ip in chosen {
            ips.push(parse_cidr(&ip.address)?);
        }
    } else {
        for legacy in [&raw.ip4, &raw.ip6].into_iter().flatten() {
            ips.push(parse_cidr(&legacy.ip)?);
        }
    }
    // Stable: keeps the plugin's order within each family.
    ips.sort_by_key(|ip| ip.is_ipv6());
    if ips.is_empty() {
        return Err(ResultError::NoPodIp {
            ifname: ifname.to_owned(),
        });
    }
    Ok(ips)
}

/// Parses `10.1.2.3/24` (or a bare address) into its IP.
fn parse_cidr(s: &str) -> Result<IpAddr, ResultError> {
    let invalid = || ResultError::InvalidAddress {
        address: s.to_owned(),
    };
    let (addr, prefix) = match s.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (s, None),
    };
    let ip: IpAddr = addr.parse().map_err(|_| invalid())?;
    if let Some(p) = prefix {
        let bits: u8 = p.parse().map_err(|_| invalid())?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        if bits > max {
            return Err(invalid());
        }
    }
    Ok(ip)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test IP")
    }

    #[test]
    fn v100_result_from_bridge_picks_the_sandbox_interface() {
        let r = json!({
            "cniVersion": "1.0.0",
            "interfaces": [
                {"name": "cni0", "mac": "aa:aa:aa:aa:aa:aa"},
                {"name": "veth1234", "mac": "bb:bb:bb:bb:bb:bb"},
                {"name": "eth0", "mac": "cc:cc:cc:cc:cc:cc", "sandbox": "/var/run/netns/cni-1"}
            ],
            "ips": [
                {"address": "fd00:10::5/64", "gateway": "fd00:10::1", "interface": 2},
                {"address": "10.244.1.5/24", "gateway": "10.244.1.1", "interface": 2},
                {"address": "10.244.1.1/24", "interface": 0}
            ],
            "routes": [{"dst": "0.0.0.0/0"}],
            "dns": {}
        });
        assert_eq!(
            pod_ips(&r, "eth0").expect("ips"),
            vec![ip("10.244.1.5"), ip("fd00:10::5")]
        );
    }

    #[test]
    fn v040_result_with_version_fields() {
        let r = json!({
            "cniVersion": "0.4.0",
            "interfaces": [{"name": "eth0", "sandbox": "/proc/42/ns/net"}],
            "ips": [{"version": "4", "address": "10.22.0.9/16", "gateway": "10.22.0.1", "interface": 0}]
        });
        assert_eq!(pod_ips(&r, "eth0").expect("ips"), vec![ip("10.22.0.9")]);
    }

    #[test]
    fn host_side_interface_with_the_same_name_is_not_the_pod() {
        let r = json!({
            "interfaces": [{"name": "eth0"}, {"name": "eth0", "sandbox": "/ns"}],
            "ips": [{"address": "192.0.2.1/24", "interface": 0}, {"address": "192.0.2.2/24", "interface": 1}]
        });
        assert_eq!(pod_ips(&r, "eth0").expect("ips"), vec![ip("192.0.2.2")]);
    }

    #[test]
    fn unattributed_ips_are_the_fallback() {
        let r = json!({"cniVersion": "1.0.0", "ips": [{"address": "10.1.0.4/16"}]});
        assert_eq!(pod_ips(&r, "eth0").expect("ips"), vec![ip("10.1.0.4")]);
    }

    #[test]
    fn legacy_020_result() {
        let r = json!({"cniVersion": "0.2.0", "ip4": {"ip": "10.0.0.7/8", "gateway": "10.0.0.1"}, "ip6": {"ip": "2001:db8::7/64"}});
        assert_eq!(
            pod_ips(&r, "eth0").expect("ips"),
            vec![ip("10.0.0.7"), ip("2001:db8::7")]
        );
    }

    #[test]
    fn no_ip_on_the_interface_is_an_error() {
        let r = json!({"interfaces": [{"name": "net1", "sandbox": "/ns"}], "ips": [{"address": "10.0.0.2/24", "interface": 0}]});
        assert!(matches!(
            pod_ips(&r, "eth0"),
            Err(ResultError::NoPodIp { .. })
        ));
        assert!(matches!(
            pod_ips(&json!({}), "eth0"),
            Err(ResultError::NoPodIp { .. })
        ));
    }

    #[test]
    fn malformed_results_are_rejected() {
        assert!(matches!(
            pod_ips(&json!({"ips": "x"}), "eth0"),
            Err(ResultError::Shape { .. })
        ));
        assert!(matches!(
            pod_ips(&json!({"ips": [{"address": "10.0.0.300/24"}]}), "eth0"),
            Err(ResultError::InvalidAddress { .. })
        ));
        assert!(matches!(
            pod_ips(&json!({"ips": [{"address": "10.0.0.3/33"}]}), "eth0"),
            Err(ResultError::InvalidAddress { .. })
        ));
        assert!(matches!(parse_output(b"[]"), Err(ResultError::NotAnObject)));
        assert!(matches!(parse_output(b"{"), Err(ResultError::Json { .. })));
        assert!(parse_output(br#"{"cniVersion":"1.0.0"}"#).is_ok());
    }
}
