//! Shared fixture for the privileged tests: a profile with its user, netns, state dirs
//! and a temp tree, all removed on drop (also when the test panics).
#![allow(dead_code)]

use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use gvm_sandbox::{
    ensure_user, launch, remove_user, AgentPaths, Exit, GatewayPorts, LaunchSpec, Limits, Netns, ProfileName, Sandbox,
    Stdio, Workspace, WorkspaceMode,
};
use nix::unistd::{Gid, Uid};

/// First line of every test marked `#[ignore = "needs root"]`: such a test run on purpose
/// (`--include-ignored`, as `.ci/run` does) without root fails with this reason instead
/// of passing without having tested anything.
pub fn assert_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root: run it as root (`.ci/run` does), or leave out --include-ignored"
    );
}

pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub profile: ProfileName,
    pub paths: AgentPaths,
    pub uid: Uid,
    pub gid: Gid,
    pub netns: Option<Netns>,
    pub ports: GatewayPorts,
    pub workspace: PathBuf,
}

impl Fixture {
    /// `tag`: short and unique per test (profile names are 24 characters at most).
    pub fn new(tag: &str) -> Self {
        let profile = ProfileName::parse(&format!("t{tag}{}", std::process::id() % 100_000)).unwrap();
        let dir = tempfile::Builder::new().prefix("gvm-sbx-").tempdir().unwrap();
        let root = dir.path();
        std::fs::set_permissions(root, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let state = root.join("state");
        let run = root.join("run");
        std::fs::create_dir_all(&run).unwrap();
        let paths = AgentPaths::new(&state, &run, &profile);
        let workspace = root.join("ws");
        std::fs::create_dir_all(&workspace).unwrap();
        let mut fx = Fixture {
            dir,
            profile: profile.clone(),
            paths: paths.clone(),
            uid: Uid::from_raw(0),
            gid: Gid::from_raw(0),
            netns: None,
            ports: GatewayPorts::default(),
            workspace,
        };
        let (uid, gid) = ensure_user(&profile, &paths.home).unwrap();
        fx.uid = uid;
        fx.gid = gid;
        fx.netns = Some(Netns::create(&run, &profile, fx.ports).unwrap());
        fx
    }

    pub fn netns(&self) -> &Netns {
        self.netns.as_ref().unwrap()
    }

    /// Prepares the overlay dirs of the default workspace (id "ws").
    pub fn prepare(&self) {
        self.paths.prepare(self.uid, self.gid, &[("ws", &self.workspace)]).unwrap();
    }

    pub fn spec(&self, command: &str, args: &[&str]) -> LaunchSpec {
        self.prepare();
        LaunchSpec {
            profile: self.profile.clone(),
            uid: self.uid,
            gid: self.gid,
            netns: self.netns().path().to_path_buf(),
            command: command.to_string(),
            args: args.iter().map(|s| s.to_string()).collect(),
            env: vec![("GVM_TEST".into(), "1".into())],
            workspaces: vec![Workspace { path: self.workspace.clone(), mode: WorkspaceMode::Overlay, id: "ws".into() }],
            deny_read: Vec::new(),
            paths: self.paths.clone(),
            ca_bundle: None,
            limits: Limits { tasks_max: Some(256), ..Limits::default() },
            proxy_port: self.ports.proxy,
            stdio: Stdio::Inherit,
            cwd: None,
            landlock: true,
            own_cgroup: true,
            die_with_parent: false,
        }
    }

    /// `sh -c script` with the default spec.
    pub fn sh(&self, script: &str) -> Outcome {
        run(self.spec("/bin/sh", &["-c", script]))
    }

    /// Asserts nothing of this fixture is mounted any more (netns aside, which
    /// `Drop` removes).
    pub fn assert_no_mounts_except_netns(&self) {
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let root = self.dir.path().to_string_lossy().into_owned();
        let netns = self.netns().path().to_string_lossy().into_owned();
        let left: Vec<&str> = info.lines().filter(|l| l.contains(&root) && !l.contains(&netns)).collect();
        assert!(left.is_empty(), "mounts left behind: {left:#?}");
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let root = self.dir.path().to_path_buf();
        if let Some(n) = self.netns.take() {
            n.destroy().unwrap();
        }
        let _ = remove_user(&self.profile);
        // Checks that hold on every path out of a test (a panic here during a panic would
        // abort, so only when the test itself did not fail).
        if !std::thread::panicking() {
            let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
            let root_s = root.to_string_lossy();
            assert!(!info.lines().any(|l| l.contains(root_s.as_ref())), "mounts left under {root_s}");
            assert!(nix::unistd::User::from_name(&self.profile.unix_user()).unwrap().is_none(), "user left");
            let cg = std::fs::read_dir("/sys/fs/cgroup/pids/gvm")
                .into_iter()
                .flatten()
                .chain(std::fs::read_dir("/sys/fs/cgroup/unified/gvm").into_iter().flatten())
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with(&format!("{}-", self.profile)))
                .count();
            assert_eq!(cg, 0, "cgroups left for {}", self.profile);
        }
    }
}

#[derive(Debug)]
pub struct Outcome {
    pub exit: Exit,
    pub stdout: String,
    pub stderr: String,
}

impl Outcome {
    pub fn out(&self) -> &str {
        self.stdout.trim()
    }
}

fn pipe() -> (OwnedFd, OwnedFd) {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap()
}

fn reader(fd: OwnedFd) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::fs::File::from(fd).read_to_string(&mut s);
        s
    })
}

/// Launches with piped stdout/stderr (stdin /dev/null) and waits.
pub fn run(spec: LaunchSpec) -> Outcome {
    let (mut sb, out, err) = start(spec);
    let exit = sb.wait().unwrap();
    Outcome { exit, stdout: out.join().unwrap(), stderr: err.join().unwrap() }
}

pub fn start(mut spec: LaunchSpec) -> (Sandbox, std::thread::JoinHandle<String>, std::thread::JoinHandle<String>) {
    let (or, ow) = pipe();
    let (er, ew) = pipe();
    let null = std::fs::File::open("/dev/null").unwrap();
    if !matches!(spec.stdio, Stdio::Fds { .. }) {
        spec.stdio = Stdio::Fds { stdin: null.into(), stdout: ow, stderr: ew };
    }
    let sb = launch(spec).unwrap();
    (sb, reader(or), reader(er))
}

pub fn path_str(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}
