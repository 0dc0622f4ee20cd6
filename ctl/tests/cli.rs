//! gvmctl's command line teaches. (This test also makes `cargo test` build the gvmctl
//! binary that the workspace's integration tests in `tests/` run.)

#[test]
fn help_lists_the_subcommands_and_the_socket_option() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gvmctl")).arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in ["status", "audit", "reload", "--socket", "GVM_SOCKET"] {
        assert!(text.contains(needle), "--help lacks {needle}:\n{text}");
    }
}
