//! The review store: `<root>/objects/<hex>` (content-addressed pre-images),
//! `<root>/journal.json` (the apply in progress), `<root>/applied/<id>.json`,
//! `<root>/checkpoints/<id>.json` and `<root>/checkpoints/<id>/<workspace-id>/`.
//! Directories 0700, files 0600, every file written temp + fsync + rename + fsync(dir).
//! The store belongs to gvmd (root); nothing in it comes from the agent but content.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use gvm_api::review::{AppliedRecord, Checkpoint};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::{fsx, Error, IoCtx};

#[derive(Debug)]
pub(crate) struct Store {
    pub root: PathBuf,
}

impl Store {
    pub fn open(root: &Path) -> Result<Store, Error> {
        let store = Store { root: root.to_path_buf() };
        for dir in [root.to_path_buf(), store.objects(), store.applied_dir(), store.checkpoints_dir()] {
            fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir).ctx("create", &dir)?;
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).ctx("chmod 0700", &dir)?;
        }
        Ok(store)
    }

    pub fn objects(&self) -> PathBuf {
        self.root.join("objects")
    }
    pub fn applied_dir(&self) -> PathBuf {
        self.root.join("applied")
    }
    pub fn checkpoints_dir(&self) -> PathBuf {
        self.root.join("checkpoints")
    }
    pub fn journal(&self) -> PathBuf {
        self.root.join(crate::JOURNAL)
    }

    /// `<root>/objects/<hex>` for `sha256:<hex>`; `None` if the name is not a hash.
    pub fn object_path(&self, hash: &str) -> Option<PathBuf> {
        let hex = hash.strip_prefix("sha256:")?;
        (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then(|| self.objects().join(hex))
    }

    /// Makes the objects stored so far durable, content and names: one `syncfs` of the
    /// store's file system instead of an fsync per object (10,000 pre-images: 4.5 s of
    /// fsyncs). Call before anything relies on them.
    pub fn sync_objects(&self) -> io::Result<()> {
        let dir = File::open(self.objects())?;
        rustix::fs::syncfs(&dir)?;
        Ok(())
    }

    /// Stores what `src` holds (not yet durable: see [`Store::sync_objects`]); returns
    /// its `sha256:<hex>`.
    pub fn put_object(&self, src: &mut impl Read) -> io::Result<String> {
        let dir = self.objects();
        let tmp = dir.join(format!(".tmp-{}", fsx::random_hex(8)));
        let mut f = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
        let result = (|| {
            let (hash, _) = fsx::copy_hashing(src, &mut f)?;
            let dest = self.object_path(&hash).ok_or_else(|| io::Error::other("bad hash"))?;
            if dest.exists() {
                fs::remove_file(&tmp)?;
            } else {
                fs::rename(&tmp, &dest)?;
            }
            Ok(hash)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    pub fn open_object(&self, hash: &str) -> io::Result<File> {
        let p = self.object_path(hash).ok_or_else(|| io::Error::other(format!("bad object name {hash}")))?;
        File::open(p)
    }

    pub fn write_json<T: Serialize>(&self, path: &Path, value: &T) -> Result<(), Error> {
        let bytes = serde_json::to_vec_pretty(value)
            .map_err(|e| Error::Corrupt { path: path.display().to_string(), source: e })?;
        write_atomic(path, &bytes).ctx("write", path)
    }

    pub fn read_json<T: DeserializeOwned>(&self, path: &Path) -> Result<Option<T>, Error> {
        let bytes = match fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).ctx("read", path),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::Corrupt { path: path.display().to_string(), source: e })
    }

    /// Serialises the operations that change the store or the upper dirs (gvmd may
    /// serve two requests for one agent at once). Held until the file is dropped.
    pub fn lock(&self) -> Result<File, Error> {
        let path = self.root.join("lock");
        let f =
            OpenOptions::new().create(true).truncate(false).write(true).mode(0o600).open(&path).ctx("open", &path)?;
        rustix::fs::flock(&f, rustix::fs::FlockOperation::LockExclusive).ctx("lock", &path)?;
        Ok(f)
    }

    /// Temp files an interrupted rollback may have left, listed before they are made.
    pub fn rollback_journal(&self) -> PathBuf {
        self.root.join("rollback.json")
    }

    pub fn record_path(&self, id: &str) -> Option<PathBuf> {
        valid_id(id).then(|| self.applied_dir().join(format!("{id}.json")))
    }

    pub fn records(&self) -> Result<Vec<AppliedRecord>, Error> {
        let mut out: Vec<AppliedRecord> = self.read_all(&self.applied_dir())?;
        out.sort_by(|a, b| (b.at.as_str(), b.id.as_str()).cmp(&(a.at.as_str(), a.id.as_str())));
        Ok(out)
    }

    pub fn checkpoints(&self) -> Result<Vec<Checkpoint>, Error> {
        let mut out: Vec<Checkpoint> = self.read_all(&self.checkpoints_dir())?;
        out.sort_by(|a, b| (a.at.as_str(), a.id.as_str()).cmp(&(b.at.as_str(), b.id.as_str())));
        Ok(out)
    }

    fn read_all<T: DeserializeOwned>(&self, dir: &Path) -> Result<Vec<T>, Error> {
        let mut out = Vec::new();
        for e in fs::read_dir(dir).ctx("list", dir)? {
            let p = e.ctx("list", dir)?.path();
            if p.extension().is_some_and(|x| x == "json") {
                if let Some(v) = self.read_json(&p)? {
                    out.push(v);
                }
            }
        }
        Ok(out)
    }
}

/// Ids are ours (`a-…`, `c-…`), but they come back from users: letters, digits, `-`.
pub(crate) fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let dir = path.parent().ok_or_else(|| io::Error::other("no parent"))?;
    let tmp = dir.join(format!(".tmp-{}", fsx::random_hex(8)));
    let result = (|| {
        let mut f = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

pub(crate) fn now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

pub(crate) fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_else(|_| t.unix_timestamp().to_string())
}

/// `<prefix>-20261207T083000Z-<4 hex>`: sorts by time, unique enough per second.
pub(crate) fn new_id(prefix: &str, t: time::OffsetDateTime) -> String {
    format!(
        "{prefix}-{:04}{:02}{:02}T{:02}{:02}{:02}Z-{}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        fsx::random_hex(2)
    )
}
