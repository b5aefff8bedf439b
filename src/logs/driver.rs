//! The logging binary: `rkubelet rkubelet-cri-log <spec>`, started by the
//! containerd shim for a task created with a `binary://` IO URI (containerd's
//! binary logging: fd 3 = the container's stdout, fd 4 = stderr, fd 5 = a pipe
//! closed once the logger is ready). It writes CRI-format entries to the
//! container's log file and rotates it at `containerLogMaxSize`, keeping
//! `containerLogMaxFiles` files (`<n>.log` plus `<n>.log.<YYYYMMDD-hhmmss>`), like
//! the kubelet's container log manager. Plain threads, no runtime: it stays small.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::FromRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::{timestamp, MAX_LINE};

/// The argument that selects logger mode (the URI's only query key).
pub const ARG: &str = "rkubelet-cri-log";

/// Where and how a container logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    pub path: PathBuf,
    pub max_size: u64,
    pub max_files: usize,
}

impl Spec {
    pub fn encode(&self) -> String {
        format!("{}:{}:{}", self.max_size, self.max_files, self.path.display())
    }

    fn decode(s: &str) -> Option<Spec> {
        let mut it = s.splitn(3, ':');
        let max_size = it.next()?.parse().ok()?;
        let max_files = it.next()?.parse().ok()?;
        Some(Spec { path: PathBuf::from(it.next()?), max_size, max_files })
    }
}

/// Percent-encodes all but unreserved characters (Go's url.ParseQuery decodes it).
fn percent(s: &str) -> String {
    s.bytes()
        .map(|b| if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect()
}

/// The binary the shim should run as the logger: this executable's path. When the
/// file was replaced since the agent started (an upgrade, a rebuild) the kernel
/// reports `<path> (deleted)`; the path itself then holds the new binary, which
/// speaks the same protocol, so that is what the shim gets.
pub fn logger_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/usr/local/bin/rkubelet"));
    let s = exe.to_string_lossy();
    match s.strip_suffix(" (deleted)") {
        Some(p) => PathBuf::from(p),
        None => exe,
    }
}

/// The task IO URI that has the shim run `exe` as this container's logger.
pub fn uri(exe: &Path, spec: &Spec) -> String {
    format!("binary://{}?{ARG}={}", exe.display(), percent(&spec.encode()))
}

struct Writer {
    file: File,
    size: u64,
    spec: Spec,
}

impl Writer {
    fn open(spec: Spec) -> std::io::Result<Writer> {
        if let Some(d) = spec.path.parent() {
            std::fs::create_dir_all(d)?;
        }
        let file = std::fs::OpenOptions::new().create(true).append(true).open(&spec.path)?;
        let size = file.metadata()?.len();
        Ok(Writer { file, size, spec })
    }

    fn entry(&mut self, stream: &str, full: bool, text: &[u8]) {
        let mut line = format!("{} {stream} {} ", timestamp(chrono::Utc::now()), if full { "F" } else { "P" }).into_bytes();
        line.extend_from_slice(text);
        line.push(b'\n');
        if self.file.write_all(&line).is_ok() {
            self.size += line.len() as u64;
        }
        if self.spec.max_size > 0 && self.size >= self.spec.max_size {
            self.rotate();
        }
    }

    /// `n.log` → `n.log.<time>`, a fresh `n.log`, and at most max_files in all.
    fn rotate(&mut self) {
        let stamp = chrono::Utc::now().format("%Y%m%d-%H%M%S%.6f").to_string();
        let rotated = PathBuf::from(format!("{}.{stamp}", self.spec.path.display()));
        if std::fs::rename(&self.spec.path, &rotated).is_err() {
            return;
        }
        if let Ok(f) = std::fs::OpenOptions::new().create(true).append(true).open(&self.spec.path) {
            self.file = f;
            self.size = 0;
        }
        prune(&self.spec.path, self.spec.max_files.max(1) - 1);
    }
}

/// Keeps the newest `keep` rotated files of `path`.
pub fn prune(path: &Path, keep: usize) {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name().map(|n| n.to_string_lossy().to_string())) else { return };
    let prefix = format!("{name}.");
    let mut rotated: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
        .collect();
    rotated.sort();
    let extra = rotated.len().saturating_sub(keep);
    for p in rotated.into_iter().take(extra) {
        let _ = std::fs::remove_file(p);
    }
}

