//! `securityContext.fsGroup` on volumes that support ownership management
//! (emptyDir and the API-backed ones; not hostPath or PVs): every file and
//! directory gets the group, read (API volumes) or read-write (emptyDir) for the
//! group, and directories setgid (pkg/volume/volume_linux.go `SetVolumeOwnership`).

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

/// The mode a file gets: `mode` plus group read (read-only volumes) or
/// read-write, plus group/owner exec and setgid on directories; symlinks keep theirs.
pub fn owned_mode(mode: u32, is_dir: bool, read_only: bool) -> u32 {
    let mut mask = if read_only { 0o440 } else { 0o660 };
    if is_dir {
        mask |= 0o2000 | 0o110;
    }
    mode | mask
}

/// Applies `fs_group` under `dir` (without following symlinks). With `only_on_root_mismatch`,
/// nothing is done when the root already has the group (for volumes set up once).
pub fn apply(dir: &Path, fs_group: u32, read_only: bool, only_on_root_mismatch: bool) -> std::io::Result<()> {
    if only_on_root_mismatch && std::fs::metadata(dir)?.gid() == fs_group {
        return Ok(());
    }
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        let md = std::fs::symlink_metadata(&p)?;
        std::os::unix::fs::lchown(&p, None, Some(fs_group))?;
        if md.file_type().is_symlink() {
            continue;
        }
        let mode = md.permissions().mode() & 0o7777;
        let want = owned_mode(mode, md.is_dir(), read_only);
        if want != mode {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(want))?;
        }
        if md.is_dir() {
            for e in std::fs::read_dir(&p)?.flatten() {
                stack.push(e.path());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_gain_group_access_and_directories_setgid() {
        assert_eq!(owned_mode(0o400, false, true), 0o440);
        assert_eq!(owned_mode(0o644, false, false), 0o664);
        assert_eq!(owned_mode(0o755, true, true), 0o2755);
        assert_eq!(owned_mode(0o700, true, false), 0o2770);
    }

    #[test]
    fn files_get_the_group_and_symlinks_are_not_followed() {
        let t = tempfile::tempdir().unwrap();
        let outside = tempfile::NamedTempFile::new().unwrap();
        std::fs::create_dir(t.path().join("d")).unwrap();
        std::fs::write(t.path().join("d/f"), "x").unwrap();
        std::fs::set_permissions(t.path().join("d/f"), std::fs::Permissions::from_mode(0o400)).unwrap();
        std::os::unix::fs::symlink(outside.path(), t.path().join("link")).unwrap();
        let before = std::fs::metadata(outside.path()).unwrap();
        apply(t.path(), 4321, true, false).unwrap();
        let f = std::fs::metadata(t.path().join("d/f")).unwrap();
        assert_eq!((f.gid(), f.permissions().mode() & 0o7777), (4321, 0o440));
        assert_eq!(std::fs::metadata(t.path().join("d")).unwrap().permissions().mode() & 0o2000, 0o2000);
        let after = std::fs::metadata(outside.path()).unwrap();
        assert_eq!((after.gid(), after.mode()), (before.gid(), before.mode()), "link target untouched");
    }
}
