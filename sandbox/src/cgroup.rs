//! Per-launch cgroups: the tasks, memory and CPU limits, and a handle to kill everything
//! the agent started.
//!
//! This host class (cgroup "hybrid" without systemd) has the controllers on the v1
//! hierarchies and an empty-ish cgroup2 at `/sys/fs/cgroup/unified`. We use, per launch:
//! a leaf `gvm/<profile>-<id>` on cgroup2 (at `/sys/fs/cgroup` on a pure-v2 host, else the
//! unified mount) with whichever of pids/memory/cpu it offers, plus that leaf on each v1
//! hierarchy (pids, memory, cpu) for the controllers cgroup2 lacks. The tasks limit is
//! additionally enforced by `RLIMIT_NPROC`, which works everywhere because each agent has
//! its own uid.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::{io, Result};

/// Resource limits of one agent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// Memory ceiling in bytes (cgroup memory.max / memory.limit_in_bytes).
    pub memory_max: Option<u64>,
    /// Maximum number of tasks (cgroup pids.max and RLIMIT_NPROC for the agent's uid).
    pub tasks_max: Option<u64>,
    /// CPU quota in percent of one CPU (cpu.max / cfs_quota_us).
    pub cpu_percent: Option<u32>,
}

const ROOT: &str = "/sys/fs/cgroup";

#[derive(Debug)]
pub struct Cgroup {
    /// Leaves created, each with the hierarchy's version (2 or 1).
    leaves: Vec<(PathBuf, u8)>,
}

impl Cgroup {
    /// Creates the leaves and writes the limits. Hierarchies that are not there are skipped.
    pub fn create(name: &str, limits: &Limits) -> Result<Self> {
        let mut cg = Self { leaves: Vec::new() };
        let v2 = if Path::new(ROOT).join("cgroup.controllers").exists() {
            Some(PathBuf::from(ROOT))
        } else if Path::new(ROOT).join("unified/cgroup.controllers").exists() {
            Some(Path::new(ROOT).join("unified"))
        } else {
            None
        };
        let mut v2_has: Vec<String> = Vec::new();
        if let Some(root) = v2 {
            let ctrls = std::fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
            v2_has =
                ctrls.split_whitespace().filter(|c| ["pids", "memory", "cpu"].contains(c)).map(String::from).collect();
            let parent = root.join("gvm");
            std::fs::create_dir_all(&parent).map_err(io("creating cgroup", &parent))?;
            if !v2_has.is_empty() {
                let enable: Vec<String> = v2_has.iter().map(|c| format!("+{c}")).collect();
                let _ = std::fs::write(parent.join("cgroup.subtree_control"), enable.join(" "));
            }
            let leaf = parent.join(name);
            std::fs::create_dir(&leaf).map_err(io("creating cgroup", &leaf))?;
            cg.leaves.push((leaf.clone(), 2));
            if let Some(t) = limits.tasks_max.filter(|_| v2_has.iter().any(|c| c == "pids")) {
                write(&leaf.join("pids.max"), &t.to_string())?;
            }
            if let Some(m) = limits.memory_max.filter(|_| v2_has.iter().any(|c| c == "memory")) {
                write(&leaf.join("memory.max"), &m.to_string())?;
                let _ = std::fs::write(leaf.join("memory.swap.max"), "0");
            }
            if let Some(c) = limits.cpu_percent.filter(|_| v2_has.iter().any(|c| c == "cpu")) {
                write(&leaf.join("cpu.max"), &format!("{} 100000", u64::from(c) * 1000))?;
            }
        }
        let v1 = |ctrl: &str| -> Option<PathBuf> {
            let p = Path::new(ROOT).join(ctrl);
            (!v2_has.iter().any(|c| c == ctrl)
                && p.join("cgroup.procs").exists()
                && !p.join("cgroup.controllers").exists())
            .then_some(p)
        };
        if let (Some(t), Some(root)) = (limits.tasks_max, v1("pids")) {
            let leaf = cg.v1_leaf(&root, name)?;
            write(&leaf.join("pids.max"), &t.to_string())?;
        }
        if let (Some(m), Some(root)) = (limits.memory_max, v1("memory")) {
            let leaf = cg.v1_leaf(&root, name)?;
            write(&leaf.join("memory.limit_in_bytes"), &m.to_string())?;
            let _ = std::fs::write(leaf.join("memory.memsw.limit_in_bytes"), m.to_string());
        }
        if let (Some(c), Some(root)) = (limits.cpu_percent, v1("cpu")) {
            let leaf = cg.v1_leaf(&root, name)?;
            write(&leaf.join("cpu.cfs_period_us"), "100000")?;
            write(&leaf.join("cpu.cfs_quota_us"), &(u64::from(c) * 1000).to_string())?;
        }
        Ok(cg)
    }

