//! Named network namespaces, the way `ip netns add` and containernetworking's
//! `pkg/ns` (and containerd's `pkg/netns`) create them.
//!
//! A pod's network namespace is pinned by bind-mounting the nsfs inode of a
//! thread that `unshare(CLONE_NEWNET)`ed onto an empty file under
//! [`NETNS_RUN_DIR`]. The namespace then lives until that mount is removed,
//! whether or not any process is inside it, so CNI plugins can configure it
//! before the pause container starts and tear it down after it has exited.
//!
//! Every namespace switch happens on a dedicated, short-lived OS thread that is
//! thrown away afterwards: namespace membership is per thread, and a thread of
//! the tokio pool must never be moved into another namespace. The functions here
//! block (thread spawn + join, mount syscalls); async code calls the `*_async`
//! wrappers, which run them on tokio's blocking pool.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};
use nix::sys::statfs::{statfs, NSFS_MAGIC, PROC_SUPER_MAGIC};
use tracing::{debug, warn};

/// Where named network namespaces live (iproute2's `NETNS_RUN_DIR`).
pub const NETNS_RUN_DIR: &str = "/var/run/netns";

/// Upper bound on stacked mounts [`remove`] peels off one path. Normally there
/// is exactly one; more only appear after a racing double create.
const MAX_UNMOUNTS: usize = 8;

/// Serialises the one-time "make the run dir a shared mount" step inside this
/// process, so two concurrent creates cannot both bind-mount the directory onto
/// itself.
static RUN_DIR_SETUP: Mutex<()> = Mutex::new(());

/// Errors from creating, entering or removing a network namespace.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// The requested namespace name cannot be used as a file name.
    #[error("invalid network namespace name {name:?}: {reason}")]
    InvalidName {
        /// The rejected name.
        name: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// The directory holding the namespace files could not be created.
    #[error("failed to create network namespace directory {}: {source}", path.display())]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: io::Error,
    },
    /// The namespace directory could not be made a shared mount point.
    #[error("failed to make {} a shared mount: {source}", path.display())]
    MakeShared {
        /// The directory.
        path: PathBuf,
        /// The failing `mount(2)` errno.
        #[source]
        source: Errno,
    },
    /// A namespace file with this name already exists.
    #[error("network namespace {} already exists", path.display())]
    AlreadyExists {
        /// The existing file.
        path: PathBuf,
    },
    /// The empty file the namespace is mounted onto could not be created.
    #[error("failed to create network namespace file {}: {source}", path.display())]
    CreateFile {
        /// The file.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: io::Error,
    },
    /// The helper thread could not be started.
    #[error("failed to spawn a network namespace helper thread: {source}")]
    SpawnThread {
        /// The underlying I/O error.
        #[source]
        source: io::Error,
    },
    /// The helper thread panicked.
    #[error("network namespace helper thread panicked")]
    ThreadPanicked,
    /// `unshare(CLONE_NEWNET)` failed (usually: not running as root).
    #[error("failed to create a new network namespace (unshare): {source}")]
    Unshare {
        /// The failing errno.
        #[source]
        source: Errno,
    },
    /// The new namespace could not be pinned by a bind mount.
    #[error("failed to bind mount network namespace onto {}: {source}", path.display())]
    BindMount {
        /// The mount target.
        path: PathBuf,
        /// The failing errno.
        #[source]
        source: Errno,
    },
    /// The namespace mount could not be removed.
    #[error("failed to unmount network namespace {}: {source}", path.display())]
    Unmount {
        /// The mount point.
        path: PathBuf,
        /// The failing errno.
        #[source]
        source: Errno,
    },
    /// The namespace file could not be deleted after unmounting.
    #[error("failed to remove network namespace file {}: {source}", path.display())]
    RemoveFile {
        /// The file.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: io::Error,
    },
    /// The namespace file could not be opened.
    #[error("failed to open network namespace {}: {source}", path.display())]
    Open {
        /// The file.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: io::Error,
    },
    /// The path exists but is not a namespace (nsfs/procfs) file.
    #[error("{} is not a network namespace", path.display())]
    NotANamespace {
        /// The path.
        path: PathBuf,
    },
    /// `setns(2)` into the namespace failed.
    #[error("failed to enter network namespace {}: {source}", path.display())]
    Setns {
        /// The namespace path.
        path: PathBuf,
        /// The failing errno.
        #[source]
        source: Errno,
    },
    /// A blocking operation on tokio's blocking pool was cancelled or panicked.
    #[error("network namespace task failed: {source}")]
    Join {
        /// The join error.
        #[source]
        source: tokio::task::JoinError,
    },
}

/// Result alias for this module.
pub type Result<T, E = NetnsError> = std::result::Result<T, E>;

