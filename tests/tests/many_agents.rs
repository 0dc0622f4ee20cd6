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