    fn v1_leaf(&mut self, root: &Path, name: &str) -> Result<PathBuf> {
        let parent = root.join("gvm");
        std::fs::create_dir_all(&parent).map_err(io("creating cgroup", &parent))?;
        let leaf = parent.join(name);
        std::fs::create_dir(&leaf).map_err(io("creating cgroup", &leaf))?;
        self.leaves.push((leaf.clone(), 1));
        Ok(leaf)
    }

    /// The `cgroup.procs` files the launcher writes its pid into (from the child: plain
    /// writes, no locks).
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.leaves.iter().map(|(l, _)| l.join("cgroup.procs")).collect()
    }

    pub fn leaves(&self) -> impl Iterator<Item = &Path> {
        self.leaves.iter().map(|(l, _)| l.as_path())
    }

    /// Kills every process left in the leaves, waits for them to go, removes the leaves.
    pub fn destroy(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(5);
        for (leaf, version) in &self.leaves {
            if *version == 2 {
                let _ = std::fs::write(leaf.join("cgroup.kill"), "1");
            }
        }
        let mut last_err = None;
        for (leaf, _) in self.leaves.drain(..) {
            loop {
                let procs = std::fs::read_to_string(leaf.join("cgroup.procs")).unwrap_or_default();
                for pid in procs.split_whitespace().filter_map(|p| p.parse::<i32>().ok()) {
                    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
                }
                match std::fs::remove_dir(&leaf) {
                    Ok(()) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                    Err(e) if Instant::now() < deadline => {
                        let _ = e;
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(e) => {
                        last_err = Some(io("removing cgroup", &leaf)(e));
                        break;
                    }
                }
            }
        }
        last_err.map_or(Ok(()), Err)
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        let _ = self.destroy();
    }
}

/// Removes the empty cgroup leaves that launchers of a gvmd which died left behind
/// (`gvm/<profile>-<pid>-<n>` on every hierarchy, `<pid>` the launching gvmd's, no longer
/// running): a SIGKILLed gvmd never ran [`Cgroup::destroy`]. Only empty leaves can be
/// removed, so a leaf still in use is never touched. Returns how many went.
pub fn remove_stale_cgroups() -> usize {
    let mut parents = vec![Path::new(ROOT).join("gvm")];
    if let Ok(hierarchies) = std::fs::read_dir(ROOT) {
        parents.extend(hierarchies.flatten().map(|h| h.path().join("gvm")));
    }
    let mut removed = 0;
    for leaf in parents.iter().flat_map(|p| std::fs::read_dir(p).into_iter().flatten().flatten()) {
        let name = leaf.file_name().to_string_lossy().into_owned();
        let mut parts = name.rsplitn(3, '-');
        let (Some(n), Some(pid), Some(_profile)) = (parts.next(), parts.next(), parts.next()) else { continue };
        let ours = n.parse::<u64>().is_ok() && pid.parse::<u32>().is_ok();
        if ours && !Path::new("/proc").join(pid).exists() && std::fs::remove_dir(leaf.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

fn write(path: &Path, value: &str) -> Result<()> {
    std::fs::write(path, value).map_err(io("writing cgroup limit", path))
}
