//! gvmd's command line teaches. (This test also makes `cargo test` build the gvmd
//! binary that the workspace's integration tests in `tests/` run.)

#[test]
fn help_names_the_directories_and_signals() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gvmd")).arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in ["--config-dir", "--state-dir", "--runtime-dir", "/etc/gvm", "SIGHUP", "gvmctl status"] {
        assert!(text.contains(needle), "--help lacks {needle}:\n{text}");
    }
}
