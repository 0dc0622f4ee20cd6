//! Many profiles in one gvmd (`tests/tests/many_agents.rs` and `tests/benches/many_agents.rs`):
//! 50 profiles loaded, 10 of them with an agent that makes a different number of
//! requests to a local allowed host, 20 with an agent command that is not started, 20
//! without one; gvmd's resident memory read from /proc.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::agent::Upstream;
use super::{bin, gvmctl, stderr, Dirs, Gvmd};

pub const PROFILES: usize = 50;
pub const RUNNING: usize = 10;
/// Profiles `RUNNING..WITH_COMMAND` have an agent command but are not started.
pub const WITH_COMMAND: usize = 30;

/// Agent `i < RUNNING` (tier L3) makes `i + 1` requests, then sleeps: agent 9 is the busiest.
fn profile(i: usize, port: u16) -> String {
    let agent = if i < RUNNING {
        let script = format!(
            "n=0; while [ $n -lt {} ]; do curl -s -o /dev/null http://127.0.0.1:{port}/ok; n=$((n+1)); done; exec sleep 600",
            i + 1
        );
        format!("[agent]\ntier = \"L3\"\ncommand = [\"/bin/sh\", \"-c\", {script:?}]\n\n")
    } else if i < WITH_COMMAND {
        "[agent]\ncommand = [\"/bin/sleep\", \"600\"]\n\n".to_string()
    } else {
        String::new()
    };
    format!(
        "{agent}[network]\ndefault = \"deny\"\n\n[[network.rule]]\nhost = \"127.0.0.1\"\nport = {port}\npath = \"/ok\"\naction = \"allow\"\n"
    )
}

