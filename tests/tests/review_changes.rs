//! The agent's file changes, end to end with a real gvmd, a real sandbox and real
//! overlayfs: a sandboxed agent creates, modifies, deletes and renames files and plants
//! a symlink to /etc/passwd, hard links, a FIFO and a setuid file; `gvmctl changes`
//! classifies each, `gvmctl apply` brings in exactly the approved ones and refuses the
//! planted ones, `gvmctl rollback --applied` restores the originals byte for byte,
//! checkpoints roll the overlay back, and SIGKILL of the agent, of gvmd, and of gvmd in
//! the middle of an apply loses nothing and leaves no half-written file.
//!
//! Privileged: every test needs root (`#[ignore = "needs root"]`, run with --include-ignored).

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use common::agent::*;
use common::*;
use serde_json::Value;

/// A profile with the workspace as an overlay and the `[files]` classes under test.
fn profile_toml(sb: &Sandboxed) -> String {
    format!(
        r#"[agent]
workspaces = [{{ path = "{ws}", mode = "overlay" }}]

[network]
default = "deny"

[files]
auto_apply = ["reports/**"]
discard = ["**/*.tmp"]
"#,
        ws = sb.ws.display()
    )
}

fn ctl(sb: &Sandboxed, args: &[&str]) -> std::process::Output {
    gvmctl(&sb.dirs, args)
}

fn ctl_ok(sb: &Sandboxed, args: &[&str]) -> String {
    let o = ctl(sb, args);
    assert!(o.status.success(), "gvmctl {args:?} failed: {}\n{}", stderr(&o), stdout(&o));
    stdout(&o)
}

fn ctl_json(sb: &Sandboxed, args: &[&str]) -> Value {
    let out = ctl_ok(sb, args);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: gvmctl {args:?} printed {out}"))
}

/// `gvmctl changes P --json`, by path.
fn changes(sb: &Sandboxed) -> std::collections::BTreeMap<String, Value> {
    let v = ctl_json(sb, &["changes", &sb.profile, "--json"]);
    v.as_array().expect("a JSON array").iter().map(|c| (c["path"].as_str().unwrap().to_string(), c.clone())).collect()
}

