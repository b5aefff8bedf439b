//! Which registry credentials apply to an image, the kubelet's docker keyring
//! (pkg/credentialprovider/keyring.go, secrets/secrets.go): every credential
//! source (a pod's pull secrets, the node's docker config, a credential
//! provider plugin's answer) is a docker config, a map from a registry
//! location (`host[:port][/path]`, optionally with `https://`/`http://`, the
//! host possibly with globs such as `*.example.com`) to a username and
//! password. A keyring indexes those locations (the scheme and a `/v1/` or
//! `/v2/` path prefix dropped), reverse-sorted so that more specific paths come
//! first, and [`Keyring::lookup`] returns every credential whose location
//! matches the image's repository (`registry/path`): same port, same number
//! of host labels each matching its glob, and the location's path a prefix of
//! the image's. Docker Hub images fall back to `index.docker.io` entries.
//!
//! Pod pull secrets are Secrets of type `kubernetes.io/dockerconfigjson`
//! (`.dockerconfigjson`, `{"auths": {...}}`) or `kubernetes.io/dockercfg`
//! (`.dockercfg`, the bare map); others are ignored, and a secret that does
//! not parse fails the pull (upstream's `MakeDockerKeyring` error).

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine as _;
use k8s_openapi::api::core::v1::Secret;
use oci_client::secrets::RegistryAuth;
use serde::Deserialize;

/// Secret type of a `config.json`-style pull secret.
pub const DOCKER_CONFIG_JSON_TYPE: &str = "kubernetes.io/dockerconfigjson";
/// Its data key.
pub const DOCKER_CONFIG_JSON_KEY: &str = ".dockerconfigjson";
/// Secret type of a legacy `.dockercfg` pull secret.
pub const DOCKERCFG_TYPE: &str = "kubernetes.io/dockercfg";
/// Its data key.
pub const DOCKERCFG_KEY: &str = ".dockercfg";

/// Docker Hub's location in docker configs (`https://index.docker.io/v1/` indexes as this).
const DEFAULT_REGISTRY_HOST: &str = "index.docker.io";

/// Why a pull secret could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The secret's docker config is not valid JSON of the expected shape.
    #[error("failed to parse image pull secret \"{namespace}/{name}\" ({key}): {source}")]
    Parse {
        /// The secret's namespace.
        namespace: String,
        /// The secret's name.
        name: String,
        /// The data key read (`.dockerconfigjson` or `.dockercfg`).
        key: &'static str,
        /// The parser's error.
        #[source]
        source: ConfigError,
    },
}

/// Why a docker config document is invalid.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Not JSON of the expected shape.
    #[error("{0}")]
    Json(#[from] serde_json::Error),
    /// An `auth` field that is not base64 of `username:password`.
    #[error("error parsing username and password from docker config: unable to parse auth field, must be formatted as base64(username:password)")]
    AuthField,
}

/// Where a credential came from (for logs; never contains the secret itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A pod's image pull secret `namespace/name`.
    Secret(String),
    /// The node's docker config file.
    Node,
    /// A credential provider plugin, by name.
    Provider(String),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Secret(s) => write!(f, "secret {s}"),
            Source::Node => f.write_str("node docker config"),
            Source::Provider(p) => write!(f, "credential provider {p}"),
        }
    }
}

/// One credential for a registry.
#[derive(Clone)]
pub struct Credential {
    /// What to send.
    pub auth: RegistryAuth,
    /// Where it came from.
    pub source: Source,
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.auth {
            RegistryAuth::Anonymous => "anonymous",
            RegistryAuth::Basic(..) => "basic",
            RegistryAuth::Bearer(_) => "bearer",
        };
        f.debug_struct("Credential").field("auth", &kind).field("source", &self.source).finish()
    }
}

/// A docker config: registry location → credential, in document order.
pub type DockerConfig = Vec<(String, RegistryAuth)>;

/// One entry of a docker config as upstream's `DockerConfigEntry` reads it:
/// `auth` (base64 of `user:password`) wins over `username`/`password`.
#[derive(Debug, Default, Deserialize)]
struct Entry {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    auth: String,
}

/// `.dockerconfigjson`: `{"auths": {location: entry}}`.
#[derive(Debug, Default, Deserialize)]
struct DockerConfigJson {
    #[serde(default)]
    auths: BTreeMap<String, Entry>,
}

