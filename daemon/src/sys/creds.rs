//! Who is on the other end of a control connection, and may they administer gvm.
//!
//! The kernel attests the peer (SO_PEERCRED, read at connect time); the group database
//! says who belongs to `gvm-admin`. Root always may; a member of `gvm-admin` (as primary
//! group of the connecting process, or listed as a member of the group) may; nobody
//! else may, whatever the socket's file mode says.

use nix::unistd::{Gid, Group, Uid, User};

/// The kernel-attested identity of a connected peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    pub uid: u32,
    pub gid: u32,
    pub pid: Option<i32>,
}

/// The group that may use the control socket, resolved once at start.
#[derive(Debug, Clone)]
pub struct AdminGroup {
    /// The group's name (`gvm-admin` unless gvmd.toml says otherwise).
    pub name: String,
    pub gid: Option<u32>,
    members: Vec<String>,
}

impl AdminGroup {
    /// Looks `name` up in the group database; a missing group means "root only".
    pub fn lookup(name: &str) -> AdminGroup {
        match Group::from_name(name) {
            Ok(Some(g)) => AdminGroup { name: name.to_string(), gid: Some(g.gid.as_raw()), members: g.mem },
            _ => AdminGroup { name: name.to_string(), gid: None, members: Vec::new() },
        }
    }

    /// May this peer administer gvm?
    pub fn admits(&self, peer: &Peer) -> bool {
        if peer.uid == 0 {
            return true;
        }
        let Some(gid) = self.gid else { return false };
        if peer.gid == gid {
            return true;
        }
        match User::from_uid(Uid::from_raw(peer.uid)) {
            Ok(Some(user)) => user.gid == Gid::from_raw(gid) || self.members.contains(&user.name),
            _ => false,
        }
    }
}

/// The user name of a uid, for messages; the number when it has none.
pub fn user_name(uid: u32) -> String {
    match User::from_uid(Uid::from_raw(uid)) {
        Ok(Some(u)) => u.name,
        _ => uid.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_is_always_admitted_and_strangers_never_without_a_group() {
        let none = AdminGroup { name: "gvm-admin".into(), gid: None, members: vec![] };
        assert!(none.admits(&Peer { uid: 0, gid: 0, pid: None }));
        assert!(!none.admits(&Peer { uid: 4242, gid: 4242, pid: None }));
        let g = AdminGroup { name: "gvm-admin".into(), gid: Some(4343), members: vec![] };
        assert!(g.admits(&Peer { uid: 4242, gid: 4343, pid: None }));
        assert!(!g.admits(&Peer { uid: 4242, gid: 4242, pid: None }));
    }
}