fn class_of(all: &std::collections::BTreeMap<String, Value>, path: &str) -> (String, String) {
    let c = all.get(path).unwrap_or_else(|| panic!("no change at {path}: {all:#?}"));
    (c["class"].as_str().unwrap_or_default().to_string(), c["reason"].as_str().unwrap_or_default().to_string())
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
#[ignore = "needs root"]
fn changes_are_classified_applied_refused_and_rolled_back() {
    assert_root();
    let mut sb = Sandboxed::new("rv");
    let ws = sb.ws.clone();
    // The real workspace: files owned by a user who is neither root nor the agent, one
    // the agent may modify (0666), one to delete, one to rename.
    std::fs::write(ws.join("ledger.csv"), "original\n").unwrap();
    std::fs::set_permissions(ws.join("ledger.csv"), std::fs::Permissions::from_mode(0o666)).unwrap();
    std::os::unix::fs::chown(ws.join("ledger.csv"), Some(4321), Some(4322)).unwrap();
    std::fs::write(ws.join("old.txt"), "to be deleted\n").unwrap();
    std::fs::write(ws.join("notes.txt"), "notes, to be renamed\n").unwrap();
    let outside = sb.dirs.root.path().join("outside.txt");
    std::fs::write(&outside, "not the agent's\n").unwrap();
    sb.start("", &profile_toml(&sb), &[]);

    let ran = sb.sh(&format!(
        "set -e; cd {ws}; mkdir -p reports; echo q3 > reports/q3.csv; echo changed >> ledger.csv; rm old.txt; \
         mv notes.txt notes2.txt; echo scratch > x.tmp; echo new > new.md; ln -s /etc/passwd passwd-link; \
         echo data > data.txt; ln data.txt data-hard; mkfifo pipe; echo '#!/bin/sh' > suid; chmod 4755 suid; echo done",
        ws = ws.display()
    ));
    assert_eq!(ran.code, Some(0), "{ran:#?}");
    // A hard link to a file outside the workspace, planted in the upper dir directly
    // (what an agent sharing a file system with gvmd's state could try).
    std::fs::hard_link(&outside, sb.upper().join("hard-outside")).unwrap();

    // The run ended: the new file matching auto_apply is in, the rest waits.
    assert_eq!(read(&ws.join("reports/q3.csv")), "q3\n");
    assert!(ran.summary().contains("1 new applied"), "{}", ran.summary());
    assert!(ran.summary().contains("to review (gvmctl changes"), "{}", ran.summary());
    assert_eq!(read(&ws.join("ledger.csv")), "original\n", "nothing else reached the real workspace");

    let all = changes(&sb);
    assert_eq!(class_of(&all, "ledger.csv").0, "review");
    assert_eq!(all["ledger.csv"]["kind"]["kind"].as_str().or(all["ledger.csv"]["kind"].as_str()), Some("modified"));
    assert_eq!(class_of(&all, "old.txt").0, "review");
    assert_eq!(class_of(&all, "new.md").0, "review");
    assert_eq!(class_of(&all, "x.tmp").0, "discard");
    for (planted, why) in [
        ("passwd-link", "symlink"),
        ("data-hard", "link"),
        ("data.txt", "link"),
        ("hard-outside", "link"),
        ("pipe", "fifo"),
        ("suid", "setuid"),
    ] {
        let (class, reason) = class_of(&all, planted);
        assert_eq!(class, "refused", "{planted}: {:#}", all[planted]);
        assert!(reason.to_lowercase().contains(why), "{planted}: {reason}");
    }
    assert!(!all.contains_key("reports/q3.csv"), "applied entries leave the overlay: {all:#?}");
    let human = ctl_ok(&sb, &["changes", &sb.profile]);
    assert!(human.contains("refused") && human.contains("gvmctl diff"), "{human}");

    let diff = ctl_ok(&sb, &["diff", &sb.profile, "ledger.csv"]);
    assert!(diff.contains("-original") || diff.contains(" original"), "{diff}");
    assert!(diff.contains("+changed"), "{diff}");

    // --all takes new files only: modifying or deleting needs the path.
    let dry = ctl_json(&sb, &["apply", &sb.profile, "--all", "--dry-run", "--json"]);
    assert_eq!(dry["dry_run"], true);
    assert!(!ws.join("new.md").exists(), "a dry run changes nothing");
    ctl_ok(&sb, &["apply", &sb.profile, "--all"]);
    assert_eq!(read(&ws.join("new.md")), "new\n");
    assert_eq!(read(&ws.join("ledger.csv")), "original\n", "--all does not modify existing files");
    assert!(ws.join("old.txt").exists(), "--all does not delete");
    for planted in ["passwd-link", "data-hard", "hard-outside", "pipe", "suid", "x.tmp"] {
        assert!(std::fs::symlink_metadata(ws.join(planted)).is_err(), "{planted} reached the workspace");
        let o = ctl(&sb, &["apply", &sb.profile, planted]);
        assert!(!o.status.success(), "apply {planted} must fail: {}", stdout(&o));
        assert!(std::fs::symlink_metadata(ws.join(planted)).is_err(), "{planted} reached the workspace");
    }

    let r = ctl_json(&sb, &["apply", &sb.profile, "ledger.csv", "old.txt", "--json"]);
    let apply_id = r["id"].as_str().expect("an apply id").to_string();
    assert_eq!(read(&ws.join("ledger.csv")), "original\nchanged\n");
    let md = std::fs::metadata(ws.join("ledger.csv")).unwrap();
    assert_eq!((md.uid(), md.gid(), md.mode() & 0o7777), (4321, 4322, 0o666), "owner and mode kept");
    assert!(!ws.join("old.txt").exists());
    let left = changes(&sb);
    assert!(!left.contains_key("ledger.csv") && !left.contains_key("old.txt"), "{left:#?}");
    assert!(left.contains_key("passwd-link"), "what was refused stays, with why");

    // Every apply is audited with paths and hashes.
    let applies = sb.events("file_apply");
    assert!(
        applies.iter().any(|e| e["details"]["apply_id"] == apply_id.as_str()
            && e["details"]["applied"].to_string().contains("ledger.csv")
            && e["details"]["applied"].to_string().contains("sha256:")),
        "{applies:#?}"
    );

    // Undo the apply: the originals come back byte for byte, with owner and mode.
    let listed = ctl_ok(&sb, &["applied", &sb.profile]);
    assert!(listed.contains(&apply_id), "{listed}");
    ctl_ok(&sb, &["rollback", &sb.profile, "--applied", &apply_id]);
    assert_eq!(std::fs::read(ws.join("ledger.csv")).unwrap(), b"original\n");
    let md = std::fs::metadata(ws.join("ledger.csv")).unwrap();
    assert_eq!((md.uid(), md.gid(), md.mode() & 0o7777), (4321, 4322, 0o666));
    assert_eq!(read(&ws.join("old.txt")), "to be deleted\n");
    assert!(!sb.events("file_rollback").is_empty());
    let again = ctl(&sb, &["rollback", &sb.profile, "--applied", &apply_id]);
    assert!(!again.status.success(), "an apply is undone once: {}", stdout(&again));

    // Unknown apply ids and paths outside every workspace get clear errors.
    let o = ctl(&sb, &["rollback", &sb.profile, "--applied", "a-nope"]);
    assert!(!o.status.success() && stderr(&o).contains("a-nope"), "{}", stderr(&o));
    let o = ctl(&sb, &["apply", &sb.profile, "/etc/passwd"]);
    assert!(!o.status.success() && stderr(&o).contains("/etc/passwd"), "{}", stderr(&o));
}

#[test]
#[ignore = "needs root"]
fn checkpoints_roll_the_overlay_back() {
    assert_root();
    let mut sb = Sandboxed::new("cp");
    let ws = sb.ws.clone();
    std::fs::write(ws.join("a.txt"), "real\n").unwrap();
    sb.start("", &profile_toml(&sb), &[]);
    let step = |script: &str| {
        let ran = sb.sh(&format!("set -e; cd {}; {script}", ws.display()));
        assert_eq!(ran.code, Some(0), "{ran:#?}");
    };
    step("echo one > b.txt");
    let cp = ctl_json(&sb, &["checkpoint", &sb.profile, "--name", "first", "--json"]);
    assert_eq!(cp["name"], "first");
    step("echo two > c.txt; rm a.txt; echo more >> b.txt");
    let listed = ctl_ok(&sb, &["checkpoints", &sb.profile]);
    assert!(listed.contains("first"), "{listed}");

    ctl_ok(&sb, &["rollback", &sb.profile, "--to", "first"]);
    let all = changes(&sb);
    assert_eq!(all.keys().collect::<Vec<_>>(), ["b.txt"], "{all:#?}");
    let seen = sb.sh(&format!("cd {}; cat a.txt b.txt; ls", ws.display()));
    assert!(seen.out.contains("real\none\n"), "the agent sees the checkpoint's state: {seen:#?}");
    assert!(!seen.out.contains("c.txt"), "{seen:#?}");

    ctl_ok(&sb, &["rollback", &sb.profile]);
    assert!(changes(&sb).is_empty());
    let nothing = ctl_ok(&sb, &["apply", &sb.profile]);
    assert_eq!(nothing.trim(), format!("{}: nothing to apply.", sb.profile));
    assert_eq!(read(&ws.join("a.txt")), "real\n", "a rollback of the overlay never touches the real workspace");
    assert!(!sb.events("file_rollback").is_empty() && !sb.events("file_checkpoint").is_empty());
}

#[test]
#[ignore = "needs root"]
fn sigkill_of_the_agent_or_of_gvmd_loses_no_change_and_no_apply_leaves_half_a_file() {
    assert_root();
    let mut sb = Sandboxed::new("kl");
    let ws = sb.ws.clone();
    // 64 real files of 4 MB each, which the agent rewrites: an apply of all of them
    // takes long enough to be killed in the middle.
    const FILES: usize = 64;
    const SIZE: usize = 4 << 20;
    for i in 0..FILES {
        std::fs::write(ws.join(format!("f{i:02}.bin")), vec![b'o'; SIZE]).unwrap();
        std::fs::set_permissions(ws.join(format!("f{i:02}.bin")), std::fs::Permissions::from_mode(0o666)).unwrap();
    }
    sb.start("", &profile_toml(&sb), &[]);

    // The agent writes, then waits; gvmd is SIGKILLed while it runs, then the agent too.
    let mut running = sb.spawn(&[
        "sh",
        "-c",
        &format!(
            "cd {}; for f in f*.bin; do head -c {SIZE} /dev/zero | tr '\\0' n > $f; done; echo written; read x; sleep 1000",
            ws.display()
        ),
    ]);
    let upper = sb.upper();
    wait_for(Duration::from_secs(60), "the agent's writes", || {
        std::fs::metadata(upper.join(format!("f{:02}.bin", FILES - 1))).map(|m| m.len() == SIZE as u64).unwrap_or(false)
    });
    running.go();
    sb.gvmd.take().unwrap().kill();
    let _ = std::process::Command::new("pkill").args(["-KILL", "-u", &format!("gvm-{}", sb.profile)]).status();
    let _ = running.finish(Duration::from_secs(30));
    sb.gvmd = Some(Gvmd::start(&sb.dirs));
    let all = changes(&sb);
    assert_eq!(all.len(), FILES, "every written file is still reviewable: {:?}", all.keys());

    // gvmd SIGKILLed in the middle of an apply: after its restart every real file is
    // whole, old or new, and no temporary file is left.
    let names: Vec<String> = (0..FILES).map(|i| format!("f{i:02}.bin")).collect();
    let mut args: Vec<&str> = vec!["apply", &sb.profile];
    args.extend(names.iter().map(String::as_str));
    let journal = sb.dirs.state.join("agents").join(&sb.profile).join("review/journal.json");
    let apply = gvmctl_cmd(&sb.dirs, &args).stderr(std::process::Stdio::piped()).spawn().unwrap();
    // Killed once the apply journal exists: the pre-images are saved and the real files
    // are being replaced.
    wait_for(Duration::from_secs(60), "the apply journal", || journal.exists());
    std::thread::sleep(Duration::from_millis(30));
    sb.gvmd.take().unwrap().kill();
    let interrupted = journal.exists();
    let out = apply.wait_with_output().unwrap();
    assert!(!out.status.success() || !interrupted, "{out:?}");
    sb.gvmd = Some(Gvmd::start(&sb.dirs));
    let left = changes(&sb); // opening the store finishes or undoes the interrupted apply
    let mut new = 0;
    for name in &names {
        let data = std::fs::read(ws.join(name)).unwrap();
        assert_eq!(data.len(), SIZE, "{name} is whole");
        let first = data[0];
        assert!(data.iter().all(|b| *b == first) && (first == b'o' || first == b'n'), "{name} is old or new");
        if first == b'n' {
            new += 1;
            assert!(!left.contains_key(name), "{name} was applied, it left the overlay");
        } else {
            assert!(left.contains_key(name), "{name} was not applied, it is still reviewable");
        }
    }
    let temps: Vec<_> = std::fs::read_dir(&ws)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".gvm-apply"))
        .map(|e| e.file_name())
        .collect();
    assert!(temps.is_empty(), "temporary files left: {temps:?}");
    assert!(new == 0 || new == FILES, "an interrupted apply is finished or undone as a whole: {new} of {FILES}");
    assert!(!journal.exists(), "the journal is gone after recovery");
    eprintln!(
        "gvmd killed with the journal {}; after its restart {new} of {FILES} files are new",
        if interrupted { "present" } else { "already gone" }
    );
}

