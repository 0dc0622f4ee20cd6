//! File-system primitives that never follow a symlink and never resolve a path string
//! twice: everything is relative to a directory descriptor, and every multi-component
//! path is opened with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
//! RESOLVE_NO_MAGICLINKS)` from a root the caller trusts (the workspace or the upper dir).

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags, Stat};
use sha2::{Digest, Sha256};

/// Prefix of the temporary files an apply writes next to its targets.
pub const TEMP_PREFIX: &str = ".gvm-apply-";

const BUF: usize = 256 * 1024;

fn beneath() -> ResolveFlags {
    ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS
}

/// Opens a trusted root directory (from gvmd's configuration).
pub fn open_root(path: &Path) -> io::Result<OwnedFd> {
    Ok(rustix::fs::open(path, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?)
}

/// Opens directory `rel` (`""` = the root itself) beneath `root`, readable (so that it
/// can be listed and fsynced).
///
/// Where `openat2` does not exist (`ENOSYS`: kernels before 5.6, and seccomp filters of
/// some container runtimes and service managers that do not know it — seen under the
/// test suite's throwaway systemd), the path is walked one checked component at a time
/// with `O_NOFOLLOW | O_DIRECTORY`: no `..`, no symlink, the same guarantee.
pub fn open_dir(root: BorrowedFd<'_>, rel: &str) -> io::Result<OwnedFd> {
    let path = if rel.is_empty() { "." } else { rel };
    match rustix::fs::openat2(root, path, dir_flags(), Mode::empty(), beneath()) {
        Err(rustix::io::Errno::NOSYS) => walk_dir(root, rel),
        r => Ok(r?),
    }
}

fn dir_flags() -> OFlags {
    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NOFOLLOW
}

/// [`open_dir`] without `openat2`: component by component, each checked and opened
/// without following a symlink.
fn walk_dir(root: BorrowedFd<'_>, rel: &str) -> io::Result<OwnedFd> {
    let mut dir = rustix::fs::openat(root, ".", dir_flags(), Mode::empty())?;
    if rel.is_empty() {
        return Ok(dir);
    }
    for name in rel.split('/') {
        dir = open_child_dir(dir.as_fd(), name)?;
    }
    Ok(dir)
}

/// Opens the child directory `name` of `dir` without following a symlink.
pub fn open_child_dir(dir: BorrowedFd<'_>, name: &str) -> io::Result<OwnedFd> {
    check_name(name)?;
    Ok(rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::empty(),
    )?)
}

/// Opens regular file `name` of `dir` for reading; anything but a regular file (a
/// symlink, a FIFO swapped in since the last look) is refused.
pub fn open_file(dir: BorrowedFd<'_>, name: &std::ffi::OsStr) -> io::Result<(File, Stat)> {
    check_name(&name.to_string_lossy())?;
    let fd = rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY,
        Mode::empty(),
    )?;
    let st = rustix::fs::fstat(&fd)?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Err(io::Error::other("not a regular file"));
    }
    Ok((File::from(fd), st))
}

/// A name from a directory listing or a relative path: never `.`, `..`, empty or with `/`.
pub fn check_name(name: &str) -> io::Result<()> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("unsafe name {name:?}")));
    }
    Ok(())
}

/// Splits `a/b/c` into (`a/b`, `c`), checking every component.
pub fn split(rel: &str) -> io::Result<(&str, &str)> {
    for c in rel.split('/') {
        check_name(c)?;
    }
    Ok(match rel.rsplit_once('/') {
        Some((p, n)) => (p, n),
        None => ("", rel),
    })
}

pub fn lstat_at(dir: BorrowedFd<'_>, name: &str) -> io::Result<Option<Stat>> {
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(st)),
        Err(rustix::io::Errno::NOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

pub fn file_type(st: &Stat) -> FileType {
    FileType::from_raw_mode(st.st_mode)
}

pub fn type_name(t: FileType) -> &'static str {
    match t {
        FileType::RegularFile => "file",
        FileType::Directory => "dir",
        FileType::Symlink => "symlink",
        FileType::Fifo => "fifo",
        FileType::Socket => "socket",
        FileType::CharacterDevice => "char_device",
        FileType::BlockDevice => "block_device",
        _ => "unknown",
    }
}

/// An overlay whiteout in its classic form: a character device 0/0.
pub fn is_char_whiteout(st: &Stat) -> bool {
    file_type(st) == FileType::CharacterDevice && st.st_rdev == 0
}

/// Reads an xattr; `None` if absent or unsupported.
pub fn get_xattr(fd: BorrowedFd<'_>, name: &str) -> Option<Vec<u8>> {
    let mut buf = [0u8; 64];
    match rustix::fs::fgetxattr(fd, name, &mut buf[..]) {
        Ok(n) => Some(buf[..n].to_vec()),
        Err(_) => None,
    }
}

pub fn is_opaque(dir: BorrowedFd<'_>) -> bool {
    get_xattr(dir, "trusted.overlay.opaque").as_deref() == Some(b"y")
}

/// Lists a directory: names other than `.` and `..`, as raw bytes.
pub fn list(dir: BorrowedFd<'_>) -> io::Result<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    for e in rustix::fs::Dir::read_from(dir)? {
        let e = e?;
        let n = e.file_name().to_bytes();
        if n != b"." && n != b".." {
            out.push(n.to_vec());
        }
    }
    Ok(out)
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Hashes a reader to the end: (`sha256:<hex>`, bytes).
/// `size_hint` sizes the buffer (small files are the common case).
pub fn hash_reader(r: &mut impl Read, size_hint: u64) -> io::Result<(String, u64)> {
    copy_hashing_buf(r, &mut io::sink(), size_hint)
}

