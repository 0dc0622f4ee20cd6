//! Freezing an agent while gvmd changes what it sees: applying its file changes into the
//! real workspace, or rolling its overlay back. A frozen agent cannot write a file
//! between the moment gvmd copies it and the moment gvmd takes it out of the overlay.
//!
//! The agent's processes are those of its user (`gvm-P`): each sits in a cgroup (its own
//! leaf under `gvm/` for `gvmctl run` and foreground mode, the unit's cgroup under
//! systemd). Every distinct cgroup v2 of those processes is frozen through
//! `cgroup.freeze` and gvmd waits until `cgroup.events` says `frozen 1`. Where no
//! cgroup v2 can be frozen (no unified hierarchy, a process in the root cgroup), the
//! processes get SIGSTOP instead, repeated until no new process of the user appears.
//! The [`Frozen`] guard thaws (or SIGCONTs) when dropped, also on error paths.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// How long gvmd waits for a cgroup to report itself frozen.
const FREEZE_WAIT: Duration = Duration::from_secs(5);

/// An agent held still; thawed when dropped.
#[derive(Debug, Default)]
pub struct Frozen {
    cgroups: Vec<PathBuf>,
    stopped: Vec<Pid>,
}

impl Frozen {
    /// Number of processes or cgroups held (0: nothing of the agent was running).
    pub fn held(&self) -> usize {
        self.cgroups.len() + self.stopped.len()
    }

    /// `2 cgroups frozen, 1 process stopped`, for the log.
    pub fn describe(&self) -> String {
        format!("{} cgroups frozen, {} processes stopped", self.cgroups.len(), self.stopped.len())
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        for cg in &self.cgroups {
            if let Err(e) = std::fs::write(cg.join("cgroup.freeze"), "0") {
                tracing::error!("could not thaw {}: {e}", cg.display());
            }
        }
        for pid in &self.stopped {
            let _ = kill(*pid, Signal::SIGCONT);
        }
    }
}

/// Freezes every process running as `uid`. Never freezes gvmd's own cgroup or the root.
pub fn freeze_uid(uid: u32) -> std::io::Result<Frozen> {
    let mut frozen = Frozen::default();
    let pids = pids_of(uid);
    if pids.is_empty() {
        return Ok(frozen);
    }
    let root = cgroup2_root();
    let own = std::fs::read_to_string("/proc/self/cgroup").ok().and_then(|s| v2_path(&s));
    let mut groups = BTreeSet::new();
    let mut loose = false;
    for pid in &pids {
        let path = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok().and_then(|s| v2_path(&s));
        match (&root, path) {
            (Some(root), Some(p)) if p != "/" && Some(&p) != own.as_ref() => {
                let dir = root.join(p.trim_start_matches('/'));
                if dir.join("cgroup.freeze").exists() {
                    groups.insert(dir);
                } else {
                    loose = true;
                }
            }
            _ => loose = true,
        }
    }
    for dir in groups {
        std::fs::write(dir.join("cgroup.freeze"), "1")?;
        frozen.cgroups.push(dir.clone());
        wait_frozen(&dir)?;
    }
    if loose {
        stop_all(uid, &mut frozen);
    }
    Ok(frozen)
}

fn wait_frozen(dir: &Path) -> std::io::Result<()> {
    let deadline = Instant::now() + FREEZE_WAIT;
    loop {
        let events = std::fs::read_to_string(dir.join("cgroup.events"))?;
        if events.lines().any(|l| l.trim() == "frozen 1") {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(std::io::Error::other(format!(
                "{} did not freeze within {} s",
                dir.display(),
                FREEZE_WAIT.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// SIGSTOPs every process of `uid`, again until a pass finds none it had not stopped
/// (a process forked meanwhile is caught by the next pass).
fn stop_all(uid: u32, frozen: &mut Frozen) {
    for _ in 0..16 {
        let mut new = 0;
        for pid in pids_of(uid) {
            let pid = Pid::from_raw(pid);
            if !frozen.stopped.contains(&pid) && kill(pid, Signal::SIGSTOP).is_ok() {
                frozen.stopped.push(pid);
                new += 1;
            }
        }
        if new == 0 {
            return;
        }
    }
}

/// Whether any process runs as `uid`: an agent whose user has no process has no
/// mount namespace left, so nothing has its overlay mounted.
pub fn has_processes(uid: u32) -> bool {
    !pids_of(uid).is_empty()
}

/// Pids whose real uid is `uid`.
fn pids_of(uid: u32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/status"))
                .ok()
                .and_then(|s| {
                    let line = s.lines().find(|l| l.starts_with("Uid:"))?;
                    line.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                .is_some_and(|u| u == uid)
        })
        .collect()
}

/// The cgroup v2 path of a `/proc/PID/cgroup` text (`0::/path`).
fn v2_path(text: &str) -> Option<String> {
    text.lines().find_map(|l| l.strip_prefix("0::")).map(str::to_string)
}

/// Where the cgroup v2 hierarchy is mounted (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified`
/// on a hybrid host).
fn cgroup2_root() -> Option<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|l| {
        let (pre, post) = l.split_once(" - ")?;
        let mount_point = pre.split_whitespace().nth(4)?;
        (post.split_whitespace().next()? == "cgroup2").then(|| PathBuf::from(mount_point))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_v2_line_of_proc_cgroup() {
        let hybrid = "12:pids:/x\n1:name=systemd:/y\n0::/system.slice/gvm-agent@p.service\n";
        assert_eq!(v2_path(hybrid).as_deref(), Some("/system.slice/gvm-agent@p.service"));
        assert_eq!(v2_path("3:memory:/z\n"), None);
    }

    #[test]
    fn nothing_to_freeze_for_a_user_without_processes() {
        let f = freeze_uid(4_000_000_123).unwrap();
        assert_eq!(f.held(), 0);
    }
}
