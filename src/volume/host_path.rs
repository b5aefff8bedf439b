//! `hostPath`: a path on the node, bind-mounted as is, after upstream's `type`
//! check (pkg/volume/hostpath/host_path.go `checkTypeInternal`):
//! `DirectoryOrCreate` makes the directory (0755), `FileOrCreate` the file (0644),
//! the others only check what is there.

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::HostPathVolumeSource;

use super::VolumeError;

/// What is found at a path (the parts of `hostPathTypeChecker` the checks use).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    Missing,
    Dir,
    File,
    Socket,
    CharDevice,
    BlockDevice,
    /// A FIFO or anything else.
    Other,
}

/// Inspects `p`, following symlinks like `os.Stat`.
pub fn inspect(p: &Path) -> Found {
    let Ok(md) = std::fs::metadata(p) else { return Found::Missing };
    let t = md.file_type();
    if t.is_dir() {
        Found::Dir
    } else if t.is_file() {
        Found::File
    } else if t.is_socket() {
        Found::Socket
    } else if t.is_char_device() {
        Found::CharDevice
    } else if t.is_block_device() {
        Found::BlockDevice
    } else {
        Found::Other
    }
}

/// What the check has to do before it can pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    None,
    MakeDir,
    MakeFile,
}

/// The pure part of the check: given what is at `path`, pass (with what to create)
/// or fail with upstream's message.
pub fn check(path: &str, typ: &str, found: Found) -> Result<Action, String> {
    let fail = |what: &str| Err(format!("hostPath type check failed: {path} is not a {what}"));
    match typ {
        "" => Ok(Action::None),
        "DirectoryOrCreate" if found == Found::Missing => Ok(Action::MakeDir),
        "DirectoryOrCreate" | "Directory" if found == Found::Dir => Ok(Action::None),
        "DirectoryOrCreate" | "Directory" => fail("directory"),
        "FileOrCreate" if found == Found::Missing => Ok(Action::MakeFile),
        // Upstream's IsFile means a regular file (pkg/volume/util/hostutil GetFileType).
        "FileOrCreate" | "File" if found == Found::File => Ok(Action::None),
        "FileOrCreate" | "File" => fail("file"),
        "Socket" if found == Found::Socket => Ok(Action::None),
        "Socket" => fail("socket file"),
        "CharDevice" if found == Found::CharDevice => Ok(Action::None),
        "CharDevice" => fail("character device"),
        "BlockDevice" if found == Found::BlockDevice => Ok(Action::None),
        "BlockDevice" => fail("block device"),
        other => Err(format!("{other} is an invalid volume type")),
    }
}

/// Checks (and creates, for the `*OrCreate` types) the path; returns it.
pub fn setup(name: &str, src: &HostPathVolumeSource) -> Result<PathBuf, VolumeError> {
    let err = |message: String| VolumeError::Source { volume: name.into(), message };
    let path = &src.path;
    if path.split('/').any(|p| p == "..") {
        return Err(err(format!("invalid HostPath `{path}`: must not contain '..'")));
    }
    let typ = src.type_.as_deref().unwrap_or("");
    let found = inspect(Path::new(path));
    let mut action = check(path, typ, found).map_err(err)?;
    if typ.is_empty() && found == Found::Missing {
        // No check asked, but the runtime makes a missing source a directory
        // (containerd's CRI `addOCIBindMounts`), so the container can start.
        action = Action::MakeDir;
    }
    match action {
        Action::None => {}
        Action::MakeDir => {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(path)
                .map_err(|source| VolumeError::Create { volume: name.into(), source })?;
        }
        Action::MakeFile => {
            use std::os::unix::fs::OpenOptionsExt;
            if let Some(parent) = Path::new(path).parent() {
                std::fs::create_dir_all(parent).map_err(|source| VolumeError::Create { volume: name.into(), source })?;
            }
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o644)
                .open(path)
                .map_err(|source| VolumeError::Create { volume: name.into(), source })?;
        }
    }
    Ok(PathBuf::from(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_type_check_passes_or_fails_with_upstream_text() {
        use Found::*;
        assert_eq!(check("/x", "", Missing), Ok(Action::None));
        assert_eq!(check("/x", "DirectoryOrCreate", Missing), Ok(Action::MakeDir));
        assert_eq!(check("/x", "DirectoryOrCreate", Dir), Ok(Action::None));
        assert_eq!(check("/x", "DirectoryOrCreate", File).unwrap_err(), "hostPath type check failed: /x is not a directory");
        assert_eq!(check("/x", "Directory", Missing).unwrap_err(), "hostPath type check failed: /x is not a directory");
        assert_eq!(check("/x", "FileOrCreate", Missing), Ok(Action::MakeFile));
        assert_eq!(check("/x", "FileOrCreate", Dir).unwrap_err(), "hostPath type check failed: /x is not a file");
        assert_eq!(check("/x", "File", File), Ok(Action::None));
        assert_eq!(check("/x", "File", Dir).unwrap_err(), "hostPath type check failed: /x is not a file");
        assert_eq!(check("/x", "File", Missing).unwrap_err(), "hostPath type check failed: /x is not a file");
        assert_eq!(check("/x", "File", Socket).unwrap_err(), "hostPath type check failed: /x is not a file");
        assert_eq!(check("/x", "Socket", File).unwrap_err(), "hostPath type check failed: /x is not a socket file");
        assert_eq!(check("/x", "Socket", Socket), Ok(Action::None));
        assert_eq!(check("/x", "CharDevice", BlockDevice).unwrap_err(), "hostPath type check failed: /x is not a character device");
        assert_eq!(check("/x", "CharDevice", CharDevice), Ok(Action::None));
        assert_eq!(check("/x", "BlockDevice", CharDevice).unwrap_err(), "hostPath type check failed: /x is not a block device");
        assert_eq!(check("/x", "BlockDevice", BlockDevice), Ok(Action::None));
        assert_eq!(check("/x", "Bogus", Dir).unwrap_err(), "Bogus is an invalid volume type");
    }

    #[test]
    fn or_create_types_create_what_is_missing() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("a/b");
        let src = HostPathVolumeSource { path: d.display().to_string(), type_: Some("DirectoryOrCreate".into()) };
        setup("v", &src).unwrap();
        assert_eq!(inspect(&d), Found::Dir);
        // 0755 under the process umask, like os.MkdirAll.
        assert_eq!(std::fs::metadata(&d).unwrap().permissions().mode() & 0o700, 0o700);
        let f = t.path().join("c/f");
        setup("v", &HostPathVolumeSource { path: f.display().to_string(), type_: Some("FileOrCreate".into()) }).unwrap();
        assert_eq!(inspect(&f), Found::File);
        let e = setup("v", &HostPathVolumeSource { path: d.display().to_string(), type_: Some("File".into()) }).unwrap_err();
        assert_eq!(e.to_string(), format!("MountVolume.SetUp failed for volume \"v\" : hostPath type check failed: {} is not a file", d.display()));
        assert_eq!(inspect(Path::new("/dev/null")), Found::CharDevice);
        let u = t.path().join("untyped");
        setup("v", &HostPathVolumeSource { path: u.display().to_string(), type_: None }).unwrap();
        assert_eq!(inspect(&u), Found::Dir, "a missing untyped path becomes a directory, as containerd does");
    }
}
