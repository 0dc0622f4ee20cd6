//! The launcher: from a [`LaunchSpec`] to an agent running as `gvm-<profile>` inside its
//! namespaces, behind its masks, under seccomp and landlock.
//!
//! Process tree (host pids on the left):
//!
//! ```text
//! caller (gvmd, root) ─fork─▶ launcher (root, host pid ns; joins the cgroup and the netns,
//!   │                          unshares mnt/pid/ipc/uts/cgroup; waits, forwards signals)
//!   │                          └─fork─▶ init (pid 1 of the agent's pid ns): builds the
//!   │                                   mount view, pivots, forks the agent, drops to the
//!   │                                   agent's uid itself, reaps, forwards signals, exits
//!   │                                   with the agent's status
//!   │                                   └─fork─▶ agent: setsid, stdio, rlimits, uid drop,
//!   │                                            caps, no_new_privs, landlock, seccomp, exec
//! ```
//!
//! Everything that can be decided before forking is decided in the parent ([`Plan`]): the
//! mounts, the masks (globs resolved), the environment, argv, the seccomp filter. The
//! children only execute it, and report the first error through a close-on-exec pipe
//! (empty pipe at exec = success). They never print, never read the environment and take
//! no lock, so forking from a multi-threaded gvmd is sound (see `sys::fork`).
//!
//! Nothing is mounted in the host's mount namespace: all mounts happen after `unshare
//! (CLONE_NEWNS)` in a namespace made a slave of the host's, and die with its last process.
//! If the launcher is SIGKILLed, init gets SIGKILL (parent-death signal) and the pid
//! namespace goes with it; the cgroup leaf is then killed and removed by [`Sandbox`].

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use libseccomp::ScmpFilterContext;
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};
use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{Gid, Pid, Uid};

use crate::cgroup::{Cgroup, Limits};
use crate::confine::{apply_landlock, seccomp_filter, LandlockPlan};
use crate::error::{io, sys, Error, Result};
use crate::plan::{self, Step};
use crate::rules;
use crate::state::AgentPaths;
use crate::sys as k;
use crate::user::ProfileName;

/// How a workspace appears inside the sandbox: `Overlay` (the real directory is the
/// lower layer of an overlayfs; writes land in an upper dir under the agent's state, for
/// review), `Ro` (read-only bind) or `Rw` (read-write bind of the real directory,
/// explicit opt-in, no review).
pub use gvm_api::WorkspaceMode;

#[derive(Debug, Clone)]
pub struct Workspace {
    /// The real directory; it appears at the same path inside the sandbox.
    pub path: PathBuf,
    pub mode: WorkspaceMode,
    /// Names the overlay directory `<state>/agents/P/overlay/<id>/`; `[A-Za-z0-9_-]+`.
    pub id: String,
}

/// The agent's standard streams.
#[derive(Debug, Default)]
pub enum Stdio {
    /// The caller's stdin/stdout/stderr (the agent still gets a new session: no
    /// controlling terminal, and TIOCSTI is refused by seccomp).
    #[default]
    Inherit,
    /// /dev/null for all three.
    Null,
    /// Given descriptors (pipes, or a pty made for the agent).
    Fds { stdin: OwnedFd, stdout: OwnedFd, stderr: OwnedFd },
}

