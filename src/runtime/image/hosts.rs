//! containerd's registry host configuration (`config_path`, the `certs.d`
//! layout of remotes/docker/config/hosts.go): `<dir>/<host[:port]>/hosts.toml`
//! (or `<dir>/<host>_<port>_/`, then `<dir>/_default/`) lists the hosts to
//! contact for a registry: each `[host."<url>"]` entry (a mirror) in file
//! order, then the `server` (default `https://<registry>`, Docker Hub's is
//! `registry-1.docker.io`, a loopback registry's is plain HTTP). Per host:
//! `capabilities` (`pull`, `resolve`, `push`; all when unset), `ca` (a path or
//! a list, relative to the host's directory), `skip_verify`, and the scheme:
//! `http://` hosts are spoken to in plain HTTP. A directory without a
//! `hosts.toml` contributes its `*.crt` files as CAs of the server, like
//! Docker's `certs.d`.
//!
//! Not supported (each such host is skipped with a warning, the others are
//! used): a path other than `/v2` (or `override_path`), `client`
//! certificates and `header`s.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use tracing::warn;

/// containerd's default `config_path` (containerd 2.x's default; 1.6 ships it empty).
pub const DEFAULT_CONFIG_PATH: &str = "/etc/containerd/certs.d";

/// Why a registry's host configuration could not be read.
#[derive(Debug, thiserror::Error)]
pub enum HostsError {
    /// The `hosts.toml` (or a CA file it names) could not be read.
    #[error("failed to read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The `hosts.toml` is not valid TOML of the expected shape.
    #[error("failed to decode hosts.toml {}: {message}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        message: String,
    },
    /// No configured host may resolve the reference.
    #[error("no host of registry {0} has the resolve capability")]
    NoResolveHost(String),
    /// A host URL or capability is invalid.
    #[error("invalid host {host:?} in {}: {message}", path.display())]
    InvalidHost {
        /// The file.
        path: PathBuf,
        /// The host as written.
        host: String,
        /// What is wrong with it.
        message: String,
    },
}

/// One registry host to try, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryHost {
    /// `host[:port]` to contact; `None` for the reference's own registry
    /// (the default when nothing is configured).
    pub host: Option<String>,
    /// Plain HTTP instead of HTTPS.
    pub plain_http: bool,
    /// May resolve tags to digests.
    pub resolve: bool,
    /// May serve content by digest.
    pub pull: bool,
    /// Extra CA certificates (PEM files).
    pub ca: Vec<PathBuf>,
    /// Do not verify the server's certificate.
    pub skip_verify: bool,
}

impl RegistryHost {
    /// The reference's own registry, as without any configuration.
    pub fn default_server(plain_http: bool) -> RegistryHost {
        RegistryHost { host: None, plain_http, resolve: true, pull: true, ca: Vec::new(), skip_verify: false }
    }

    /// How to name this host in messages (`registry` when it is the reference's own).
    pub fn name<'a>(&'a self, registry: &'a str) -> &'a str {
        self.host.as_deref().unwrap_or(registry)
    }
}

/// `ca` is a path or a list of paths.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// The settings of one host (the file's top level holds the server's).
#[derive(Debug, Default, Deserialize)]
struct HostFields {
    capabilities: Option<Vec<String>>,
    ca: Option<OneOrMany>,
    skip_verify: Option<bool>,
    client: Option<toml::Value>,
    header: Option<toml::Value>,
    override_path: Option<bool>,
}

/// A `hosts.toml`.
#[derive(Debug, Default, Deserialize)]
struct HostsFile {
    server: Option<String>,
    #[serde(default)]
    host: toml::map::Map<String, toml::Value>,
    #[serde(flatten)]
    fields: HostFields,
}

/// The candidate directories for `registry` under `root`.
fn host_dirs(root: &Path, registry: &str) -> Vec<PathBuf> {
    let mut dirs = vec![root.join(registry)];
    if let Some((host, port)) = registry.rsplit_once(':').filter(|(h, p)| !h.is_empty() && p.bytes().all(|b| b.is_ascii_digit())) {
        dirs.push(root.join(format!("{host}_{port}_")));
    }
    dirs.push(root.join("_default"));
    dirs
}