/// A named network namespace pinned at `path` (e.g. `/var/run/netns/cni-…`).
///
/// Dropping a `NetNs` does not remove the namespace: its lifetime follows the
/// pod sandbox, not this handle. Call [`NetNs::remove`] or [`remove`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NetNs {
    /// The bind-mounted namespace file; this is what goes into `CNI_NETNS` and
    /// the OCI spec's network namespace path.
    pub path: PathBuf,
}

impl NetNs {
    /// Wraps an existing namespace path without checking it.
    pub fn from_path(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// The namespace's name (the file name under the run dir), if it has one.
    pub fn name(&self) -> Option<&str> {
        self.path.file_name().and_then(|n| n.to_str())
    }

    /// Whether the namespace is still mounted; see [`exists`].
    pub fn exists(&self) -> bool {
        exists(&self.path)
    }

    /// Unmounts and deletes the namespace; see [`remove`].
    pub fn remove(&self) -> Result<()> {
        remove(&self.path)
    }

    /// Runs `f` on a dedicated thread inside this namespace; see [`run_in`].
    pub fn run<F, T>(&self, f: F) -> Result<T>
    where
        F: FnOnce() -> T + Send,
        T: Send,
    {
        run_in(&self.path, f)
    }
}

/// A fresh namespace name in containerd's style: `cni-<uuid>`.
pub fn generate_name() -> String {
    format!("cni-{}", uuid::Uuid::new_v4())
}

/// Creates the named network namespace `/var/run/netns/<name>`, like
/// `ip netns add <name>`. Fails with [`NetnsError::AlreadyExists`] if the
/// name is taken. Blocking.
pub fn create(name: &str) -> Result<NetNs> {
    create_in(Path::new(NETNS_RUN_DIR), name)
}

/// Like [`create`], with the namespace file under `dir` instead of
/// [`NETNS_RUN_DIR`]. `dir` is created and made a shared mount if needed.
pub fn create_in(dir: &Path, name: &str) -> Result<NetNs> {
    validate_name(name)?;
    ensure_run_dir(dir)?;

    let path = dir.join(name);
    // An empty, read-only placeholder to mount the namespace onto
    // (containerd pkg/netns/netns_linux.go: O_CREAT|O_EXCL, mode 0444; std
    // insists on write access for creation, which the mode does not restrict).
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o444)
        .open(&path);
    match file {
        Ok(f) => drop(f),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            return Err(NetnsError::AlreadyExists { path });
        }
        Err(source) => return Err(NetnsError::CreateFile { path, source }),
    }

    let target = path.clone();
    let pinned = on_fresh_thread("netns-create", move || {
        // Only this thread moves to the new namespace; it exits right after.
        unshare(CloneFlags::CLONE_NEWNET).map_err(|source| NetnsError::Unshare { source })?;
        let own = format!("/proc/self/task/{}/ns/net", nix::unistd::gettid());
        mount(
            Some(own.as_str()),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|source| NetnsError::BindMount {
            path: target.clone(),
            source,
        })
    })
    .and_then(|inner| inner);

    if let Err(e) = pinned {
        // Do not leave a placeholder behind that would block the name forever.
        let _ = umount2(&path, MntFlags::MNT_DETACH);
        if let Err(rm) = std::fs::remove_file(&path) {
            warn!(path = %path.display(), error = %rm, "failed to remove network namespace placeholder");
        }
        return Err(e);
    }
    debug!(path = %path.display(), "created network namespace");
    Ok(NetNs { path })
}