/// Everything the launcher needs; gvmd fills it from the profile.
#[derive(Debug)]
pub struct LaunchSpec {
    pub profile: ProfileName,
    pub uid: Uid,
    pub gid: Gid,
    /// The bound netns (`Netns::path`).
    pub netns: PathBuf,
    /// Program (absolute, or searched in the agent's PATH) and its arguments.
    pub command: String,
    pub args: Vec<String>,
    /// The profile's environment; the agent gets this plus HOME, USER, PATH, the proxy
    /// and the CA variables, and nothing else.
    pub env: Vec<(String, String)>,
    pub workspaces: Vec<Workspace>,
    pub deny_read: Vec<String>,
    pub paths: AgentPaths,
    /// PEM bundle (system roots + gvmd's CA) bound over the usual CA paths.
    pub ca_bundle: Option<PathBuf>,
    pub limits: Limits,
    /// The explicit proxy's port on 127.0.0.1 in the netns.
    pub proxy_port: u16,
    pub stdio: Stdio,
    /// Working directory inside the sandbox (default: the first workspace, else home).
    pub cwd: Option<PathBuf>,
    /// Apply landlock when the kernel has it (default true).
    pub landlock: bool,
    /// Put the agent in a cgroup of its own with `limits` (true: gvmd's foreground mode,
    /// `gvmctl run`), or leave it in the caller's cgroup (false: a systemd unit whose
    /// resource properties carry the limits).
    pub own_cgroup: bool,
    /// SIGKILL the sandbox when the calling process dies (the `gvmd launch` process of a
    /// unit or of foreground supervision: its death must not leave an orphaned agent).
    /// Only for a caller whose calling thread lives as long as the process: the signal
    /// is tied to the thread that forked.
    pub die_with_parent: bool,
}

/// How the agent ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Exit code (128 + n when the agent was killed by signal n, as a shell reports it).
    Code(i32),
    /// The launcher itself was killed by this signal.
    Signaled(Signal),
}

impl Exit {
    pub fn success(&self) -> bool {
        *self == Exit::Code(0)
    }
}

/// A running sandbox. Dropping it kills whatever is left and removes its cgroup.
#[derive(Debug)]
pub struct Sandbox {
    pid: Pid,
    exit: Option<Exit>,
    cgroup: Option<Cgroup>,
}

impl Sandbox {
    /// The launcher's pid (host pid namespace). Signals sent here reach the agent.
    pub fn pid(&self) -> Pid {
        self.pid
    }

    /// Sends SIGTERM/SIGINT/SIGHUP (forwarded to the agent), or SIGKILL (kills the launcher,
    /// and with it init and the whole pid namespace).
    pub fn signal(&self, sig: Signal) -> Result<()> {
        if self.exit.is_some() {
            return Ok(());
        }
        kill(self.pid, sig).map_err(sys(format!("signalling the launcher {}", self.pid)))
    }

    /// Waits for the agent to end and tears everything down.
    pub fn wait(&mut self) -> Result<Exit> {
        if let Some(e) = self.exit {
            return Ok(e);
        }
        let exit = loop {
            match waitpid(self.pid, None) {
                Ok(WaitStatus::Exited(_, code)) => break Exit::Code(code),
                Ok(WaitStatus::Signaled(_, sig, _)) => break Exit::Signaled(sig),
                Ok(_) | Err(Errno::EINTR) => continue,
                Err(e) => return Err(sys("waiting for the launcher")(e)),
            }
        };
        self.exit = Some(exit);
        self.teardown()?;
        Ok(exit)
    }

    /// Non-blocking [`Sandbox::wait`].
    pub fn try_wait(&mut self) -> Result<Option<Exit>> {
        if let Some(e) = self.exit {
            return Ok(Some(e));
        }
        let exit = match waitpid(self.pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => Exit::Code(code),
            Ok(WaitStatus::Signaled(_, sig, _)) => Exit::Signaled(sig),
            Ok(_) | Err(Errno::EINTR) => return Ok(None),
            Err(e) => return Err(sys("waiting for the launcher")(e)),
        };
        self.exit = Some(exit);
        self.teardown()?;
        Ok(Some(exit))
    }

    /// SIGKILL and wait.
    pub fn kill(&mut self) -> Result<Exit> {
        let _ = self.signal(Signal::SIGKILL);
        self.wait()
    }

    /// The cgroup leaves of this launch (for tests and `gvmctl status`).
    pub fn cgroup_dirs(&self) -> Vec<PathBuf> {
        self.cgroup.as_ref().map(|c| c.leaves().map(Path::to_path_buf).collect()).unwrap_or_default()
    }