impl Entry {
    fn into_auth(self) -> Result<RegistryAuth, ConfigError> {
        let (user, password) = if self.auth.is_empty() {
            (self.username, self.password)
        } else {
            decode_auth_field(&self.auth)?
        };
        Ok(basic_or_anonymous(user, password))
    }
}

/// `user`/`password` as a basic credential; an empty pair means no credential.
pub(crate) fn basic_or_anonymous(user: String, password: String) -> RegistryAuth {
    if user.is_empty() && password.is_empty() {
        RegistryAuth::Anonymous
    } else {
        RegistryAuth::Basic(user, password)
    }
}

/// Decodes an `auth` field: padded or unpadded standard base64 of `user:password`.
// Upstream: pkg/credentialprovider/config.go decodeDockerConfigFieldAuth.
pub(crate) fn decode_auth_field(field: &str) -> Result<(String, String), ConfigError> {
    let decoded = if field.trim().ends_with('=') {
        base64::engine::general_purpose::STANDARD.decode(field)
    } else {
        base64::engine::general_purpose::STANDARD_NO_PAD.decode(field)
    }
    .map_err(|_| ConfigError::AuthField)?;
    let text = String::from_utf8_lossy(&decoded);
    let (user, password) = text.split_once(':').ok_or(ConfigError::AuthField)?;
    Ok((user.to_owned(), password.to_owned()))
}

/// Parses a `.dockerconfigjson` document (`{"auths": {...}}`).
pub fn parse_docker_config_json(bytes: &[u8]) -> Result<DockerConfig, ConfigError> {
    let doc: DockerConfigJson = serde_json::from_slice(bytes)?;
    doc.auths.into_iter().map(|(k, e)| Ok((k, e.into_auth()?))).collect()
}

/// Parses a legacy `.dockercfg` document (locations at the top level).
pub fn parse_dockercfg(bytes: &[u8]) -> Result<DockerConfig, ConfigError> {
    let doc: BTreeMap<String, Entry> = serde_json::from_slice(bytes)?;
    doc.into_iter().map(|(k, e)| Ok((k, e.into_auth()?))).collect()
}

/// A set of credentials indexed by registry location.
#[derive(Debug, Default, Clone)]
pub struct Keyring {
    /// (location key, credential) in insertion order; `index` orders the keys.
    creds: Vec<(String, Credential)>,
    /// Distinct keys, reverse-sorted (more specific paths first).
    index: Vec<String>,
}

impl Keyring {
    /// Adds every entry of `config`, from `source`. Entries whose location is
    /// not a valid URL are skipped (upstream logs and ignores them).
    pub fn add(&mut self, source: &Source, config: DockerConfig) {
        for (location, auth) in config {
            let Some(key) = location_key(&location) else {
                tracing::warn!(location = %location, %source, "ignoring invalid registry location in docker config");
                continue;
            };
            self.index.push(key.clone());
            self.creds.push((key, Credential { auth, source: source.clone() }));
        }
        self.index.sort_unstable_by(|a, b| b.cmp(a));
        self.index.dedup();
    }

    /// Whether the keyring has no entry.
    pub fn is_empty(&self) -> bool {
        self.creds.is_empty()
    }

    /// The credentials for `repo` (`registry/path`, no tag or digest), most
    /// specific location first.
    pub fn lookup(&self, repo: &str) -> Vec<Credential> {
        let mut out = Vec::new();
        for key in &self.index {
            if url_matches(key, repo) {
                out.extend(self.creds.iter().filter(|(k, _)| k == key).map(|(_, c)| c.clone()));
            }
        }
        if out.is_empty() && is_default_registry_match(repo) {
            out.extend(self.creds.iter().filter(|(k, _)| k == DEFAULT_REGISTRY_HOST).map(|(_, c)| c.clone()));
        }
        out
    }
}

/// A pod's pull secrets, parsed: the keyring of every docker-config secret.
#[derive(Debug, Default, Clone)]
pub struct PullSecrets {
    keyring: Keyring,
}

