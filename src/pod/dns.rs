//! A pod's DNS (pkg/kubelet/network/dns `Configurer.GetPodDNS`, and the pod
//! hostname and domain of `GeneratePodHostNameAndDomain`), and resolv.conf as
//! containerd's CRI writes it from that configuration.
//!
//! * `ClusterFirst` (not host network) and `ClusterFirstWithHostNet`: the
//!   cluster DNS servers only, searches `<ns>.svc.<domain> svc.<domain>
//!   <domain>` then the host's, `options ndots:5`; without a cluster DNS, a
//!   `MissingClusterDNS` warning and the host's configuration;
//! * `Default` (and `ClusterFirst` on the host network): the host's
//!   configuration (`resolvConf`; none configured means `nameserver
//!   127.0.0.1`, `search .`);
//! * `None`: only `dnsConfig`, which every policy merges last (servers and
//!   searches appended without duplicates, options by name);
//! * limits: 3 nameservers, 32 search domains of at most 253 characters and
//!   2048 together, each with upstream's `DNSConfigForming` warning.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Pod;

/// The resolver configuration systemd-resolved's stub points at (kubeadm makes
/// it the kubelet's `resolvConf` when /etc/resolv.conf names only the stub).
pub const RESOLVED_UPSTREAM: &str = "/run/systemd/resolve/resolv.conf";
const RESOLVED_STUB: &str = "127.0.0.53";

const MAX_NAMESERVERS: usize = 3;
const MAX_SEARCH_PATHS: usize = 32;
const MAX_SEARCH_CHARS: usize = 2048;
const MAX_DOMAIN_LEN: usize = 253;
const DEFAULT_OPTIONS: &[&str] = &["ndots:5"];

/// The resolver configuration file when none is configured: `etc` (the host's
/// /etc/resolv.conf), unless it names only systemd-resolved's stub and
/// `resolved` (its upstream servers) exists, as kubeadm configures.
pub fn default_resolv_conf(etc: &Path, resolved: &Path) -> PathBuf {
    let servers = std::fs::read_to_string(etc).map(|s| parse(&s).0).unwrap_or_default();
    if !servers.is_empty() && servers.iter().all(|s| s == RESOLVED_STUB) && resolved.is_file() {
        resolved.to_path_buf()
    } else {
        etc.to_path_buf()
    }
}

/// The cluster's DNS settings (`clusterDNS`, `clusterDomain`, `resolvConf`).
#[derive(Debug, Clone, Default)]
pub struct Configurer {
    pub cluster_dns: Vec<IpAddr>,
    pub cluster_domain: Option<String>,
    /// The host resolver file; `None` when configured as "" (no host DNS).
    pub resolv_conf: Option<PathBuf>,
    /// The node's IPs (a localhost server of their family when resolvConf is "").
    pub node_ips: Vec<IpAddr>,
}

/// What a pod's resolv.conf holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DnsConfig {
    pub servers: Vec<String>,
    pub searches: Vec<String>,
    pub options: Vec<String>,
}

/// A warning event of the configuration: (reason, message), and whether the
/// node gets it too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    pub reason: &'static str,
    pub message: String,
    pub node_message: Option<String>,
}

/// parseResolvConf: nameservers accumulate, the last `search` and `options` win,
/// search domains lose a trailing dot.
pub(crate) fn parse(content: &str) -> (Vec<String>, Vec<String>, Vec<String>) {
    let (mut servers, mut searches, mut options) = (Vec::new(), Vec::new(), Vec::new());
    for line in content.lines() {
        let t = line.trim();
        if t.starts_with('#') {
            continue;
        }
        let f: Vec<&str> = t.split_whitespace().collect();
        match f.first() {
            Some(&"nameserver") => servers.extend(f.get(1).map(|s| s.to_string())),
            Some(&"search") => searches = f[1..].iter().map(|s| s.trim_end_matches('.').to_string()).collect(),
            Some(&"options") => options = f[1..].iter().map(|s| s.to_string()).collect(),
            _ => {}
        }
    }
    (servers, searches, options)
}

fn dedup(v: Vec<String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(v.len());
    for s in v {
        if !out.contains(&s) {
            out.push(s);
        }
    }
    out
}