/// The pending file items of `gvmctl approvals --json`, by path.
fn file_items(sb: &Sandboxed) -> std::collections::BTreeMap<String, Value> {
    let v = ctl_json(sb, &["approvals", "--json"]);
    v.as_array()
        .expect("a JSON array")
        .iter()
        .filter(|a| a["kind"] == "file" && a["profile"] == sb.profile.as_str())
        .map(|a| (a["path"].as_str().unwrap().to_string(), a.clone()))
        .collect()
}

#[test]
#[ignore = "needs root"]
fn file_changes_are_approved_from_the_queue_and_a_change_after_review_is_refused() {
    assert_root();
    let mut sb = Sandboxed::new("fq");
    let ws = sb.ws.clone();
    std::fs::write(ws.join("keep.txt"), "real\n").unwrap();
    sb.start("", &profile_toml(&sb), &[]);
    let ran = sb.sh(&format!("set -e; cd {}; echo draft > report.md; echo junk > junk.md", ws.display()));
    assert_eq!(ran.code, Some(0), "{ran:#?}");

    // The run's end put both into the queue, each with the command that answers it.
    let items = file_items(&sb);
    let report = items.get("report.md").unwrap_or_else(|| panic!("no item for report.md: {items:#?}")).clone();
    assert_eq!(report["change"], "added");
    assert!(report["hash"].as_str().unwrap_or_default().starts_with("sha256:"), "{report:#}");
    let human = ctl_ok(&sb, &["approvals"]);
    assert!(human.contains("report.md"), "{human}");
    let status = ctl_ok(&sb, &["status", &sb.profile]);
    assert!(status.contains("2 file changes wait"), "{status}");

    // The agent's file changes after the human looked: the approval names the reviewed
    // content, so it is refused and nothing reaches the workspace.
    std::fs::write(sb.upper().join("report.md"), "rewritten behind the reviewer's back\n").unwrap();
    let id = report["id"].as_u64().unwrap().to_string();
    let o = ctl(&sb, &["approve", &id]);
    assert!(!o.status.success(), "{}", stdout(&o));
    assert!(stderr(&o).contains("changed since it was reviewed"), "{}", stderr(&o));
    assert!(!ws.join("report.md").exists());

    // Listing again queues the new content under a new id; approving that one applies it.
    changes(&sb);
    let items = file_items(&sb);
    let again = &items["report.md"];
    assert_ne!(again["id"], report["id"], "{again:#}");
    ctl_ok(&sb, &["approve", &again["id"].as_u64().unwrap().to_string()]);
    assert_eq!(read(&ws.join("report.md")), "rewritten behind the reviewer's back\n");

    // Denying discards the change from the overlay; the real workspace never sees it.
    ctl_ok(&sb, &["deny", &items["junk.md"]["id"].as_u64().unwrap().to_string()]);
    assert!(!ws.join("junk.md").exists());
    assert!(changes(&sb).is_empty());
    assert!(file_items(&sb).is_empty());
    let discards = sb.events("file_discard");
    assert!(discards.iter().any(|e| e["details"]["applied"].to_string().contains("junk.md")), "{discards:#?}");
}

