//! Container logs in the CRI format (`<RFC3339Nano> <stdout|stderr> <P|F> <text>`,
//! as containerd's CRI plugin writes them and the kubelet reads them): written by
//! [`driver`], a logging binary the containerd shim runs next to each container
//! (so logging neither blocks a chatty container nor loses lines while the agent
//! restarts), read back for `/containerLogs` (pkg/kubelet/kuberuntime/logs).

pub mod driver;

use chrono::{DateTime, SecondsFormat, Utc};

/// The longest line written as one entry; longer ones are split into `P` entries
/// (containerd's maxContainerLogLineSize).
pub const MAX_LINE: usize = 16 * 1024;

/// Go's RFC3339Nano: nanoseconds with trailing zeros trimmed.
pub fn timestamp(t: DateTime<Utc>) -> String {
    let s = t.to_rfc3339_opts(SecondsFormat::Nanos, true);
    match s.split_once('.') {
        Some((head, frac)) => {
            let frac = frac.trim_end_matches('Z').trim_end_matches('0');
            if frac.is_empty() {
                format!("{head}Z")
            } else {
                format!("{head}.{frac}Z")
            }
        }
        None => s,
    }
}

/// One CRI log entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub time: DateTime<Utc>,
    /// The timestamp as written (kept for `timestamps=true`).
    pub time_text: String,
    pub stream: String,
    /// False for a `P` (partial) entry: the line continues in the next entry.
    pub full: bool,
    pub text: Vec<u8>,
}

/// Parses one line of a CRI log file (without its newline).
pub fn parse(line: &[u8]) -> Option<Entry> {
    let mut it = line.splitn(4, |b| *b == b' ');
    let ts = std::str::from_utf8(it.next()?).ok()?;
    let stream = std::str::from_utf8(it.next()?).ok()?;
    let tag = it.next()?;
    let text = it.next().unwrap_or(&[]).to_vec();
    let time = DateTime::parse_from_rfc3339(ts).ok()?.with_timezone(&Utc);
    Some(Entry { time, time_text: ts.to_string(), stream: stream.to_string(), full: tag != b"P", text })
}

/// Where the kubelet links every container's log for log collectors.
pub const CONTAINERS_LOG_DIR: &str = "/var/log/containers";

/// `/var/log/containers/<pod>_<namespace>_<container>-<id>.log` → the log file,
/// as upstream links them.
pub fn link_container_log(pod: &k8s_openapi::api::core::v1::Pod, container: &str, id: &str, target: &std::path::Path) {
    let name = format!(
        "{}_{}_{container}-{id}.log",
        pod.metadata.name.as_deref().unwrap_or(""),
        pod.metadata.namespace.as_deref().unwrap_or("")
    );
    let dir = std::path::Path::new(CONTAINERS_LOG_DIR);
    let _ = std::fs::create_dir_all(dir);
    let link = dir.join(name);
    let _ = std::fs::remove_file(&link);
    if let Err(e) = std::os::unix::fs::symlink(target, &link) {
        tracing::debug!(link = %link.display(), error = %e, "cannot link the container log");
    }
}

/// Removes the `/var/log/containers` links of containers whose id `gone` accepts.
pub fn unlink_container_logs(gone: impl Fn(&str) -> bool) {
    for e in std::fs::read_dir(CONTAINERS_LOG_DIR).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let id = name.strip_suffix(".log").and_then(|n| n.rsplit_once('-')).map(|(_, id)| id.to_string());
        if id.map(|id| gone(&id)).unwrap_or(false) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// What `/containerLogs` asks for (pkg/kubelet/kuberuntime/logs: LogOptions).
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Only the last N lines.
    pub tail_lines: Option<usize>,
    /// Only lines at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Prefix each line with its timestamp.
    pub timestamps: bool,
    /// Stop after this many bytes of output.
    pub limit_bytes: Option<usize>,
}

/// Renders a CRI log file's content as `kubectl logs` shows it: whole lines
/// (partial entries joined), filtered and limited per `o`.
pub fn render(content: &[u8], o: &Options) -> Vec<u8> {
    let mut lines: Vec<Vec<u8>> = Vec::new();
    let mut pending: Option<(String, DateTime<Utc>, Vec<u8>)> = None;
    for raw in content.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let Some(e) = parse(raw) else { continue };
        let (ts, t, mut text) = pending.take().unwrap_or((e.time_text.clone(), e.time, Vec::new()));
        text.extend_from_slice(&e.text);
        if !e.full {
            pending = Some((ts, t, text));
            continue;
        }
        if o.since.map(|s| t < s).unwrap_or(false) {
            continue;
        }
        let mut line = Vec::new();
        if o.timestamps {
            line.extend_from_slice(ts.as_bytes());
            line.push(b' ');
        }
        line.extend_from_slice(&text);
        line.push(b'\n');
        lines.push(line);
    }
    if let Some(n) = o.tail_lines {
        let skip = lines.len().saturating_sub(n);
        lines.drain(..skip);
    }
    let mut out: Vec<u8> = lines.concat();
    if let Some(l) = o.limit_bytes {
        out.truncate(l);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_gos_rfc3339nano() {
        let t = DateTime::parse_from_rfc3339("2016-10-06T00:17:09.669794200Z").unwrap().with_timezone(&Utc);
        assert_eq!(timestamp(t), "2016-10-06T00:17:09.6697942Z");
        let whole = DateTime::parse_from_rfc3339("2016-10-06T00:17:09Z").unwrap().with_timezone(&Utc);
        assert_eq!(timestamp(whole), "2016-10-06T00:17:09Z");
    }

    #[test]
    fn partial_entries_join_and_options_filter() {
        let log = b"2016-10-06T00:17:09.1Z stdout F one\n2016-10-06T00:17:10.2Z stderr P tw\n2016-10-06T00:17:10.3Z stderr F o\n2016-10-06T00:17:11Z stdout F three\n";
        assert_eq!(render(log, &Options::default()), b"one\ntwo\nthree\n");
        assert_eq!(render(log, &Options { tail_lines: Some(2), ..Default::default() }), b"two\nthree\n");
        let since = DateTime::parse_from_rfc3339("2016-10-06T00:17:10Z").unwrap().with_timezone(&Utc);
        assert_eq!(render(log, &Options { since: Some(since), ..Default::default() }), b"two\nthree\n");
        assert_eq!(render(log, &Options { timestamps: true, tail_lines: Some(1), ..Default::default() }), b"2016-10-06T00:17:11Z three\n");
        assert_eq!(render(log, &Options { limit_bytes: Some(5), ..Default::default() }), b"one\nt");
        assert_eq!(render(log, &Options { tail_lines: Some(0), ..Default::default() }), b"");
    }
}