/// `name[:value]` options merged by name, the pod's winning (upstream goes through
/// a map; the order here is the first appearance of each name).
fn merge_options(existing: &[String], pod: &[(String, Option<String>)]) -> Vec<String> {
    let mut m: Vec<(String, String)> = Vec::new();
    let mut put = |k: &str, v: &str| match m.iter_mut().find(|(n, _)| n == k) {
        Some(e) => e.1 = v.to_string(),
        None => m.push((k.to_string(), v.to_string())),
    };
    for o in existing {
        match o.split_once(':') {
            Some((k, v)) => put(k, v),
            None => put(o, ""),
        }
    }
    for (k, v) in pod {
        put(k, v.as_deref().unwrap_or(""));
    }
    m.into_iter().map(|(k, v)| if v.is_empty() { k } else { format!("{k}:{v}") }).collect()
}

impl Configurer {
    /// The pod's DNS configuration, and the warnings to record. `host` is the
    /// content of the resolver file (read by the caller).
    pub fn pod_dns(&self, pod: &Pod, host: &str) -> (DnsConfig, Vec<Warning>) {
        let spec = pod.spec.as_ref();
        let host_network = spec.and_then(|s| s.host_network).unwrap_or(false);
        let policy = spec.and_then(|s| s.dns_policy.as_deref()).unwrap_or("ClusterFirst");
        let (servers, searches, options) = if self.resolv_conf.is_some() { parse(host) } else { Default::default() };
        let mut cfg = DnsConfig { servers, searches, options };
        let mut warnings = Vec::new();
        enum Kind {
            Cluster,
            Host,
            None,
        }
        let kind = match policy {
            "None" => Kind::None,
            "ClusterFirstWithHostNet" => Kind::Cluster,
            "ClusterFirst" if !host_network => Kind::Cluster,
            "ClusterFirst" | "Default" => Kind::Host,
            _ => Kind::Cluster,
        };
        let mut host_kind = matches!(kind, Kind::Host);
        match kind {
            Kind::None => cfg = DnsConfig::default(),
            Kind::Cluster if !self.cluster_dns.is_empty() => {
                cfg.servers = self.cluster_dns.iter().map(IpAddr::to_string).collect();
                if let Some(d) = self.cluster_domain.as_deref() {
                    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
                    let mut s = vec![format!("{ns}.svc.{d}"), format!("svc.{d}"), d.to_string()];
                    s.append(&mut cfg.searches);
                    cfg.searches = dedup(s);
                }
                cfg.options = DEFAULT_OPTIONS.iter().map(|s| s.to_string()).collect();
            }
            Kind::Cluster => {
                let node = "kubelet does not have ClusterDNS IP configured and cannot create Pod using \"ClusterFirst\" policy. Falling back to \"Default\" policy.".to_string();
                warnings.push(Warning { reason: "MissingClusterDNS", message: format!("pod: {:?}. {node}", super::format_pod(pod)), node_message: Some(node) });
                host_kind = true;
            }
            Kind::Host => {}
        }
        if host_kind && self.resolv_conf.is_none() {
            for ip in &self.node_ips {
                cfg.servers.push(if ip.is_ipv6() { "::1".into() } else { "127.0.0.1".into() });
            }
            if cfg.servers.is_empty() {
                cfg.servers.push("127.0.0.1".into());
            }
            cfg.searches = vec![".".into()];
        }
        if let Some(dc) = spec.and_then(|s| s.dns_config.as_ref()) {
            cfg.servers = dedup(cfg.servers.into_iter().chain(dc.nameservers.clone().unwrap_or_default()).collect());
            cfg.searches = dedup(cfg.searches.into_iter().chain(dc.searches.clone().unwrap_or_default()).collect());
            let pod_opts: Vec<(String, Option<String>)> = dc.options.iter().flatten().map(|o| (o.name.clone().unwrap_or_default(), o.value.clone())).collect();
            cfg.options = merge_options(&cfg.options, &pod_opts);
        }
        self.fit_limits(&mut cfg, &mut warnings);
        (cfg, warnings)
    }

