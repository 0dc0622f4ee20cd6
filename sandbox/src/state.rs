//! A profile's state on disk: `<state-dir>/agents/<P>/home/` and
//! `<state-dir>/agents/<P>/overlay/<workspace-id>/{upper,work}`. Always on disk, never
//! tmpfs: a SIGKILL, an OOM kill or a reboot loses none of the agent's work (class 11).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nix::unistd::{chown, Gid, Uid};

use crate::error::{io, sys, Error, Result};
use crate::user::ProfileName;

/// The host paths of one profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentPaths {
    /// gvmd's state dir (`/var/lib/gvm`): hidden from every agent.
    pub state_dir: PathBuf,
    /// gvmd's runtime dir (`/run/gvm`): hidden from every agent.
    pub runtime_dir: PathBuf,
    /// `<state>/agents/<P>/home`: the agent's persistent home, bound at this same path.
    pub home: PathBuf,
    /// `<state>/agents/<P>/overlay`.
    pub overlay: PathBuf,
    /// gvmd's config dir when it is not `/etc/gvm` (`--config-dir`): hidden like it, so
    /// no agent reads its own or other profiles' rules.
    pub config_dir: Option<PathBuf>,
}

impl AgentPaths {
    pub fn new(state_dir: &Path, runtime_dir: &Path, profile: &ProfileName) -> Self {
        let agent = state_dir.join("agents").join(profile.as_str());
        Self {
            state_dir: state_dir.to_path_buf(),
            runtime_dir: runtime_dir.to_path_buf(),
            home: agent.join("home"),
            overlay: agent.join("overlay"),
            config_dir: None,
        }
    }

    /// The same paths, with gvmd's config dir to hide.
    pub fn with_config_dir(mut self, config_dir: &Path) -> Self {
        self.config_dir = Some(config_dir.to_path_buf());
        self
    }

    /// `(upper, work)` of a workspace.
    pub fn overlay_dirs(&self, workspace_id: &str) -> Result<(PathBuf, PathBuf)> {
        let ok = !workspace_id.is_empty()
            && workspace_id.len() <= 64
            && workspace_id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !ok {
            return Err(Error::Spec(format!(
                "workspace id {workspace_id:?}: use 1-64 characters from A-Z a-z 0-9 - _"
            )));
        }
        let d = self.overlay.join(workspace_id);
        Ok((d.join("upper"), d.join("work")))
    }

    /// Creates the home (0700, owned by the agent) and the overlay dirs of `workspace_ids`
    /// (upper owned by the agent; work root-only, as overlayfs wants). Idempotent. The
    /// directories above them stay root-owned and 0755/0711.
    pub fn prepare(&self, uid: Uid, gid: Gid, workspaces: &[(&str, &Path)]) -> Result<()> {
        mkdir(&self.home, 0o700)?;
        chown(&self.home, Some(uid), Some(gid)).map_err(sys(format!("chown {}", self.home.display())))?;
        for (id, lower) in workspaces {
            let (upper, work) = self.overlay_dirs(id)?;
            mkdir(&upper, 0o755)?;
            mkdir(&work, 0o700)?;
            // The merged root takes the upper root's owner and mode: mirror the real
            // directory's, so the agent sees the workspace's own permissions.
            let md = std::fs::metadata(lower).map_err(io("reading the workspace", *lower))?;
            use std::os::unix::fs::MetadataExt;
            chown(&upper, Some(Uid::from_raw(md.uid())), Some(Gid::from_raw(md.gid())))
                .map_err(sys(format!("chown {}", upper.display())))?;
            std::fs::set_permissions(&upper, std::fs::Permissions::from_mode(md.mode() & 0o7777))
                .map_err(io("chmod", &upper))?;
        }
        Ok(())
    }
}

fn mkdir(p: &Path, mode: u32) -> Result<()> {
    std::fs::create_dir_all(p).map_err(io("creating", p))?;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).map_err(io("chmod", p))
}