/// Unmounts (lazily, `MNT_DETACH`) and deletes a namespace file. Idempotent:
/// a path that is absent, or present but no longer mounted, is fine.
pub fn remove(path: &Path) -> Result<()> {
    // containerd pkg/netns: unmount with MNT_DETACH ignoring EINVAL/ENOENT, then remove.
    for _ in 0..MAX_UNMOUNTS {
        match umount2(path, MntFlags::MNT_DETACH) {
            Ok(()) => {} // peel the next stacked mount, if any
            Err(Errno::EINVAL) | Err(Errno::ENOENT) => break,
            Err(source) => {
                return Err(NetnsError::Unmount {
                    path: path.to_path_buf(),
                    source,
                })
            }
        }
    }
    match std::fs::remove_file(path) {
        Ok(()) => {
            debug!(path = %path.display(), "removed network namespace");
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(NetnsError::RemoveFile {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Whether `path` is a live network namespace handle (a mounted nsfs file, or
/// a `/proc/<pid>/ns/net` link on kernels that report procfs).
pub fn exists(path: &Path) -> bool {
    is_namespace(path)
}

/// Runs `f` on a dedicated thread that has joined the network namespace at
/// `path` with `setns(2)`. The thread is discarded afterwards, so no other code
/// ever runs in the namespace by accident. Blocking; from async code use
/// `tokio::task::spawn_blocking`.
pub fn run_in<F, T>(path: &Path, f: F) -> Result<T>
where
    F: FnOnce() -> T + Send,
    T: Send,
{
    if !is_namespace(path) {
        return Err(NetnsError::NotANamespace {
            path: path.to_path_buf(),
        });
    }
    let ns = File::open(path).map_err(|source| NetnsError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    std::thread::scope(|scope| {
        let handle = std::thread::Builder::new()
            .name("netns-run".into())
            .spawn_scoped(scope, move || {
                setns(&ns, CloneFlags::CLONE_NEWNET).map_err(|source| NetnsError::Setns {
                    path: path.to_path_buf(),
                    source,
                })?;
                Ok(f())
            })
            .map_err(|source| NetnsError::SpawnThread { source })?;
        handle.join().map_err(|_| NetnsError::ThreadPanicked)?
    })
}

/// [`create`] on tokio's blocking pool.
pub async fn create_async(name: &str) -> Result<NetNs> {
    let name = name.to_owned();
    tokio::task::spawn_blocking(move || create(&name))
        .await
        .map_err(|source| NetnsError::Join { source })?
}

/// [`remove`] on tokio's blocking pool.
pub async fn remove_async(path: &Path) -> Result<()> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || remove(&path))
        .await
        .map_err(|source| NetnsError::Join { source })?
}

/// [`exists`] on tokio's blocking pool (a single `statfs`; cheap, but still a syscall on a path).
pub async fn exists_async(path: &Path) -> bool {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || exists(&path))
        .await
        .unwrap_or(false)
}

fn validate_name(name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        Some("empty")
    } else if name == "." || name == ".." {
        Some("reserved path component")
    } else if name.contains('/') {
        Some("contains '/'")
    } else if name.contains('\0') {
        Some("contains a NUL byte")
    } else if name.len() > 255 {
        Some("longer than 255 bytes")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(NetnsError::InvalidName {
            name: name.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

/// `mkdir -p dir` and make it a shared mount point, so namespace mounts made
/// later propagate into mount namespaces cloned from ours (iproute2 ip/ipnetns.c
/// `netns_add`: `--make-shared`, bind-mounting the directory onto itself first
/// if it is not a mount point yet).
fn ensure_run_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|source| NetnsError::CreateDir {
        path: dir.to_path_buf(),
        source,
    })?;
    // A poisoned lock only means another create panicked; the kernel state is still consistent.
    let _guard = RUN_DIR_SETUP.lock().unwrap_or_else(|p| p.into_inner());
    let make_shared = || {
        mount(
            None::<&str>,
            dir,
            None::<&str>,
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        )
    };
    match make_shared() {
        Ok(()) => Ok(()),
        // EINVAL: not a mount point yet.
        Err(Errno::EINVAL) => {
            mount(
                Some(dir),
                dir,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .map_err(|source| NetnsError::MakeShared {
                path: dir.to_path_buf(),
                source,
            })?;
            make_shared().map_err(|source| NetnsError::MakeShared {
                path: dir.to_path_buf(),
                source,
            })
        }
        Err(source) => Err(NetnsError::MakeShared {
            path: dir.to_path_buf(),
            source,
        }),
    }
}

fn is_namespace(path: &Path) -> bool {
    match statfs(path) {
        Ok(st) => {
            let fs = st.filesystem_type();
            fs == NSFS_MAGIC || fs == PROC_SUPER_MAGIC
        }
        Err(_) => false,
    }
}

/// Runs `f` on a new OS thread, joins it, and returns its value.
fn on_fresh_thread<F, T>(name: &str, f: F) -> Result<T>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .map_err(|source| NetnsError::SpawnThread { source })?
        .join()
        .map_err(|_| NetnsError::ThreadPanicked)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_are_not_plain_file_names_are_rejected() {
        for bad in ["", ".", "..", "a/b", "a\0b"] {
            assert!(
                matches!(validate_name(bad), Err(NetnsError::InvalidName { .. })),
                "{bad:?} accepted"
            );
        }
        assert!(validate_name(&"x".repeat(256)).is_err());
        assert!(validate_name("cni-1234").is_ok());
    }

    #[test]
    fn generated_names_are_unique_and_valid() {
        let a = generate_name();
        let b = generate_name();
        assert_ne!(a, b);
        assert!(a.starts_with("cni-"));
        assert!(validate_name(&a).is_ok());
    }

    #[test]
    fn remove_of_a_missing_path_is_ok() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("absent");
        assert!(remove(&p).is_ok());
        assert!(!exists(&p));
    }

    #[test]
    fn a_regular_file_is_not_a_namespace() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("plain");
        std::fs::write(&p, b"").expect("write");
        assert!(!exists(&p));
        assert!(matches!(
            run_in(&p, || ()),
            Err(NetnsError::NotANamespace { .. })
        ));
        // remove() also cleans up unmounted placeholders.
        assert!(remove(&p).is_ok());
        assert!(!p.exists());
    }

    #[test]
    fn own_namespace_via_proc_is_a_namespace() {
        assert!(exists(Path::new("/proc/self/ns/net")));
    }
}
