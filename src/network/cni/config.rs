//! CNI network configuration: parsing `.conflist`/`.conf` files, choosing the
//! pod network from the conf dir, and building the per-plugin stdin JSON.
//!
//! Mirrors libcni `conf.go` (`NetworkConfFromBytes`, `ConfListFromConf`), the
//! directory rule of the kubelet's former dockershim CNI plugin / CRI-O's
//! ocicni (sorted `.conf`/`.conflist`/`.json`, first *valid* file wins), and
//! libcni `api.go` `buildOneConfig`/`injectRuntimeConfig`.

use std::fmt;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};
use tracing::{debug, warn};

/// Extensions the conf dir is scanned for (containerd go-cni / kubelet).
pub const CONF_EXTENSIONS: [&str; 3] = ["conf", "conflist", "json"];

/// Highest CNI spec version this implementation understands.
pub const MAX_SPEC_VERSION: &str = "1.1.0";

/// Why a configuration file or document was rejected.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read: {source}")]
    Read {
        /// The underlying I/O error.
        #[source]
        source: io::Error,
    },
    /// The file is not valid JSON.
    #[error("invalid JSON: {source}")]
    Json {
        /// The parser error.
        #[source]
        source: serde_json::Error,
    },
    /// The document is valid JSON but not an object.
    #[error("not a JSON object")]
    NotAnObject,
    /// A required key is absent.
    #[error("missing {field:?}")]
    MissingField {
        /// The key, e.g. `name` or `plugins[0].type`.
        field: String,
    },
    /// A key has the wrong type or an unusable value.
    #[error("invalid {field:?}: {reason}")]
    InvalidField {
        /// The key.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A `.conflist` has an empty or absent `plugins` array.
    #[error("no plugins in list")]
    NoPlugins,
    /// A `.conf`/`.json` file holds a list, not a single plugin config.
    #[error("no 'type'; perhaps this is a .conflist?")]
    ListInConfFile,
}

/// An invalid file skipped while choosing the network from the conf dir.
#[derive(Debug)]
pub struct SkippedConfig {
    /// The file.
    pub path: PathBuf,
    /// Why it was skipped.
    pub error: ConfigError,
}

impl fmt::Display for SkippedConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.error)
    }
}

/// One plugin of a network configuration list, as written in the file.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginConf {
    plugin_type: String,
    raw: Map<String, Value>,
}

impl PluginConf {
    /// The plugin binary name (`type`), e.g. `bridge`.
    pub fn plugin_type(&self) -> &str {
        &self.plugin_type
    }

    /// The plugin's own JSON object, before injection.
    pub fn raw(&self) -> &Map<String, Value> {
        &self.raw
    }

    /// Capabilities the plugin declares as supported (`"capabilities": {"portMappings": true}`).
    pub fn capabilities(&self) -> impl Iterator<Item = &str> {
        self.raw
            .get("capabilities")
            .and_then(Value::as_object)
            .into_iter()
            .flat_map(|caps| caps.iter())
            .filter(|(_, on)| on.as_bool() == Some(true))
            .map(|(k, _)| k.as_str())
    }

    fn from_value(index: usize, v: &Value) -> Result<Self, ConfigError> {
        let raw = v.as_object().ok_or_else(|| ConfigError::InvalidField {
            field: format!("plugins[{index}]"),
            reason: "not a JSON object".into(),
        })?;
        let plugin_type = plugin_type_of(raw, &format!("plugins[{index}].type"))?;
        if let Some(caps) = raw.get("capabilities") {
            if !caps.is_object() {
                return Err(ConfigError::InvalidField {
                    field: format!("plugins[{index}].capabilities"),
                    reason: "not a JSON object".into(),
                });
            }
        }
        Ok(Self {
            plugin_type,
            raw: raw.clone(),
        })
    }
}

/// A network configuration list (libcni `NetworkConfigList`): a named chain
/// of plugins run in order on ADD and in reverse on DEL.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkConfigList {
    /// Network name, injected into every plugin's config.
    pub name: String,
    /// The spec version the list is written for, injected into every plugin's config.
    pub cni_version: String,
    /// The plugin chain.
    pub plugins: Vec<PluginConf>,
    /// The file the list was loaded from, if any.
    pub source: Option<PathBuf>,
    raw: Value,
}