    fn teardown(&mut self) -> Result<()> {
        match self.cgroup.take() {
            Some(mut cg) => cg.destroy(),
            None => Ok(()),
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if self.exit.is_none() {
            let _ = self.kill();
        }
        let _ = self.teardown();
    }
}

/// What the children execute: all decided and allocated up front.
struct Plan {
    /// Kill the launcher (and with it everything) when the process that called
    /// `launch` dies; the pid it must keep as parent.
    die_with: Option<nix::unistd::Pid>,
    netns: PathBuf,
    /// Where init mounts its staging tmpfs (the runtime dir: it exists, it is hidden from
    /// the agent anyway, and no source path lives under it).
    staging: PathBuf,
    cgroup_procs: Vec<PathBuf>,
    hostname: String,
    steps: Vec<Step>,
    uid: Uid,
    gid: Gid,
    argv: Vec<CString>,
    envp: Vec<CString>,
    search: Vec<PathBuf>,
    cwd: PathBuf,
    nproc: Option<u64>,
    landlock: Option<LandlockPlan>,
    filter: ScmpFilterContext,
}

static LAUNCHES: AtomicU64 = AtomicU64::new(0);

/// Starts the agent. Returns once the agent has exec'd (or with the first setup error).
pub fn launch(spec: LaunchSpec) -> Result<Sandbox> {
    crate::netns::require_root("launching a sandbox")?;
    let plan = plan(&spec)?;
    let name = format!("{}-{}-{}", spec.profile, std::process::id(), LAUNCHES.fetch_add(1, Ordering::Relaxed));
    // Under a service manager that delegated a cgroup to the caller (gvm-agent@P.service,
    // `Delegate=yes`), the agent stays in that unit's cgroup: the unit's limits apply,
    // `systemctl stop` kills it, and journald files its output under the unit.
    let cgroup = if spec.own_cgroup { Some(Cgroup::create(&name, &spec.limits)?) } else { None };
    let plan = Plan { cgroup_procs: cgroup.as_ref().map(Cgroup::procs_files).unwrap_or_default(), ..plan };
    let netns = File::open(&plan.netns).map_err(io("opening the profile's netns", &plan.netns))?;
    let (stdin, stdout, stderr) = match spec.stdio {
        Stdio::Inherit => (None, None, None),
        Stdio::Null => {
            let null = || File::options().read(true).write(true).open("/dev/null").map(OwnedFd::from);
            let n = |r: std::io::Result<OwnedFd>| r.map_err(io("opening", "/dev/null"));
            (Some(n(null())?), Some(n(null())?), Some(n(null())?))
        }
        Stdio::Fds { stdin, stdout, stderr } => (Some(stdin), Some(stdout), Some(stderr)),
    };
    let (err_r, err_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(sys("creating the launcher's error pipe"))?;
    // SAFETY: the launcher's code (`launcher`, then `init` and `agent`) only makes system
    // calls and allocates until it execs or calls `exit_now`: no printing, no environment,
    // no lock (see `sys::fork`).
    #[allow(unsafe_code)]
    let forked = unsafe { k::fork() };
    match forked.map_err(sys("forking the launcher"))? {
        k::ForkResult::Child => {
            drop(err_r);
            let stdio = [stdin, stdout, stderr];
            let msg = match launcher(&plan, &netns, &err_w, stdio) {
                Ok(never) => match never {},
                Err(msg) => msg,
            };
            report(&err_w, &msg)
        }
        k::ForkResult::Parent { child } => {
            drop(err_w);
            drop((stdin, stdout, stderr));
            let mut sandbox = Sandbox { pid: child, exit: None, cgroup };
            let mut msg = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                match nix::unistd::read(&err_r, &mut buf) {
                    Ok(0) => break,
                    Ok(n) => msg.extend_from_slice(&buf[..n]),
                    Err(Errno::EINTR) => continue,
                    Err(e) => return Err(sys("reading the launcher's error pipe")(e)),
                }
            }
            if msg.is_empty() {
                Ok(sandbox)
            } else {
                let _ = sandbox.kill();
                Err(Error::Setup(String::from_utf8_lossy(&msg).into_owned()))
            }
        }
    }
}

enum Never {}

/// Writes the error to the pipe and leaves. Child side only.
fn report(pipe: &OwnedFd, msg: &str) -> ! {
    let _ = nix::unistd::write(pipe, msg.as_bytes());
    k::exit_now(126)
}

fn fail<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> String + '_ {
    move |e| format!("{what}: {e}")
}

