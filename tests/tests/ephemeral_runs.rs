//! Ephemeral runs end to end with a real gvmd and real sandboxes: several fresh
//! instances of one profile at once (beside a `gvmctl run` of the profile itself), each
//! with its own changes kept for review under its run id; a timed-out run killed and
//! removed completely (no process, cgroup, mount or netns left); `POST /v1/runs` and the
//! Python example that drives it.
//!
//! Privileged: every test needs root (`#[ignore = "needs root"]`, run with --include-ignored).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::agent::*;
use common::*;
use serde_json::Value;

fn profile_toml(sb: &Sandboxed) -> String {
    format!(
        "[agent]\nworkspaces = [{{ path = \"{}\", mode = \"overlay\" }}]\n\n[network]\ndefault = \"deny\"\n",
        sb.ws.display()
    )
}

fn ctl_ok(sb: &Sandboxed, args: &[&str]) -> String {
    let o = gvmctl(&sb.dirs, args);
    assert!(o.status.success(), "gvmctl {args:?} failed: {}\n{}", stderr(&o), stdout(&o));
    stdout(&o)
}

fn ctl_json(sb: &Sandboxed, args: &[&str]) -> Value {
    let out = ctl_ok(sb, args);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: gvmctl {args:?} printed {out}"))
}

/// `gvmctl run --profile P --ephemeral [extra...] -- argv`.
fn ephemeral(sb: &Sandboxed, extra: &[&str], argv: &[&str]) -> Ran {
    let mut args = vec!["run", "--profile", &sb.profile, "--ephemeral"];
    args.extend_from_slice(extra);
    args.push("--");
    args.extend_from_slice(argv);
    output_within(gvmctl_cmd(&sb.dirs, &args), Duration::from_secs(120))
}

/// The run id in a summary line (`gvm: P run 3fa9c2d17b40: exit 0 ...`).
fn run_id(ran: &Ran) -> String {
    let s = ran.summary();
    let id = s.split(" run ").nth(1).and_then(|r| r.split(':').next()).unwrap_or_else(|| panic!("no run id: {ran:#?}"));
    assert_eq!(id.len(), 12, "{s}");
    id.to_string()
}

/// The cgroup leaves gvm made for `profile` (`gvm/<profile>-*` on every hierarchy).
fn cgroups_of(profile: &str) -> Vec<PathBuf> {
    let mut parents = vec![PathBuf::from("/sys/fs/cgroup/gvm")];
    parents.extend(std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten().map(|h| h.path().join("gvm")));
    let prefix = format!("{profile}-");
    parents
        .iter()
        .flat_map(|p| std::fs::read_dir(p).into_iter().flatten().flatten())
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
        .collect()
}

/// Pids of the processes running as `gvm-<profile>`.
fn processes_of(profile: &str) -> Vec<String> {
    let o = Command::new("pgrep").args(["-u", &format!("gvm-{profile}")]).output().unwrap();
    String::from_utf8_lossy(&o.stdout).split_whitespace().map(str::to_string).collect()
}

/// Lines of the host's mount table naming `dir`.
fn mounts_under(dir: &Path) -> Vec<String> {
    let d = dir.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(&d))
        .map(String::from)
        .collect()
}