    /// formDNSConfigFitsLimits.
    fn fit_limits(&self, cfg: &mut DnsConfig, warnings: &mut Vec<Warning>) {
        if cfg.servers.len() > MAX_NAMESERVERS {
            cfg.servers.truncate(MAX_NAMESERVERS);
            warnings.push(Warning {
                reason: "DNSConfigForming",
                message: format!("Nameserver limits were exceeded, some nameservers have been omitted, the applied nameserver line is: {}", cfg.servers.join(" ")),
                node_message: None,
            });
        }
        let mut exceeded = false;
        if cfg.searches.len() > MAX_SEARCH_PATHS {
            cfg.searches.truncate(MAX_SEARCH_PATHS);
            exceeded = true;
        }
        let before = cfg.searches.len();
        cfg.searches.retain(|s| s.len() <= MAX_DOMAIN_LEN);
        exceeded |= cfg.searches.len() != before;
        let total = cfg.searches.join(" ").len();
        if total > MAX_SEARCH_CHARS {
            let mut cut = 0;
            let mut cut_len = 0;
            for s in cfg.searches.iter().rev() {
                cut_len += s.len() + 1;
                cut += 1;
                if total - cut_len <= MAX_SEARCH_CHARS {
                    break;
                }
            }
            let keep = cfg.searches.len() - cut;
            cfg.searches.truncate(keep);
            exceeded = true;
        }
        if exceeded {
            warnings.push(Warning {
                reason: "DNSConfigForming",
                message: format!("Search Line limits were exceeded, some search paths have been omitted, the applied search line is: {}", cfg.searches.join(" ")),
                node_message: None,
            });
        }
    }
}

/// CheckLimitsForResolvConf: what is wrong with the host's resolver file for
/// pods (a node `CheckLimitsForResolvConf` warning at start), if anything.
pub fn check_resolv_conf(path: &Path, cluster_domain: Option<&str>) -> Option<String> {
    let content = match std::fs::read_to_string(path) {
        Ok(c) => c,
        Err(e) => return Some(format!("open {}: {e}", path.display())),
    };
    let (_, searches, _) = parse(&content);
    let limit = MAX_SEARCH_PATHS - if cluster_domain.is_some() { 3 } else { 0 };
    let p = path.display();
    if searches.len() > limit {
        return Some(format!("Resolv.conf file '{p}' contains search line consisting of more than {limit} domains!"));
    }
    if searches.iter().any(|s| s.len() > MAX_DOMAIN_LEN) {
        return Some(format!("Resolv.conf file {:?} contains a search path which length is more than allowed {MAX_DOMAIN_LEN} chars!", p.to_string()));
    }
    if searches.join(" ").len() > MAX_SEARCH_CHARS {
        return Some(format!("Resolv.conf file '{p}' contains search line which length is more than allowed {MAX_SEARCH_CHARS} chars!"));
    }
    None
}

/// resolv.conf as containerd's CRI writes it (parseDNSOptions); an empty
/// configuration means the host's file as it is.
pub fn render(cfg: &DnsConfig, host: &str) -> String {
    if cfg.servers.is_empty() && cfg.searches.is_empty() && cfg.options.is_empty() {
        return host.to_string();
    }
    let mut s = String::new();
    if !cfg.searches.is_empty() {
        s.push_str(&format!("search {}\n", cfg.searches.join(" ")));
    }
    for n in &cfg.servers {
        s.push_str(&format!("nameserver {n}\n"));
    }
    if !cfg.options.is_empty() {
        s.push_str(&format!("options {}\n", cfg.options.join(" ")));
    }
    s
}

/// The pod's hostname and domain (`<subdomain>.<ns>.svc.<clusterDomain>`).
pub fn hostname_and_domain(pod: &Pod, cluster_domain: Option<&str>) -> (String, Option<String>) {
    let hostname = super::store::pod_hostname(pod);
    let domain = pod.spec.as_ref().and_then(|s| s.subdomain.as_deref()).filter(|s| !s.is_empty()).map(|sub| {
        let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
        format!("{sub}.{ns}.svc.{}", cluster_domain.unwrap_or(""))
    });
    (hostname, domain)
}

