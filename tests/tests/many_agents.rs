//! Many profiles at once (issue 15 item 5), through a real gvmd in foreground mode:
//! 50 profiles loaded, 10 agents started (nine at once: their preparations run side by
//! side), each making a different number of requests to a local allowed host.
//! `gvmctl status` shows one line per running agent, the busiest first, no line wider
//! than $COLUMNS; stopping them leaves no netns, cgroup or process. gvmd's resident
//! memory with 0, 1 and 10 agents is printed (`tests/benches/many_agents.rs` measures
//! it on release builds). Privileged (root).

mod common;

use common::many::{Fleet, PROFILES, RUNNING, WITH_COMMAND};
use common::*;

#[test]
#[ignore = "needs root"]
fn fifty_profiles_ten_agents_status_fits_busiest_first_and_stop_cleans_up() {
    assert_root();
    let mut fleet = Fleet::new();
    fleet.start_agents();
    let (dirs, tag, names) = (&fleet.dirs, fleet.tag.clone(), fleet.names.clone());

    // The human view, at two widths: one line per running agent, the busiest first.
    let busiest_first: Vec<&str> = names[..RUNNING].iter().rev().map(String::as_str).collect();
    for width in [100, 60] {
        let out = gvmctl_cmd(dirs, &["status"]).env("COLUMNS", width.to_string()).output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        let text = stdout(&out);
        eprintln!("many_agents: gvmctl status at COLUMNS={width}:\n{text}");
        let long: Vec<&str> = text.lines().filter(|l| l.chars().count() > width).collect();
        assert!(long.is_empty(), "lines wider than {width}: {long:#?}\n{text}");
        let rows: Vec<&str> = text.lines().filter(|l| l.starts_with(&tag)).collect();
        let agents: Vec<&str> = rows.iter().map(|l| l.split(' ').next().unwrap()).collect();
        assert_eq!(agents, busiest_first, "{text}");
        assert!(rows.iter().all(|l| l.contains(" running ")), "{text}");
        if width == 100 {
            assert!(text.lines().any(|l| l.starts_with("AGENT") && l.contains(" TIER ")), "{text}");
            assert!(rows.iter().all(|l| l.contains(" L3 ")), "{text}");
        }
        let idle = format!("{} of {PROFILES} profiles idle: {tag}p{RUNNING}", PROFILES - RUNNING);
        assert!(text.contains(&idle), "{text}");
    }
    // --all: every profile, and every agent (the ones not started too).
    let text = stdout(&gvmctl(dirs, &["status", "--all"]));
    assert_eq!(text.lines().filter(|l| l.starts_with(&tag) && l.contains("enforce")).count(), PROFILES, "{text}");
    let stopped = text.lines().filter(|l| l.starts_with(&tag) && l.contains(" stopped")).count();
    assert_eq!(stopped, WITH_COMMAND - RUNNING, "{text}");

    // Stopped at once: no netns, cgroup or process of any of them left.
    fleet.stop_agents();
    eprintln!("many_agents: {}", fleet.report());
    let dirs = &fleet.dirs;
    let s = common::many::status(dirs);
    assert!(s["agents"].as_array().unwrap().iter().all(|a| a["state"] == "stopped"), "{s:#}");
    for name in &names[..RUNNING] {
        assert!(!dirs.runtime.join("netns").join(name).exists(), "the netns of {name} is left");
        let user = format!("gvm-{name}");
        common::many::wait_until(&format!("no process of {user}"), || {
            std::process::Command::new("pgrep").args(["-u", &user]).output().unwrap().stdout.is_empty()
        });
        common::many::wait_until(&format!("no cgroup of {name}"), || Fleet::cgroups_of(name).is_empty());
    }
    fleet.gvmd.take().unwrap().stop();
}

