//! Credential provider plugins (the kubelet's pkg/credentialprovider/plugin):
//! `--image-credential-provider-config` names a `CredentialProviderConfig`
//! (`kubelet.config.k8s.io/v1`, also v1beta1/v1alpha1; a file, or a directory
//! whose `*.json`/`*.yaml`/`*.yml` files are merged in name order) listing
//! executables in `--image-credential-provider-bin-dir`. For an image whose
//! repository matches one of a provider's `matchImages` globs, the kubelet
//! runs the executable (with the provider's `args`, and its `env` over the
//! agent's), writes a `CredentialProviderRequest` (`{"image": repo}`) to its
//! stdin and reads a `CredentialProviderResponse` from its stdout: an `auth`
//! map (registry location → username/password) and how to cache it
//! (`cacheKeyType` Image, Registry or Global; `cacheDuration`, else the
//! provider's `defaultCacheDuration`; zero means not cached). A failing
//! plugin (exit status, one-minute timeout, bad response) is logged and gives
//! no credentials, like upstream: the pull goes on with the other credentials
//! or anonymously. A bad configuration fails the agent's start-up.
//!
//! `tokenAttributes` (service-account tokens for plugins) is not supported:
//! such a configuration is refused.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tracing::{debug, error};

use super::keyring::{basic_or_anonymous, url_matches, DockerConfig, Keyring, Source};
use crate::kubelet_config::GoDuration;

/// `CredentialProviderConfig` API versions accepted.
const CONFIG_API_VERSIONS: [&str; 3] = ["kubelet.config.k8s.io/v1", "kubelet.config.k8s.io/v1alpha1", "kubelet.config.k8s.io/v1beta1"];
/// Plugin protocol versions (`providers[].apiVersion`), sorted as upstream lists them.
const PLUGIN_API_VERSIONS: [&str; 3] = [
    "credentialprovider.kubelet.k8s.io/v1",
    "credentialprovider.kubelet.k8s.io/v1alpha1",
    "credentialprovider.kubelet.k8s.io/v1beta1",
];
/// How long a plugin may run.
const EXEC_TIMEOUT: Duration = Duration::from_secs(60);
/// Cache key of `cacheKeyType: Global` answers.
const GLOBAL_CACHE_KEY: &str = "global";

/// Why the credential provider configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// `--image-credential-provider-bin-dir` does not exist.
    #[error("plugin binary directory {} did not exist", .0.display())]
    BinDirMissing(PathBuf),
    /// The bin dir could not be inspected.
    #[error("error inspecting binary directory {}: {source}", path.display())]
    BinDir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// `--image-credential-provider-config` is empty.
    #[error("credential provider config path is empty")]
    ConfigPathEmpty,
    /// The config file or directory could not be read.
    #[error("unable to read {}: {source}", path.display())]
    Read {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A config directory without config files.
    #[error("no configuration files found in directory {:?}", .0.display().to_string())]
    NoFiles(PathBuf),
    /// A config file is not a CredentialProviderConfig.
    #[error("error decoding config {:?}: {message}", path.display().to_string())]
    Decode {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        message: String,
    },
    /// Two providers of the same name across files.
    #[error("duplicate provider name {0:?} found in configuration file(s)")]
    Duplicate(String),
    /// Field validation failed (all problems, upstream's field error wording).
    #[error("failed to validate credential provider config: {}", aggregate(.0))]
    Invalid(Vec<String>),
    /// A provider's executable is missing or not executable.
    #[error("plugin binary executable {} did not exist", .0.display())]
    BinaryMissing(PathBuf),
}

/// Go's aggregate error text: one message alone, several in brackets.
pub(crate) fn aggregate(messages: &[String]) -> String {
    let mut unique: Vec<&String> = Vec::new();
    for m in messages {
        if !unique.contains(&m) {
            unique.push(m);
        }
    }
    match unique.as_slice() {
        [one] => (*one).clone(),
        many => format!("[{}]", many.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")),
    }
}

/// A `CredentialProviderConfig` document.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ConfigFile {
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    providers: Vec<ProviderConfig>,
}

