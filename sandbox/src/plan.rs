//! The pure half of building a sandbox: from a [`LaunchSpec`] to the mount steps, the
//! environment, argv and the working directory. Nothing here mounts, forks or needs
//! root; it reads the file system only to check that what the spec names exists. The
//! launcher ([`crate::build`]) executes the result in the agent's namespaces.
//!
//! The order of the steps is part of the contract: private `/tmp` first (a state dir
//! under `/tmp` is then simply absent), hides before binds, the home before the
//! workspaces (shallow first, so a nested workspace lands on top), masks last so no
//! later bind uncovers a masked path.

use std::ffi::CString;
use std::path::{Component, Path, PathBuf};

use nix::mount::MsFlags;

use crate::build::{LaunchSpec, Workspace, WorkspaceMode};
use crate::error::{Error, Result};
use crate::rules;

/// One mount-view step, executed by init in the new mount namespace. Paths named
/// `target` are paths *inside the sandbox*; they are resolved under the new root with
/// symlinks confined to it. Sources are host paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Step {
    /// Empty tmpfs over a directory (`ro` applied at the end, after mount points in it exist).
    Hide {
        target: PathBuf,
    },
    /// A writable tmpfs.
    Tmpfs {
        target: PathBuf,
        options: &'static str,
        flags: MsFlags,
    },
    Bind {
        source: PathBuf,
        target: PathBuf,
        read_only: bool,
    },
    Overlay {
        lower: PathBuf,
        upper: PathBuf,
        work: PathBuf,
        target: PathBuf,
    },
    /// Mask a path: /dev/null over a file, an empty read-only tmpfs over a directory.
    Mask {
        target: PathBuf,
    },
    /// Bind a path onto itself read-only.
    ReadOnly {
        target: PathBuf,
    },
    Proc,
    Sys,
    Dev,
    /// Write a file into the staging tmpfs and bind it read-only over `target`.
    File {
        contents: &'static str,
        target: PathBuf,
    },
}

/// The agent's file-system view, decided.
#[derive(Debug)]
pub(crate) struct MountView {
    pub steps: Vec<Step>,
    /// What landlock lets the agent write: home, private tmp dirs, `/dev`, writable
    /// workspaces.
    pub writable: Vec<PathBuf>,
    /// Where the CA bundle is bound, for the CA environment variables.
    pub ca_path: Option<&'static str>,
}

