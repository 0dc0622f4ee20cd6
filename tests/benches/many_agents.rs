//! gvmd's resident memory with many profiles and agents: VmRSS with no profile, with 50
//! profiles loaded, then 1 and 10 agents running (a shell making 1..10 requests through
//! the gateway, then sleeping), and after they stopped; per agent = (RSS10 − RSS0) / 10.
//! Needs root and release builds of gvmd and gvmctl:
//!
//!     cargo build --release -p gvm-daemon -p gvmctl
//!     GVM_TEST_BIN_DIR=$CARGO_TARGET_DIR/release cargo test -p gvm-tests --bench many_agents
//!
//! Prints one Markdown table row per round.

#[path = "../tests/common/mod.rs"]
mod common;

use common::many::{Fleet, PROFILES, RUNNING};

const ROUNDS: usize = 3;

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    common::assert_root();
    println!("| round | no profiles | {PROFILES} profiles | 1 agent | {RUNNING} agents | per profile | per agent | after stop | agent's own processes |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for round in 1..=ROUNDS {
        let mut fleet = Fleet::new();
        fleet.start_agents();
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
}
