//! A real overlay for the privileged tests: lower = a real workspace, upper/work in a
//! temp dir, mounted on `merged` like the sandbox mounts it (nosuid, nodev, default
//! options). Unmounted in `Drop`, panics included.
#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use gvm_review::{Review, Workspace};
use nix::mount::{mount, umount2, MntFlags, MsFlags};

pub struct Overlay {
    pub dir: tempfile::TempDir,
    pub real: PathBuf,
    pub upper: PathBuf,
    pub work: PathBuf,
    pub merged: PathBuf,
    pub state: PathBuf,
    /// A tmpfs mounted on `real` (full-disk test).
    real_tmpfs: bool,
    mounted: bool,
}

impl Overlay {
    pub fn new() -> Overlay {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let o = Overlay {
            real: d.join("real"),
            upper: d.join("upper"),
            work: d.join("work"),
            merged: d.join("merged"),
            state: d.join("state/review"),
            dir,
            real_tmpfs: false,
            mounted: false,
        };
        for p in [&o.real, &o.upper, &o.work, &o.merged] {
            std::fs::create_dir_all(p).unwrap();
        }
        std::fs::set_permissions(&o.real, std::fs::Permissions::from_mode(0o755)).unwrap();
        o
    }

    /// The workspace is a small tmpfs.
    pub fn with_tmpfs_real(size: &str) -> Overlay {
        let mut o = Overlay::new();
        mount(Some("tmpfs"), &o.real, Some("tmpfs"), MsFlags::empty(), Some(format!("size={size},mode=0755").as_str()))
            .unwrap();
        o.real_tmpfs = true;
        o
    }

    pub fn mount(&mut self) {
        assert!(!self.mounted);
        let opts = format!(
            "lowerdir={},upperdir={},workdir={}",
            self.real.display(),
            self.upper.display(),
            self.work.display()
        );
        mount(
            Some("overlay"),
            &self.merged,
            Some("overlay"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some(opts.as_str()),
        )
        .unwrap();
        self.mounted = true;
    }

    pub fn umount(&mut self) {
        if self.mounted {
            umount2(&self.merged, MntFlags::empty()).unwrap();
            self.mounted = false;
        }
    }

    /// Unmount and mount again: what a fresh sandbox sees.
    pub fn remount(&mut self) {
        self.umount();
        self.mount();
    }

    pub fn m(&self, rel: &str) -> PathBuf {
        self.merged.join(rel)
    }
    pub fn r(&self, rel: &str) -> PathBuf {
        self.real.join(rel)
    }

    pub fn workspace(&self) -> Workspace {
        Workspace { id: "ws".into(), real: self.real.clone(), upper: self.upper.clone(), owner: None }
    }

    pub fn review(&self, files: &gvm_policy::Files) -> Review {
        Review::open(&self.state, vec![self.workspace()], files).unwrap()
    }
}

impl Drop for Overlay {
    fn drop(&mut self) {
        if self.mounted {
            let _ = umount2(&self.merged, MntFlags::MNT_DETACH);
        }
        if self.real_tmpfs {
            let _ = umount2(&self.real, MntFlags::MNT_DETACH);
        }
    }
}

pub fn files(auto: &[&str], review: &[&str], discard: &[&str]) -> gvm_policy::Files {
    let v = |x: &[&str]| x.iter().map(|s| s.to_string()).collect();
    gvm_policy::Files { auto_apply: v(auto), review: v(review), discard: v(discard), ..Default::default() }
}

pub fn write(p: &Path, content: &[u8]) {
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(p, content).unwrap();
}

pub fn sha(b: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(b)))
}

/// Names of `.gvm-apply-*` files anywhere under `dir`.
pub fn temps(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let t = e.file_type().unwrap();
            if e.file_name().to_string_lossy().starts_with(".gvm-apply-") {
                out.push(e.path());
            }
            if t.is_dir() {
                stack.push(e.path());
            }
        }
    }
    out
}