/// One `providers[]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ProviderConfig {
    #[serde(default)]
    name: String,
    #[serde(default)]
    match_images: Vec<String>,
    default_cache_duration: Option<GoDuration>,
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: Vec<EnvVar>,
    token_attributes: Option<serde_yaml::Value>,
}

/// `providers[].env[]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct EnvVar {
    name: String,
    #[serde(default)]
    value: String,
}

/// The registered plugins, in configuration order, with their caches.
#[derive(Debug)]
pub struct CredentialProviders {
    providers: Vec<Provider>,
}

struct Provider {
    name: String,
    match_images: Vec<String>,
    default_cache_duration: Duration,
    api_version: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
    binary: PathBuf,
    /// Cache key → (credentials, expiry).
    cache: Mutex<HashMap<String, (DockerConfig, Instant)>>,
    /// The execution under way per image, whose answer concurrent callers share
    /// (upstream's singleflight).
    running: Mutex<HashMap<String, Arc<tokio::sync::OnceCell<Option<DockerConfig>>>>>,
}

impl CredentialProviders {
    /// Reads and validates the configuration and checks every plugin binary,
    /// as the kubelet's `RegisterCredentialProviderPlugins` does at start-up.
    pub fn load(config: &Path, bin_dir: &Path) -> Result<CredentialProviders, ProviderError> {
        match std::fs::metadata(bin_dir) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(ProviderError::BinDirMissing(bin_dir.to_owned())),
            Err(source) => return Err(ProviderError::BinDir { path: bin_dir.to_owned(), source }),
        }
        let configs = read_config(config)?;
        validate(&configs)?;
        let mut providers = Vec::new();
        for p in configs {
            let binary = bin_dir.join(&p.name);
            if !is_executable(&binary) {
                return Err(ProviderError::BinaryMissing(binary));
            }
            providers.push(Provider {
                binary,
                default_cache_duration: p.default_cache_duration.map(|d| d.0).unwrap_or_default(),
                env: p.env.into_iter().map(|e| (e.name, e.value)).collect(),
                name: p.name,
                match_images: p.match_images,
                api_version: p.api_version,
                args: p.args,
                cache: Mutex::default(),
                running: Mutex::default(),
            });
        }
        Ok(CredentialProviders { providers })
    }

    /// The names of the registered providers.
    pub fn names(&self) -> Vec<&str> {
        self.providers.iter().map(|p| p.name.as_str()).collect()
    }

    /// The credentials every matching provider gives for `repo` (cached or
    /// from running the plugin), as one keyring.
    pub async fn keyring(&self, repo: &str) -> Keyring {
        let mut keyring = Keyring::default();
        for p in &self.providers {
            if let Some(config) = p.provide(repo).await {
                keyring.add(&Source::Provider(p.name.clone()), config);
            }
        }
        keyring
    }
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Reads the config file, or every config file of a directory in name order.
fn read_config(path: &Path) -> Result<Vec<ProviderConfig>, ProviderError> {
    if path.as_os_str().is_empty() {
        return Err(ProviderError::ConfigPathEmpty);
    }
    let read_err = |path: &Path| {
        let path = path.to_owned();
        move |source| ProviderError::Read { path, source }
    };
    let meta = std::fs::metadata(path).map_err(read_err(path))?;
    let files = if meta.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(read_err(path))?
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_ok_and(|t| !t.is_dir()))
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "json" || x == "yaml" || x == "yml"))
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(ProviderError::NoFiles(path.to_owned()));
        }
        files
    } else {
        vec![path.to_owned()]
    };
    let mut providers: Vec<ProviderConfig> = Vec::new();
    for file in files {
        let text = std::fs::read(&file).map_err(read_err(&file))?;
        for p in decode(&file, &text)?.providers {
            if providers.iter().any(|q| q.name == p.name) {
                return Err(ProviderError::Duplicate(p.name));
            }
            providers.push(p);
        }
    }
    Ok(providers)
}

/// Decodes and validates one configuration document (`path` names it in errors).
pub(crate) fn check_config(path: &Path, text: &[u8]) -> Result<(), ProviderError> {
    validate(&decode(path, text)?.providers)
}