/// Copies one stream into CRI entries until EOF.
fn pump(input: impl Read, stream: &str, out: &Mutex<Writer>) {
    let mut r = BufReader::with_capacity(64 * 1024, input);
    let mut line = Vec::with_capacity(1024);
    loop {
        line.clear();
        let n = match (&mut r).take(MAX_LINE as u64).read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let full = line.last() == Some(&b'\n') || n < MAX_LINE;
        if line.last() == Some(&b'\n') {
            line.pop();
        }
        if let Ok(mut w) = out.lock() {
            w.entry(stream, full, &line);
        }
    }
}

/// Logger mode; returns the process exit code. `args`: the spec, then either
/// nothing (the shim's binary IO: fds 3, 4 and 5) or the stdout and stderr FIFOs
/// (a container with stdin and no terminal, logger started by the agent).
pub fn run(args: &[String]) -> std::process::ExitCode {
    let Some(spec) = args.first().and_then(|s| Spec::decode(s)) else {
        eprintln!("rkubelet {ARG}: want <max-size>:<max-files>:<path> [<stdout fifo> <stderr fifo>]");
        return std::process::ExitCode::from(64);
    };
    // The shim closes its ends of the pipes, then sends SIGTERM "so the logger has
    // a chance to flush" (containerd's binaryIO.cancel), and SIGKILL 12 s later.
    // The default action would lose what is still in the pipe, such as a last
    // line without a newline: finish reading to EOF instead.
    // SAFETY: installs SIG_IGN for one signal, before any thread is started.
    let _ = unsafe { nix::sys::signal::signal(nix::sys::signal::Signal::SIGTERM, nix::sys::signal::SigHandler::SigIgn) };
    let writer = match Writer::open(spec) {
        Ok(w) => Arc::new(Mutex::new(w)),
        Err(e) => {
            eprintln!("rkubelet {ARG}: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    // Each stream is opened in its own thread: opening a FIFO for reading blocks
    // until the shim opens it for writing.
    type Open = Box<dyn FnOnce() -> Option<File> + Send>;
    let (stdout, stderr): (Open, Open) = match args {
        [_, out, err] => {
            let (out, err) = (PathBuf::from(out), PathBuf::from(err));
            (Box::new(move || File::open(out).ok()), Box::new(move || File::open(err).ok()))
        }
        _ => {
            // SAFETY: the shim hands us fds 3, 4 and 5 (containerd's binary IO contract);
            // each is owned by exactly one File here.
            let (stdout, stderr, ready) = unsafe { (File::from_raw_fd(3), File::from_raw_fd(4), File::from_raw_fd(5)) };
            drop(ready);
            (Box::new(move || Some(stdout)), Box::new(move || Some(stderr)))
        }
    };
    let w2 = writer.clone();
    let t = std::thread::spawn(move || {
        if let Some(f) = stderr() {
            pump(f, "stderr", &w2)
        }
    });
    if let Some(f) = stdout() {
        pump(f, "stdout", &writer);
    }
    let _ = t.join();
    std::process::ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_uri_carries_the_spec_in_one_query_key() {
        let s = Spec { path: "/var/log/pods/ns_p_u/c/0.log".into(), max_size: 10 << 20, max_files: 5 };
        assert_eq!(uri(Path::new("/usr/local/bin/rkubelet"), &s), "binary:///usr/local/bin/rkubelet?rkubelet-cri-log=10485760%3A5%3A/var/log/pods/ns_p_u/c/0.log");
        assert_eq!(Spec::decode(&s.encode()), Some(s));
    }

    #[test]
    fn long_lines_split_into_partial_entries_and_files_rotate() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("0.log");
        let w = Mutex::new(Writer::open(Spec { path: path.clone(), max_size: 40_000, max_files: 2 }).unwrap());
        let mut input = vec![b'x'; MAX_LINE + 10];
        input.extend_from_slice(b"\nshort\n");
        pump(&input[..], "stdout", &w);
        let content = std::fs::read(&path).unwrap();
        let entries: Vec<_> = content.split(|b| *b == b'\n').filter(|l| !l.is_empty()).map(|l| super::super::parse(l).unwrap()).collect();
        assert_eq!(entries.len(), 3);
        assert!(!entries[0].full && entries[0].text.len() == MAX_LINE);
        assert!(entries[1].full && entries[1].text.len() == 10);
        assert_eq!((entries[2].text.as_slice(), entries[2].stream.as_str()), (&b"short"[..], "stdout"));
        assert_eq!(super::super::render(&content, &Default::default()).len(), MAX_LINE + 10 + 1 + 6);
        // Past max_size: rotated, and only max_files files are kept.
        for _ in 0..4 {
            pump(&vec![b'y'; 30_000][..], "stderr", &w);
        }
        let files = std::fs::read_dir(t.path()).unwrap().count();
        assert_eq!(files, 2, "0.log and one rotated file");
    }
}
