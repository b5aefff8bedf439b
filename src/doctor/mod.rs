//! `rkubelet doctor`: a read-only check of everything the agent needs on this
//! node, with OK/WARN/FAIL per check and a one-line fix for each problem, and
//! with `--pod NS/NAME` an explanation of why that pod is not running, from the
//! agent's own state (saved pod status, events, container logs).
//!
//! The configuration checked is the running agent's: with no agent flags,
//! doctor finds the rkubelet process and reads its command line; with flags
//! (`rkubelet --root-dir … doctor`), those. Exit code: 0 all OK, 1 warnings,
//! 2 failures (nagios-style).

mod checks;
mod pod;

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::config::{AgentArgs, Cli, Config, DoctorArgs};

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum Level {
    #[serde(rename = "OK")]
    Ok,
    #[serde(rename = "WARN")]
    Warn,
    #[serde(rename = "FAIL")]
    Fail,
}

impl Level {
    fn label(self) -> &'static str {
        match self {
            Level::Ok => "OK",
            Level::Warn => "WARN",
            Level::Fail => "FAIL",
        }
    }
}

/// One line of the report.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: String,
    pub status: Level,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Check {
    pub fn ok(name: &str, message: impl Into<String>) -> Check {
        Check { name: name.into(), status: Level::Ok, message: message.into(), fix: None }
    }
    pub fn warn(name: &str, message: impl Into<String>, fix: impl Into<String>) -> Check {
        Check { name: name.into(), status: Level::Warn, message: message.into(), fix: Some(fix.into()) }
    }
    pub fn fail(name: &str, message: impl Into<String>, fix: impl Into<String>) -> Check {
        Check { name: name.into(), status: Level::Fail, message: message.into(), fix: Some(fix.into()) }
    }
}

/// The whole report (`-o json` prints it as is).
#[derive(Debug, Serialize)]
pub struct Report {
    pub node: String,
    pub version: String,
    /// Where the configuration came from: "flags" or "process <pid>" or "defaults".
    pub config_from: String,
    pub checks: Vec<Check>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<pod::Explanation>,
    pub exit_code: u8,
}

/// A running agent: its PID, command line, and the configuration that command
/// line resolves to (None if it no longer parses, e.g. a config file since broken).
#[derive(Debug, Clone)]
pub struct AgentProcess {
    pub pid: i32,
    pub args: Vec<String>,
    pub config: Option<Config>,
}

/// Words after which a command line is a tool run, not the agent.
const SUBCOMMANDS: &[&str] = &["doctor", "pods", "version", "reset", crate::logs::driver::ARG];

/// Running rkubelet agents (not this process, not tool runs such as `rkubelet pods`).
pub fn agent_processes() -> Vec<AgentProcess> {
    let me = std::process::id() as i32;
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else { return out };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        if pid == me {
            continue;
        }
        let Ok(exe) = std::fs::read_link(format!("/proc/{pid}/exe")) else { continue };
        let exe_name = exe.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if !exe_name.starts_with("rkubelet") {
            continue;
        }
        let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else { continue };
        let args: Vec<String> = raw.split(|b| *b == 0).filter(|a| !a.is_empty()).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        if args.iter().skip(1).any(|a| SUBCOMMANDS.contains(&a.as_str())) {
            continue;
        }
        // A zombie or a process in the middle of exec has no usable command line.
        if args.is_empty() {
            continue;
        }
        let config = config_of(&args);
        out.push(AgentProcess { pid, args, config });
    }
    out.sort_by_key(|p| p.pid);
    out
}

fn config_of(args: &[String]) -> Option<Config> {
    use clap::Parser;
    let cli = Cli::try_parse_from(crate::config::normalize_flag_names(args.iter().cloned())).ok()?;
    Config::from_args(&cli.agent).ok()
}