impl PullSecrets {
    /// Reads the docker configs of `secrets`; secrets of other types (or
    /// without the data key, or with it empty) are ignored.
    // Upstream: pkg/credentialprovider/secrets/secrets.go secretsToTrackedDockerConfigs.
    pub fn from_secrets(secrets: &[Secret]) -> Result<PullSecrets, SecretError> {
        let mut keyring = Keyring::default();
        for secret in secrets {
            let namespace = secret.metadata.namespace.clone().unwrap_or_default();
            let name = secret.metadata.name.clone().unwrap_or_default();
            let data = |key: &str| secret.data.as_ref().and_then(|d| d.get(key)).map(|b| b.0.as_slice()).filter(|b| !b.is_empty());
            let parsed = match secret.type_.as_deref() {
                Some(DOCKER_CONFIG_JSON_TYPE) => data(DOCKER_CONFIG_JSON_KEY).map(|b| (DOCKER_CONFIG_JSON_KEY, parse_docker_config_json(b))),
                Some(DOCKERCFG_TYPE) => data(DOCKERCFG_KEY).map(|b| (DOCKERCFG_KEY, parse_dockercfg(b))),
                _ => None,
            };
            let Some((key, parsed)) = parsed else { continue };
            let config = parsed.map_err(|source| SecretError::Parse { namespace: namespace.clone(), name: name.clone(), key, source })?;
            keyring.add(&Source::Secret(format!("{namespace}/{name}")), config);
        }
        Ok(PullSecrets { keyring })
    }

    /// The secrets' credentials for `repo`.
    pub fn lookup(&self, repo: &str) -> Vec<Credential> {
        self.keyring.lookup(repo)
    }

    /// Whether no secret carried a docker config.
    pub fn is_empty(&self) -> bool {
        self.keyring.is_empty()
    }
}

/// A docker config location as a keyring key: `host[:port][/path]`, without
/// the scheme, with `/v1/` and `/v2/` path prefixes dropped. `None` when it is
/// not a valid URL.
fn location_key(location: &str) -> Option<String> {
    let rest = location.strip_prefix("https://").or_else(|| location.strip_prefix("http://")).unwrap_or(location);
    let (host, path) = split_schemeless(rest)?;
    let path = match path {
        p if p.starts_with("/v2/") || p.starts_with("/v1/") => &p[3..],
        p => p,
    };
    Some(if path.is_empty() || path == "/" { host.to_owned() } else { format!("{host}{path}") })
}

/// Splits a schemeless URL into host (with port) and path, dropping a query or
/// fragment, as Go's `url.Parse("https://" + s)` does; `None` when it would fail.
fn split_schemeless(s: &str) -> Option<(&str, &str)> {
    let s = s.split(['?', '#']).next().unwrap_or(s);
    let (host, path) = match s.find('/') {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, ""),
    };
    // Go rejects control characters, spaces in the host and a non-numeric port.
    if host.chars().any(|c| c.is_control() || c == ' ' || c == '%') || path.chars().any(char::is_control) {
        return None;
    }
    if let Some((_, port)) = host.rsplit_once(':').filter(|_| !host.ends_with(']')) {
        if !port.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
    }
    Some((host, path))
}

/// Splits `host[:port]` into its dot-separated labels and the port ("" when none).
fn host_parts(host: &str) -> (Vec<&str>, &str) {
    match host.rsplit_once(':') {
        Some((h, port)) if !h.is_empty() && !host.ends_with(']') => (h.split('.').collect(), port),
        _ => (host.split('.').collect(), ""),
    }
}

/// Whether the schemeless URL `target` matches `glob`: same port, the same
/// number of host labels each matching its glob (Go `filepath.Match`), and
/// `glob`'s path a prefix of `target`'s.
// Upstream: pkg/credentialprovider/keyring.go URLsMatch.
pub fn url_matches(glob: &str, target: &str) -> bool {
    let (Some((glob_host, glob_path)), Some((target_host, target_path))) = (split_schemeless(glob), split_schemeless(target)) else {
        return false;
    };
    let (glob_parts, glob_port) = host_parts(glob_host);
    let (target_parts, target_port) = host_parts(target_host);
    glob_port == target_port
        && glob_parts.len() == target_parts.len()
        && target_path.starts_with(glob_path)
        && glob_parts.iter().zip(&target_parts).all(|(g, t)| glob_match(g, t))
}