/// The hosts to try for `registry` (as named in the image reference, e.g.
/// `docker.io`, `127.0.0.1:5000`), mirrors first, the server last.
/// `default_plain_http` applies to a server nothing configures explicitly.
pub async fn hosts_for(root: Option<&Path>, registry: &str, default_plain_http: bool) -> Result<Vec<RegistryHost>, HostsError> {
    let default = || vec![RegistryHost::default_server(default_plain_http)];
    let Some(root) = root else { return Ok(default()) };
    for dir in host_dirs(root, registry) {
        match tokio::fs::metadata(&dir).await {
            Ok(m) if m.is_dir() => return read_dir_config(&dir, registry, default_plain_http).await,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => return Err(HostsError::Read { path: dir, source }),
        }
    }
    Ok(default())
}

async fn read_dir_config(dir: &Path, registry: &str, default_plain_http: bool) -> Result<Vec<RegistryHost>, HostsError> {
    let path = dir.join("hosts.toml");
    match tokio::fs::read_to_string(&path).await {
        Ok(text) => parse_hosts(&text, dir, &path, registry, default_plain_http),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // Docker's certs.d layout: CA files for the server.
            let mut server = RegistryHost::default_server(default_plain_http);
            let mut entries = tokio::fs::read_dir(dir).await.map_err(|source| HostsError::Read { path: dir.to_owned(), source })?;
            while let Some(entry) = entries.next_entry().await.map_err(|source| HostsError::Read { path: dir.to_owned(), source })? {
                if entry.path().extension().is_some_and(|x| x == "crt") {
                    server.ca.push(entry.path());
                }
            }
            server.ca.sort();
            Ok(vec![server])
        }
        Err(source) => Err(HostsError::Read { path, source }),
    }
}

/// Parses a `hosts.toml` read from `dir` for `registry`.
pub fn parse_hosts(text: &str, dir: &Path, path: &Path, registry: &str, default_plain_http: bool) -> Result<Vec<RegistryHost>, HostsError> {
    let file: HostsFile = toml::from_str(text).map_err(|e| HostsError::Parse { path: path.to_owned(), message: e.message().to_owned() })?;
    let mut hosts = Vec::new();
    // The `host` table keeps the file's order (toml's preserve_order).
    for (url, value) in &file.host {
        let fields: HostFields = value.clone().try_into().map_err(|e: toml::de::Error| HostsError::InvalidHost {
            path: path.to_owned(),
            host: url.clone(),
            message: e.message().to_owned(),
        })?;
        if let Some(host) = host_entry(url, &fields, dir, path)? {
            hosts.push(host);
        }
    }
    let server = match &file.server {
        Some(url) => host_entry(url, &file.fields, dir, path)?,
        None => {
            let mut server = host_entry(registry, &file.fields, dir, path)?;
            if let Some(s) = server.as_mut() {
                // No explicit scheme: the defaults of an unconfigured server.
                s.host = None;
                s.plain_http = default_plain_http;
            }
            server
        }
    };
    hosts.extend(server);
    Ok(hosts)
}

