//! `rkubelet [agent flags] reset [--if-stopped]`: what `kubeadm reset` cannot do
//! for rkubelet. kubeadm stops the kubelet unit, unmounts and empties
//! /var/lib/kubelet, and removes pods through CRI, which does not see
//! rkubelet's containers (they live on containerd's native API), and with
//! `KillMode=process` they outlive the stopped unit. This command stops and
//! removes every pod of this node (containers within their grace period,
//! sandbox, CNI network and netns, volumes and mounts, cgroups, logs), unmounts
//! whatever is still mounted under the root dir, and reports what is left. The
//! `rkubelet-reset.path` unit runs it with `--if-stopped` when kubeadm reset
//! deletes /etc/kubernetes/kubelet.conf.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use crate::config::{AgentArgs, Config, ResetArgs};

/// Where the agent records the node name it runs as (kubeadm reset removes the
/// flags file that said it; reset needs it to find the node's containers).
pub const NODE_NAME_FILE: &str = "node-name";

/// How long the pods get to go away in all.
const TIMEOUT: Duration = Duration::from_secs(300);

/// `rkubelet reset`. Exit code 0: nothing of the node's pods is left running or
/// mounted (or, with `--if-stopped`, the agent runs and nothing was done); 1:
/// something is left (named on stdout); 2: it could not run.
pub fn main(agent: &AgentArgs, args: &ResetArgs) -> ExitCode {
    let mut cfg = match Config::from_args(agent) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("rkubelet reset: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    // The node whose pods go: named by the flag, else as the agent recorded it;
    // if kubeadm reset removed that record with the root dir (--root-dir
    // /var/lib/kubelet), every rkubelet pod in this containerd namespace.
    let recorded = std::fs::read_to_string(cfg.root_dir.join(NODE_NAME_FILE)).ok().map(|s| s.trim().to_string()).filter(|s| !s.is_empty());
    let all_nodes = agent.hostname_override.is_none() && recorded.is_none();
    if let (None, Some(n)) = (&agent.hostname_override, recorded) {
        cfg.node_name = n;
    }
    let running: Vec<i32> = crate::doctor::agent_processes()
        .into_iter()
        .filter(|p| p.config.as_ref().is_none_or(|c| c.root_dir == cfg.root_dir))
        .map(|p| p.pid)
        .collect();
    if !running.is_empty() {
        if args.if_stopped {
            println!("rkubelet is running (pid {running:?}); nothing to reset");
            return ExitCode::SUCCESS;
        }
        eprintln!("rkubelet reset: the agent is running (pid {running:?}); stop it first (systemctl stop kubelet)");
        return ExitCode::from(2);
    }
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("rkubelet reset: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let (root, node) = (cfg.root_dir.clone(), cfg.node_name.clone());
    if all_nodes {
        println!("the node name is not recorded under {}: removing every rkubelet pod in containerd namespace {}", root.display(), cfg.namespace);
    }
    let (removed, left_containers) = match rt.block_on(crate::agent::remove_all_pods(cfg, all_nodes, TIMEOUT)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("rkubelet reset: {e}");
            return ExitCode::from(2);
        }
    };
    let unmounted = unmount_under(&root);
    let _ = std::fs::remove_dir(root.join("pods"));
    let left_mounts = mounts_under(&root);
    println!("node {node}: removed {removed} pod(s){}", if unmounted > 0 { format!(", unmounted {unmounted} leftover mount(s)") } else { String::new() });
    if left_containers.is_empty() && left_mounts.is_empty() {
        println!("nothing of rkubelet's is left running or mounted");
        return ExitCode::SUCCESS;
    }
    for c in &left_containers {
        println!("still in containerd: {c}");
    }
    for m in &left_mounts {
        println!("still mounted: {}", m.display());
    }
    ExitCode::from(1)
}

/// Mount points at or below `root`, deepest first (from /proc/self/mountinfo).
pub fn mounts_under(root: &Path) -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut v: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .filter(|p| p.starts_with(root))
        .collect();
    v.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    v.dedup();
    v
}

/// Detaches every mount under `root`; how many.
fn unmount_under(root: &Path) -> usize {
    mounts_under(root).iter().filter(|m| nix::mount::umount2(m.as_path(), nix::mount::MntFlags::MNT_DETACH).is_ok()).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts_under_a_dir_are_found_deepest_first() {
        let t = tempfile::tempdir().unwrap();
        let a = t.path().join("pods/u/volumes/x");
        std::fs::create_dir_all(&a).unwrap();
        let shm = t.path().join("pods/u/shm");
        std::fs::create_dir_all(&shm).unwrap();
        nix::mount::mount(Some("tmpfs"), &shm, Some("tmpfs"), nix::mount::MsFlags::empty(), None::<&str>).unwrap();
        nix::mount::mount(Some("tmpfs"), &a, Some("tmpfs"), nix::mount::MsFlags::empty(), None::<&str>).unwrap();
        let found = mounts_under(t.path());
        assert_eq!(found.first(), Some(&a));
        assert!(found.contains(&shm));
        assert_eq!(unmount_under(t.path()), 2);
        assert!(mounts_under(t.path()).is_empty());
    }
}