/// The launcher (host pid ns, root). Child side: syscalls and allocation only.
fn launcher(plan: &Plan, netns: &File, err: &OwnedFd, stdio: [Option<OwnedFd>; 3]) -> Result<Never, String> {
    if let Some(parent) = plan.die_with {
        nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(fail("setting the launcher's parent-death signal"))?;
        // The parent may have died between the fork and the prctl.
        if nix::unistd::getppid() != parent {
            return Err("the process that launched the sandbox is gone".into());
        }
    }
    for procs in &plan.cgroup_procs {
        std::fs::write(procs, nix::unistd::getpid().to_string())
            .map_err(fail(&format!("joining {}", procs.display())))?;
    }
    let forwarded = [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP, Signal::SIGCHLD];
    let mut mask = SigSet::empty();
    for s in forwarded {
        mask.add(s);
    }
    mask.thread_block().map_err(fail("blocking signals"))?;
    setns(netns, CloneFlags::CLONE_NEWNET).map_err(fail("joining the profile's netns"))?;
    let ns = CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWCGROUP;
    unshare(ns).map_err(fail("unsharing the mount/pid/ipc/uts/cgroup namespaces"))?;
    // SAFETY: as for the launcher; the launcher is single-threaded by now anyway.
    #[allow(unsafe_code)]
    let forked = unsafe { k::fork() };
    match forked.map_err(fail("forking init"))? {
        k::ForkResult::Child => {
            let msg = match init(plan, err, stdio) {
                Ok(never) => match never {},
                Err(msg) => msg,
            };
            report(err, &msg)
        }
        k::ForkResult::Parent { child } => {
            // From here on the launcher only relays: the pipe belongs to init and the agent.
            drop(stdio);
            let _ = k::close_fds_from(3);
            loop {
                let Ok(sig) = mask.wait() else { continue };
                if sig == Signal::SIGCHLD {
                    match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
                        Ok(WaitStatus::Exited(_, code)) => k::exit_now(code),
                        Ok(WaitStatus::Signaled(_, s, _)) => k::exit_now(128 + s as i32),
                        _ => continue,
                    }
                } else {
                    let _ = kill(child, sig);
                }
            }
        }
    }
}

/// Pid 1 of the agent's pid namespace: builds the view, starts the agent, reaps.
fn init(plan: &Plan, err: &OwnedFd, stdio: [Option<OwnedFd>; 3]) -> Result<Never, String> {
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(fail("setting init's parent-death signal"))?;
    nix::unistd::sethostname(&plan.hostname).map_err(fail("setting the hostname"))?;
    build_view(plan)?;
    // SAFETY: init is single-threaded; the agent's side only makes system calls until
    // `execve` or `exit_now`.
    #[allow(unsafe_code)]
    let forked = unsafe { k::fork() };
    let agent = match forked.map_err(fail("forking the agent"))? {
        k::ForkResult::Child => {
            let msg = match agent(plan, stdio) {
                Ok(never) => match never {},
                Err(msg) => msg,
            };
            report(err, &msg)
        }
        k::ForkResult::Parent { child } => child,
    };
    drop(stdio);
    // Init keeps no privilege either: same uid, no capabilities, same seccomp filter.
    drop_privileges(plan)?;
    // Changing credentials cleared the parent-death signal: re-arm it, or a SIGKILLed
    // launcher would leave init (and the agent's whole pid namespace) orphaned.
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(fail("re-arming init's parent-death signal"))?;
    // Init is a fork of gvmd: its memory and /proc/1/environ are gvmd's. Not dumpable
    // means /proc/1/{environ,mem,maps...} stay root-owned and unreadable to the agent
    // (class 8). (The uid change already reset it; this makes it explicit.)
    nix::sys::prctl::set_dumpable(false).map_err(fail("making init non-dumpable"))?;
    plan.filter.load().map_err(fail("loading seccomp in init"))?;
    let _ = k::close_fds_from(0);
    let mask = {
        let mut m = SigSet::empty();
        for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP, Signal::SIGCHLD] {
            m.add(s);
        }
        m
    };
    loop {
        let Ok(sig) = mask.wait() else { continue };
        if sig != Signal::SIGCHLD {
            let _ = kill(agent, sig);
            continue;
        }
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) if pid == agent => k::exit_now(code),
                Ok(WaitStatus::Signaled(pid, s, _)) if pid == agent => k::exit_now(128 + s as i32),
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => continue,
            }
        }
    }
}