/// One host entry; `None` (warned) for a host this client cannot use.
fn host_entry(url: &str, fields: &HostFields, dir: &Path, path: &Path) -> Result<Option<RegistryHost>, HostsError> {
    let invalid = |message: String| HostsError::InvalidHost { path: path.to_owned(), host: url.to_owned(), message };
    let (plain_http, rest) = match (url.strip_prefix("http://"), url.strip_prefix("https://")) {
        (Some(rest), _) => (true, rest),
        (None, Some(rest)) => (false, rest),
        (None, None) if url.contains("://") => return Err(invalid("scheme must be http or https".into())),
        (None, None) => (false, url),
    };
    let (host, host_path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
        None => (rest, ""),
    };
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err(invalid("no host".into()));
    }
    let (mut resolve, mut pull) = (true, true);
    if let Some(caps) = &fields.capabilities {
        (resolve, pull) = (false, false);
        for cap in caps {
            match cap.as_str() {
                "resolve" => resolve = true,
                "pull" => pull = true,
                "push" => {}
                other => return Err(invalid(format!("unknown capability {other:?}"))),
            }
        }
    }
    let skip = |why: &str| {
        warn!(file = %path.display(), host = url, reason = why, "registry host not supported, skipped");
        Ok(None)
    };
    if !(host_path.is_empty() || host_path == "/v2") || fields.override_path == Some(true) {
        return skip("a path other than /v2");
    }
    if fields.client.is_some() {
        return skip("client certificates");
    }
    if fields.header.is_some() {
        return skip("custom headers");
    }
    let ca = match &fields.ca {
        None => Vec::new(),
        Some(OneOrMany::One(p)) => vec![p.clone()],
        Some(OneOrMany::Many(ps)) => ps.clone(),
    };
    let ca = ca.into_iter().map(|p| if Path::new(&p).is_absolute() { PathBuf::from(p) } else { dir.join(p) }).collect();
    Ok(Some(RegistryHost { host: Some(host.to_owned()), plain_http, resolve, pull, ca, skip_verify: fields.skip_verify.unwrap_or(false) }))
}

