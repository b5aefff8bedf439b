//! Termination messages (kuberuntime `getTerminationMessage` and
//! `readLastStringFromContainerLogs`): what a container wrote to its
//! `terminationMessagePath` (the last 4 KiB), or with `FallbackToLogsOnError`
//! and a failed exit and nothing written, the end of its log (the last 80
//! lines, at most 2 KiB). Computed once when the exit is recorded and kept next
//! to the container's termination file.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// MaxContainerTerminationMessageLength.
const MAX_MESSAGE: u64 = 4096;
/// MaxContainerTerminationMessageLogLength and ...LogLines.
const MAX_LOG_BYTES: usize = 2048;
const MAX_LOG_LINES: usize = 80;

/// Where the computed message of the termination file `tlog` is kept.
pub fn saved(tlog: &Path) -> PathBuf {
    let mut p = tlog.as_os_str().to_owned();
    p.push(".message");
    PathBuf::from(p)
}

/// The last `max` bytes of a file.
fn tail(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    let mut f = std::fs::File::open(path)?;
    let len = f.metadata()?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(max)))?;
    let mut buf = Vec::new();
    f.take(max).read_to_end(&mut buf)?;
    Ok(buf)
}

/// The message of an exited container: its termination file, or (fallback) the
/// end of its CRI log at `log`.
pub fn message(tlog: &Path, fallback: bool, log: Option<&Path>) -> String {
    let from_file = match tail(tlog, MAX_MESSAGE) {
        Ok(d) => String::from_utf8_lossy(&d).into_owned(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return format!("Error on reading termination log {}: {e}", tlog.display()),
    };
    if !from_file.is_empty() || !fallback {
        return from_file;
    }
    let Some(log) = log else { return String::new() };
    match std::fs::read(log) {
        Ok(data) => {
            let opts = crate::logs::Options { tail_lines: Some(MAX_LOG_LINES), since: None, timestamps: false, limit_bytes: None };
            let text = crate::logs::render(&data, &opts);
            String::from_utf8_lossy(&text[text.len().saturating_sub(MAX_LOG_BYTES)..]).into_owned()
        }
        Err(e) => format!("Error on reading termination message from logs: {e}"),
    }
}

/// The status message: the runtime's (`base`), then the termination message.
pub fn combine(base: Option<&str>, tlog: Option<&Path>) -> Option<String> {
    let t = tlog.and_then(|t| std::fs::read_to_string(saved(t)).ok()).filter(|t| !t.is_empty());
    match (base.filter(|b| !b.is_empty()), t) {
        (Some(b), Some(t)) => Some(format!("{b}: {t}")),
        (Some(b), None) => Some(b.to_string()),
        (None, t) => t,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_wins_and_is_cut_to_its_last_4_kib() {
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("tlog");
        std::fs::write(&f, "bye\n").unwrap();
        assert_eq!(message(&f, true, None), "bye\n");
        let big: String = (0..5000).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
        std::fs::write(&f, &big).unwrap();
        assert_eq!(message(&f, false, None), big[5000 - 4096..]);
        assert_eq!(message(&t.path().join("none"), false, None), "");
    }

    #[test]
    fn fallback_reads_the_last_80_lines_of_the_log_up_to_2_kib() {
        let t = tempfile::tempdir().unwrap();
        let (f, log) = (t.path().join("tlog"), t.path().join("0.log"));
        std::fs::write(&f, "").unwrap();
        let lines: String = (1..=100).map(|i| format!("2026-01-01T00:00:00.000000000Z stdout F line {i}\n")).collect();
        std::fs::write(&log, lines).unwrap();
        let m = message(&f, true, Some(&log));
        assert!(m.starts_with("line 21\n") && m.ends_with("line 100\n"), "{m}");
        assert_eq!(message(&f, false, Some(&log)), "", "only with the policy and a failed exit");
        let long: String = (1..=50).map(|i| format!("2026-01-01T00:00:00.000000000Z stderr F {i:02}{}\n", "x".repeat(98))).collect();
        std::fs::write(&log, long).unwrap();
        let m = message(&f, true, Some(&log));
        assert_eq!(m.len(), 2048);
        assert!(m.ends_with(&format!("50{}\n", "x".repeat(98))));
    }

    #[test]
    fn the_runtimes_message_comes_first() {
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("tlog");
        assert_eq!(combine(Some("oom"), Some(&f)), Some("oom".into()));
        std::fs::write(saved(&f), "custom").unwrap();
        assert_eq!(combine(Some("oom"), Some(&f)), Some("oom: custom".into()));
        assert_eq!(combine(None, Some(&f)), Some("custom".into()));
        assert_eq!(combine(None, None), None);
    }
}