/// The agent: last steps, then exec.
fn agent(plan: &Plan, stdio: [Option<OwnedFd>; 3]) -> Result<Never, String> {
    nix::unistd::setsid().map_err(fail("setsid"))?;
    let [stdin, stdout, stderr] = stdio;
    if let Some(fd) = stdin {
        nix::unistd::dup2_stdin(fd.as_fd()).map_err(fail("stdin"))?;
    }
    if let Some(fd) = stdout {
        nix::unistd::dup2_stdout(fd.as_fd()).map_err(fail("stdout"))?;
    }
    if let Some(fd) = stderr {
        nix::unistd::dup2_stderr(fd.as_fd()).map_err(fail("stderr"))?;
    }
    use nix::sys::resource::{setrlimit, Resource};
    if let Some(n) = plan.nproc {
        setrlimit(Resource::RLIMIT_NPROC, n, n).map_err(fail("RLIMIT_NPROC"))?;
    }
    setrlimit(Resource::RLIMIT_CORE, 0, 0).map_err(fail("RLIMIT_CORE"))?;
    nix::unistd::chdir(&plan.cwd).map_err(fail(&format!("chdir {}", plan.cwd.display())))?;
    k::reset_signal_dispositions();
    SigSet::all().thread_unblock().map_err(fail("unblocking signals"))?;
    drop_privileges(plan)?;
    if let Some(ll) = &plan.landlock {
        apply_landlock(ll)?;
    }
    plan.filter.load().map_err(fail("loading the seccomp filter"))?;
    let mut last = Errno::ENOENT;
    for prog in &plan.search {
        let Ok(c) = CString::new(prog.as_os_str().as_bytes()) else { continue };
        match nix::unistd::execve(&c, &plan.argv, &plan.envp) {
            Err(Errno::ENOENT) | Err(Errno::ENOTDIR) => continue,
            Err(e) => last = e,
            Ok(never) => match never {},
        }
    }
    Err(format!("exec {:?}: {last}", plan.argv.first().map(|a| a.to_string_lossy().into_owned()).unwrap_or_default()))
}

/// setgroups([]), setresgid, bounding set and ambient set emptied, setresuid,
/// capabilities cleared, no_new_privs.
fn drop_privileges(plan: &Plan) -> Result<(), String> {
    nix::unistd::setgroups(&[]).map_err(fail("setgroups"))?;
    nix::unistd::setresgid(plan.gid, plan.gid, plan.gid).map_err(fail("setresgid"))?;
    for cap in 0..64 {
        match k::capbset_drop(cap) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => break,
            Err(e) => return Err(format!("dropping capability {cap} from the bounding set: {e}")),
        }
    }
    k::clear_ambient_caps().map_err(fail("clearing ambient capabilities"))?;
    nix::unistd::setresuid(plan.uid, plan.uid, plan.uid).map_err(fail("setresuid"))?;
    k::clear_all_caps().map_err(fail("clearing capabilities"))?;
    nix::sys::prctl::set_no_new_privs().map_err(fail("no_new_privs"))?;
    Ok(())
}

