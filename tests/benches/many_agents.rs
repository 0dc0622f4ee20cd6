//! gvmd's resident memory with many profiles and agents: VmRSS with no profile, with 50
//! profiles loaded, then 1 and 10 agents running (a shell making 1..10 requests through
//! the gateway, then sleeping), and after they stopped; per agent = (RSS10 − RSS0) / 10.
//! Needs root and release builds of gvmd and gvmctl:
//!
//!     cargo build --release -p gvm-daemon -p gvmctl
//!     GVM_TEST_BIN_DIR=$CARGO_TARGET_DIR/release cargo test -p gvm-tests --bench many_agents
//!
//! Prints one Markdown table row per round, then how long `gvmctl status` takes with the
//! 10 agents running (median of 20; the view with the agents' counters from the audit log).

#[path = "../tests/common/mod.rs"]
mod common;

use common::bench::{median, timed};
use common::many::{Fleet, PROFILES, RUNNING};

const ROUNDS: usize = 3;
const STATUS_CALLS: usize = 20;

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    common::assert_root();
    println!("| round | no profiles | {PROFILES} profiles | 1 agent | {RUNNING} agents | per profile | per agent | after stop | agent's own processes |");
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut status_ms = Vec::new();
    for round in 1..=ROUNDS {
        let mut fleet = Fleet::new();
        fleet.start_agents();
        for args in [&["status", "--json"][..], &["status"][..]] {
            let times =
                (0..STATUS_CALLS).map(|_| timed(|| assert!(common::gvmctl(&fleet.dirs, args).status.success())));
            status_ms.push((args.join(" "), median(times.collect()) * 1000.0));
        }
        fleet.stop_agents();
        let r = &fleet.rss;
        println!(
            "| {round} | {} kB | {} kB | {} kB | {} kB | {} kB | {} kB | {} kB | {} kB |",
            r.no_profiles,
            r.loaded,
            r.one_agent,
            r.ten_agents,
            r.per_profile(),
            r.per_agent(),
            r.stopped,
            r.agent_tree
        );
    }
    for (args, ms) in status_ms {
        println!("gvmctl {args} with {PROFILES} profiles and {RUNNING} agents: median {ms:.1} ms");
    }
}