impl NetworkConfigList {
    /// Parses a `.conflist` document.
    pub fn from_list_bytes(bytes: &[u8]) -> Result<Self, ConfigError> {
        let v: Value =
            serde_json::from_slice(bytes).map_err(|source| ConfigError::Json { source })?;
        Self::from_list_value(v)
    }

    /// Parses a single-plugin `.conf` document and wraps it in a one-plugin
    /// list (libcni `ConfListFromConf`).
    pub fn from_conf_bytes(bytes: &[u8]) -> Result<Self, ConfigError> {
        let v: Value =
            serde_json::from_slice(bytes).map_err(|source| ConfigError::Json { source })?;
        let obj = v.as_object().ok_or(ConfigError::NotAnObject)?;
        if !obj.contains_key("type") && obj.contains_key("plugins") {
            return Err(ConfigError::ListInConfFile);
        }
        plugin_type_of(obj, "type")?;
        let mut list = Map::new();
        list.insert(
            "name".into(),
            obj.get("name").cloned().unwrap_or(Value::Null),
        );
        if let Some(ver) = obj.get("cniVersion") {
            list.insert("cniVersion".into(), ver.clone());
        }
        list.insert("plugins".into(), Value::Array(vec![v.clone()]));
        Self::from_list_value(Value::Object(list))
    }

    /// Reads and parses a file: `.conflist` as a list, anything else as a single plugin config.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let bytes = std::fs::read(path).map_err(|source| ConfigError::Read { source })?;
        let mut list = if path.extension().is_some_and(|e| e == "conflist") {
            Self::from_list_bytes(&bytes)?
        } else {
            Self::from_conf_bytes(&bytes)?
        };
        list.source = Some(path.to_path_buf());
        Ok(list)
    }

    /// Parses a list from an already decoded JSON value (e.g. the cached copy).
    pub fn from_list_value(v: Value) -> Result<Self, ConfigError> {
        let obj = v.as_object().ok_or(ConfigError::NotAnObject)?;
        let name = match obj.get("name") {
            None | Some(Value::Null) => {
                return Err(ConfigError::MissingField {
                    field: "name".into(),
                })
            }
            Some(Value::String(s)) => s.clone(),
            Some(_) => {
                return Err(ConfigError::InvalidField {
                    field: "name".into(),
                    reason: "not a string".into(),
                })
            }
        };
        validate_network_name(&name)?;
        let cni_version = select_version(obj)?;
        let plugins = match obj.get("plugins") {
            None | Some(Value::Null) => return Err(ConfigError::NoPlugins),
            Some(Value::Array(a)) if a.is_empty() => return Err(ConfigError::NoPlugins),
            Some(Value::Array(a)) => a
                .iter()
                .enumerate()
                .map(|(i, p)| PluginConf::from_value(i, p))
                .collect::<Result<Vec<_>, _>>()?,
            Some(_) => {
                return Err(ConfigError::InvalidField {
                    field: "plugins".into(),
                    reason: "not an array".into(),
                })
            }
        };
        Ok(Self {
            name,
            cni_version,
            plugins,
            source: None,
            raw: v,
        })
    }

    /// The list as a JSON document (what is cached on disk).
    pub fn to_json(&self) -> &Value {
        &self.raw
    }

    /// The plugin binaries the list needs, in chain order, without duplicates.
    pub fn plugin_types(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::with_capacity(self.plugins.len());
        for p in &self.plugins {
            if !out.contains(&p.plugin_type()) {
                out.push(p.plugin_type());
            }
        }
        out
    }
}

/// Outcome of scanning a conf dir.
#[derive(Debug)]
pub struct DirScan {
    /// The chosen network, if any file was valid.
    pub network: Option<NetworkConfigList>,
    /// Invalid files seen before the chosen one (or all of them if none was valid).
    pub skipped: Vec<SkippedConfig>,
}