/// Name of the new root under the staging tmpfs.
const NEWROOT: &str = ".gvm-root";

/// Builds the agent's root under the staging tmpfs, then pivots into it.
fn build_view(plan: &Plan) -> Result<(), String> {
    let staging = plan.staging.as_path();
    let root = &staging.join(NEWROOT);
    mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_SLAVE, None::<&str>)
        .map_err(fail("making the mount namespace a slave of the host's"))?;
    mount(Some("tmpfs"), staging, Some("tmpfs"), MsFlags::MS_NOSUID | MsFlags::MS_NODEV, Some("mode=0700,size=1m"))
        .map_err(fail("mounting the staging tmpfs"))?;
    std::fs::create_dir(root).map_err(fail("creating the new root"))?;
    mount(Some("/"), root, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>)
        .map_err(fail("binding the host root"))?;
    k::mount_setattr_recursive(root, k::MOUNT_ATTR_RDONLY | k::MOUNT_ATTR_NOSUID | k::MOUNT_ATTR_NODEV, 0)
        .map_err(fail("making the host root read-only"))?;
    let mut hidden = Vec::new();
    for step in &plan.steps {
        apply(root, staging, step, &mut hidden).map_err(|e| format!("{step:?}: {e}"))?;
    }
    for (_, fd) in hidden {
        k::mount_setattr_fd(fd.as_fd(), k::MOUNT_ATTR_RDONLY, 0).map_err(fail("making a hiding tmpfs read-only"))?;
    }
    nix::unistd::chdir(root).map_err(fail("chdir to the new root"))?;
    nix::unistd::pivot_root(".", ".").map_err(fail("pivot_root"))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(fail("detaching the old root"))?;
    nix::unistd::chdir("/").map_err(fail("chdir /"))?;
    Ok(())
}