/// Preparing one profile does not wait for another's: profile `slow`'s preparation is
/// stopped inside its useradd (a wrapper found first on gvmd's PATH blocks on a FIFO
/// until the test writes it); meanwhile `gvmctl run` of profile `fast` is prepared, runs
/// and ends. Under one lock for every profile, `fast` would wait for `slow` and fail
/// the deadline.
#[test]
#[ignore = "needs root"]
fn a_profile_stuck_in_useradd_does_not_hold_up_another() {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    use std::process::{Command, Stdio};
    use std::time::Duration;
    assert_root();
    let dirs = Dirs::new();
    let tag = format!("mp{}", std::process::id() % 100_000);
    let (slow, fast) = (format!("{tag}slow"), format!("{tag}fast"));
    let cleanup = Users(vec![slow.clone(), fast.clone()]);
    drop(Users(cleanup.0.clone())); // leftovers of an earlier run would skip useradd
    for name in [&slow, &fast] {
        dirs.write_profile(name, "[network]\ndefault = \"deny\"\n");
    }
    let bin_dir = dirs.root.path().join("bin");
    std::fs::create_dir(&bin_dir).unwrap();
    let (fifo, waiting) = (dirs.root.path().join("release"), dirs.root.path().join("useradd-waiting"));
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let wrapper = bin_dir.join("useradd");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nfor a in \"$@\"; do last=$a; done\nif [ \"$last\" = \"gvm-{slow}\" ]; then\n  : > {waiting}\n  read line < {fifo}\nfi\nexec /usr/sbin/useradd \"$@\"\n",
            waiting = waiting.display(),
            fifo = fifo.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());
    let _gvmd = Gvmd::start_with_env(&dirs, &[("PATH", &path)]);
    // Whatever happens, the slow useradd is let go (a no-op once it was).
    let release = Release(fifo.clone());

    let run = |name: &str| {
        gvmctl_cmd(&dirs, &["run", "--profile", name, "--", "/bin/true"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut slow_run = run(&slow);
    common::many::wait_until("the slow profile's useradd", || waiting.exists());
    let mut fast_run = run(&fast);
    let fast_status = wait_timeout(&mut fast_run, Duration::from_secs(60));
    let slow_still_waiting = slow_run.try_wait().unwrap().is_none();
    if fast_status.is_none() {
        let _ = fast_run.kill();
    }
    drop(release);
    let slow_out = slow_run.wait_with_output().unwrap();
    let fast_out = fast_run.wait_with_output().unwrap();
    assert!(fast_status.is_some(), "the fast profile waited for the slow one's useradd: {fast_out:?}");
    assert!(fast_out.status.success(), "{fast_out:?}");
    assert!(slow_still_waiting, "the slow profile's preparation was not held: {slow_out:?}");
    assert!(slow_out.status.success(), "the slow profile runs once let go: {slow_out:?}");
    drop(cleanup);

    /// Lets the blocked wrapper go: opens the FIFO for writing without waiting.
    struct Release(std::path::PathBuf);
    impl Drop for Release {
        fn drop(&mut self) {
            use std::io::Write;
            let fifo = std::fs::OpenOptions::new().write(true).custom_flags(libc::O_NONBLOCK).open(&self.0);
            if let Ok(mut f) = fifo {
                let _ = f.write_all(b"go\n");
            }
        }
    }
}

/// Removes the named profiles' users.
struct Users(Vec<String>);

impl Drop for Users {
    fn drop(&mut self) {
        for name in &self.0 {
            let _ = std::process::Command::new("userdel").arg(format!("gvm-{name}")).output();
        }
    }
}

/// Six `gvmctl run` of one profile at once: each either runs or is told the profile is
/// already running, and when all ended no netns is left and the profile runs again.
/// Then six preparations (what `gvmd launch` asks) of each of two profiles at once: those
/// of one profile take turns (the gateway is opened once in its netns, not six times
/// into "address in use"), every one gets the same plan, and teardown removes the netns.
#[test]
#[ignore = "needs root"]
fn runs_of_one_profile_at_once_run_or_are_refused_and_leave_nothing() {
    assert_root();
    let dirs = Dirs::new();
    let name = format!("mo{}", std::process::id() % 100_000);
    let _users = Users(vec![name.clone()]);
    dirs.write_profile(&name, "[network]\ndefault = \"deny\"\n");
    let _gvmd = Gvmd::start(&dirs);
    let runs: Vec<_> = (0..6)
        .map(|_| {
            let mut c = gvmctl_cmd(&dirs, &["run", "--profile", &name, "--", "/bin/true"]);
            std::thread::spawn(move || c.output().unwrap())
        })
        .collect();
    let outs: Vec<_> = runs.into_iter().map(|r| r.join().unwrap()).collect();
    let ran = outs.iter().filter(|o| o.status.success()).count();
    for o in outs.iter().filter(|o| !o.status.success()) {
        assert!(stderr(o).contains("is already running"), "{o:?}");
    }
    assert!(ran >= 1, "none ran: {outs:?}");
    assert!(!dirs.runtime.join("netns").join(&name).exists(), "the netns is left");
    let again = gvmctl(&dirs, &["run", "--profile", &name, "--", "/bin/true"]);
    assert!(again.status.success(), "{again:?}");
    eprintln!("many_agents: {ran} of 6 runs at once ran, the others were told the profile is busy");

    let other = format!("{name}b");
    let _other_user = Users(vec![other.clone()]);
    dirs.write_profile(&other, "[network]\ndefault = \"deny\"\n");
    assert!(gvmctl(&dirs, &["reload"]).status.success());
    let post = |path: String| {
        let mut c = std::process::Command::new("curl");
        c.args(["-s", "-X", "POST", "-w", "\n%{http_code}", "--unix-socket"])
            .arg(dirs.socket())
            .arg(format!("http://gvmd{path}"));
        c
    };
    let prepares: Vec<_> = [&name, &other]
        .iter()
        .flat_map(|p| std::iter::repeat_n(p.to_string(), 6))
        .map(|p| {
            let mut c = post(format!("/v1/agents/{p}/prepare"));
            (p, std::thread::spawn(move || c.output().unwrap()))
        })
        .collect();
    let mut plans: std::collections::BTreeMap<String, Vec<(serde_json::Value, serde_json::Value)>> = Default::default();
    for (p, run) in prepares {
        let out = stdout(&run.join().unwrap());
        let (body, code) = out.rsplit_once('\n').unwrap();
        assert_eq!(code, "200", "prepare {p}: {body}");
        let plan: serde_json::Value = serde_json::from_str(body).unwrap();
        plans.entry(p).or_default().push((plan["uid"].clone(), plan["netns"].clone()));
    }
    for (p, got) in &plans {
        assert!(got.iter().all(|g| g == &got[0]), "{p}: {got:?}");
        assert!(dirs.runtime.join("netns").join(p).exists(), "{p}");
        let out = stdout(&post(format!("/v1/agents/{p}/teardown")).output().unwrap());
        assert!(out.ends_with("200"), "teardown {p}: {out}");
        assert!(!dirs.runtime.join("netns").join(p).exists(), "the netns of {p} is left");
    }
    assert_ne!(plans[&name][0].0, plans[&other][0].0, "two profiles, two users");
}