/// VmRSS of a process, in kB.
pub fn rss_kb(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

pub fn status(dirs: &Dirs) -> serde_json::Value {
    let out = gvmctl(dirs, &["status", "--json"]);
    assert!(out.status.success(), "gvmctl status --json: {}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

pub fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Agent `name` runs and its requests are all counted.
fn settled(s: &serde_json::Value, name: &str, requests: u64) -> bool {
    let agents = s["agents"].as_array().unwrap();
    agents.iter().any(|a| a["profile"] == name && a["state"] == "running" && a["allowed"].as_u64() == Some(requests))
}

/// gvmd's resident memory at each step, in kB.
#[derive(Debug, Default)]
pub struct Rss {
    pub no_profiles: u64,
    pub loaded: u64,
    pub one_agent: u64,
    pub ten_agents: u64,
    pub stopped: u64,
    /// Each running agent's own processes (launcher, init, sh, sleep), on average.
    pub agent_tree: u64,
}

impl Rss {
    pub fn per_agent(&self) -> u64 {
        self.ten_agents.saturating_sub(self.loaded) / RUNNING as u64
    }

    pub fn per_profile(&self) -> u64 {
        self.loaded.saturating_sub(self.no_profiles) / PROFILES as u64
    }
}

/// A gvmd with the 50 profiles; its agents' users and netns binds are removed on drop.
pub struct Fleet {
    pub gvmd: Option<Gvmd>,
    pub dirs: Dirs,
    pub tag: String,
    pub names: Vec<String>,
    pub rss: Rss,
    _upstream: Upstream,
}

impl Fleet {
    /// gvmd started without profiles, then the 50 written and loaded by `gvmctl reload`.
    pub fn new() -> Fleet {
        let dirs = Dirs::new();
        let upstream = Upstream::start(None);
        let tag = format!("ma{}", std::process::id() % 100_000);
        let names: Vec<String> = (0..PROFILES).map(|i| format!("{tag}p{i:02}")).collect();
        dirs.profiles();
        let gvmd = Gvmd::start(&dirs);
        status(&dirs);
        let mut rss = Rss { no_profiles: rss_kb(gvmd.pid()), ..Rss::default() };
        for (i, name) in names.iter().enumerate() {
            dirs.write_profile(name, &profile(i, upstream.port()));
        }
        let out = gvmctl(&dirs, &["reload"]);
        assert!(out.status.success(), "gvmctl reload: {}", stderr(&out));
        let s = status(&dirs);
        assert_eq!(s["profiles"].as_array().unwrap().len(), PROFILES, "{s:#}");
        rss.loaded = rss_kb(gvmd.pid());
        Fleet { gvmd: Some(gvmd), dirs, tag, names, rss, _upstream: upstream }
    }

    pub fn pid(&self) -> i32 {
        self.gvmd.as_ref().unwrap().pid()
    }

    /// `gvmctl start|stop` of several profiles at once; each must succeed.
    pub fn act_all(&self, verb: &str, names: &[String]) {
        let socket = self.dirs.socket();
        let runs: Vec<_> = names
            .iter()
            .map(|n| {
                let mut c = std::process::Command::new(bin("gvmctl"));
                c.args([verb, n]).env("GVM_SOCKET", &socket).stdin(std::process::Stdio::null());
                (n.clone(), std::thread::spawn(move || c.output().unwrap()))
            })
            .collect();
        for (name, run) in runs {
            let out = run.join().unwrap();
            assert!(out.status.success(), "gvmctl {verb} {name}: {}", stderr(&out));
        }
    }

    /// One agent, then the nine others at once; returns when all made their requests.
    pub fn start_agents(&mut self) {
        let names = self.names.clone();
        self.act_all("start", &names[..1]);
        wait_until("the first agent's request", || settled(&status(&self.dirs), &names[0], 1));
        self.rss.one_agent = rss_kb(self.pid());
        self.act_all("start", &names[1..RUNNING]);
        wait_until("all 10 agents' requests", || {
            let s = status(&self.dirs);
            (0..RUNNING).all(|i| settled(&s, &names[i], i as u64 + 1))
        });
        self.rss.ten_agents = rss_kb(self.pid());
        let s = status(&self.dirs);
        let trees: Vec<u64> = s["agents"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["state"] == "running")
            .map(|a| a["memory_bytes"].as_u64().unwrap_or(0) / 1024)
            .collect();
        assert_eq!(trees.len(), RUNNING, "{s:#}");
        self.rss.agent_tree = trees.iter().sum::<u64>() / RUNNING as u64;
    }

    /// The 10 agents stopped at once.
    pub fn stop_agents(&mut self) {
        let names = self.names[..RUNNING].to_vec();
        self.act_all("stop", &names);
        self.rss.stopped = rss_kb(self.pid());
    }

    pub fn report(&self) -> String {
        let r = &self.rss;
        format!(
            "gvmd VmRSS: no profiles {} kB; {PROFILES} profiles loaded {} kB ({} kB per profile); \
             1 agent {} kB; {RUNNING} agents {} kB; per agent (RSS10 - RSS0) / {RUNNING} = {} kB; \
             after stopping them {} kB. Each agent's own processes: {} kB",
            r.no_profiles,
            r.loaded,
            r.per_profile(),
            r.one_agent,
            r.ten_agents,
            r.per_agent(),
            r.stopped,
            r.agent_tree
        )
    }

    /// Cgroup leaves of `name` (`gvm/<name>-<id>`) under every hierarchy gvm uses.
    pub fn cgroups_of(name: &str) -> Vec<PathBuf> {
        let parents = ["", "unified", "pids", "memory", "cpu", "cpu,cpuacct"]
            .map(|h| PathBuf::from("/sys/fs/cgroup").join(h).join("gvm"));
        let prefix = format!("{name}-");
        parents
            .iter()
            .filter_map(|p| std::fs::read_dir(p).ok())
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
            .map(|e| e.path())
            .collect()
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        drop(self.gvmd.take());
        for name in &self.names[..RUNNING] {
            let _ = std::process::Command::new("userdel").arg(format!("gvm-{name}")).output();
        }
    }
}