/// The mount steps of `spec`, in the order init applies them.
pub(crate) fn mount_steps(spec: &LaunchSpec) -> Result<MountView> {
    let paths = &spec.paths;
    for (p, what) in [(&paths.state_dir, "state dir"), (&paths.runtime_dir, "runtime dir"), (&paths.home, "home")] {
        check_path(p, what)?;
    }
    let mut steps = Vec::new();
    // 1. Private /tmp and /var/tmp first, then hide: fixed host paths, then the state
    //    and runtime dirs wherever they are.
    for t in ["/tmp", "/var/tmp"] {
        steps.push(Step::Tmpfs {
            target: PathBuf::from(t),
            options: "mode=1777",
            flags: MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        });
    }
    for d in rules::HIDDEN_DIRS {
        steps.push(Step::Hide { target: PathBuf::from(d) });
    }
    steps.push(Step::Hide { target: paths.state_dir.clone() });
    steps.push(Step::Hide { target: paths.runtime_dir.clone() });
    if let Some(config) = &paths.config_dir {
        steps.push(Step::Hide { target: config.clone() });
    }
    // 2. Private /dev, /proc, /sys.
    steps.push(Step::Dev);
    steps.push(Step::Proc);
    for p in rules::PROC_READ_ONLY {
        steps.push(Step::ReadOnly { target: PathBuf::from(p) });
    }
    for p in rules::PROC_MASKED {
        steps.push(Step::Mask { target: PathBuf::from(p) });
    }
    steps.push(Step::Sys);
    for p in rules::SYS_MASKED {
        steps.push(Step::Mask { target: PathBuf::from(p) });
    }
    // 3. The persistent home, then the workspaces (shallow first).
    if !paths.home.is_dir() {
        return Err(Error::Spec(format!(
            "the agent home {} does not exist (call state::prepare)",
            paths.home.display()
        )));
    }
    steps.push(Step::Bind { source: paths.home.clone(), target: paths.home.clone(), read_only: false });
    let mut workspaces: Vec<&Workspace> = spec.workspaces.iter().collect();
    workspaces.sort_by_key(|w| w.path.components().count());
    let mut writable =
        vec![paths.home.clone(), PathBuf::from("/tmp"), PathBuf::from("/var/tmp"), PathBuf::from("/dev")];
    for w in &workspaces {
        check_path(&w.path, "workspace path")?;
        if !w.path.is_dir() {
            return Err(Error::Spec(format!("workspace {} is not a directory", w.path.display())));
        }
        match w.mode {
            WorkspaceMode::Overlay => {
                let (upper, work) = paths.overlay_dirs(&w.id)?;
                for p in [&w.path, &upper, &work] {
                    let s = p.to_string_lossy();
                    if s.contains([',', ':', '\\']) {
                        return Err(Error::Spec(format!("overlay path {s} must not contain ',', ':' or '\\'")));
                    }
                }
                if !upper.is_dir() || !work.is_dir() {
                    return Err(Error::Spec(format!(
                        "overlay dirs of workspace {} missing (call state::prepare)",
                        w.id
                    )));
                }
                steps.push(Step::Overlay { lower: w.path.clone(), upper, work, target: w.path.clone() });
                writable.push(w.path.clone());
            }
            WorkspaceMode::Ro => {
                steps.push(Step::Bind { source: w.path.clone(), target: w.path.clone(), read_only: true })
            }
            WorkspaceMode::Rw => {
                steps.push(Step::Bind { source: w.path.clone(), target: w.path.clone(), read_only: false });
                writable.push(w.path.clone());
            }
        }
    }
    // 4. Masks: deny_read globs (resolved now), fixed secret files.
    let roots: Vec<PathBuf> = spec.workspaces.iter().map(|w| w.path.clone()).collect();
    for p in crate::deny::resolve(&spec.deny_read, &paths.home, &roots) {
        steps.push(Step::Mask { target: p });
    }
    for p in rules::HIDDEN_FILES {
        steps.push(Step::Mask { target: PathBuf::from(p) });
    }
    // 5. resolv.conf and the CA bundle.
    steps.push(Step::File { contents: rules::RESOLV_CONF, target: PathBuf::from("/etc/resolv.conf") });
    let mut ca_path = None;
    if let Some(ca) = &spec.ca_bundle {
        if !ca.is_file() {
            return Err(Error::Spec(format!("CA bundle {} is not a file", ca.display())));
        }
        for t in rules::CA_TARGETS {
            if Path::new(t).exists() {
                steps.push(Step::Bind { source: ca.clone(), target: PathBuf::from(t), read_only: true });
                ca_path.get_or_insert(*t);
            }
        }
        if ca_path.is_none() {
            return Err(Error::Spec(format!(
                "none of {:?} exists on this host to carry the CA bundle",
                rules::CA_TARGETS
            )));
        }
    }
    Ok(MountView { steps, writable, ca_path })
}