/// Scans `dir` for `.conf`, `.conflist` and `.json` files sorted by name and
/// returns the first one that parses; invalid files are logged and skipped.
/// A missing directory is the same as an empty one.
pub fn load_from_dir(dir: &Path) -> io::Result<DirScan> {
    let mut files = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Ok(DirScan {
                network: None,
                skipped: Vec::new(),
            })
        }
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let path = entry.path();
        let wanted = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| CONF_EXTENSIONS.contains(&e));
        // Follows symlinks, like Go's os.Stat on the listed name.
        if wanted && !std::fs::metadata(&path).is_ok_and(|m| m.is_dir()) {
            files.push(path);
        }
    }
    files.sort_by(|a, b| {
        let an = a.file_name().map(|n| n.as_bytes()).unwrap_or_default();
        let bn = b.file_name().map(|n| n.as_bytes()).unwrap_or_default();
        an.cmp(bn)
    });

    let mut skipped = Vec::new();
    for path in files {
        match NetworkConfigList::from_file(&path) {
            Ok(list) => {
                debug!(path = %path.display(), network = %list.name, "selected CNI network config");
                return Ok(DirScan {
                    network: Some(list),
                    skipped,
                });
            }
            Err(error) => {
                warn!(path = %path.display(), error = %error, "skipping invalid CNI config file");
                skipped.push(SkippedConfig { path, error });
            }
        }
    }
    Ok(DirScan {
        network: None,
        skipped,
    })
}

/// Builds the stdin JSON for one plugin of `list` (libcni `buildOneConfig`):
/// the plugin's own config with the list's `name` and `cniVersion`, the
/// previous plugin's result as `prevResult`, and a `runtimeConfig` holding the
/// capability arguments the plugin declared support for.
pub fn build_plugin_conf(
    list: &NetworkConfigList,
    plugin: &PluginConf,
    prev_result: Option<&Value>,
    capability_args: &Map<String, Value>,
) -> Value {
    let mut conf = plugin.raw.clone();
    conf.insert("name".into(), Value::String(list.name.clone()));
    conf.insert("cniVersion".into(), Value::String(list.cni_version.clone()));
    if let Some(prev) = prev_result {
        conf.insert("prevResult".into(), prev.clone());
    }
    let runtime: Map<String, Value> = plugin
        .capabilities()
        .filter_map(|cap| {
            capability_args
                .get(cap)
                .map(|v| (cap.to_owned(), v.clone()))
        })
        .collect();
    if !runtime.is_empty() {
        conf.insert("runtimeConfig".into(), Value::Object(runtime));
    }
    Value::Object(conf)
}

fn plugin_type_of(obj: &Map<String, Value>, field: &str) -> Result<String, ConfigError> {
    match obj.get("type") {
        None | Some(Value::Null) => Err(ConfigError::MissingField {
            field: field.into(),
        }),
        Some(Value::String(t)) if t.is_empty() => Err(ConfigError::MissingField {
            field: field.into(),
        }),
        Some(Value::String(t)) if t.contains('/') || t == "." || t == ".." => {
            Err(ConfigError::InvalidField {
                field: field.into(),
                reason: format!("{t:?} is not a plugin binary name"),
            })
        }
        Some(Value::String(t)) => Ok(t.clone()),
        Some(_) => Err(ConfigError::InvalidField {
            field: field.into(),
            reason: "not a string".into(),
        }),
    }
}

/// libcni `utils.ValidateNetworkName`: `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`.
fn validate_network_name(name: &str) -> Result<(), ConfigError> {
    let mut chars = name.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(ConfigError::InvalidField {
            field: "name".into(),
            reason: format!("{name:?} must match [a-zA-Z0-9][a-zA-Z0-9_.-]*"),
        })
    }
}

/// Parses `MAJOR.MINOR.PATCH` (an optional leading `v` is not allowed by the spec).
pub(crate) fn parse_version(v: &str) -> Option<(u64, u64, u64)> {
    let mut it = v.split('.');
    let major = it.next()?.parse().ok()?;
    let minor = it.next()?.parse().ok()?;
    let patch = it.next()?.parse().ok()?;
    if it.next().is_some() {
        return None;
    }
    Some((major, minor, patch))
}