/// The `config_path` of containerd's CRI registry settings in its
/// `config.toml` (version 2: `plugins."io.containerd.grpc.v1.cri".registry`,
/// version 3: `plugins."io.containerd.cri.v1.images".registry`); `None` when
/// unset, empty, or the file is missing or unreadable.
pub fn containerd_config_path(config_toml: &str) -> Option<PathBuf> {
    let doc: toml::Table = toml::from_str(config_toml).ok()?;
    let plugins = doc.get("plugins")?.as_table()?;
    ["io.containerd.grpc.v1.cri", "io.containerd.cri.v1.images"]
        .iter()
        .filter_map(|p| plugins.get(*p)?.get("registry")?.get("config_path")?.as_str())
        .find(|p| !p.is_empty())
        .map(|p| PathBuf::from(p.split(':').next().unwrap_or(p)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Vec<RegistryHost>, HostsError> {
        parse_hosts(text, Path::new("/certs.d/r.example"), Path::new("/certs.d/r.example/hosts.toml"), "r.example", false)
    }

    #[test]
    fn mirrors_come_first_in_file_order_then_the_server() {
        let hosts = parse(
            r#"
server = "https://r.example"

[host."http://127.0.0.1:5102"]
  capabilities = ["pull", "resolve"]

[host."https://a.mirror"]
  capabilities = ["pull"]
  ca = "ca.pem"
  skip_verify = true

[host."b.mirror:8443/v2"]
"#,
        )
        .unwrap();
        let names: Vec<_> = hosts.iter().map(|h| h.host.clone().unwrap()).collect();
        assert_eq!(names, ["127.0.0.1:5102", "a.mirror", "b.mirror:8443", "r.example"]);
        assert!(hosts[0].plain_http && hosts[0].resolve && hosts[0].pull);
        assert!(!hosts[1].plain_http && !hosts[1].resolve && hosts[1].pull && hosts[1].skip_verify);
        assert_eq!(hosts[1].ca, [PathBuf::from("/certs.d/r.example/ca.pem")]);
        assert!(!hosts[2].plain_http && hosts[2].resolve && hosts[2].pull, "no scheme is https, all capabilities");
        assert!(!hosts[3].plain_http);
    }

    #[test]
    fn no_server_means_the_default_one_with_top_level_settings() {
        let hosts = parse("ca = [\"/etc/x.pem\", \"y.pem\"]\n[host.\"http://m:5000\"]\n").unwrap();
        assert_eq!(hosts.len(), 2);
        assert_eq!(hosts[1].host, None);
        assert_eq!(hosts[1].ca, [PathBuf::from("/etc/x.pem"), PathBuf::from("/certs.d/r.example/y.pem")]);
        assert!(hosts[1].resolve);
    }

    #[test]
    fn unsupported_hosts_are_skipped() {
        let hosts = parse(
            r#"
[host."https://m1/prefix"]
[host."https://m2"]
  override_path = true
[host."https://m3"]
  client = ["/c.cert", "/c.key"]
[host."https://m4"]
  header = { x = "y" }
[host."https://m5/v2/"]
"#,
        )
        .unwrap();
        let names: Vec<_> = hosts.iter().map(|h| h.host.clone()).collect();
        assert_eq!(names, [Some("m5".to_owned()), None]);
    }

    #[test]
    fn bad_files_are_errors_naming_the_file() {
        let e = parse("server = [").unwrap_err().to_string();
        assert!(e.starts_with("failed to decode hosts.toml /certs.d/r.example/hosts.toml: "), "{e}");
        let e = parse("[host.\"https://m\"]\ncapabilities = [\"fly\"]\n").unwrap_err().to_string();
        assert!(e.contains(r#"invalid host "https://m""#) && e.contains("unknown capability \"fly\""), "{e}");
        let e = parse("[host.\"ftp://m\"]\n").unwrap_err().to_string();
        assert!(e.contains("scheme must be http or https"), "{e}");
        assert!(parse("[host.\"https://m\"]\nskip_verify = \"yes\"\n").is_err());
    }

    #[test]
    fn directory_candidates_follow_containerd() {
        assert_eq!(
            host_dirs(Path::new("/d"), "127.0.0.1:5000"),
            [PathBuf::from("/d/127.0.0.1:5000"), PathBuf::from("/d/127.0.0.1_5000_"), PathBuf::from("/d/_default")]
        );
        assert_eq!(host_dirs(Path::new("/d"), "docker.io"), [PathBuf::from("/d/docker.io"), PathBuf::from("/d/_default")]);
    }

    #[test]
    fn containerd_config_path_is_read_from_v2_and_v3_configs() {
        let v2 = "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\nconfig_path = \"/etc/containerd/certs.d\"\n";
        assert_eq!(containerd_config_path(v2), Some(PathBuf::from("/etc/containerd/certs.d")));
        let v3 = "version = 3\n[plugins.\"io.containerd.cri.v1.images\".registry]\nconfig_path = \"/x:/y\"\n";
        assert_eq!(containerd_config_path(v3), Some(PathBuf::from("/x")));
        assert_eq!(containerd_config_path("version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\nconfig_path = \"\"\n"), None);
        assert_eq!(containerd_config_path("not toml ["), None);
    }

    #[tokio::test]
    async fn unconfigured_registries_use_their_own_server() {
        let dir = tempfile::tempdir().unwrap();
        let hosts = hosts_for(Some(dir.path()), "127.0.0.1:5000", true).await.unwrap();
        assert_eq!(hosts, [RegistryHost::default_server(true)]);
        assert_eq!(hosts_for(None, "docker.io", false).await.unwrap(), [RegistryHost::default_server(false)]);
        std::fs::create_dir_all(dir.path().join("127.0.0.1_5001_")).unwrap();
        std::fs::write(dir.path().join("127.0.0.1_5001_/ca.crt"), "x").unwrap();
        let hosts = hosts_for(Some(dir.path()), "127.0.0.1:5001", true).await.unwrap();
        assert_eq!(hosts[0].ca, [dir.path().join("127.0.0.1_5001_/ca.crt")]);
        std::fs::create_dir_all(dir.path().join("_default")).unwrap();
        std::fs::write(dir.path().join("_default/hosts.toml"), "[host.\"http://127.0.0.1:9\"]\n").unwrap();
        let hosts = hosts_for(Some(dir.path()), "other.example", false).await.unwrap();
        assert_eq!(hosts[0].host.as_deref(), Some("127.0.0.1:9"));
    }
}
