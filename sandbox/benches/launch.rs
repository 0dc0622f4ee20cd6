//! launch → exec /bin/true → exit → teardown, and netns create+destroy; median and p90.
//! Needs root (exits with status 2 and says so otherwise). `cargo bench -p gvm-sandbox`.

use std::time::{Duration, Instant};

use gvm_sandbox::{
    ensure_user, launch, remove_user, AgentPaths, GatewayPorts, LaunchSpec, Limits, Netns, ProfileName, Stdio,
    Workspace, WorkspaceMode,
};

fn stats(name: &str, mut v: Vec<Duration>) {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{name}: n={} median={:.2} ms p90={:.2} ms max={:.2} ms",
        v.len(),
        ms(v[v.len() / 2]),
        ms(v[v.len() * 9 / 10]),
        ms(v[v.len() - 1])
    );
}

fn main() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("the launch benchmark needs root: it creates users, namespaces and mounts");
        std::process::exit(2);
    }
    let dir = tempfile::Builder::new().prefix("gvm-bench-").tempdir().unwrap();
    let profile = ProfileName::parse(&format!("bench{}", std::process::id() % 100_000)).unwrap();
    let run = dir.path().join("run");
    std::fs::create_dir_all(&run).unwrap();
    let paths = AgentPaths::new(&dir.path().join("state"), &run, &profile);
    let ws = dir.path().join("ws");
    std::fs::create_dir_all(&ws).unwrap();
    let (uid, gid) = ensure_user(&profile, &paths.home).unwrap();
    paths.prepare(uid, gid, &[("ws", &ws)]).unwrap();

    let mut ns_times = Vec::new();
    for i in 0..20 {
        let p = ProfileName::parse(&format!("nsbench{i}")).unwrap();
        let t = Instant::now();
        Netns::create(&run, &p, GatewayPorts::default()).unwrap().destroy().unwrap();
        ns_times.push(t.elapsed());
    }
    stats("netns create+destroy", ns_times);

    let netns = Netns::create(&run, &profile, GatewayPorts::default()).unwrap();
    let mut times = Vec::new();
    for _ in 0..50 {
        let spec = LaunchSpec {
            profile: profile.clone(),
            uid,
            gid,
            netns: netns.path().to_path_buf(),
            command: "/bin/true".into(),
            args: vec![],
            env: vec![],
            workspaces: vec![Workspace { path: ws.clone(), mode: WorkspaceMode::Overlay, id: "ws".into() }],
            deny_read: vec!["**/.env".into()],
            paths: paths.clone(),
            ca_bundle: None,
            limits: Limits { tasks_max: Some(64), memory_max: Some(256 << 20), cpu_percent: None },
            proxy_port: 3128,
            stdio: Stdio::Null,
            cwd: None,
            landlock: true,
            own_cgroup: true,
            die_with_parent: false,
        };
        let t = Instant::now();
        let mut sb = launch(spec).unwrap();
        assert!(sb.wait().unwrap().success());
        drop(sb);
        times.push(t.elapsed());
    }
    stats("launch -> /bin/true -> exit -> teardown", times);
    netns.destroy().unwrap();
    remove_user(&profile).unwrap();
}
