//! Only root and members of gvm-admin may control gvmd. Privileged: needs root to run
//! gvmctl as another user (`nobody`); CI runs it as root.

mod common;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;

use common::*;

const NOBODY: u32 = 65534;

#[test]
#[ignore = "needs root"]
fn a_user_outside_gvm_admin_is_refused_by_the_socket_and_the_refusal_is_audited() {
    assert_root();
    let dirs = Dirs::new();
    let gvmd = Gvmd::start(&dirs);

    // The outer fence: the socket file is 0660, so `nobody` cannot even connect.
    let mode = std::fs::metadata(dirs.socket()).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660);
    let out = gvmctl_cmd(&dirs, &["status"]).uid(NOBODY).gid(NOBODY).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("permission denied on") && err.contains("gvm-admin"), "{err}");

    // The real check: with the file opened up, gvmd still refuses by SO_PEERCRED.
    std::fs::set_permissions(dirs.socket(), std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = gvmctl_cmd(&dirs, &["status"]).uid(NOBODY).gid(NOBODY).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("may not control gvmd: only root and members of the gvm-admin group may"), "{err}");
    assert!(err.contains("usermod -aG gvm-admin"), "{err}");

    // Root still may, and sees the refusal in the audit log.
    let events = events_json(&dirs);
    let refused: Vec<_> = events.iter().filter(|e| e["kind"] == "control_refused").collect();
    assert_eq!(refused.len(), 1, "{events:#?}");
    assert_eq!(refused[0]["decision"], "deny");
    assert_eq!(refused[0]["details"]["uid"], NOBODY);
    drop(gvmd);
}