/// Whether a repository goes to Docker Hub by the shape of its name.
fn is_default_registry_match(repo: &str) -> bool {
    let first = repo.split('/').next().unwrap_or("");
    if first.is_empty() {
        return false;
    }
    if !repo.contains('/') || first == "docker.io" || first == DEFAULT_REGISTRY_HOST {
        return true;
    }
    !first.contains(['.', ':'])
}

/// Go's `path/filepath.Match` for one host label: `*` (any run of characters),
/// `?` (one character), `[...]` classes with ranges and `^` negation, `\` escapes.
/// A malformed pattern matches nothing. Linear backtracking to the last `*` (as
/// Go's matcher): a pull secret's pattern cannot make a match take exponential time.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    /// A class after `[` against `c`: (matched, chars consumed including `]`).
    fn class(p: &[char], c: char) -> Option<(bool, usize)> {
        let negated = p.first() == Some(&'^');
        let mut i = usize::from(negated);
        let mut matched = false;
        let mut first = true;
        loop {
            let ch = *p.get(i)?;
            if ch == ']' && !first {
                i += 1;
                break;
            }
            first = false;
            let lo = if ch == '\\' {
                i += 1;
                *p.get(i)?
            } else {
                ch
            };
            i += 1;
            let mut hi = lo;
            if p.get(i) == Some(&'-') && p.get(i + 1).is_some_and(|c| *c != ']') {
                i += 1;
                let ch = *p.get(i)?;
                hi = if ch == '\\' {
                    i += 1;
                    *p.get(i)?
                } else {
                    ch
                };
                i += 1;
            }
            if lo <= c && c <= hi {
                matched = true;
            }
        }
        Some((matched != negated, i))
    }
    /// The single-character token at `p[i..]` against `c`: (matched, next index);
    /// None at the end of the pattern or when it is malformed there.
    fn token(p: &[char], i: usize, c: char) -> Option<(bool, usize)> {
        match *p.get(i)? {
            '?' => Some((true, i + 1)),
            '[' => class(p.get(i + 1..)?, c).map(|(m, used)| (m, i + 1 + used)),
            '\\' => p.get(i + 1).map(|e| (*e == c, i + 2)),
            ch => Some((ch == c, i + 1)),
        }
    }
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    let (mut pi, mut ni) = (0, 0);
    // After the last `*`: where the pattern resumes and the name position it took.
    let mut star: Option<(usize, usize)> = None;
    while let Some(&c) = n.get(ni) {
        if p.get(pi) == Some(&'*') {
            pi += 1;
            star = Some((pi, ni));
            continue;
        }
        if let Some((true, next)) = token(&p, pi, c) {
            pi = next;
            ni += 1;
            continue;
        }
        // Let the last `*` take one more character, or fail.
        let Some((sp, sn)) = star else { return false };
        star = Some((sp, sn + 1));
        pi = sp;
        ni = sn + 1;
    }
    p.iter().skip(pi).all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;

    fn user(c: &Credential) -> &str {
        match &c.auth {
            RegistryAuth::Basic(u, _) => u,
            _ => "",
        }
    }

    fn keyring(entries: &[(&str, &str)]) -> Keyring {
        let mut k = Keyring::default();
        k.add(&Source::Node, entries.iter().map(|(loc, u)| (loc.to_string(), RegistryAuth::Basic(u.to_string(), "pw".into()))).collect());
        k
    }

    fn users(k: &Keyring, repo: &str) -> Vec<String> {
        k.lookup(repo).iter().map(|c| user(c).to_owned()).collect()
    }

    #[test]
    fn host_and_path_prefix_matching_prefers_specific_paths() {
        let k = keyring(&[("quay.io", "host"), ("quay.io/coreos", "ns"), ("quay.io/coreos/etcd", "repo")]);
        assert_eq!(users(&k, "quay.io/coreos/etcd"), ["repo", "ns", "host"]);
        assert_eq!(users(&k, "quay.io/coreos/flannel"), ["ns", "host"]);
        assert_eq!(users(&k, "quay.io/other/x"), ["host"]);
        // A path prefix is a string prefix, as upstream.
        assert_eq!(users(&k, "quay.io/coreosx/y"), ["ns", "host"]);
        assert!(users(&k, "example.com/coreos/etcd").is_empty());
    }

    #[test]
    fn schemes_and_api_version_paths_are_stripped() {
        let k = keyring(&[("https://r.example/v2/", "v2"), ("http://s.example:5000/v1/team", "v1")]);
        assert_eq!(users(&k, "r.example/a/b"), ["v2"]);
        assert_eq!(users(&k, "s.example:5000/team/app"), ["v1"]);
        assert!(users(&k, "s.example:5000/other/app").is_empty());
    }

    #[test]
    fn ports_must_be_equal() {
        let k = keyring(&[("127.0.0.1:5000", "a"), ("registry.local", "b")]);
        assert_eq!(users(&k, "127.0.0.1:5000/x/y"), ["a"]);
        assert!(users(&k, "127.0.0.1:5001/x/y").is_empty());
        assert!(users(&k, "registry.local:443/x").is_empty());
        assert_eq!(users(&k, "registry.local/x"), ["b"]);
    }

    #[test]
    fn globs_match_one_host_label_each() {
        let k = keyring(&[("*.example.com", "star"), ("r*.test", "q"), ("[a-c]x.io", "class")]);
        assert_eq!(users(&k, "a.example.com/x"), ["star"]);
        assert!(users(&k, "a.b.example.com/x").is_empty(), "* does not cross dots");
        assert!(users(&k, "example.com/x").is_empty());
        assert_eq!(users(&k, "r1.test/x"), ["q"]);
        assert_eq!(users(&k, "r.test/x"), ["q"]);
        // A `?` would start a URL query, as in Go's url.Parse: no one-character glob in hosts.
        assert!(url_matches("h?x", "h"));
        assert_eq!(users(&k, "bx.io/x"), ["class"]);
        assert!(users(&k, "dx.io/x").is_empty());
    }

    #[test]
    fn go_filepath_match_semantics() {
        assert!(glob_match("*", "anything"));
        assert!(glob_match("a*c", "abbbc"));
        assert!(!glob_match("a*c", "abd"));
        assert!(glob_match("[^a]b", "xb"));
        assert!(!glob_match("[^a]b", "ab"));
        assert!(glob_match("\\*", "*"));
        assert!(!glob_match("\\*", "x"));
        assert!(!glob_match("[", "x"), "malformed patterns match nothing");
        assert!(glob_match("[]a]", "]"));
        assert!(glob_match("a*b*c", "aXbYbZc") && !glob_match("a*b*c", "aXbYbZ"));
        assert!(glob_match("*?", "x") && !glob_match("*?", ""));
        assert!(glob_match("x*", "x") && glob_match("**", ""));
        assert!(!glob_match("*[", "abc"), "a malformed class after a star matches nothing");
        assert!(glob_match("[a-\\z]", "b") && !glob_match("[a-", "a"));
    }

    /// Nested `*` recursion was exponential: a pull secret's key like this one
    /// against a long host label kept a pull (and the fuzzer) busy for ever.
    #[test]
    fn many_stars_match_in_linear_time() {
        let pattern = format!("{}b", "*a".repeat(30));
        let name = "a".repeat(200);
        let t = std::time::Instant::now();
        assert!(!glob_match(&pattern, &name));
        assert!(glob_match(&pattern, &format!("{name}b")));
        assert!(t.elapsed() < std::time::Duration::from_secs(1), "{:?}", t.elapsed());
    }

    #[test]
    fn docker_hub_falls_back_to_index_docker_io() {
        let k = keyring(&[("https://index.docker.io/v1/", "hub")]);
        assert_eq!(users(&k, "docker.io/library/busybox"), ["hub"]);
        assert_eq!(users(&k, "index.docker.io/library/busybox"), ["hub"]);
        assert!(users(&k, "quay.io/x/y").is_empty());
        assert!(users(&k, "localhost:5000/x").is_empty());
    }

    #[test]
    fn same_location_in_two_sources_keeps_both_in_order() {
        let mut k = keyring(&[("r.example", "first")]);
        k.add(&Source::Provider("p".into()), vec![("r.example".into(), RegistryAuth::Basic("second".into(), "x".into()))]);
        let found = k.lookup("r.example/a");
        assert_eq!(found.iter().map(user).collect::<Vec<_>>(), ["first", "second"]);
        assert_eq!(found[1].source, Source::Provider("p".into()));
    }

    fn secret(name: &str, type_: &str, key: &str, data: &str) -> Secret {
        Secret {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta { name: Some(name.into()), namespace: Some("ns".into()), ..Default::default() },
            type_: Some(type_.into()),
            data: Some([(key.to_string(), ByteString(data.as_bytes().to_vec()))].into()),
            ..Default::default()
        }
    }

    #[test]
    fn dockerconfigjson_and_dockercfg_secrets_are_read() {
        let auth = base64::engine::general_purpose::STANDARD.encode("alice:s3:cret");
        let json = secret("a", DOCKER_CONFIG_JSON_TYPE, DOCKER_CONFIG_JSON_KEY, &format!(r#"{{"auths":{{"127.0.0.1:5001":{{"auth":"{auth}"}}}}}}"#));
        let cfg = secret("b", DOCKERCFG_TYPE, DOCKERCFG_KEY, r#"{"https://127.0.0.1:5001":{"username":"bob","password":"pw","email":"b@x"}}"#);
        let opaque = secret("c", "Opaque", DOCKER_CONFIG_JSON_KEY, "not json");
        let wrong_key = secret("d", DOCKERCFG_TYPE, DOCKER_CONFIG_JSON_KEY, "not json");
        let secrets = PullSecrets::from_secrets(&[json, cfg, opaque, wrong_key]).unwrap();
        let found = secrets.lookup("127.0.0.1:5001/test/busybox");
        assert_eq!(found.len(), 2);
        assert!(matches!(&found[0].auth, RegistryAuth::Basic(u, p) if u == "alice" && p == "s3:cret"));
        assert_eq!(found[0].source, Source::Secret("ns/a".into()));
        assert!(matches!(&found[1].auth, RegistryAuth::Basic(u, p) if u == "bob" && p == "pw"));
        assert!(secrets.lookup("127.0.0.1:5000/test/busybox").is_empty());
    }

    #[test]
    fn unpadded_auth_fields_decode_and_bad_ones_fail() {
        let unpadded = base64::engine::general_purpose::STANDARD_NO_PAD.encode("u:p1");
        let ok = parse_docker_config_json(format!(r#"{{"auths":{{"h":{{"auth":"{unpadded}"}}}}}}"#).as_bytes()).unwrap();
        assert!(matches!(&ok[0].1, RegistryAuth::Basic(u, p) if u == "u" && p == "p1"));
        let no_colon = base64::engine::general_purpose::STANDARD.encode("nocolon");
        assert!(matches!(parse_docker_config_json(format!(r#"{{"auths":{{"h":{{"auth":"{no_colon}"}}}}}}"#).as_bytes()), Err(ConfigError::AuthField)));
        assert!(matches!(parse_docker_config_json(br#"{"auths":{"h":{"auth":"!!"}}}"#), Err(ConfigError::AuthField)));
    }

    #[test]
    fn malformed_secrets_are_errors_naming_the_secret() {
        let bad = secret("broken", DOCKER_CONFIG_JSON_TYPE, DOCKER_CONFIG_JSON_KEY, "{not json");
        let e = PullSecrets::from_secrets(&[bad]).unwrap_err().to_string();
        assert!(e.starts_with(r#"failed to parse image pull secret "ns/broken" (.dockerconfigjson): "#), "{e}");
        let wrong_shape = secret("shape", DOCKERCFG_TYPE, DOCKERCFG_KEY, r#"{"h": 5}"#);
        assert!(PullSecrets::from_secrets(&[wrong_shape]).is_err());
    }

    #[test]
    fn empty_credentials_are_anonymous() {
        let cfg = parse_docker_config_json(br#"{"auths":{"h":{}}}"#).unwrap();
        assert!(matches!(cfg[0].1, RegistryAuth::Anonymous));
    }

    #[test]
    fn invalid_locations_are_skipped() {
        let k = keyring(&[("bad host", "x"), ("h:notaport", "y"), ("good.io", "z")]);
        assert_eq!(users(&k, "good.io/a"), ["z"]);
        assert_eq!(k.index, ["good.io"]);
    }
}