fn apply(root: &Path, staging: &Path, step: &Step, hidden: &mut Vec<(PathBuf, OwnedFd)>) -> Result<(), String> {
    let none = None::<&str>;
    let bind = |src: &Path, dst: &Path, ro: bool| -> Result<(), String> {
        mount(Some(src), dst, none, MsFlags::MS_BIND | MsFlags::MS_REC, none).map_err(fail("bind"))?;
        let mut set = k::MOUNT_ATTR_NOSUID | k::MOUNT_ATTR_NODEV;
        if ro {
            set |= k::MOUNT_ATTR_RDONLY;
        }
        k::mount_setattr_recursive(dst, set, 0).map_err(fail("setting bind flags"))
    };
    match step {
        Step::Hide { target } => {
            let Some(t) = existing(root, target, true) else { return Ok(()) };
            if hidden.iter().any(|(h, _)| *h == t) {
                return Ok(());
            }
            mount(
                Some("tmpfs"),
                &t,
                Some("tmpfs"),
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                Some("mode=0755,size=1m"),
            )
            .map_err(fail("tmpfs"))?;
            let fd = nix::fcntl::open(
                &t,
                OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                nix::sys::stat::Mode::empty(),
            )
            .map_err(fail("opening a hiding tmpfs"))?;
            hidden.push((t, fd));
        }
        Step::Tmpfs { target, options, flags } => {
            let t = ensure(root, target, true)?;
            mount(Some("tmpfs"), &t, Some("tmpfs"), *flags, Some(*options)).map_err(fail("tmpfs"))?;
        }
        Step::Bind { source, target, read_only } => {
            let t = ensure(root, target, source.is_dir())?;
            bind(source, &t, *read_only)?;
        }
        Step::Overlay { lower, upper, work, target } => {
            let t = ensure(root, target, true)?;
            let opts = format!("lowerdir={},upperdir={},workdir={}", lower.display(), upper.display(), work.display());
            mount(Some("overlay"), &t, Some("overlay"), MsFlags::MS_NOSUID | MsFlags::MS_NODEV, Some(opts.as_str()))
                .map_err(fail("overlay"))?;
        }
        Step::Mask { target } => {
            let Some(t) = existing(root, target, false) else { return Ok(()) };
            if t.is_dir() {
                let flags = MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
                mount(Some("tmpfs"), &t, Some("tmpfs"), flags, Some("mode=0000,size=4k"))
                    .map_err(fail("mask tmpfs"))?;
            } else {
                bind(Path::new("/dev/null"), &t, true)?;
            }
        }
        Step::ReadOnly { target } => {
            let Some(t) = existing(root, target, false) else { return Ok(()) };
            bind(&t, &t, true)?;
        }
        Step::Proc => {
            let t = root.join("proc");
            let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
            mount(Some("proc"), &t, Some("proc"), flags, none).map_err(fail("mounting /proc"))?;
        }
        Step::Sys => {
            let t = root.join("sys");
            let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC | MsFlags::MS_RDONLY;
            mount(Some("sysfs"), &t, Some("sysfs"), flags, none).map_err(fail("mounting /sys"))?;
        }
        Step::Dev => {
            let dev = root.join("dev");
            mount(
                Some("tmpfs"),
                &dev,
                Some("tmpfs"),
                MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
                Some("mode=0755,size=64k"),
            )
            .map_err(fail("mounting /dev"))?;
            for node in rules::DEV_NODES {
                let t = dev.join(node);
                File::create(&t).map_err(fail("creating a device mount point"))?;
                let src = Path::new("/dev").join(node);
                mount(Some(&src), &t, none, MsFlags::MS_BIND, none).map_err(fail("binding a device"))?;
                mount(
                    none,
                    &t,
                    none,
                    MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
                    none,
                )
                .map_err(fail("remounting a device"))?;
            }
            let pts = dev.join("pts");
            std::fs::create_dir(&pts).map_err(fail("mkdir /dev/pts"))?;
            mount(
                Some("devpts"),
                &pts,
                Some("devpts"),
                MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
                Some("newinstance,ptmxmode=0666,mode=0620"),
            )
            .map_err(fail("mounting /dev/pts"))?;
            let shm = dev.join("shm");
            std::fs::create_dir(&shm).map_err(fail("mkdir /dev/shm"))?;
            mount(Some("tmpfs"), &shm, Some("tmpfs"), MsFlags::MS_NOSUID | MsFlags::MS_NODEV, Some("mode=1777"))
                .map_err(fail("mounting /dev/shm"))?;
            for (name, to) in rules::DEV_LINKS {
                std::os::unix::fs::symlink(to, dev.join(name)).map_err(fail("/dev symlink"))?;
            }
            mount(
                none,
                &dev,
                none,
                MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
                none,
            )
            .map_err(fail("making /dev read-only"))?;
        }
        Step::File { contents, target } => {
            let staged = staging.join(format!("file-{}", target.display().to_string().replace('/', "_")));
            std::fs::write(&staged, contents).map_err(fail("staging a file"))?;
            let Some(t) = existing(root, target, false).or_else(|| ensure(root, target, false).ok()) else {
                return Ok(());
            };
            bind(&staged, &t, true)?;
        }
    }
    Ok(())
}

/// `target` (a sandbox path) resolved under `root` with every symlink confined to `root`;
/// `None` if it does not exist. `dir_only`: only a directory counts.
fn existing(root: &Path, target: &Path, dir_only: bool) -> Option<PathBuf> {
    let p = resolve_in_root(root, target).ok()?;
    let md = std::fs::metadata(&p).ok()?;
    (!dir_only || md.is_dir()).then_some(p)
}