/// The agent's environment: the profile's, then ours on top (HOME, USER, PATH when the
/// profile sets none, the proxy variables, the CA variables when a bundle is bound at
/// `ca_path`). A later setting of a name replaces an earlier one.
pub(crate) fn environment(spec: &LaunchSpec, ca_path: Option<&str>) -> Result<Vec<(String, String)>> {
    let mut env: Vec<(String, String)> = Vec::new();
    let mut set = |k: &str, v: String| {
        env.retain(|(ek, _)| ek != k);
        env.push((k.to_string(), v));
    };
    for (k, v) in &spec.env {
        if k.is_empty() || k.contains('=') {
            return Err(Error::Spec(format!("environment variable name {k:?} is invalid")));
        }
        set(k, v.clone());
    }
    set("HOME", spec.paths.home.to_string_lossy().into_owned());
    set("USER", spec.profile.unix_user());
    if !spec.env.iter().any(|(k, _)| k == "PATH") {
        set("PATH", rules::DEFAULT_PATH.to_string());
    }
    for k in rules::PROXY_ENV {
        set(k, format!("http://127.0.0.1:{}", spec.proxy_port));
    }
    for k in rules::NO_PROXY_ENV {
        set(k, String::new());
    }
    set("NODE_USE_ENV_PROXY", "1".to_string());
    if let Some(ca) = ca_path {
        for k in rules::CA_ENV {
            set(k, ca.to_string());
        }
    }
    Ok(env)
}

/// `KEY=value` strings for `execve`.
pub(crate) fn envp(env: &[(String, String)]) -> Result<Vec<CString>> {
    env.iter().map(|(k, v)| cstring(&format!("{k}={v}"), "environment")).collect()
}

/// Where the agent looks for its command: the command itself when it names a path,
/// else each absolute directory of the environment's PATH (relative entries are
/// skipped: they would resolve against a working directory the agent controls).
pub(crate) fn search_path(command: &str, env: &[(String, String)]) -> Vec<PathBuf> {
    if command.contains('/') {
        return vec![PathBuf::from(command)];
    }
    let path_var = env.iter().find(|(k, _)| k == "PATH").map(|(_, v)| v.as_str()).unwrap_or_default();
    path_var.split(':').filter(|d| d.starts_with('/')).map(|d| Path::new(d).join(command)).collect()
}

/// `argv` for `execve`: the command as given, then its arguments.
pub(crate) fn argv(spec: &LaunchSpec) -> Result<Vec<CString>> {
    let mut argv = vec![cstring(&spec.command, "command")?];
    for a in &spec.args {
        argv.push(cstring(a, "argument")?);
    }
    Ok(argv)
}

/// Where the agent starts: the spec's `cwd`, else the first workspace, else its home.
pub(crate) fn working_dir(spec: &LaunchSpec) -> PathBuf {
    spec.cwd.clone().or_else(|| spec.workspaces.first().map(|w| w.path.clone())).unwrap_or(spec.paths.home.clone())
}

pub(crate) fn cstring(s: &str, what: &str) -> Result<CString> {
    CString::new(s).map_err(|_| Error::Spec(format!("{what} contains a NUL byte: {s:?}")))
}