/// Copies `r` to `w` and hashes what went through.
pub fn copy_hashing(r: &mut impl Read, w: &mut impl Write) -> io::Result<(String, u64)> {
    copy_hashing_buf(r, w, BUF as u64)
}

fn copy_hashing_buf(r: &mut impl Read, w: &mut impl Write, size_hint: u64) -> io::Result<(String, u64)> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; (size_hint as usize).clamp(1, BUF - 1) + 1];
    let mut n = 0u64;
    loop {
        let k = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        h.update(&buf[..k]);
        w.write_all(&buf[..k])?;
        n += k as u64;
    }
    Ok((format!("sha256:{}", hex::encode(h.finalize())), n))
}

pub fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    let mut filled = 0;
    while filled < bytes {
        match rustix::rand::getrandom(&mut b[filled..], rustix::rand::GetRandomFlags::empty()) {
            Ok(n) => filled += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(_) => {
                // getrandom cannot fail on Linux ≥ 3.17 once the pool is ready; fall back to
                // the clock rather than panic in a daemon.
                let t = time::OffsetDateTime::now_utc().unix_timestamp_nanos() as u64;
                for (i, x) in b.iter_mut().enumerate().skip(filled) {
                    *x = (t >> ((i % 8) * 8)) as u8;
                }
                filled = bytes;
            }
        }
    }
    hex::encode(b)
}

/// Where and how [`install`] writes a file.
pub struct Install<'a> {
    pub dir: BorrowedFd<'a>,
    pub name: &'a str,
    pub temp: &'a str,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// Writes `src` to `temp` in `dir` (O_CREAT|O_EXCL|O_NOFOLLOW), hashing while copying;
/// refuses (removing the temp file) when `expect` is given and differs; then
/// fchown/fchmod, fsync, `renameat` over `name`. Returns the hash written. Nothing is
/// left behind on error. The caller fsyncs the directory (once for many files) before
/// it relies on the rename being durable.
pub fn install(at: &Install<'_>, src: &mut impl Read, expect: Option<&str>) -> Result<String, InstallError> {
    check_name(at.name).map_err(InstallError::Io)?;
    check_name(at.temp).map_err(InstallError::Io)?;
    let fd = rustix::fs::openat(
        at.dir,
        at.temp,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )
    .map_err(|e| InstallError::Io(e.into()))?;
    let mut f = File::from(fd);
    let result = (|| {
        let (hash, _) = copy_hashing(src, &mut f).map_err(InstallError::Io)?;
        if let Some(want) = expect {
            if want != hash {
                return Err(InstallError::Mismatch { found: hash });
            }
        }
        let io = |e: rustix::io::Errno| InstallError::Io(e.into());
        rustix::fs::fchown(&f, Some(uid(at.uid)), Some(gid(at.gid))).map_err(io)?;
        rustix::fs::fchmod(&f, Mode::from_raw_mode(at.mode & 0o777)).map_err(io)?;
        f.sync_all().map_err(InstallError::Io)?;
        rustix::fs::renameat(at.dir, at.temp, at.dir, at.name).map_err(io)?;
        Ok(hash)
    })();
    if result.is_err() {
        let _ = rustix::fs::unlinkat(at.dir, at.temp, AtFlags::empty());
    }
    result
}

#[derive(Debug)]
pub enum InstallError {
    Io(io::Error),
    Mismatch { found: String },
}

pub fn uid(u: u32) -> rustix::fs::Uid {
    rustix::fs::Uid::from_raw(u)
}

pub fn gid(g: u32) -> rustix::fs::Gid {
    rustix::fs::Gid::from_raw(g)
}

/// Removes everything inside `dir` (not `dir` itself), never following a symlink.
pub fn clear_dir(dir: BorrowedFd<'_>) -> io::Result<()> {
    for name in list(dir)? {
        remove_tree_at(dir, &name)?;
    }
    Ok(())
}

/// Removes entry `name` of `dir`, recursively if it is a directory.
pub fn remove_tree_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<()> {
    let name = std::ffi::OsStr::from_bytes(name);
    let Some(st) = (match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Some(st),
        Err(rustix::io::Errno::NOENT) => None,
        Err(e) => return Err(e.into()),
    }) else {
        return Ok(());
    };
    if file_type(&st) == FileType::Directory {
        let sub = rustix::fs::openat(
            dir,
            name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        clear_dir(sub.as_fd())?;
        rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR)?;
    } else {
        rustix::fs::unlinkat(dir, name, AtFlags::empty())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_walk_without_openat2_refuses_what_openat2_refuses() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("a/b")).unwrap();
        std::os::unix::fs::symlink("/etc", t.path().join("a/link")).unwrap();
        std::fs::write(t.path().join("a/file"), "x").unwrap();
        let root = open_root(t.path()).unwrap();
        for rel in ["", "a", "a/b"] {
            let walked = walk_dir(root.as_fd(), rel).unwrap();
            let opened = open_dir(root.as_fd(), rel).unwrap();
            let (w, o) = (rustix::fs::fstat(&walked).unwrap(), rustix::fs::fstat(&opened).unwrap());
            assert_eq!((w.st_dev, w.st_ino), (o.st_dev, o.st_ino), "{rel}");
        }
        for rel in ["a/link", "a/link/ssl", "a/file", "/etc", "../..", "missing"] {
            assert!(walk_dir(root.as_fd(), rel).is_err(), "{rel} must be refused by the walk");
            assert!(open_dir(root.as_fd(), rel).is_err(), "{rel} must be refused by openat2");
        }
        // Stricter than RESOLVE_BENEATH, which lets `..` back in as long as it stays beneath.
        for rel in ["a/../a", "a//b", "a/./b"] {
            assert!(walk_dir(root.as_fd(), rel).is_err(), "{rel} must be refused by the walk");
        }
    }
}