/// Like [`existing`], but creates the mount point (and missing parents) when absent. That
/// only works inside a writable tmpfs of ours (a hidden directory, /tmp); on the read-only
/// host tree it fails, which is right: we never create anything on the host.
fn ensure(root: &Path, target: &Path, dir: bool) -> Result<PathBuf, String> {
    let p = resolve_in_root(root, target)?;
    if std::fs::symlink_metadata(&p).is_ok() {
        return Ok(p);
    }
    let parent = p.parent().ok_or("mount point without parent")?;
    std::fs::create_dir_all(parent).map_err(fail(&format!("creating mount point {}", parent.display())))?;
    if dir {
        std::fs::create_dir(&p).map_err(fail(&format!("creating mount point {}", p.display())))?;
    } else {
        File::create(&p).map_err(fail(&format!("creating mount point {}", p.display())))?;
    }
    Ok(p)
}

/// Resolves `path` (absolute, a sandbox path) inside `root`, following symlinks as if
/// `root` were `/` (a link to `/run/x` means `<root>/run/x`, `..` stops at the root).
/// Missing trailing components are kept as they are.
pub(crate) fn resolve_in_root(root: &Path, path: &Path) -> Result<PathBuf, String> {
    let mut todo: Vec<PathBuf> = path.components().rev().map(|c| PathBuf::from(c.as_os_str())).collect();
    let mut cur = PathBuf::from("/");
    let mut links = 0;
    while let Some(c) = todo.pop() {
        match c.components().next() {
            Some(Component::RootDir) | Some(Component::CurDir) | None => continue,
            Some(Component::ParentDir) => {
                cur.pop();
                continue;
            }
            _ => {}
        }
        let next = cur.join(&c);
        let host = root.join(next.strip_prefix("/").unwrap_or(&next));
        match std::fs::read_link(&host) {
            Ok(target) => {
                links += 1;
                if links > 40 {
                    return Err(format!("too many symlinks resolving {}", path.display()));
                }
                if target.is_absolute() {
                    cur = PathBuf::from("/");
                }
                todo.extend(target.components().rev().map(|c| PathBuf::from(c.as_os_str())));
            }
            Err(_) => cur = next,
        }
    }
    Ok(root.join(cur.strip_prefix("/").unwrap_or(&cur)))
}

/// Everything decided before forking: the pure parts come from [`crate::plan`].
fn plan(spec: &LaunchSpec) -> Result<Plan> {
    if spec.uid.is_root() || spec.gid.as_raw() == 0 {
        return Err(Error::Spec(format!("the agent of {} must not run as uid/gid 0", spec.profile)));
    }
    let view = plan::mount_steps(spec)?;
    let env = plan::environment(spec, view.ca_path)?;
    Ok(Plan {
        netns: spec.netns.clone(),
        staging: spec.paths.runtime_dir.clone(),
        cgroup_procs: Vec::new(),
        die_with: spec.die_with_parent.then(nix::unistd::getpid),
        hostname: spec.profile.unix_user(),
        steps: view.steps,
        uid: spec.uid,
        gid: spec.gid,
        argv: plan::argv(spec)?,
        envp: plan::envp(&env)?,
        search: plan::search_path(&spec.command, &env),
        cwd: plan::working_dir(spec),
        nproc: spec.limits.tasks_max,
        landlock: spec.landlock.then_some(LandlockPlan { writable: view.writable }),
        filter: seccomp_filter()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_confines_symlinks() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::create_dir_all(root.join("run/systemd")).unwrap();
        std::os::unix::fs::symlink("/run/systemd/stub", root.join("etc/resolv.conf")).unwrap();
        std::os::unix::fs::symlink("../../../../../x", root.join("etc/up")).unwrap();
        assert_eq!(resolve_in_root(root, Path::new("/etc/resolv.conf")).unwrap(), root.join("run/systemd/stub"));
        assert_eq!(resolve_in_root(root, Path::new("/etc/up")).unwrap(), root.join("x"));
        assert_eq!(resolve_in_root(root, Path::new("/a/b")).unwrap(), root.join("a/b"));
    }
}