/// The kernel hostname (GetNodenameForKernel): the FQDN with
/// `setHostnameAsFQDN`, at most 64 characters.
pub fn kernel_hostname(pod: &Pod, hostname: &str, domain: Option<&str>) -> Result<String, String> {
    let fqdn = pod.spec.as_ref().and_then(|s| s.set_hostname_as_fqdn) == Some(true);
    match domain {
        Some(d) if fqdn => {
            let name = format!("{hostname}.{d}");
            if name.len() > 64 {
                return Err(format!("failed to construct FQDN from pod hostname and cluster domain, FQDN {name} is too long (64 characters is the max, {} characters requested)", name.len()));
            }
            Ok(name)
        }
        _ => Ok(hostname.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodDNSConfig, PodDNSConfigOption, PodSpec};

    const HOST: &str = "# generated\nnameserver 192.168.1.1\nnameserver 192.168.1.2\nsearch corp.example. lab.example\noptions ndots:2 timeout:3\n";

    fn pod(policy: &str, host_network: bool, dns_config: Option<PodDNSConfig>) -> Pod {
        let mut p = Pod::default();
        p.metadata.name = Some("web".into());
        p.metadata.namespace = Some("shop".into());
        p.spec = Some(PodSpec { dns_policy: Some(policy.into()), host_network: Some(host_network), dns_config, ..Default::default() });
        p
    }

    fn cluster() -> Configurer {
        Configurer { cluster_dns: vec!["10.96.0.10".parse().unwrap()], cluster_domain: Some("cluster.local".into()), resolv_conf: Some("/etc/resolv.conf".into()), node_ips: vec![] }
    }

    fn resolv(c: &Configurer, p: &Pod) -> String {
        let (cfg, w) = c.pod_dns(p, HOST);
        assert!(w.is_empty(), "{w:?}");
        render(&cfg, HOST)
    }

    #[test]
    fn cluster_first_uses_the_cluster_dns_and_searches_then_the_hosts() {
        let want = "search shop.svc.cluster.local svc.cluster.local cluster.local corp.example lab.example\nnameserver 10.96.0.10\noptions ndots:5\n";
        assert_eq!(resolv(&cluster(), &pod("ClusterFirst", false, None)), want);
        assert_eq!(resolv(&cluster(), &pod("ClusterFirstWithHostNet", true, None)), want);
    }

    #[test]
    fn default_and_cluster_first_on_the_host_network_use_the_host() {
        let want = "search corp.example lab.example\nnameserver 192.168.1.1\nnameserver 192.168.1.2\noptions ndots:2 timeout:3\n";
        assert_eq!(resolv(&cluster(), &pod("Default", false, None)), want);
        assert_eq!(resolv(&cluster(), &pod("ClusterFirst", true, None)), want);
        // resolvConf "": no host DNS at all.
        let c = Configurer { resolv_conf: None, ..cluster() };
        assert_eq!(resolv(&c, &pod("Default", false, None)), "search .\nnameserver 127.0.0.1\n");
    }

    #[test]
    fn none_takes_only_dns_config_and_every_policy_merges_it() {
        let dc = PodDNSConfig {
            nameservers: Some(vec!["1.1.1.1".into(), "10.96.0.10".into()]),
            searches: Some(vec!["extra.example".into(), "svc.cluster.local".into()]),
            options: Some(vec![PodDNSConfigOption { name: Some("ndots".into()), value: Some("2".into()) }, PodDNSConfigOption { name: Some("edns0".into()), value: None }]),
        };
        assert_eq!(resolv(&cluster(), &pod("None", false, Some(dc.clone()))), "search extra.example svc.cluster.local\nnameserver 1.1.1.1\nnameserver 10.96.0.10\noptions ndots:2 edns0\n");
        assert_eq!(
            resolv(&cluster(), &pod("ClusterFirst", false, Some(dc))),
            "search shop.svc.cluster.local svc.cluster.local cluster.local corp.example lab.example extra.example\nnameserver 10.96.0.10\nnameserver 1.1.1.1\noptions ndots:2 edns0\n"
        );
    }

    #[test]
    fn cluster_first_without_a_cluster_dns_warns_and_falls_back_to_the_host() {
        let c = Configurer { cluster_dns: vec![], ..cluster() };
        let (cfg, w) = c.pod_dns(&pod("ClusterFirst", false, None), HOST);
        assert_eq!(cfg.servers, ["192.168.1.1", "192.168.1.2"]);
        assert_eq!(w.len(), 1);
        assert_eq!(w[0].reason, "MissingClusterDNS");
        assert_eq!(w[0].node_message.as_deref(), Some("kubelet does not have ClusterDNS IP configured and cannot create Pod using \"ClusterFirst\" policy. Falling back to \"Default\" policy."));
        assert!(w[0].message.starts_with("pod: \"web_shop()\". kubelet does not have ClusterDNS IP configured"), "{}", w[0].message);
    }

    #[test]
    fn limits_cut_nameservers_and_search_paths_with_upstreams_warning() {
        let many: Vec<String> = (0..40).map(|i| format!("d{i}.example")).collect();
        let long = "x".repeat(254);
        let dc = PodDNSConfig { nameservers: Some(vec!["1.1.1.1".into(), "2.2.2.2".into(), "3.3.3.3".into()]), searches: Some([vec![long], many].concat()), options: None };
        let (cfg, w) = cluster().pod_dns(&pod("ClusterFirst", false, Some(dc)), HOST);
        assert_eq!(cfg.servers, ["10.96.0.10", "1.1.1.1", "2.2.2.2"]);
        assert_eq!(cfg.searches.len(), 31, "32 kept, the one over 253 characters dropped");
        assert_eq!(w.iter().map(|w| w.reason).collect::<Vec<_>>(), ["DNSConfigForming", "DNSConfigForming"]);
        assert_eq!(w[0].message, "Nameserver limits were exceeded, some nameservers have been omitted, the applied nameserver line is: 10.96.0.10 1.1.1.1 2.2.2.2");
        assert!(w[1].message.starts_with("Search Line limits were exceeded, some search paths have been omitted, the applied search line is: shop.svc.cluster.local svc.cluster.local"));
        // 2048 characters at most on the line.
        let wide: Vec<String> = (0..20).map(|i| format!("{i:03}{}", "y".repeat(200))).collect();
        let (cfg, _) = cluster().pod_dns(&pod("None", false, Some(PodDNSConfig { searches: Some(wide), ..Default::default() })), HOST);
        assert!(cfg.searches.join(" ").len() <= 2048 && cfg.searches.len() == 10, "{}", cfg.searches.len());
    }

    #[test]
    fn hostnames_use_the_configured_domain_and_may_be_fqdns() {
        let mut p = pod("ClusterFirst", false, None);
        p.spec.as_mut().unwrap().hostname = Some("db-0".into());
        p.spec.as_mut().unwrap().subdomain = Some("db".into());
        let (h, d) = hostname_and_domain(&p, Some("corp.internal"));
        assert_eq!((h.as_str(), d.as_deref()), ("db-0", Some("db.shop.svc.corp.internal")));
        assert_eq!(kernel_hostname(&p, &h, d.as_deref()).unwrap(), "db-0");
        p.spec.as_mut().unwrap().set_hostname_as_fqdn = Some(true);
        assert_eq!(kernel_hostname(&p, &h, d.as_deref()).unwrap(), "db-0.db.shop.svc.corp.internal");
        let long = "a".repeat(60);
        assert!(kernel_hostname(&p, &long, d.as_deref()).unwrap_err().contains("is too long (64 characters is the max"));
    }

    #[test]
    fn the_hosts_resolver_file_is_checked_against_the_limits() {
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("resolv.conf");
        std::fs::write(&f, "nameserver 1.1.1.1\nsearch a b\n").unwrap();
        assert_eq!(check_resolv_conf(&f, Some("cluster.local")), None);
        let many: Vec<String> = (0..30).map(|i| format!("d{i}")).collect();
        std::fs::write(&f, format!("search {}\n", many.join(" "))).unwrap();
        assert_eq!(check_resolv_conf(&f, None), None, "30 of 32");
        assert_eq!(check_resolv_conf(&f, Some("cluster.local")).unwrap(), format!("Resolv.conf file '{}' contains search line consisting of more than 29 domains!", f.display()));
        assert!(check_resolv_conf(&t.path().join("none"), None).unwrap().starts_with("open "));
    }

    #[test]
    fn a_resolved_stub_host_uses_resolveds_upstream_file() {
        let t = tempfile::tempdir().unwrap();
        let (etc, resolved) = (t.path().join("resolv.conf"), t.path().join("upstream.conf"));
        std::fs::write(&etc, "nameserver 127.0.0.53\noptions edns0 trust-ad\nsearch .\n").unwrap();
        assert_eq!(default_resolv_conf(&etc, &resolved), etc, "resolved not running: the file as it is");
        std::fs::write(&resolved, "nameserver 192.168.1.1\n").unwrap();
        assert_eq!(default_resolv_conf(&etc, &resolved), resolved);
        std::fs::write(&etc, "nameserver 192.168.1.1\n").unwrap();
        assert_eq!(default_resolv_conf(&etc, &resolved), etc, "not the stub");
    }
}