fn decode(path: &Path, text: &[u8]) -> Result<ConfigFile, ProviderError> {
    let decode_err = |message: String| ProviderError::Decode { path: path.to_owned(), message };
    let doc: ConfigFile = serde_yaml::from_slice(text).map_err(|e| decode_err(e.to_string()))?;
    if doc.kind != "CredentialProviderConfig" {
        return Err(decode_err(format!("failed to decode {:?} (wrong Kind)", doc.kind)));
    }
    if !CONFIG_API_VERSIONS.contains(&doc.api_version.as_str()) {
        return Err(decode_err(format!("unsupported apiVersion {:?}; want one of {}", doc.api_version, CONFIG_API_VERSIONS.join(", "))));
    }
    Ok(doc)
}

/// Upstream's `validateCredentialProviderConfig`, with its field error wording.
fn validate(providers: &[ProviderConfig]) -> Result<(), ProviderError> {
    let mut errs = Vec::new();
    if providers.is_empty() {
        errs.push("providers: Required value: at least 1 item in plugins is required".to_owned());
    }
    let mut seen = Vec::new();
    for p in providers {
        let name = &p.name;
        for (bad, why) in [(name.contains('/'), "provider name cannot contain '/'"), (name.contains(' '), "provider name cannot contain spaces"), (name == ".", "provider name cannot be '.'"), (name == "..", "provider name cannot be '..'")] {
            if bad {
                errs.push(format!("providers.name: Invalid value: {name:?}: {why}"));
            }
        }
        if name.is_empty() {
            errs.push("providers.name: Required value".to_owned());
        }
        if seen.contains(&name) {
            errs.push(format!("providers.name: Duplicate value: {name:?}"));
        }
        seen.push(name);
        if p.api_version.is_empty() {
            errs.push("providers.apiVersion: Required value".to_owned());
        } else if !PLUGIN_API_VERSIONS.contains(&p.api_version.as_str()) {
            let supported: Vec<String> = PLUGIN_API_VERSIONS.iter().map(|v| format!("{v:?}")).collect();
            errs.push(format!("providers.apiVersion: Unsupported value: {:?}: supported values: {}", p.api_version, supported.join(", ")));
        }
        if p.match_images.is_empty() {
            errs.push("providers.matchImages: Required value: at least 1 item in matchImages is required".to_owned());
        }
        for m in &p.match_images {
            if m.is_empty() || m.contains(char::is_whitespace) || m.contains('%') {
                errs.push(format!("providers.matchImages: Invalid value: {m:?}: match image is invalid"));
            }
        }
        if p.default_cache_duration.is_none() {
            errs.push("providers.defaultCacheDuration: Required value".to_owned());
        }
        if p.token_attributes.is_some() {
            errs.push("providers.tokenAttributes: Forbidden: service account tokens for credential providers are not supported by rkubelet".to_owned());
        }
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(ProviderError::Invalid(errs))
    }
}

/// What a plugin is sent.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Request<'a> {
    kind: &'static str,
    api_version: &'a str,
    image: &'a str,
}

/// What a plugin answers.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Response {
    #[allow(dead_code)] // checked before decoding
    api_version: String,
    kind: String,
    #[serde(default)]
    cache_key_type: String,
    cache_duration: Option<GoDuration>,
    #[serde(default)]
    auth: std::collections::BTreeMap<String, AuthConfig>,
}

/// One `auth` entry of a response.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthConfig {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
}

/// Why a plugin gave no answer (logged, never fatal).
#[derive(Debug, thiserror::Error)]
enum ExecError {
    #[error("error execing credential provider plugin {name} for image {image}: {message}: {stderr}")]
    Run { name: String, image: String, message: String, stderr: String },
    #[error("error reading GVK from response: {0}")]
    Gvk(String),
    #[error("apiVersion from credential plugin response did not match expected apiVersion:{expected}, actual apiVersion:{actual}")]
    ApiVersion { expected: String, actual: String },
    // The decoder's error is not shown: it may quote credentials.
    #[error("error decoding credential provider plugin response from stdout")]
    Decode,
}

/// The registry part of a repository (`host[:port]`).
fn registry_of(repo: &str) -> &str {
    repo.split('/').next().unwrap_or(repo)
}