fn wait_for(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ok() {
        assert!(Instant::now() < deadline, "{what} within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
#[ignore = "needs root"]
fn parallel_ephemeral_runs_keep_separate_changes() {
    assert_root();
    let mut sb = Sandboxed::new("ep");
    std::fs::write(sb.ws.join("shared.txt"), "real\n").unwrap();
    sb.start("", &profile_toml(&sb), &[]);

    // Four ephemeral runs and a plain `gvmctl run` of the same profile, all at once:
    // each writes the same file name with its own content and waits for the others.
    let plain = {
        let dirs_socket = sb.dirs.socket();
        let profile = sb.profile.clone();
        std::thread::spawn(move || {
            let mut c = Command::new(bin("gvmctl"));
            c.args(["run", "--profile", &profile, "--", "sh", "-c", "sleep 2; echo plain"])
                .env("GVM_SOCKET", dirs_socket);
            output_within(c, Duration::from_secs(120))
        })
    };
    let n = 4;
    let runs: Vec<Ran> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|i| {
                let sb = &sb;
                s.spawn(move || {
                    let script = format!(
                        "echo task{i} > out.txt; echo $HOME > home.txt; sleep 2; cat out.txt; cat shared.txt; ls ~ | wc -l"
                    );
                    ephemeral(sb, &["--timeout", "60s"], &["sh", "-c", &script])
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let plain = plain.join().unwrap();
    assert_eq!(plain.code, Some(0), "the profile's own run went on beside them: {plain:#?}");
    assert_eq!(plain.out.trim(), "plain");

    let mut ids = Vec::new();
    for (i, ran) in runs.iter().enumerate() {
        assert_eq!(ran.code, Some(0), "{ran:#?}");
        // Its own file, the real workspace below it, an empty home of its own.
        assert_eq!(ran.out.lines().collect::<Vec<_>>(), [format!("task{i}").as_str(), "real", "0"], "{ran:#?}");
        assert!(ran.summary().contains("2 to review (gvmctl changes --run "), "{}", ran.summary());
        ids.push(run_id(ran));
    }
    let mut distinct = ids.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), n, "{ids:?}");

    // They overlapped: every run started before the first one finished.
    let events = events_json(&sb.dirs);
    let seqs = |kind: &str| -> Vec<u64> {
        events
            .iter()
            .filter(|e| e["kind"] == kind && e["details"]["ephemeral"] == true)
            .map(|e| e["seq"].as_u64().unwrap())
            .collect()
    };
    let (started, finished) = (seqs("run_started"), seqs("run_finished"));
    assert_eq!((started.len(), finished.len()), (n, n), "{events:#?}");
    assert!(started.iter().max() < finished.iter().min(), "runs did not overlap: {started:?} {finished:?}");
    for id in &ids {
        assert!(events.iter().any(|e| e["kind"] == "run_started" && e["details"]["run_id"] == id.as_str()));
    }

    // Listed, each with its own change, nothing in the real workspace yet.
    let listed = ctl_json(&sb, &["runs", "--json"]);
    let listed: Vec<&Value> = listed.as_array().unwrap().iter().collect();
    assert_eq!(listed.len(), n, "{listed:#?}");
    assert!(listed.iter().all(|r| r["state"] == "kept" && r["exit_code"] == 0 && r["changes"] == 2), "{listed:#?}");
    assert!(!sb.ws.join("out.txt").exists());
    let table = ctl_ok(&sb, &["runs"]);
    for id in &ids {
        let row = table.lines().find(|l| l.starts_with(id.as_str())).unwrap_or_else(|| panic!("{id} not in {table}"));
        assert!(row.contains("kept (exit 0)") && row.contains(&sb.profile), "{row}");
    }
    let text = ctl_ok(&sb, &["changes", "--run", &ids[0]]);
    assert!(text.contains("out.txt") && text.contains(&format!("gvmctl discard --run {}", ids[0])), "{text}");
    for (i, id) in ids.iter().enumerate() {
        let changes = ctl_json(&sb, &["changes", "--run", id, "--json"]);
        let paths: Vec<&str> = changes.as_array().unwrap().iter().map(|c| c["path"].as_str().unwrap()).collect();
        assert_eq!(paths, ["home.txt", "out.txt"], "run {id}");
        let diff = ctl_ok(&sb, &["diff", "--run", id, "out.txt"]);
        assert!(diff.contains(&format!("+task{i}")), "{diff}");
        // The home was the run's own and is gone; the upper dir holds the change.
        let home = std::fs::read_to_string(
            sb.dirs
                .state
                .join("runs")
                .join(id)
                .join("overlay")
                .read_dir()
                .unwrap()
                .next()
                .unwrap()
                .unwrap()
                .path()
                .join("upper/home.txt"),
        )
        .unwrap();
        assert!(home.trim().ends_with(&format!("runs/{id}/home")), "{home}");
        assert!(!Path::new(home.trim()).exists(), "the run's home is removed: {home}");
    }

    // Apply one run's file; discard the others whole.
    let applied = ctl_ok(&sb, &["apply", "--run", &ids[2], "out.txt"]);
    assert!(applied.contains("1 change applied"), "{applied}");
    assert_eq!(std::fs::read_to_string(sb.ws.join("out.txt")).unwrap(), "task2\n");
    // Undone like a profile's apply, from the run's own review store.
    let undo = format!("gvmctl rollback --run {} --applied ", ids[2]);
    let apply_id =
        applied.split(&undo).nth(1).and_then(|r| r.strip_suffix(")\n")).unwrap_or_else(|| panic!("{applied}"));
    let records = ctl_json(&sb, &["applied", "--run", &ids[2], "--json"]);
    assert_eq!(records[0]["id"], apply_id, "{records:#}");
    ctl_ok(&sb, &["rollback", "--run", &ids[2], "--applied", apply_id]);
    assert!(!sb.ws.join("out.txt").exists(), "the apply was rolled back");
    for id in ids.iter().filter(|id| **id != ids[2]) {
        let out = ctl_ok(&sb, &["discard", "--run", id]);
        assert!(out.contains("discarded with its 2 unapplied changes"), "{out}");
        assert!(!sb.dirs.state.join("runs").join(id).exists());
    }
    let o = gvmctl(&sb.dirs, &["changes", "--run", &ids[0]]);
    assert!(!o.status.success() && stderr(&o).contains("gvmctl runs"), "{}", stderr(&o));
    let left = ctl_json(&sb, &["runs", "--json"]);
    assert_eq!(left.as_array().unwrap().len(), 1, "{left:#?}");
    assert_eq!(left[0]["id"], ids[2].as_str());

    // Nothing of the instances is left: the profile's netns went with its last user.
    assert!(processes_of(&sb.profile).is_empty());
    assert!(cgroups_of(&sb.profile).is_empty(), "{:?}", cgroups_of(&sb.profile));
    assert!(!sb.dirs.runtime.join("netns").join(&sb.profile).exists(), "netns kept after the last run");
}

#[test]
#[ignore = "needs root"]
fn a_timed_out_run_is_killed_and_removed() {
    assert_root();
    let mut sb = Sandboxed::new("et");
    sb.start("", &profile_toml(&sb), &[]);
    let runs_dir = sb.dirs.state.join("runs");
    let profile = sb.profile.clone();

    let clock = Instant::now();
    let watcher = {
        let profile = profile.clone();
        std::thread::spawn(move || {
            // While it runs: its processes and its cgroup exist (so the checks after
            // the timeout are not vacuous).
            wait_for("the run's processes", Duration::from_secs(20), || processes_of(&profile).len() >= 3);
            let cgroups = cgroups_of(&profile);
            assert!(!cgroups.is_empty(), "no cgroup leaf for the run");
            cgroups
        })
    };
    // A child in the background that ignores SIGTERM, and the shell itself waiting.
    let ran = ephemeral(
        &sb,
        &["--timeout", "3s"],
        &["sh", "-c", "echo partial > left.txt; (trap '' TERM; sleep 1000) & sleep 1000; echo never"],
    );
    let took = clock.elapsed();
    let cgroups = watcher.join().unwrap();
    assert_eq!(ran.code, Some(137), "{ran:#?}");
    assert!(ran.summary().contains("timed out, killed"), "{}", ran.summary());
    assert!(!ran.out.contains("never"));
    assert!(took < Duration::from_secs(30), "the timeout took {took:?}");

    let id = run_id(&ran);
    let run_dir = runs_dir.join(&id);
    let left: Vec<String> = processes_of(&profile)
        .iter()
        .map(|p| std::fs::read_to_string(format!("/proc/{p}/status")).unwrap_or_default())
        .collect();
    assert!(left.is_empty(), "processes left: {left:#?}");
    for c in &cgroups {
        assert!(!c.exists(), "cgroup {} left", c.display());
    }
    assert!(cgroups_of(&profile).is_empty());
    assert!(mounts_under(&run_dir).is_empty(), "{:?}", mounts_under(&run_dir));
    assert!(mounts_under(&sb.dirs.state).is_empty(), "{:?}", mounts_under(&sb.dirs.state));
    assert!(!sb.dirs.runtime.join("netns").join(&profile).exists(), "netns left");
    assert!(!run_dir.join("home").exists(), "home left");
    // What it wrote before the timeout is kept for review, marked as timed out.
    let listed = ctl_json(&sb, &["runs", "--json"]);
    assert_eq!(listed[0]["id"], id.as_str());
    assert_eq!(listed[0]["timed_out"], true);
    let changes = ctl_json(&sb, &["changes", "--run", &id, "--json"]);
    assert_eq!(changes[0]["path"], "left.txt");
    let events = events_json(&sb.dirs);
    let fin = events.iter().find(|e| e["kind"] == "run_finished" && e["details"]["run_id"] == id.as_str()).unwrap();
    assert_eq!(fin["details"]["timed_out"], true);
    assert_eq!(fin["details"]["exit_code"], 137);

    // A run that changed nothing leaves nothing at all.
    let ran = ephemeral(&sb, &[], &["/bin/true"]);
    assert_eq!(ran.code, Some(0), "{ran:#?}");
    assert!(!runs_dir.join(run_id(&ran)).exists());
    // Refusals name the fix.
    let ran = ephemeral(&sb, &["--workspace", "/srv:rw"], &["/bin/true"]);
    assert!(ran.code != Some(0) && ran.err.contains("DIR:overlay or DIR:ro"), "{ran:#?}");
    let o = gvmctl(&sb.dirs, &["run", "--profile", &sb.profile, "--timeout", "5s", "--", "/bin/true"]);
    assert!(!o.status.success() && stderr(&o).contains("--ephemeral"), "{}", stderr(&o));
}

/// `POST /v1/runs` by hand over the socket: one HTTP/1.1 request, the JSON answer.
fn api(dirs: &Dirs, method: &str, path: &str, body: &Value) -> (u16, Value) {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(dirs.socket()).unwrap();
    // One write, and no body where there is none: a server that answers without reading
    // a body it did not need may close first, and a late write then fails with EPIPE.
    let request = if body.is_null() {
        format!("{method} {path} HTTP/1.1\r\nHost: gvmd\r\nConnection: close\r\n\r\n")
    } else {
        let body = body.to_string();
        format!(
            "{method} {path} HTTP/1.1\r\nHost: gvmd\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    s.write_all(request.as_bytes()).unwrap();
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).unwrap();
    let text = String::from_utf8_lossy(&answer);
    let status: u16 = text.split_whitespace().nth(1).unwrap().parse().unwrap();
    let (_, json) = text.split_once("\r\n\r\n").unwrap();
    // Chunked or not: the JSON object is from the first `{` to the last `}`.
    let json = &json[json.find('{').unwrap()..=json.rfind('}').unwrap()];
    (status, serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {json}")))
}

#[test]
#[ignore = "needs root"]
fn the_runs_api_and_its_python_example() {
    assert_root();
    let mut sb = Sandboxed::new("ea");
    let input = sb.dirs.root.path().join("input");
    std::fs::create_dir_all(&input).unwrap();
    std::fs::write(input.join("data.csv"), "a,b\n").unwrap();
    sb.start("", &profile_toml(&sb), &[]);

    let (status, r) = api(
        &sb.dirs,
        "POST",
        "/v1/runs",
        &serde_json::json!({
            "profile": sb.profile,
            "argv": ["sh", "-c", "cat; echo to-err >&2; wc -l < $IN/data.csv > lines.txt; (echo x > $IN/no) 2>/dev/null || echo ro; head -c 2000000 /dev/zero | tr '\\0' y"],
            "timeout_secs": 60,
            "workspaces": [{ "path": input.display().to_string(), "mode": "ro" }],
            "env": [["IN", input.display().to_string()]],
            "stdin": "from-stdin\n",
        }),
    );
    assert_eq!(status, 200, "{r:#}");
    assert_eq!(r["exit_code"], 0, "{r:#}");
    assert_eq!(r["timed_out"], false);
    let out = r["stdout"].as_str().unwrap();
    assert!(out.starts_with("from-stdin\nro\nyyy"), "{}", &out[..40.min(out.len())]);
    assert_eq!(out.len(), 1024 * 1024, "stdout is bounded");
    assert_eq!(r["stdout_truncated"], true);
    assert_eq!((r["stderr"].as_str(), r["stderr_truncated"].as_bool()), (Some("to-err\n"), Some(false)));
    assert_eq!(r["kept"], true);
    assert_eq!(r["changes"][0]["path"], "lines.txt");
    assert_eq!(r["summary"]["files_to_review"], 1);
    assert!(r["start_ms"].as_u64().unwrap() <= r["total_ms"].as_u64().unwrap());
    let id = r["run_id"].as_str().unwrap().to_string();
    let (status, one) = api(&sb.dirs, "GET", &format!("/v1/runs/{id}"), &Value::Null);
    assert_eq!((status, one["state"].as_str()), (200, Some("kept")), "{one:#}");
    let (status, d) = api(&sb.dirs, "POST", &format!("/v1/runs/{id}/discard"), &serde_json::json!({"paths": []}));
    assert_eq!(status, 200, "{d:#}");
    assert!(!sb.dirs.state.join("runs").join(&id).exists());

    // Errors a program can act on.
    let (status, e) = api(&sb.dirs, "POST", "/v1/runs", &serde_json::json!({"profile": "nosuch", "argv": ["true"]}));
    assert_eq!(status, 404, "{e:#}");
    assert!(e["hint"].as_str().unwrap().contains("gvmctl reload"), "{e:#}");
    let (status, e) = api(&sb.dirs, "POST", "/v1/runs", &serde_json::json!({"argv": ["true"]}));
    assert_eq!(status, 400, "{e:#}");
    assert!(e["hint"].as_str().unwrap().contains("docs/api.md"), "{e:#}");
    let (status, e) = api(
        &sb.dirs,
        "POST",
        "/v1/runs",
        &serde_json::json!({"profile": sb.profile, "argv": ["true"], "timeout_secs": 0}),
    );
    assert_eq!(status, 400, "{e:#}");
    let bad_env = serde_json::json!({"profile": sb.profile, "argv": ["true"], "env": [["A=B", "x"]]});
    let (status, e) = api(&sb.dirs, "POST", "/v1/runs", &bad_env);
    assert_eq!(status, 400, "{e:#}");
    assert!(e["error"].as_str().unwrap().contains("\"A=B\""), "{e:#}");

    // The example, as a user runs it.
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/ephemeral_run.py");
    let mut c = Command::new("python3");
    c.arg(&example)
        .args(["--socket", &sb.dirs.socket().display().to_string(), "--profile", &sb.profile, "--timeout", "30"])
        .args(["--", "sh", "-c", "echo hello from the sandbox; echo result > result.txt; exit 3"]);
    let ran = output_within(c, Duration::from_secs(120));
    assert_eq!(ran.code, Some(3), "{ran:#?}");
    assert!(ran.out.contains("hello from the sandbox"), "{ran:#?}");
    assert!(ran.out.contains("changed: added"), "{ran:#?}");
    assert!(ran.out.contains("/result.txt (review)"), "{ran:#?}");
    let kept = ran.out.lines().find_map(|l| l.strip_prefix("kept for review: gvmctl changes --run ")).unwrap();
    let changes = ctl_json(&sb, &["changes", "--run", kept, "--json"]);
    assert_eq!(changes[0]["path"], "result.txt");

    let mut c = Command::new("python3");
    c.arg(&example)
        .args(["--socket", &sb.dirs.socket().display().to_string(), "--profile", &sb.profile, "--discard"])
        .args(["--", "sh", "-c", "echo y > y.txt"]);
    let ran = output_within(c, Duration::from_secs(120));
    assert_eq!(ran.code, Some(0), "{ran:#?}");
    assert!(ran.out.contains(": discarded"), "{ran:#?}");
    let listed = ctl_json(&sb, &["runs", "--json"]);
    assert_eq!(listed.as_array().unwrap().len(), 1, "only the first example's run is kept: {listed:#?}");
}

#[test]
#[ignore = "needs root"]
fn a_run_interrupted_by_a_killed_gvmd_dies_and_stays_reviewable() {
    assert_root();
    let mut sb = Sandboxed::new("ei");
    sb.start("", &profile_toml(&sb), &[]);
    let runner = {
        let mut c = Command::new(bin("gvmctl"));
        c.args(["run", "--profile", &sb.profile, "--ephemeral", "--", "sh", "-c", "echo half > half.txt; sleep 1000"])
            .env("GVM_SOCKET", sb.dirs.socket());
        std::thread::spawn(move || output_within(c, Duration::from_secs(60)))
    };
    let runs_dir = sb.dirs.state.join("runs");
    wait_for("the run's file", Duration::from_secs(20), || {
        std::fs::read_dir(&runs_dir).into_iter().flatten().flatten().any(|r| {
            std::fs::read_dir(r.path().join("overlay"))
                .into_iter()
                .flatten()
                .flatten()
                .any(|w| w.path().join("upper/half.txt").exists())
        })
    });
    sb.gvmd.take().unwrap().kill();
    let ran = runner.join().unwrap();
    assert_ne!(ran.code, Some(0), "{ran:#?}");
    // The sandbox died with gvmd.
    wait_for("the run's processes to die with gvmd", Duration::from_secs(10), || processes_of(&sb.profile).is_empty());
    assert!(cgroups_of(&sb.profile).iter().all(|c| !c.join("cgroup.procs").exists()
        || std::fs::read_to_string(c.join("cgroup.procs")).unwrap().trim().is_empty()));

    sb.gvmd = Some(Gvmd::start(&sb.dirs));
    // (gvmd answers once its start-up clean-up is done.)
    let listed = ctl_json(&sb, &["runs", "--json"]);
    assert!(cgroups_of(&sb.profile).is_empty(), "the new gvmd removes the empty leaves: {:?}", cgroups_of(&sb.profile));
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed:#?}");
    assert_eq!(listed[0]["state"], "interrupted");
    let id = listed[0]["id"].as_str().unwrap().to_string();
    assert!(!runs_dir.join(&id).join("home").exists(), "the interrupted run's home is removed at start");
    let changes = ctl_json(&sb, &["changes", "--run", &id, "--json"]);
    assert_eq!(changes[0]["path"], "half.txt");
    ctl_ok(&sb, &["discard", "--run", &id]);
    assert!(!runs_dir.join(&id).exists());
}

#[test]
#[ignore = "needs root"]
fn runs_go_on_beside_the_agent_and_keep_the_netns_it_leaves() {
    assert_root();
    let mut sb = Sandboxed::new("eg");
    let toml = format!("[agent]\ncommand = [\"sleep\", \"1000\"]\n{}", &profile_toml(&sb)["[agent]\n".len()..]);
    sb.start("", &toml, &[]);
    let netns = sb.dirs.runtime.join("netns").join(&sb.profile);
    ctl_ok(&sb, &["start", &sb.profile]);
    wait_for("the agent", Duration::from_secs(20), || !processes_of(&sb.profile).is_empty());
    // The gateway answers inside the shared netns (default deny: 403, nothing leaves).
    let probe = "curl -s -o /dev/null -w '%{http_code}' http://denied.test.example/";
    let ran = ephemeral(&sb, &[], &["sh", "-c", probe]);
    assert_eq!((ran.code, ran.out.as_str()), (Some(0), "403"), "{ran:#?}");
    assert!(netns.exists(), "a run ending must not remove the netns the agent runs in");
    let agent = Command::new("pgrep").args(["-u", &format!("gvm-{}", sb.profile), "-x", "sleep"]).output().unwrap();
    assert!(agent.status.success(), "the agent still runs");

    // The agent stops while a run goes on: the run keeps the netns and the gateway.
    let runner = {
        let mut c = Command::new(bin("gvmctl"));
        c.args(["run", "--profile", &sb.profile, "--ephemeral", "--", "sh", "-c", &format!("sleep 3; {probe}")])
            .env("GVM_SOCKET", sb.dirs.socket());
        std::thread::spawn(move || output_within(c, Duration::from_secs(60)))
    };
    std::thread::sleep(Duration::from_millis(1500));
    ctl_ok(&sb, &["stop", &sb.profile]);
    assert!(netns.exists(), "the agent's stop left the netns to the run");
    let ran = runner.join().unwrap();
    assert_eq!((ran.code, ran.out.as_str()), (Some(0), "403"), "{ran:#?}");
    wait_for("the last user to remove the netns", Duration::from_secs(10), || !netns.exists());
    assert!(processes_of(&sb.profile).is_empty());
}