#[test]
#[ignore = "needs root"]
fn applying_while_the_agent_runs_freezes_it_and_loses_none_of_its_later_writes() {
    assert_root();
    let mut sb = Sandboxed::new("lv");
    let ws = sb.ws.clone();
    sb.start("", &profile_toml(&sb), &[]);
    let mut running = sb.spawn(&[
        "sh",
        "-c",
        &format!("cd {}; echo v1 > live.txt; read x; echo v2 >> live.txt; echo appended; read y", ws.display()),
    ]);
    let upper = sb.upper();
    wait_for(Duration::from_secs(30), "the agent's first write", || {
        std::fs::read_to_string(upper.join("live.txt")).is_ok_and(|t| t == "v1\n")
    });
    let r = ctl_json(&sb, &["apply", &sb.profile, "live.txt", "--json"]);
    assert_eq!(r["applied"].as_array().map(Vec::len), Some(1), "{r:#}");
    assert_eq!(read(&ws.join("live.txt")), "v1\n");
    let log = sb.gvmd().log_text();
    assert!(log.contains("held still while its files change: 1 cgroups frozen"), "{log}");
    assert!(changes(&sb).is_empty(), "the applied file is no longer a change");
    // The agent was thawed and goes on writing to the same file: nothing is lost.
    running.go();
    wait_for(Duration::from_secs(30), "the agent's second write", || {
        std::fs::read_to_string(upper.join("live.txt")).is_ok_and(|t| t == "v1\nv2\n")
    });
    let all = changes(&sb);
    assert_eq!(all["live.txt"]["kind"], "modified", "{all:#?}");
    // Changing the overlay under a running agent is refused, with what to do.
    let o = ctl(&sb, &["discard", &sb.profile, "live.txt"]);
    assert!(!o.status.success() && stderr(&o).contains("gvmctl stop"), "{}", stderr(&o));
    let o = ctl(&sb, &["rollback", &sb.profile]);
    assert!(!o.status.success() && stderr(&o).contains("gvmctl stop"), "{}", stderr(&o));
    let ran = running.finish(Duration::from_secs(30));
    assert!(ran.out.contains("appended"), "{ran:#?}");

    // Stopped: the second write is still there to apply.
    ctl_ok(&sb, &["apply", &sb.profile, "live.txt"]);
    assert_eq!(read(&ws.join("live.txt")), "v1\nv2\n");
    assert!(changes(&sb).is_empty());
}
