//! Upstream's atomic writer layout for API-backed volumes (pkg/volume/util/
//! atomic_writer.go): files go into a fresh `..<timestamp>` directory, the
//! `..data` symlink is swapped to it with a rename, and each top-level name is a
//! symlink through `..data`, so readers never see a half-written set.

use std::collections::BTreeMap;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;

/// One file: relative path, content, mode.
pub type Payload = BTreeMap<String, (Vec<u8>, u32)>;

/// Writes `payload` into `dir` atomically and returns whether anything changed:
/// when the current generation already holds the same files with the same content
/// nothing is written and `..data` is not swapped. Like upstream's
/// `shouldWritePayload`, modes are not compared (fsGroup ownership changes them
/// after the write). Old generations are removed.
pub fn write(dir: &Path, payload: &Payload) -> std::io::Result<bool> {
    std::fs::create_dir_all(dir)?;
    let same = |cur: &Payload| cur.len() == payload.len() && cur.iter().all(|(k, (data, _))| payload.get(k).is_some_and(|(d, _)| d == data));
    if current(dir).as_ref().is_some_and(same) {
        return Ok(false);
    }
    let stamp = chrono::Utc::now().format("..%Y_%m_%d_%H_%M_%S.%f").to_string();
    let gen = dir.join(&stamp);
    std::fs::create_dir_all(&gen)?;
    for (rel, (data, mode)) in payload {
        if rel.starts_with('/') || rel.split('/').any(|p| p == ".." || p.is_empty()) {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("invalid path {rel:?}")));
        }
        let f = gen.join(rel);
        if let Some(p) = f.parent() {
            std::fs::create_dir_all(p)?;
        }
        std::fs::write(&f, data)?;
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(*mode))?;
    }
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    symlink(&stamp, &tmp)?;
    std::fs::rename(&tmp, dir.join("..data"))?;
    for rel in payload.keys() {
        let top = rel.split('/').next().unwrap_or(rel);
        let link = dir.join(top);
        if std::fs::symlink_metadata(&link).is_err() {
            symlink(Path::new("..data").join(top), &link)?;
        }
    }
    // Old generations and stale top-level links.
    for e in std::fs::read_dir(dir)?.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if name.starts_with("..") && name != "..data" && name != stamp {
            let _ = std::fs::remove_dir_all(e.path());
        } else if !name.starts_with("..") && !payload.keys().any(|k| k.split('/').next() == Some(name.as_str())) {
            let _ = std::fs::remove_file(e.path());
        }
    }
    Ok(true)
}

/// The payload the current `..data` generation holds, if there is one.
pub fn current(dir: &Path) -> Option<Payload> {
    let target = std::fs::read_link(dir.join("..data")).ok()?;
    let gen = dir.join(target);
    let mut out = Payload::new();
    let mut stack = vec![(gen.clone(), String::new())];
    while let Some((d, prefix)) = stack.pop() {
        for e in std::fs::read_dir(&d).ok()?.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            let rel = if prefix.is_empty() { name } else { format!("{prefix}/{name}") };
            let md = std::fs::symlink_metadata(e.path()).ok()?;
            if md.is_dir() {
                stack.push((e.path(), rel));
            } else {
                out.insert(rel, (std::fs::read(e.path()).ok()?, md.permissions().mode() & 0o7777));
            }
        }
    }
    Some(out)
}

/// Reads one file of the current generation (e.g. the token being refreshed).
pub fn read_current(dir: &Path, rel: &str) -> Option<Vec<u8>> {
    std::fs::read(dir.join("..data").join(rel)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_reached_through_the_data_link_and_replaced_atomically() {
        let t = tempfile::tempdir().unwrap();
        let mut p = Payload::new();
        p.insert("token".into(), (b"a".to_vec(), 0o644));
        p.insert("sub/ca.crt".into(), (b"c".to_vec(), 0o600));
        write(t.path(), &p).unwrap();
        assert_eq!(std::fs::read_to_string(t.path().join("token")).unwrap(), "a");
        assert_eq!(std::fs::read_to_string(t.path().join("sub/ca.crt")).unwrap(), "c");
        assert!(std::fs::symlink_metadata(t.path().join("..data")).unwrap().file_type().is_symlink());
        p.insert("token".into(), (b"b".to_vec(), 0o644));
        p.remove("sub/ca.crt");
        std::thread::sleep(std::time::Duration::from_millis(2));
        write(t.path(), &p).unwrap();
        assert_eq!(std::fs::read_to_string(t.path().join("token")).unwrap(), "b");
        assert!(!t.path().join("sub").exists());
        let gens = std::fs::read_dir(t.path()).unwrap().flatten().filter(|e| e.file_name().to_string_lossy().starts_with("..2")).count();
        assert_eq!(gens, 1, "old generations removed");
    }

    #[test]
    fn an_unchanged_payload_keeps_the_current_generation() {
        let t = tempfile::tempdir().unwrap();
        let mut p = Payload::new();
        p.insert("k".into(), (b"v".to_vec(), 0o400));
        p.insert("d/e".into(), (b"w".to_vec(), 0o644));
        assert!(write(t.path(), &p).unwrap());
        let before = std::fs::read_link(t.path().join("..data")).unwrap();
        assert!(!write(t.path(), &p).unwrap(), "same content: no new generation");
        assert_eq!(std::fs::read_link(t.path().join("..data")).unwrap(), before);
        p.insert("k".into(), (b"v".to_vec(), 0o440));
        assert!(!write(t.path(), &p).unwrap(), "modes alone are not compared, as upstream");
        p.insert("k".into(), (b"v2".to_vec(), 0o440));
        assert!(write(t.path(), &p).unwrap(), "new content is a change");
        assert_ne!(std::fs::read_link(t.path().join("..data")).unwrap(), before);
        p.insert("new".into(), (b"".to_vec(), 0o644));
        assert!(write(t.path(), &p).unwrap(), "a new file is a change");
        assert_eq!(read_current(t.path(), "d/e").unwrap(), b"w");
    }
}
