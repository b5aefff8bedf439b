//! A node with a small disk, for disk pressure and image garbage collection:
//! an ext4 filesystem on a loop device (a file under the test's own dir) holds
//! the agent's root dir and the root of a containerd instance of the test's
//! own (its own socket, state and namespace store; no CRI plugin). Only what
//! the test creates is touched; the instance is stopped by its PID.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct SmallNode {
    pub dir: PathBuf,
    /// The mounted filesystem.
    pub fs: PathBuf,
    pub sock: PathBuf,
    containerd: Option<Child>,
}

fn sh(cmd: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("{cmd}: {e}"));
    let mut s = String::from_utf8_lossy(&out.stdout).to_string();
    s.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), s)
}

fn mounted(p: &Path) -> bool {
    Command::new("mountpoint").arg("-q").arg(p).status().is_ok_and(|s| s.success())
}

impl SmallNode {
    /// A `mib` MiB filesystem with containerd running on it and the host's
    /// `images` (references in the host containerd's k8s.io namespace) imported.
    pub fn start(name: &str, mib: u64, images: &[&str]) -> SmallNode {
        let dir = PathBuf::from("/var/lib/rkubelet-test/small").join(name);
        let fs = dir.join("fs");
        let run = PathBuf::from("/run/rkubelet-test-small").join(name);
        if mounted(&fs) {
            let _ = sh("umount", &["-l", fs.to_str().unwrap()]);
        }
        let _ = std::fs::remove_dir_all(&dir);
        let _ = std::fs::remove_dir_all(&run);
        std::fs::create_dir_all(&fs).unwrap();
        std::fs::create_dir_all(&run).unwrap();
        let img = dir.join("disk.img");
        assert!(sh("truncate", &["-s", &format!("{mib}M"), img.to_str().unwrap()]).0);
        let (ok, out) = sh("mkfs.ext4", &["-q", "-F", "-m", "0", img.to_str().unwrap()]);
        assert!(ok, "mkfs.ext4: {out}");
        let (ok, out) = sh("mount", &["-o", "loop", img.to_str().unwrap(), fs.to_str().unwrap()]);
        assert!(ok, "mount -o loop: {out}");
        let sock = run.join("containerd.sock");
        let config = format!(
            "version = 2\nroot = \"{}\"\nstate = \"{}\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n[grpc]\n  address = \"{}\"\n[ttrpc]\n  address = \"{}.ttrpc\"\n",
            fs.join("containerd").display(),
            run.join("state").display(),
            sock.display(),
            sock.display()
        );
        std::fs::write(dir.join("containerd.toml"), config).unwrap();
        let log = std::fs::File::create(dir.join("containerd.log")).unwrap();
        let child = Command::new("containerd")
            .args(["--config", dir.join("containerd.toml").to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start containerd");
        let node = SmallNode { dir, fs, sock, containerd: Some(child) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !node.ctr(&["version"]).0 {
            assert!(Instant::now() < deadline, "the test's containerd did not come up: {}", std::fs::read_to_string(node.dir.join("containerd.log")).unwrap_or_default());
            std::thread::sleep(Duration::from_millis(200));
        }
        for i in images {
            let tar = node.dir.join("export.tar");
            let (ok, out) = sh("ctr", &["-n", "k8s.io", "images", "export", "--platform", "linux/amd64", tar.to_str().unwrap(), i]);
            assert!(ok, "export {i}: {out}");
            node.import(&tar);
            let _ = std::fs::remove_file(&tar);
        }
        node
    }

    /// `ctr` against this node's containerd (namespace k8s.io).
    pub fn ctr(&self, args: &[&str]) -> (bool, String) {
        let mut a = vec!["--address", self.sock.to_str().unwrap(), "-n", "k8s.io"];
        a.extend_from_slice(args);
        sh("ctr", &a)
    }

    /// Imports an OCI archive.
    pub fn import(&self, tar: &Path) {
        let (ok, out) = self.ctr(&["images", "import", "--all-platforms", tar.to_str().unwrap()]);
        assert!(ok, "import {}: {out}", tar.display());
    }

    /// Image names in this containerd.
    pub fn images(&self) -> Vec<String> {
        self.ctr(&["images", "ls", "-q"]).1.lines().map(String::from).filter(|l| !l.is_empty()).collect()
    }

    /// The flags that point an agent at this node's disk and containerd.
    pub fn agent_args(&self) -> Vec<String> {
        vec!["--root-dir".into(), self.fs.join("kubelet").to_str().unwrap().into(), "--container-runtime-endpoint".into(), format!("unix://{}", self.sock.display())]
    }

    /// (bytes available, bytes) of the filesystem.
    pub fn statfs(&self) -> (i64, i64) {
        let s = nix::sys::statvfs::statvfs(&self.fs).unwrap();
        let f = s.fragment_size() as i64;
        ((s.blocks_available() as i64) * f, (s.blocks() as i64) * f)
    }

    /// Writes a file of `bytes` random bytes under the filesystem (not under
    /// the agent's or containerd's dirs).
    pub fn fill(&self, name: &str, bytes: i64) {
        let path = self.fs.join(name);
        let (ok, out) = sh("dd", &["if=/dev/urandom", &format!("of={}", path.display()), "bs=64k", &format!("count={}", bytes.max(0) / 65536), "status=none"]);
        assert!(ok, "dd: {out}");
        let _ = sh("sync", &[]);
    }

    /// The containers this containerd has.
    pub fn containers(&self) -> Vec<String> {
        self.ctr(&["containers", "ls", "-q"]).1.lines().map(String::from).filter(|l| !l.is_empty()).collect()
    }
}

/// An image `name` made of `base` (a host image) plus a layer with `mib` MiB of
/// random bytes, written as an OCI archive under `dir`: images of distinct
/// content and size for garbage collection to tell apart.
pub fn filler_image(dir: &Path, base: &str, name: &str, mib: u64) -> PathBuf {
    use sha2::Digest;
    let work = dir.join(format!("filler-{}", name.replace(['/', ':'], "_")));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(work.join("x")).unwrap();
    let base_tar = work.join("base.tar");
    let (ok, out) = sh("ctr", &["-n", "k8s.io", "images", "export", "--platform", "linux/amd64", base_tar.to_str().unwrap(), base]);
    assert!(ok, "export {base}: {out}");
    let oci = work.join("oci");
    std::fs::create_dir_all(&oci).unwrap();
    assert!(sh("tar", &["-xf", base_tar.to_str().unwrap(), "-C", oci.to_str().unwrap()]).0);
    let blob = |d: &str| oci.join("blobs/sha256").join(d.trim_start_matches("sha256:"));
    let put = |bytes: &[u8]| -> (String, usize) {
        let d = format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)));
        std::fs::write(blob(&d), bytes).unwrap();
        (d, bytes.len())
    };
    let index: serde_json::Value = serde_json::from_slice(&std::fs::read(oci.join("index.json")).unwrap()).unwrap();
    // The exported index may point at an index or a manifest.
    let mut desc = index["manifests"][0].clone();
    let mut doc: serde_json::Value = serde_json::from_slice(&std::fs::read(blob(desc["digest"].as_str().unwrap())).unwrap()).unwrap();
    if doc["manifests"].is_array() {
        desc = doc["manifests"].as_array().unwrap().iter().find(|m| m["platform"]["architecture"] == "amd64").cloned().unwrap_or(doc["manifests"][0].clone());
        doc = serde_json::from_slice(&std::fs::read(blob(desc["digest"].as_str().unwrap())).unwrap()).unwrap();
    }
    let mut manifest = doc;
    let mut config: serde_json::Value = serde_json::from_slice(&std::fs::read(blob(manifest["config"]["digest"].as_str().unwrap())).unwrap()).unwrap();
    // The new layer: /filler with random bytes.
    let (ok, out) = sh("dd", &["if=/dev/urandom", &format!("of={}", work.join("x/filler").display()), "bs=1M", &format!("count={mib}"), "status=none"]);
    assert!(ok, "{out}");
    let layer_tar = work.join("layer.tar");
    assert!(sh("tar", &["-cf", layer_tar.to_str().unwrap(), "-C", work.join("x").to_str().unwrap(), "filler"]).0);
    let layer = std::fs::read(&layer_tar).unwrap();
    let diff_id = format!("sha256:{}", hex::encode(sha2::Sha256::digest(&layer)));
    let (ld, ls) = put(&layer);
    manifest["layers"].as_array_mut().unwrap().push(serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": ld, "size": ls}));
    config["rootfs"]["diff_ids"].as_array_mut().unwrap().push(serde_json::json!(diff_id));
    let (cd, cs) = put(&serde_json::to_vec(&config).unwrap());
    manifest["config"]["digest"] = serde_json::json!(cd);
    manifest["config"]["size"] = serde_json::json!(cs);
    manifest["mediaType"] = serde_json::json!("application/vnd.oci.image.manifest.v1+json");
    let (md, ms) = put(&serde_json::to_vec(&manifest).unwrap());
    let new_index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": ms,
                       "annotations": {"io.containerd.image.name": name, "org.opencontainers.image.ref.name": name}}]
    });
    std::fs::write(oci.join("index.json"), serde_json::to_vec(&new_index).unwrap()).unwrap();
    let _ = std::fs::remove_file(oci.join("manifest.json"));
    let out_tar = work.join("image.tar");
    assert!(sh("tar", &["-cf", out_tar.to_str().unwrap(), "-C", oci.to_str().unwrap(), "."]).0);
    out_tar
}

impl Drop for SmallNode {
    fn drop(&mut self) {
        // Whatever the agent left: tasks killed, containers and snapshots removed.
        for id in self.ctr(&["tasks", "ls", "-q"]).1.lines().filter(|l| !l.is_empty()) {
            let _ = self.ctr(&["tasks", "kill", "-s", "SIGKILL", id]);
            let _ = self.ctr(&["tasks", "rm", "-f", id]);
        }
        for id in self.containers() {
            let _ = self.ctr(&["containers", "rm", &id]);
        }
        if let Some(mut c) = self.containerd.take() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline && !matches!(c.try_wait(), Ok(Some(_))) {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        // Mounts the agent made under its root dir (pod volumes) go first.
        let (_, mounts) = sh("awk", &["{print $5}", "/proc/self/mountinfo"]);
        let mut under: Vec<&str> = mounts.lines().filter(|m| m.starts_with(self.fs.to_str().unwrap()) && *m != self.fs.to_str().unwrap()).collect();
        under.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in under {
            let _ = sh("umount", &["-l", m]);
        }
        let _ = sh("umount", &[self.fs.to_str().unwrap()]);
    }
}