/// `rkubelet [agent flags] doctor [-o json] [--pod NS/NAME]`. `explicit`: agent
/// flags were given before `doctor`.
pub fn main(agent: &AgentArgs, explicit: bool, args: &DoctorArgs) -> std::process::ExitCode {
    let json = match args.output.as_str() {
        "json" => true,
        "" | "text" | "wide" => false,
        other => {
            eprintln!("rkubelet doctor: unknown output format {other:?} (use text or json)");
            return std::process::ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("rkubelet doctor: cannot start the async runtime: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let report = rt.block_on(run(agent, explicit, args.pod.as_deref()));
    if json {
        println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
    } else {
        print!("{}", render(&report));
    }
    std::process::ExitCode::from(report.exit_code)
}

/// Runs every check (and the pod explanation) and returns the report.
pub async fn run(agent: &AgentArgs, explicit: bool, pod_ref: Option<&str>) -> Report {
    let procs = agent_processes();
    let mut checks = Vec::new();
    let (cfg, from) = if explicit {
        match Config::from_args(agent) {
            Ok(c) => (Some(c), "flags".to_string()),
            Err(e) => {
                checks.push(Check::fail("config", format!("invalid configuration: {e}"), "fix the flag or the --config file it names"));
                (None, "flags".to_string())
            }
        }
    } else {
        match procs.iter().find_map(|p| p.config.clone().map(|c| (c, p.pid))) {
            Some((c, pid)) => (Some(c), format!("process {pid}")),
            None => match Config::from_args(agent) {
                Ok(c) => (Some(c), "defaults".to_string()),
                Err(e) => {
                    checks.push(Check::fail("config", format!("invalid configuration: {e}"), "fix the flag or the --config file it names"));
                    (None, "defaults".to_string())
                }
            },
        }
    };
    let Some(cfg) = cfg else {
        return finish(Report { node: String::new(), version: crate::config::version_line(), config_from: from, checks, pod: None, exit_code: 0 });
    };
    if let Some(f) = &cfg.config_file {
        checks.push(match cfg.compat.unknown_fields.as_slice() {
            [] => Check::ok("config", format!("{} loads", f.display())),
            unknown => Check::warn(
                "config",
                format!("{} loads; fields kubelet.config.k8s.io/v1beta1 does not have are ignored: {}", f.display(), unknown.join(", ")),
                "correct or remove them (a misspelt field is ignored, by upstream's kubelet too)",
            ),
        });
    }
    checks.push(checks::settings(&cfg));
    checks.push(checks::containerd(&cfg).await);
    checks.push(checks::runc());
    checks.push(checks::cni(&cfg));
    checks.push(checks::agent(&cfg, &procs).await);
    checks.push(checks::unit());
    checks.extend(checks::api(&cfg).await);
    checks.push(checks::swap());
    checks.push(checks::cgroup_driver(&cfg));
    checks.extend(checks::cgroups());
    checks.extend(checks::disk(&cfg));
    let pod = pod_ref.map(|r| pod::explain(&cfg, r));
    if let Some(p) = &pod {
        checks.push(Check { name: "pod".into(), status: p.status, message: p.summary.clone(), fix: p.fix.clone() });
    }
    finish(Report { node: cfg.node_name.clone(), version: crate::config::version_line(), config_from: from, checks, pod, exit_code: 0 })
}

fn finish(mut r: Report) -> Report {
    r.exit_code = match r.checks.iter().map(|c| c.status).max() {
        Some(Level::Fail) => 2,
        Some(Level::Warn) => 1,
        _ => 0,
    };
    r
}

/// The report as text: one line per check, the fix under each problem.
pub fn render(r: &Report) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(s, "rkubelet doctor: node {:?}, {} (configuration from {})", r.node, r.version, r.config_from);
    for c in &r.checks {
        let _ = writeln!(s, "  {:<5} {:<16} {}", c.status.label(), c.name, c.message);
        if let (Some(fix), true) = (&c.fix, c.status != Level::Ok) {
            let _ = writeln!(s, "  {:<5} {:<16} fix: {}", "", "", fix);
        }
    }
    if let Some(p) = &r.pod {
        s.push('\n');
        s.push_str(&pod::render(p));
    }
    let fails = r.checks.iter().filter(|c| c.status == Level::Fail).count();
    let warns = r.checks.iter().filter(|c| c.status == Level::Warn).count();
    let _ = writeln!(s, "\n{} checks: {} failed, {} warnings", r.checks.len(), fails, warns);
    s
}

/// `path` shown relative to nothing: for messages.
fn show(p: &Path) -> String {
    p.display().to_string()
}

/// The first of `candidates` that exists.
fn first_existing(candidates: &[PathBuf]) -> Option<PathBuf> {
    candidates.iter().find(|p| p.exists()).cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_code_is_the_worst_level() {
        let r = |levels: &[Level]| {
            finish(Report {
                node: "n".into(),
                version: "v".into(),
                config_from: "flags".into(),
                checks: levels.iter().map(|l| Check { name: "x".into(), status: *l, message: String::new(), fix: None }).collect(),
                pod: None,
                exit_code: 9,
            })
            .exit_code
        };
        assert_eq!(r(&[Level::Ok, Level::Ok]), 0);
        assert_eq!(r(&[Level::Ok, Level::Warn]), 1);
        assert_eq!(r(&[Level::Warn, Level::Fail, Level::Ok]), 2);
    }

    #[test]
    fn text_report_shows_fixes_only_for_problems() {
        let r = finish(Report {
            node: "n1".into(),
            version: "v".into(),
            config_from: "flags".into(),
            checks: vec![Check::ok("runc", "runc 1.1"), Check::fail("containerd", "unreachable", "systemctl start containerd")],
            pod: None,
            exit_code: 0,
        });
        let t = render(&r);
        assert!(t.contains("OK    runc"), "{t}");
        assert!(t.contains("FAIL  containerd       unreachable"), "{t}");
        assert!(t.contains("fix: systemctl start containerd"), "{t}");
        assert!(t.contains("1 failed, 0 warnings"), "{t}");
    }
}
