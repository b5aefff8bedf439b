//! The on-disk record of a sandbox's CNI attachment, so teardown works after
//! an agent restart and after the conf dir changed.
//!
//! Mirrors libcni's result cache (`api.go` `cachedInfo`: config, ifName,
//! netns, cniArgs, capabilityArgs, result), keyed here by sandbox id only since
//! a pod joins one network. The record is written before the first ADD (without
//! a result) and again after the chain succeeded, so even a crash mid-ADD
//! leaves enough behind to DEL with the config that was used.
//!
//! Functions here block (small file I/O + fsync); the CNI driver calls them
//! from tokio's blocking pool.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Format marker of the records this module writes.
pub const CACHE_KIND: &str = "rkubelet/cniCacheV1";

/// One sandbox's attachment record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CacheEntry {
    /// Always [`CACHE_KIND`].
    pub kind: String,
    /// The sandbox id (`CNI_CONTAINERID`).
    pub container_id: String,
    /// The network's name.
    pub network_name: String,
    /// `CNI_IFNAME` of the chain.
    pub if_name: String,
    /// `CNI_NETNS` at ADD time.
    #[serde(default)]
    pub netns: String,
    /// `CNI_ARGS` pairs, in order.
    #[serde(default)]
    pub cni_args: Vec<(String, String)>,
    /// Capability arguments offered to the plugins (`runtimeConfig` source).
    #[serde(default)]
    pub capability_args: Map<String, Value>,
    /// The network configuration list that was used, as JSON.
    pub config: Value,
    /// The chain's final result; absent while ADD is in progress or if it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    /// The pod IPs taken from `result`, primary first.
    #[serde(default)]
    pub ips: Vec<IpAddr>,
}

/// Why a cache record could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CacheReadError {
    /// The file exists but could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The record file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The file is not a record this version understands.
    #[error("corrupt CNI cache record {}: {source}", path.display())]
    Corrupt {
        /// The record file.
        path: PathBuf,
        /// The decoding error.
        #[source]
        source: serde_json::Error,
    },
    /// The file decodes but carries another format marker.
    #[error("CNI cache record {} has unknown kind {kind:?}", path.display())]
    WrongKind {
        /// The record file.
        path: PathBuf,
        /// The marker found.
        kind: String,
    },
}

/// The record file of `sandbox_id` under `dir`. The id must already be
/// validated as a plain name (no `/`).
pub fn entry_path(dir: &Path, sandbox_id: &str) -> PathBuf {
    dir.join(format!("{sandbox_id}.json"))
}

/// Reads a record; `Ok(None)` if there is none.
pub fn read(path: &Path) -> Result<Option<CacheEntry>, CacheReadError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(CacheReadError::Io {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    decode(&bytes, path).map(Some)
}

/// Decodes a record's bytes; `path` names the file in errors.
pub fn decode(bytes: &[u8], path: &Path) -> Result<CacheEntry, CacheReadError> {
    let entry: CacheEntry =
        serde_json::from_slice(bytes).map_err(|source| CacheReadError::Corrupt {
            path: path.to_path_buf(),
            source,
        })?;
    if entry.kind != CACHE_KIND {
        return Err(CacheReadError::WrongKind {
            path: path.to_path_buf(),
            kind: entry.kind,
        });
    }
    Ok(entry)
}

/// Writes a record atomically: a temp file in the same directory, fsync,
/// rename over the old record, fsync the directory.
pub fn write_atomic(path: &Path, entry: &CacheEntry) -> io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "cache path has no parent"))?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let bytes = serde_json::to_vec(entry).map_err(io::Error::other)?;
    let file_name = path.file_name().and_then(|n| n.to_str()).ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidInput, "cache path has no file name")
    })?;
    let tmp = dir.join(format!(".{file_name}.tmp-{:016x}", rand::random::<u64>()));
    let written = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Deletes a record; absent is fine.
pub fn remove(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// The sandbox ids that have a record under `dir`, sorted.
pub fn list(dir: &Path) -> io::Result<Vec<String>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut ids = Vec::new();
    for entry in entries {
        let name = entry?.file_name();
        if let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".json")) {
            if !id.starts_with('.') {
                ids.push(id.to_owned());
            }
        }
    }
    ids.sort();
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample() -> CacheEntry {
        CacheEntry {
            kind: CACHE_KIND.into(),
            container_id: "abc".into(),
            network_name: "rk".into(),
            if_name: "eth0".into(),
            netns: "/var/run/netns/cni-1".into(),
            cni_args: vec![("IgnoreUnknown".into(), "1".into())],
            capability_args: Map::new(),
            config: json!({"name":"rk","plugins":[{"type":"bridge"}]}),
            result: Some(json!({"ips":[{"address":"10.0.0.2/24"}]})),
            ips: vec!["10.0.0.2".parse().expect("ip")],
        }
    }

    #[test]
    fn roundtrip_overwrite_list_and_remove() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = dir.path().join("nested/cache");
        let p = entry_path(&cache, "abc");
        assert!(read(&p).expect("read").is_none());
        let mut e = sample();
        write_atomic(&p, &e).expect("write");
        assert_eq!(read(&p).expect("read"), Some(e.clone()));
        e.result = None;
        write_atomic(&p, &e).expect("overwrite");
        assert_eq!(read(&p).expect("read"), Some(e));
        assert_eq!(list(&cache).expect("list"), vec!["abc".to_owned()]);
        // No temp files are left behind.
        assert_eq!(std::fs::read_dir(&cache).expect("readdir").count(), 1);
        remove(&p).expect("remove");
        remove(&p).expect("remove again");
        assert!(list(&cache).expect("list").is_empty());
    }

    #[test]
    fn cni_args_are_stored_as_pairs() {
        let v = serde_json::to_value(sample()).expect("json");
        assert_eq!(v["cniArgs"], json!([["IgnoreUnknown", "1"]]));
        assert!(v.get("result").is_some());
    }

    #[test]
    fn corrupt_and_foreign_records_are_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = entry_path(dir.path(), "x");
        std::fs::write(&p, b"{garbage").expect("write");
        assert!(matches!(read(&p), Err(CacheReadError::Corrupt { .. })));
        let mut v = serde_json::to_value(sample()).expect("json");
        v["kind"] = json!("cniCacheV1");
        std::fs::write(&p, serde_json::to_vec(&v).expect("bytes")).expect("write");
        assert!(matches!(read(&p), Err(CacheReadError::WrongKind { .. })));
    }
}
