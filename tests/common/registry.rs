#![allow(dead_code)]
//! Extra registries for image tests: `docker-registry` (installed by
//! scripts/setup.sh) on a loopback port of the test's choosing, optionally
//! with basic auth (an htpasswd made here with bcrypt), data under
//! /var/lib/rkubelet-test/registries, stopped by PID when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The registry of `scripts/setup.sh`, source of the images pushed to test registries.
pub const SOURCE: &str = "127.0.0.1:5000/test/busybox:1.0";

pub struct Registry {
    /// `127.0.0.1:<port>`.
    pub addr: String,
    /// Its directory (config, htpasswd, storage, log).
    pub dir: PathBuf,
    auth: Option<(String, String)>,
    child: Child,
}

impl Registry {
    /// Starts a registry on 127.0.0.1:`port` (never 5000), with basic auth for
    /// `user:password` when given; waits (bounded) until its port answers.
    pub fn start(name: &str, port: u16, auth: Option<(&str, &str)>) -> Registry {
        Self::start_with(name, port, auth, None)
    }

    /// Like [`Registry::start`], serving HTTPS with `(certificate, key)` PEM files when given.
    pub fn start_with(name: &str, port: u16, auth: Option<(&str, &str)>, tls: Option<(&Path, &Path)>) -> Registry {
        assert_ne!(port, 5000, "5000 is the shared registry");
        let dir = PathBuf::from("/var/lib/rkubelet-test/registries").join(format!("{name}-{port}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("data")).unwrap();
        let mut config = format!(
            "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
            dir.join("data").display()
        );
        if let Some((user, password)) = auth {
            let hash = bcrypt::hash(password, 5).unwrap();
            std::fs::write(dir.join("htpasswd"), format!("{user}:{hash}\n")).unwrap();
            config.push_str(&format!("auth:\n  htpasswd:\n    realm: rk-test\n    path: {}\n", dir.join("htpasswd").display()));
        }
        if let Some((cert, key)) = tls {
            config.push_str(&format!("  tls:\n    certificate: {}\n    key: {}\n", cert.display(), key.display()));
        }
        std::fs::write(dir.join("config.yml"), config).unwrap();
        let log = std::fs::File::create(dir.join("registry.log")).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(dir.join("config.yml"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("docker-registry (scripts/setup.sh installs it)");
        let reg = Registry { addr: format!("127.0.0.1:{port}"), dir, auth: auth.map(|(u, p)| (u.to_owned(), p.to_owned())), child };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect_timeout(&reg.addr.parse().unwrap(), Duration::from_millis(200)).is_err() {
            assert!(Instant::now() < deadline, "registry on {} did not come up: {}", reg.addr, reg.log());
            std::thread::sleep(Duration::from_millis(100));
        }
        reg
    }

    /// Copies the test busybox image to `<addr>/<repo_tag>` (with the registry's credentials).
    pub fn push(&self, repo_tag: &str) {
        let mut cmd = Command::new("skopeo");
        cmd.args(["copy", "--quiet", "--src-tls-verify=false", "--dest-tls-verify=false"]);
        if let Some((u, p)) = &self.auth {
            cmd.arg("--dest-creds").arg(format!("{u}:{p}"));
        }
        let out = cmd.arg(format!("docker://{SOURCE}")).arg(format!("docker://{}/{repo_tag}", self.addr)).output().expect("skopeo");
        assert!(out.status.success(), "push {repo_tag} to {}: {}", self.addr, String::from_utf8_lossy(&out.stderr));
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("registry.log")).unwrap_or_default()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes an executable credential provider plugin `name` into `bin_dir`: it
/// appends a line (`<start-ms> <end-ms> <request>`) to `<bin_dir>/<name>.runs`
/// per run, sleeps `sleep` seconds, and answers `user:password` for
/// `registry` with the given cache key type and duration.
pub fn credential_plugin(bin_dir: &Path, name: &str, registry: &str, (user, password): (&str, &str), (key_type, duration): (&str, &str), sleep: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(bin_dir).unwrap();
    let runs = bin_dir.join(format!("{name}.runs"));
    let script = format!(
        r#"#!/bin/sh
start=$(date +%s%3N)
req=$(cat)
sleep {sleep}
echo "$start $(date +%s%3N) $req" >> {runs}
printf '%s' '{{"kind":"CredentialProviderResponse","apiVersion":"credentialprovider.kubelet.k8s.io/v1","cacheKeyType":"{key_type}","cacheDuration":"{duration}","auth":{{"{registry}":{{"username":"{user}","password":"{password}"}}}}}}'
"#,
        runs = runs.display()
    );
    let path = bin_dir.join(name);
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// The runs a plugin written by [`credential_plugin`] recorded: (start ms, end ms, request).
pub fn plugin_runs(bin_dir: &Path, name: &str) -> Vec<(u64, u64, String)> {
    std::fs::read_to_string(bin_dir.join(format!("{name}.runs")))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut it = l.splitn(3, ' ');
            Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?, it.next()?.to_owned()))
        })
        .collect()
}

/// A CredentialProviderConfig with one provider `name` matching `match_images`.
pub fn provider_config(path: &Path, name: &str, match_images: &[&str]) {
    let images = match_images.iter().map(|m| format!("{m:?}")).collect::<Vec<_>>().join(", ");
    std::fs::write(
        path,
        format!(
            "apiVersion: kubelet.config.k8s.io/v1\nkind: CredentialProviderConfig\nproviders:\n- name: {name}\n  matchImages: [{images}]\n  defaultCacheDuration: 1m\n  apiVersion: credentialprovider.kubelet.k8s.io/v1\n"
        ),
    )
    .unwrap();
}

/// A CA and a serving certificate for 127.0.0.1 it signs, written as
/// `ca.pem`, `cert.pem` and `key.pem` into `dir`.
pub fn tls_files(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    std::fs::create_dir_all(dir).unwrap();
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "rkubelet test registry CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let params = CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    let paths = (dir.join("ca.pem"), dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&paths.0, ca_cert.pem()).unwrap();
    std::fs::write(&paths.1, cert.pem()).unwrap();
    std::fs::write(&paths.2, key.serialize_pem()).unwrap();
    paths
}