pub(crate) fn check_path(p: &Path, what: &str) -> Result<()> {
    if !p.is_absolute() {
        return Err(Error::Spec(format!("{what} must be an absolute path, got {}", p.display())));
    }
    if p.components().any(|c| c == Component::ParentDir) {
        return Err(Error::Spec(format!("{what} must not contain `..`: {}", p.display())));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    //! Run as any user: nothing here mounts or forks.

    use std::path::Path;

    use nix::unistd::{Gid, Uid};

    use super::*;
    use crate::build::Stdio;
    use crate::cgroup::Limits;
    use crate::state::AgentPaths;
    use crate::user::ProfileName;

    struct Fixture {
        _dir: tempfile::TempDir,
        root: PathBuf,
        spec: LaunchSpec,
    }

    /// A spec over a temporary state dir with its home made, and three workspaces
    /// given deepest first: `/ws/a/b` (overlay), `/ws/a` (ro), `/ws/c` (rw).
    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let profile = ProfileName::parse("plantest").unwrap();
        let paths = AgentPaths::new(&root.join("state"), &root.join("run"), &profile);
        std::fs::create_dir_all(&paths.home).unwrap();
        let (upper, work) = paths.overlay_dirs("deep").unwrap();
        std::fs::create_dir_all(upper).unwrap();
        std::fs::create_dir_all(work).unwrap();
        for d in ["ws/a/b", "ws/c"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        let ws = |p: &str, mode, id: &str| Workspace { path: root.join(p), mode, id: id.into() };
        let spec = LaunchSpec {
            profile,
            uid: Uid::from_raw(4242),
            gid: Gid::from_raw(4242),
            netns: root.join("run/netns/plantest"),
            command: "python3".into(),
            args: vec!["-c".into(), "print(1)".into()],
            env: vec![("LANG".into(), "C.UTF-8".into())],
            workspaces: vec![
                ws("ws/a/b", WorkspaceMode::Overlay, "deep"),
                ws("ws/a", WorkspaceMode::Ro, "shallow"),
                ws("ws/c", WorkspaceMode::Rw, "side"),
            ],
            deny_read: Vec::new(),
            paths,
            ca_bundle: None,
            limits: Limits::default(),
            proxy_port: 3128,
            stdio: Stdio::default(),
            cwd: None,
            landlock: true,
            own_cgroup: false,
            die_with_parent: false,
        };
        Fixture { _dir: dir, root, spec }
    }

    fn position(steps: &[Step], want: impl Fn(&Step) -> bool) -> usize {
        steps.iter().position(want).expect("step present")
    }

    #[test]
    fn mounts_come_in_the_contract_order() {
        let f = fixture();
        let view = mount_steps(&f.spec).unwrap();
        let s = &view.steps;
        assert!(matches!(&s[0], Step::Tmpfs { target, .. } if target == Path::new("/tmp")), "{:?}", s[0]);
        assert!(matches!(&s[1], Step::Tmpfs { target, .. } if target == Path::new("/var/tmp")));
        let hide_state = position(s, |x| *x == Step::Hide { target: f.root.join("state") });
        let hide_run = position(s, |x| *x == Step::Hide { target: f.root.join("run") });
        let home = &f.spec.paths.home;
        let bind_home =
            position(s, |x| *x == Step::Bind { source: home.clone(), target: home.clone(), read_only: false });
        let ro =
            position(s, |x| matches!(x, Step::Bind { target, read_only: true, .. } if *target == f.root.join("ws/a")));
        let overlay = position(s, |x| matches!(x, Step::Overlay { target, .. } if *target == f.root.join("ws/a/b")));
        let rw =
            position(s, |x| matches!(x, Step::Bind { target, read_only: false, .. } if *target == f.root.join("ws/c")));
        let first_secret = position(s, |x| *x == Step::Mask { target: PathBuf::from(rules::HIDDEN_FILES[0]) });
        assert!(hide_state < bind_home && hide_run < bind_home, "hides before binds");
        assert!(bind_home < ro && ro < overlay, "home, then the shallow workspace under the deep one");
        assert!(rw > bind_home && first_secret > overlay.max(rw), "masks after every bind");
        assert!(matches!(s.last(), Some(Step::File { target, .. }) if target == Path::new("/etc/resolv.conf")));
        // Landlock may write home, the private tmp dirs, /dev, and the overlay and rw
        // workspaces; never the read-only one.
        assert!(view.writable.contains(&f.root.join("ws/a/b")) && view.writable.contains(&f.root.join("ws/c")));
        assert!(!view.writable.contains(&f.root.join("ws/a")));
        assert_eq!(view.ca_path, None);
    }

    #[test]
    fn config_dir_is_hidden_when_given() {
        let mut f = fixture();
        f.spec.paths = f.spec.paths.clone().with_config_dir(Path::new("/opt/gvm-conf"));
        let view = mount_steps(&f.spec).unwrap();
        assert!(view.steps.contains(&Step::Hide { target: PathBuf::from("/opt/gvm-conf") }));
    }

    #[test]
    fn missing_or_unsafe_paths_are_refused_with_the_fix() {
        let f = fixture();
        std::fs::remove_dir_all(&f.spec.paths.home).unwrap();
        let e = mount_steps(&f.spec).unwrap_err().to_string();
        assert!(e.contains("does not exist (call state::prepare)"), "{e}");

        let mut f = fixture();
        f.spec.workspaces[0].path = f.root.join("ws/../etc");
        let e = mount_steps(&f.spec).unwrap_err().to_string();
        assert!(e.contains("must not contain `..`"), "{e}");

        f.spec.workspaces =
            vec![Workspace { path: f.root.join("ws/c"), mode: WorkspaceMode::Overlay, id: "nodirs".into() }];
        let e = mount_steps(&f.spec).unwrap_err().to_string();
        assert!(e.contains("overlay dirs of workspace nodirs missing"), "{e}");

        f.spec.workspaces.clear();
        f.spec.ca_bundle = Some(f.root.join("no-such-ca.pem"));
        let e = mount_steps(&f.spec).unwrap_err().to_string();
        assert!(e.contains("is not a file"), "{e}");
    }

    #[test]
    fn environment_puts_ours_over_the_profiles() {
        let mut f = fixture();
        f.spec.env.push(("HOME".into(), "/root".into()));
        f.spec.env.push(("HTTPS_PROXY".into(), "http://evil.example:1".into()));
        let env = environment(&f.spec, Some("/etc/ssl/certs/ca-certificates.crt")).unwrap();
        let get = |k: &str| {
            let all: Vec<&str> = env.iter().filter(|(ek, _)| ek == k).map(|(_, v)| v.as_str()).collect();
            assert!(all.len() <= 1, "{k} set once");
            all.first().copied()
        };
        assert_eq!(get("LANG"), Some("C.UTF-8"));
        assert_eq!(get("HOME"), Some(f.spec.paths.home.to_str().unwrap()));
        assert_eq!(get("USER"), Some("gvm-plantest"));
        assert_eq!(get("PATH"), Some(rules::DEFAULT_PATH));
        assert_eq!(get("HTTPS_PROXY"), Some("http://127.0.0.1:3128"));
        for k in rules::CA_ENV {
            assert_eq!(get(k), Some("/etc/ssl/certs/ca-certificates.crt"), "{k}");
        }
        let without_ca = environment(&f.spec, None).unwrap();
        assert!(rules::CA_ENV.iter().all(|k| !without_ca.iter().any(|(ek, _)| ek == k)));

        f.spec.env.push(("PATH".into(), "/opt/bin".into()));
        let env = environment(&f.spec, None).unwrap();
        assert!(env.contains(&("PATH".into(), "/opt/bin".into())), "the profile's PATH is kept");

        f.spec.env.push(("A=B".into(), "x".into()));
        let e = environment(&f.spec, None).unwrap_err().to_string();
        assert!(e.contains("\"A=B\" is invalid"), "{e}");
        assert!(envp(&[("K".into(), "v\0".into())]).is_err(), "NUL in a value");
    }

    #[test]
    fn argv_search_and_working_dir() {
        let mut f = fixture();
        let args = argv(&f.spec).unwrap();
        assert_eq!(args, [c"python3", c"-c", c"print(1)"].map(CString::from));
        let env = vec![("PATH".to_string(), "/usr/bin:bin:/opt/x".to_string())];
        assert_eq!(
            search_path("python3", &env),
            [PathBuf::from("/usr/bin/python3"), PathBuf::from("/opt/x/python3")],
            "relative PATH entries are skipped"
        );
        assert_eq!(search_path("./run.sh", &env), [PathBuf::from("./run.sh")]);
        assert_eq!(working_dir(&f.spec), f.root.join("ws/a/b"), "the first workspace as given");
        f.spec.cwd = Some(PathBuf::from("/srv"));
        assert_eq!(working_dir(&f.spec), Path::new("/srv"));
        f.spec.cwd = None;
        f.spec.workspaces.clear();
        assert_eq!(working_dir(&f.spec), f.spec.paths.home);
        f.spec.args.push("a\0b".into());
        assert!(argv(&f.spec).unwrap_err().to_string().contains("argument contains a NUL byte"));
    }
}