impl std::fmt::Debug for Provider {
    // Not derived: the cache holds credentials.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider").field("name", &self.name).field("match_images", &self.match_images).field("binary", &self.binary).finish_non_exhaustive()
    }
}

impl Provider {
    fn matches(&self, repo: &str) -> bool {
        self.match_images.iter().any(|m| url_matches(m, repo))
    }

    /// A cached answer for `repo`: by image, then registry, then global.
    fn cached(&self, repo: &str, now: Instant) -> Option<DockerConfig> {
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        cache.retain(|_, (_, expires)| *expires > now);
        [repo, registry_of(repo), GLOBAL_CACHE_KEY].iter().find_map(|k| cache.get(*k).map(|(c, _)| c.clone()))
    }

    /// The credentials this provider gives for `repo`, `None` when it does
    /// not match or failed (logged).
    async fn provide(&self, repo: &str) -> Option<DockerConfig> {
        if !self.matches(repo) {
            return None;
        }
        if let Some(hit) = self.cached(repo, Instant::now()) {
            debug!(provider = %self.name, image = %repo, "credential provider cache hit");
            return Some(hit);
        }
        let cell = self.running.lock().unwrap_or_else(PoisonError::into_inner).entry(repo.to_owned()).or_default().clone();
        let answer = cell.get_or_init(|| self.run_and_cache(repo)).await.clone();
        let mut running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        if running.get(repo).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
            running.remove(repo);
        }
        answer
    }

    /// Runs the plugin for `repo` and caches its answer as it asks.
    async fn run_and_cache(&self, repo: &str) -> Option<DockerConfig> {
        let result = self.exec(repo).await;
        let response = match result {
            Ok(r) => r,
            Err(e) => {
                error!(provider = %self.name, image = %repo, error = %e, "Failed getting credential from external registry credential provider");
                return None;
            }
        };
        let key = match response.cache_key_type.as_str() {
            "Image" => repo.to_owned(),
            "Registry" => registry_of(repo).to_owned(),
            "Global" => GLOBAL_CACHE_KEY.to_owned(),
            other => {
                error!(provider = %self.name, image = %repo, "credential provider plugin did not return a valid cacheKeyType: {other:?}");
                return None;
            }
        };
        let config: DockerConfig = response.auth.into_iter().map(|(loc, a)| (loc, basic_or_anonymous(a.username, a.password))).collect();
        let duration = match response.cache_duration {
            Some(d) => d.0,
            None => self.default_cache_duration,
        };
        if !duration.is_zero() {
            let expires = Instant::now() + duration;
            self.cache.lock().unwrap_or_else(PoisonError::into_inner).insert(key, (config.clone(), expires));
        }
        Some(config)
    }

    /// Runs the plugin for `repo`.
    async fn exec(&self, repo: &str) -> Result<Response, ExecError> {
        debug!(provider = %self.name, image = %repo, "running credential provider plugin");
        let run_err = |message: String, stderr: &[u8]| ExecError::Run {
            name: self.name.clone(),
            image: repo.to_owned(),
            message,
            stderr: String::from_utf8_lossy(stderr).into_owned(),
        };
        let request = serde_json::to_vec(&Request { kind: "CredentialProviderRequest", api_version: &self.api_version, image: repo }).expect("a request serializes");
        let mut child = tokio::process::Command::new(&self.binary)
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| run_err(e.to_string(), b""))?;
        let mut stdin = child.stdin.take().expect("piped stdin");
        let write = async move {
            // A plugin that does not read its stdin is not an error.
            let _ = stdin.write_all(&request).await;
        };
        let (_, output) = match tokio::time::timeout(EXEC_TIMEOUT, async { tokio::join!(write, child.wait_with_output()) }).await {
            Ok(done) => done,
            Err(_) => return Err(run_err("context deadline exceeded".into(), b"")),
        };
        let output = output.map_err(|e| run_err(e.to_string(), b""))?;
        if !output.status.success() {
            let status = match output.status.code() {
                Some(code) => format!("exit status {code}"),
                None => output.status.to_string(),
            };
            return Err(run_err(status, &output.stderr));
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct TypeMeta {
            #[serde(default)]
            api_version: String,
        }
        let meta: TypeMeta = serde_json::from_slice(&output.stdout).map_err(|e| ExecError::Gvk(e.to_string()))?;
        if meta.api_version != self.api_version {
            return Err(ExecError::ApiVersion { expected: self.api_version.clone(), actual: meta.api_version });
        }
        let response: Response = serde_json::from_slice(&output.stdout).map_err(|_| ExecError::Decode)?;
        if response.kind != "CredentialProviderResponse" {
            return Err(ExecError::Decode);
        }
        Ok(response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_client::secrets::RegistryAuth;

    /// The first user of `config`.
    fn first_user(config: &DockerConfig) -> Option<&str> {
    config.iter().find_map(|(_, a)| match a {
        RegistryAuth::Basic(u, _) => Some(u.as_str()),
        _ => None,
    })
}


    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn plugin(dir: &Path, name: &str, body: &str) {
        use std::os::unix::fs::PermissionsExt;
        let p = write(dir, name, &format!("#!/bin/sh\n{body}\n"));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    const CONFIG: &str = r#"
apiVersion: kubelet.config.k8s.io/v1
kind: CredentialProviderConfig
providers:
  - name: test-plugin
    matchImages: ["127.0.0.1:5103", "127.0.0.1:5104", "127.0.0.1:9", "*.example.com/team"]
    defaultCacheDuration: 10m
    apiVersion: credentialprovider.kubelet.k8s.io/v1
    args: ["--flag"]
    env:
      - name: MODE
        value: registry
"#;

    /// A plugin that counts its runs in `<dir>/runs` and answers with `cacheKeyType: $MODE`.
    fn counting_plugin(dir: &Path) {
        plugin(
            dir,
            "test-plugin",
            &format!(
                r#"req=$(cat); echo "$* $req" >> {runs}
case $MODE in registry) t=Registry;; image) t=Image;; *) t=$MODE;; esac
printf '{{"kind":"CredentialProviderResponse","apiVersion":"credentialprovider.kubelet.k8s.io/v1","cacheKeyType":"%s",%s"auth":{{"127.0.0.1:5103":{{"username":"plugin-user","password":"pw"}}}}}}' "$t" "$EXTRA""#,
                runs = dir.join("runs").display()
            ),
        );
    }

    /// A counting plugin and `config` in a fresh directory, loaded.
    fn loaded(config: &str) -> (tempfile::TempDir, CredentialProviders) {
        let dir = tempfile::tempdir().unwrap();
        counting_plugin(dir.path());
        let cfg = write(dir.path(), "config.yaml", config);
        let providers = CredentialProviders::load(&cfg, dir.path()).unwrap();
        (dir, providers)
    }

    fn runs(dir: &Path) -> Vec<String> {
        std::fs::read_to_string(dir.join("runs")).unwrap_or_default().lines().map(String::from).collect()
    }

    #[tokio::test]
    async fn plugin_answers_are_cached_by_registry_and_matched_to_the_image() {
        let (dir, providers) = loaded(CONFIG);
        assert_eq!(providers.names(), ["test-plugin"]);

        let found = providers.keyring("127.0.0.1:5103/test/busybox").await.lookup("127.0.0.1:5103/test/busybox");
        assert_eq!(found.len(), 1);
        assert!(matches!(&found[0].auth, RegistryAuth::Basic(u, _) if u == "plugin-user"));
        assert_eq!(found[0].source, Source::Provider("test-plugin".into()));
        let seen = runs(dir.path());
        assert_eq!(seen.len(), 1);
        assert!(seen[0].starts_with("--flag {"), "{seen:?}");
        let request: serde_json::Value = serde_json::from_str(seen[0].trim_start_matches("--flag ")).unwrap();
        assert_eq!(request, serde_json::json!({"kind": "CredentialProviderRequest", "apiVersion": "credentialprovider.kubelet.k8s.io/v1", "image": "127.0.0.1:5103/test/busybox"}));

        // Another repository of the same registry: the Registry-keyed cache answers.
        providers.keyring("127.0.0.1:5103/test/other").await;
        assert_eq!(runs(dir.path()).len(), 1);
        // An image no matchImages glob covers: no run, no credentials.
        assert!(providers.keyring("docker.io/library/busybox").await.is_empty());
        assert_eq!(runs(dir.path()).len(), 1);
        // Another registry: a run.
        providers.keyring("127.0.0.1:5104/test/busybox").await;
        assert_eq!(runs(dir.path()).len(), 2);
    }

    #[tokio::test]
    async fn image_keys_zero_durations_and_expiry() {
        let (dir, providers) = loaded(&CONFIG.replace("value: registry", "value: image"));
        providers.keyring("127.0.0.1:5103/a").await;
        providers.keyring("127.0.0.1:5103/a").await;
        providers.keyring("127.0.0.1:5103/b").await;
        assert_eq!(runs(dir.path()).len(), 2, "Image keys: one run per repository");

        let p = &providers.providers[0];
        let later = Instant::now() + Duration::from_secs(601);
        assert!(p.cached("127.0.0.1:5103/a", Instant::now()).is_some());
        assert!(p.cached("127.0.0.1:5103/a", later).is_none(), "defaultCacheDuration 10m expires");

        let (dir2, providers) = loaded(&CONFIG.replace("defaultCacheDuration: 10m", "defaultCacheDuration: 0s"));
        providers.keyring("127.0.0.1:5103/a").await;
        providers.keyring("127.0.0.1:5103/a").await;
        assert_eq!(runs(dir2.path()).len(), 2, "a zero default duration caches nothing");
    }

    #[tokio::test]
    async fn response_cache_duration_wins_and_global_keys_cover_everything() {
        let (dir, providers) = loaded(&CONFIG.replace("value: registry", "value: Global\n      - name: EXTRA\n        value: '\"cacheDuration\":\"1s\",'"));
        let config = providers.providers[0].provide("127.0.0.1:5103/a").await.unwrap();
        assert_eq!(first_user(&config), Some("plugin-user"));
        providers.keyring("127.0.0.1:9/other").await;
        assert_eq!(runs(dir.path()).len(), 1, "Global key");
        assert!(providers.providers[0].cached("x", Instant::now() + Duration::from_secs(2)).is_none(), "cacheDuration 1s");
    }

    #[tokio::test]
    async fn concurrent_requests_for_one_image_share_one_run() {
        let dir = tempfile::tempdir().unwrap();
        counting_plugin(dir.path());
        let body = std::fs::read_to_string(dir.path().join("test-plugin")).unwrap().replacen("req=$(cat);", "req=$(cat); sleep 0.5;", 1);
        std::fs::write(dir.path().join("test-plugin"), body).unwrap();
        let cfg = write(dir.path(), "config.yaml", &CONFIG.replace("defaultCacheDuration: 10m", "defaultCacheDuration: 0s"));
        let providers = CredentialProviders::load(&cfg, dir.path()).unwrap();
        let (a, b) = tokio::join!(providers.keyring("127.0.0.1:5103/a"), providers.keyring("127.0.0.1:5103/a"));
        assert!(!a.is_empty() && !b.is_empty());
        assert_eq!(runs(dir.path()).len(), 1);
        providers.keyring("127.0.0.1:5103/a").await;
        assert_eq!(runs(dir.path()).len(), 2, "not cached: a later request runs it again");
    }

    #[tokio::test]
    async fn failing_plugins_give_no_credentials() {
        let cases = [
            ("echo boom >&2; exit 3", "exit"),
            (r#"echo '{"kind":"CredentialProviderResponse","apiVersion":"credentialprovider.kubelet.k8s.io/v1beta1","cacheKeyType":"Image"}'"#, "version"),
            (r#"echo '{"kind":"CredentialProviderResponse","apiVersion":"credentialprovider.kubelet.k8s.io/v1","cacheKeyType":"Sometimes"}'"#, "key type"),
            (r#"echo '{"kind":"CredentialProviderResponse","apiVersion":"credentialprovider.kubelet.k8s.io/v1","cacheKeyType":"Image","bogus":1}'"#, "unknown field"),
            ("echo not json", "garbage"),
        ];
        for (body, what) in cases {
            let dir = tempfile::tempdir().unwrap();
            plugin(dir.path(), "test-plugin", body);
            let cfg = write(dir.path(), "config.yaml", CONFIG);
            let providers = CredentialProviders::load(&cfg, dir.path()).unwrap();
            assert!(providers.keyring("127.0.0.1:5103/a").await.is_empty(), "{what}");
        }
        let dir = tempfile::tempdir().unwrap();
        plugin(dir.path(), "test-plugin", "echo boom >&2; exit 3");
        let p = &CredentialProviders::load(&write(dir.path(), "c.yaml", CONFIG), dir.path()).unwrap().providers[0];
        let e = p.exec("127.0.0.1:5103/a").await.unwrap_err().to_string();
        assert_eq!(e, "error execing credential provider plugin test-plugin for image 127.0.0.1:5103/a: exit status 3: boom\n");
    }

    #[test]
    fn bad_configurations_are_refused_with_upstream_messages() {
        let dir = tempfile::tempdir().unwrap();
        counting_plugin(dir.path());
        let load = |text: &str| CredentialProviders::load(&write(dir.path(), "c.yaml", text), dir.path()).map(|_| ()).unwrap_err().to_string();
        assert_eq!(
            CredentialProviders::load(Path::new("/x.yaml"), Path::new("/nonexistent/bin")).unwrap_err().to_string(),
            "plugin binary directory /nonexistent/bin did not exist"
        );
        assert!(load("{").starts_with("error decoding config"), "{}", load("{"));
        assert!(load("apiVersion: v1\nkind: Pod\n").contains("(wrong Kind)"));
        assert!(load(&CONFIG.replace("args:", "argz:")).contains("unknown field `argz`"));
        let e = load(&CONFIG.replace("    defaultCacheDuration: 10m\n", "").replace("matchImages: [\"127.0.0.1:5103\", \"127.0.0.1:5104\", \"127.0.0.1:9\", \"*.example.com/team\"]", "matchImages: []"));
        assert_eq!(
            e,
            "failed to validate credential provider config: [providers.matchImages: Required value: at least 1 item in matchImages is required, providers.defaultCacheDuration: Required value]"
        );
        let e = load(&CONFIG.replace("credentialprovider.kubelet.k8s.io/v1", "credentialprovider.kubelet.k8s.io/v2"));
        assert!(e.contains("providers.apiVersion: Unsupported value: \"credentialprovider.kubelet.k8s.io/v2\""), "{e}");
        let e = load(&CONFIG.replace("name: test-plugin", "name: missing"));
        assert_eq!(e, format!("plugin binary executable {} did not exist", dir.path().join("missing").display()));
        let e = load("apiVersion: kubelet.config.k8s.io/v1\nkind: CredentialProviderConfig\nproviders: []\n");
        assert_eq!(e, "failed to validate credential provider config: providers: Required value: at least 1 item in plugins is required");
        assert!(load(&format!("{CONFIG}    tokenAttributes: {{serviceAccountTokenAudience: x}}\n")).contains("tokenAttributes: Forbidden"));
    }

    #[test]
    fn a_config_directory_is_merged_in_name_order() {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("conf.d");
        std::fs::create_dir(&conf).unwrap();
        counting_plugin(dir.path());
        plugin(dir.path(), "second", "exit 1");
        write(&conf, "20-b.yml", &CONFIG.replace("name: test-plugin", "name: second"));
        write(&conf, "10-a.yaml", CONFIG);
        write(&conf, "README", "ignored");
        let providers = CredentialProviders::load(&conf, dir.path()).unwrap();
        assert_eq!(providers.names(), ["test-plugin", "second"]);
        write(&conf, "30-c.json", &serde_json::to_string(&serde_yaml::from_str::<serde_json::Value>(CONFIG).unwrap()).unwrap());
        assert_eq!(CredentialProviders::load(&conf, dir.path()).unwrap_err().to_string(), "duplicate provider name \"test-plugin\" found in configuration file(s)");
        let empty = dir.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        assert!(CredentialProviders::load(&empty, dir.path()).unwrap_err().to_string().starts_with("no configuration files found in directory"));
    }
}