/// The list's effective `cniVersion`: `cniVersion`, or the highest entry of
/// `cniVersions` this implementation supports (libcni `NetworkConfFromBytes`).
fn select_version(obj: &Map<String, Value>) -> Result<String, ConfigError> {
    let max = parse_version(MAX_SPEC_VERSION).unwrap_or((1, 1, 0));
    let single = match obj.get("cniVersion") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => {
            if parse_version(s).is_none() {
                return Err(ConfigError::InvalidField {
                    field: "cniVersion".into(),
                    reason: format!("{s:?} is not a version like 1.0.0"),
                });
            }
            Some(s.clone())
        }
        Some(_) => {
            return Err(ConfigError::InvalidField {
                field: "cniVersion".into(),
                reason: "not a string".into(),
            })
        }
    };
    let Some(many) = obj.get("cniVersions") else {
        return Ok(single.unwrap_or_default());
    };
    let arr = many.as_array().ok_or_else(|| ConfigError::InvalidField {
        field: "cniVersions".into(),
        reason: "not an array".into(),
    })?;
    let mut candidates: Vec<&str> = Vec::with_capacity(arr.len() + 1);
    for (i, v) in arr.iter().enumerate() {
        let s = v.as_str().ok_or_else(|| ConfigError::InvalidField {
            field: format!("cniVersions[{i}]"),
            reason: "not a string".into(),
        })?;
        candidates.push(s);
    }
    candidates.extend(single.as_deref());
    let mut best: Option<((u64, u64, u64), &str)> = None;
    for s in candidates {
        let parsed = parse_version(s).ok_or_else(|| ConfigError::InvalidField {
            field: "cniVersions".into(),
            reason: format!("{s:?} is not a version like 1.0.0"),
        })?;
        // Versions newer than this implementation are ignored, as in libcni.
        if parsed <= max && best.is_none_or(|(b, _)| parsed > b) {
            best = Some((parsed, s));
        }
    }
    Ok(best
        .map(|(_, s)| s.to_owned())
        .or(single)
        .unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn write(dir: &Path, name: &str, body: &str) {
        std::fs::write(dir.join(name), body).expect("write test file");
    }

    const LIST: &str = r#"{"cniVersion":"1.0.0","name":"from-list","plugins":[{"type":"bridge"},{"type":"portmap","capabilities":{"portMappings":true}}]}"#;
    const CONF: &str =
        r#"{"cniVersion":"0.4.0","name":"from-conf","type":"bridge","bridge":"cni0"}"#;

    #[test]
    fn first_valid_file_by_name_wins_and_invalid_ones_are_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "00-broken.conflist", "{not json");
        write(dir.path(), "05-noname.conf", r#"{"type":"bridge"}"#);
        write(dir.path(), "10-net.conflist", LIST);
        write(dir.path(), "20-net.conf", CONF);
        let scan = load_from_dir(dir.path()).expect("scan");
        let net = scan.network.expect("a network");
        assert_eq!(net.name, "from-list");
        assert_eq!(
            net.source.as_deref(),
            Some(dir.path().join("10-net.conflist").as_path())
        );
        let skipped: Vec<_> = scan.skipped.iter().map(|s| s.path.clone()).collect();
        assert_eq!(
            skipped,
            vec![
                dir.path().join("00-broken.conflist"),
                dir.path().join("05-noname.conf")
            ]
        );
        assert!(matches!(scan.skipped[0].error, ConfigError::Json { .. }));
        assert!(
            matches!(&scan.skipped[1].error, ConfigError::MissingField { field } if field == "name")
        );
    }

    #[test]
    fn a_conf_sorting_before_a_conflist_wins_and_is_wrapped_in_a_list() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "10-a.conf", CONF);
        write(dir.path(), "10-b.conflist", LIST);
        let net = load_from_dir(dir.path())
            .expect("scan")
            .network
            .expect("network");
        assert_eq!(net.name, "from-conf");
        assert_eq!(net.cni_version, "0.4.0");
        assert_eq!(net.plugins.len(), 1);
        assert_eq!(net.plugins[0].plugin_type(), "bridge");
        assert_eq!(net.plugins[0].raw().get("bridge"), Some(&json!("cni0")));
        assert_eq!(net.to_json()["plugins"][0]["type"], json!("bridge"));
    }

    #[test]
    fn other_extensions_and_directories_are_ignored() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "00-net.conflist.bak", "{");
        write(dir.path(), "01-readme.txt", "hello");
        write(dir.path(), "02-noext", LIST);
        std::fs::create_dir(dir.path().join("03-dir.conf")).expect("mkdir");
        write(dir.path(), "99-net.json", CONF);
        let scan = load_from_dir(dir.path()).expect("scan");
        assert!(scan.skipped.is_empty(), "{:?}", scan.skipped);
        assert_eq!(scan.network.expect("network").name, "from-conf");
    }

    #[test]
    fn missing_or_empty_dir_yields_no_network() {
        let dir = tempfile::tempdir().expect("tempdir");
        let scan = load_from_dir(&dir.path().join("absent")).expect("scan");
        assert!(scan.network.is_none() && scan.skipped.is_empty());
        let scan = load_from_dir(dir.path()).expect("scan");
        assert!(scan.network.is_none() && scan.skipped.is_empty());
    }

    #[test]
    fn list_validation_rejects_bad_shapes() {
        let cases = [
            (r#"[]"#, "object"),
            (r#"{"name":"n","cniVersion":"1.0.0"}"#, "plugins"),
            (r#"{"name":"n","plugins":[]}"#, "plugins"),
            (r#"{"name":"n","plugins":[{}]}"#, "type"),
            (
                r#"{"name":"n","plugins":[{"type":"../evil"}]}"#,
                "binary name",
            ),
            (
                r#"{"name":"bad name","plugins":[{"type":"x"}]}"#,
                "must match",
            ),
            (
                r#"{"name":"n","cniVersion":"one","plugins":[{"type":"x"}]}"#,
                "version",
            ),
            (
                r#"{"name":"n","plugins":[{"type":"x","capabilities":true}]}"#,
                "capabilities",
            ),
        ];
        for (doc, needle) in cases {
            let err = NetworkConfigList::from_list_bytes(doc.as_bytes()).expect_err(doc);
            assert!(err.to_string().contains(needle), "{doc}: {err}");
        }
    }

    #[test]
    fn a_list_in_a_conf_file_is_rejected() {
        let err = NetworkConfigList::from_conf_bytes(LIST.as_bytes()).expect_err("list in .conf");
        assert!(matches!(err, ConfigError::ListInConfFile));
    }

    #[test]
    fn cni_versions_picks_the_highest_supported() {
        let doc = r#"{"name":"n","cniVersion":"0.4.0","cniVersions":["1.0.0","9.0.0","0.3.1"],"plugins":[{"type":"x"}]}"#;
        let net = NetworkConfigList::from_list_bytes(doc.as_bytes()).expect("parse");
        assert_eq!(net.cni_version, "1.0.0");
    }

    #[test]
    fn injection_sets_name_version_prev_result_and_filtered_runtime_config() {
        let net = NetworkConfigList::from_list_bytes(
            br#"{"cniVersion":"1.0.0","name":"rk","plugins":[
                {"type":"bridge","name":"ignored","cniVersion":"0.1.0","runtimeConfig":{"stale":1}},
                {"type":"portmap","capabilities":{"portMappings":true,"bandwidth":false}}]}"#,
        )
        .expect("parse");
        let mut caps = Map::new();
        caps.insert(
            "portMappings".into(),
            json!([{"hostPort":80,"containerPort":8080,"protocol":"tcp"}]),
        );
        caps.insert("bandwidth".into(), json!({"ingressRate":1}));

        let first = build_plugin_conf(&net, &net.plugins[0], None, &caps);
        assert_eq!(first["name"], json!("rk"));
        assert_eq!(first["cniVersion"], json!("1.0.0"));
        assert!(first.get("prevResult").is_none());
        // No capabilities declared: the plugin's own runtimeConfig is left alone.
        assert_eq!(first["runtimeConfig"], json!({"stale":1}));

        let prev = json!({"cniVersion":"1.0.0","ips":[{"address":"10.0.0.2/24"}]});
        let second = build_plugin_conf(&net, &net.plugins[1], Some(&prev), &caps);
        assert_eq!(second["prevResult"], prev);
        assert_eq!(second["type"], json!("portmap"));
        assert_eq!(
            second["runtimeConfig"],
            json!({"portMappings":[{"hostPort":80,"containerPort":8080,"protocol":"tcp"}]})
        );
        assert_eq!(
            second["capabilities"],
            json!({"portMappings":true,"bandwidth":false})
        );
    }

    #[test]
    fn plugin_types_are_deduplicated_in_order() {
        let net = NetworkConfigList::from_list_bytes(
            br#"{"name":"n","plugins":[{"type":"a"},{"type":"b"},{"type":"a"}]}"#,
        )
        .expect("parse");
        assert_eq!(net.plugin_types(), vec!["a", "b"]);
        assert_eq!(net.cni_version, "");
    }
}
