//! Unpacking a container image layer into a directory overlayfs can stack: each layer once,
//! keyed by its blob digest, shared by every container that uses it.
//!
//! - Compression is read from the content (gzip, zstd, or a plain tar).
//! - Whiteouts become overlayfs whiteouts: `.wh.NAME` a 0/0 character device `NAME`,
//!   `.wh..wh..opq` the `trusted.overlay.opaque` attribute on its directory.
//! - Nothing lands outside the layer's directory: an entry with `..`, an entry under a
//!   symlink, or a hard link to such a path refuses the whole layer. Absolute entry names
//!   are taken relative to the layer root (as tar does). Symlinks are created as they are
//!   and never followed while unpacking.
//! - Character and block devices are skipped (a container's `/dev` is the runtime's).

use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::{PermissionsExt as _, symlink};
use std::path::{Component, Path, PathBuf};

use super::ArtifactError;

/// Why a layer cannot be unpacked; becomes the pod's pull error.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// An entry would land outside the layer root.
    #[error("layer entry {entry:?} {why}")]
    Escape {
        /// The entry's name in the tar.
        entry: String,
        /// How it escapes.
        why: &'static str,
    },
    /// Not a readable (compressed) tar.
    #[error("layer is not a readable tar: {0}")]
    Format(String),
    /// Writing the files failed.
    #[error("unpacking {path}: {source}")]
    Io {
        /// Where.
        path: String,
        /// The cause.
        source: io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> UnpackError + '_ {
    move |source| UnpackError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// The layer blob at `blob`, decompressed by what its first bytes say.
fn open_layer(blob: &Path) -> Result<Box<dyn Read>, UnpackError> {
    let mut f = fs::File::open(blob).map_err(io_err(blob))?;
    let mut magic = [0u8; 4];
    let mut n = 0;
    while n < magic.len() {
        match f.read(&mut magic[n..]).map_err(io_err(blob))? {
            0 => break,
            k => n += k,
        }
    }
    let f = fs::File::open(blob).map_err(io_err(blob))?;
    let f = io::BufReader::new(f);
    Ok(match &magic[..n] {
        [0x1f, 0x8b, ..] => Box::new(flate2::read::GzDecoder::new(f)),
        [0x28, 0xb5, 0x2f, 0xfd] => Box::new(
            ruzstd::decoding::StreamingDecoder::new(f)
                .map_err(|e| UnpackError::Format(format!("zstd: {e}")))?,
        ),
        _ => Box::new(f),
    })
}

/// The entry's path as components below the root, or why it escapes.
fn relative(entry: &Path) -> Result<PathBuf, &'static str> {
    let mut out = PathBuf::new();
    for c in entry.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir => {
                return Err("has a \"..\" component (it would escape the layer)");
            }
            Component::Prefix(_) => return Err("has a path prefix"),
        }
    }
    Ok(out)
}

/// Refuses a path whose parent directories (within `root`) include a symlink: writing
/// through it would land wherever it points.
fn check_parents(root: &Path, rel: &Path) -> Result<(), &'static str> {
    let mut at = root.to_path_buf();
    let parents: Vec<_> = rel.components().collect();
    for c in parents.iter().take(parents.len().saturating_sub(1)) {
        at.push(c);
        match fs::symlink_metadata(&at) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err("is below a symlink (unpacking it would follow the link)");
            }
            Ok(m) if !m.is_dir() => return Err("is below a file that is not a directory"),
            _ => {}
        }
    }
    Ok(())
}

/// Removes whatever is at `path` (never following a link), unless it is a directory and
/// `keep_dir` is set.
fn clear(path: &Path, keep_dir: bool) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() && !m.file_type().is_symlink() => {
            if keep_dir {
                Ok(())
            } else {
                fs::remove_dir_all(path)
            }
        }
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// What unpacking a layer wrote.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Unpacked {
    /// Regular files, directories, links written.
    pub entries: u64,
    /// Whiteouts and opaque markers turned into overlayfs form.
    pub whiteouts: u64,
    /// Device nodes skipped.
    pub skipped_devices: u64,
}

/// Unpacks the layer `blob` into the empty directory `root`.
pub fn unpack(blob: &Path, root: &Path) -> Result<Unpacked, UnpackError> {
    let reader = open_layer(blob)?;
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_preserve_mtime(true);
    archive.set_overwrite(true);
    let mut done = Unpacked::default();
    let entries = archive
        .entries()
        .map_err(|e| UnpackError::Format(e.to_string()))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| UnpackError::Format(e.to_string()))?;
        let name = entry
            .path()
            .map_err(|e| UnpackError::Format(e.to_string()))?
            .into_owned();
        let shown = name.display().to_string();
        let escape = |why| UnpackError::Escape {
            entry: shown.clone(),
            why,
        };
        let rel = relative(&name).map_err(escape)?;
        if rel.as_os_str().is_empty() {
            continue; // the root itself
        }
        check_parents(root, &rel).map_err(escape)?;
        let dest = root.join(&rel);
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        let file_name = rel
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if file_name == ".wh..wh..opq" {
            let dir = dest.parent().unwrap_or(root);
            rustix::fs::lsetxattr(
                dir,
                "trusted.overlay.opaque",
                b"y",
                rustix::fs::XattrFlags::empty(),
            )
            .map_err(|e| UnpackError::Io {
                path: dir.display().to_string(),
                source: e.into(),
            })?;
            done.whiteouts += 1;
            continue;
        }
        if let Some(hidden) = file_name.strip_prefix(".wh.") {
            let target = dest.with_file_name(hidden);
            clear(&target, false).map_err(io_err(&target))?;
            rustix::fs::mknodat(
                rustix::fs::CWD,
                &target,
                rustix::fs::FileType::CharacterDevice,
                rustix::fs::Mode::empty(),
                rustix::fs::makedev(0, 0),
            )
            .map_err(|e| UnpackError::Io {
                path: target.display().to_string(),
                source: e.into(),
            })?;
            done.whiteouts += 1;
            continue;
        }
        let kind = entry.header().entry_type();
        match kind {
            tar::EntryType::Char | tar::EntryType::Block => {
                done.skipped_devices += 1;
                continue;
            }
            tar::EntryType::Directory => {
                clear(&dest, true).map_err(io_err(&dest))?;
                fs::create_dir_all(&dest).map_err(io_err(&dest))?;
                let mode = entry.header().mode().unwrap_or(0o755);
                fs::set_permissions(&dest, fs::Permissions::from_mode(mode & 0o7777))
                    .map_err(io_err(&dest))?;
                chown(&entry, &dest)?;
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name()
                    .map_err(|e| UnpackError::Format(e.to_string()))?
                    .ok_or_else(|| UnpackError::Format(format!("symlink {shown} has no target")))?
                    .into_owned();
                clear(&dest, false).map_err(io_err(&dest))?;
                symlink(&target, &dest).map_err(io_err(&dest))?;
                chown(&entry, &dest)?;
            }
            tar::EntryType::Link => {
                let target = entry
                    .link_name()
                    .map_err(|e| UnpackError::Format(e.to_string()))?
                    .ok_or_else(|| UnpackError::Format(format!("hard link {shown} has no target")))?
                    .into_owned();
                let trel = relative(&target).map_err(|why| UnpackError::Escape {
                    entry: format!("{shown} (hard link to {})", target.display()),
                    why,
                })?;
                let link_escape = |why| UnpackError::Escape {
                    entry: format!("{shown} (hard link to {})", target.display()),
                    why,
                };
                check_parents(root, &trel).map_err(link_escape)?;
                clear(&dest, false).map_err(io_err(&dest))?;
                fs::hard_link(root.join(&trel), &dest).map_err(io_err(&dest))?;
            }
            tar::EntryType::Regular
            | tar::EntryType::Continuous
            | tar::EntryType::GNUSparse
            | tar::EntryType::Fifo => {
                clear(&dest, false).map_err(io_err(&dest))?;
                entry.unpack(&dest).map_err(io_err(&dest))?;
            }
            // Metadata entries (pax headers, GNU long names) are consumed by the reader.
            _ => continue,
        }
        done.entries += 1;
    }
    Ok(done)
}

impl super::ArtifactStore {
    /// The unpacked layers of `image` (pulled as `name`), bottom first, unpacking those not
    /// unpacked yet. A layer is unpacked once per node, whatever uses it; a refused layer
    /// is an [`ArtifactError`] for the pod (nothing of it is kept).
    pub async fn unpacked_layers(
        &self,
        name: &str,
        image: &super::ContainerImage,
    ) -> Result<Vec<PathBuf>, ArtifactError> {
        let root = self.dir().join("layers");
        let mut out = Vec::with_capacity(image.layers.len());
        for layer in &image.layers {
            let digest = &layer.descriptor.digest;
            let blob = layer.path.clone().ok_or_else(|| {
                ArtifactError::invalid(name, format!("layer {digest} is not in the cache"))
            })?;
            let hex = digest.strip_prefix("sha256:").unwrap_or(digest).to_string();
            let dir = root.join(&hex);
            let lock = self.inner.cache.blob_lock(digest);
            let _guard = lock.lock().await;
            if !dir.join(DONE).exists() {
                let (root, name, digest) = (root.clone(), name.to_string(), digest.clone());
                let made = tokio::task::spawn_blocking(move || unpack_once(&root, &hex, &blob))
                    .await
                    .map_err(|e| ArtifactError::invalid(&name, e.to_string()))?;
                match made {
                    Ok(u) => {
                        tracing::debug!(layer = %digest, entries = u.entries, "layer unpacked")
                    }
                    Err(e) => {
                        return Err(ArtifactError::invalid(
                            &name,
                            format!("layer {digest}: {e}"),
                        ));
                    }
                }
            }
            out.push(dir.join(FS));
        }
        Ok(out)
    }
}

impl super::ArtifactStore {
    /// Deletes unpacked layers no cached image has any more (after [`ArtifactStore::prune`]
    /// removed their images). Returns (layers, bytes) removed.
    pub async fn prune_unpacked(&self) -> (usize, u64) {
        let live: std::collections::HashSet<String> = self
            .inner
            .cache
            .list()
            .await
            .iter()
            .flat_map(|(_, _, r)| r.layers.iter())
            .map(|l| {
                l.digest
                    .strip_prefix("sha256:")
                    .unwrap_or(&l.digest)
                    .to_string()
            })
            .collect();
        let root = self.dir().join("layers");
        let cache = &self.inner.cache;
        let mut doomed = Vec::new();
        for entry in fs::read_dir(&root).into_iter().flatten().flatten() {
            let hex = entry.file_name().to_string_lossy().into_owned();
            // Half-made ones (`.hex.pid`) belong to an unpack in progress.
            if !hex.starts_with('.') && !live.contains(&hex) {
                doomed.push((hex, entry.path()));
            }
        }
        let (mut layers, mut bytes) = (0, 0);
        for (hex, dir) in doomed {
            // Not while an unpack of the same layer runs.
            let lock = cache.blob_lock(&format!("sha256:{hex}"));
            let _guard = lock.lock().await;
            let freed = tokio::task::spawn_blocking(move || {
                let size = dir_size(&dir);
                fs::remove_dir_all(&dir).map(|()| size)
            })
            .await;
            if let Ok(Ok(size)) = freed {
                layers += 1;
                bytes += size;
            }
        }
        (layers, bytes)
    }
}

/// Bytes of the regular files under `dir` (not following links).
fn dir_size(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).into_iter().flatten().flatten() {
            match entry.file_type() {
                Ok(t) if t.is_dir() => stack.push(entry.path()),
                Ok(t) if t.is_file() => total += entry.metadata().map_or(0, |m| m.len()),
                _ => {}
            }
        }
    }
    total
}

/// Marks a layer directory as complete.
const DONE: &str = "done";
/// The layer's files, beside the marker.
const FS: &str = "fs";

/// Unpacks into a fresh directory and renames it into place, so a half-unpacked layer is
/// never used.
fn unpack_once(root: &Path, hex: &str, blob: &Path) -> Result<Unpacked, UnpackError> {
    let dir = root.join(hex);
    let tmp = root.join(format!(".{hex}.{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(tmp.join(FS)).map_err(io_err(&tmp))?;
    let done = match unpack(blob, &tmp.join(FS)) {
        Ok(d) => d,
        Err(e) => {
            let _ = fs::remove_dir_all(&tmp);
            return Err(e);
        }
    };
    fs::write(tmp.join(DONE), b"").map_err(io_err(&tmp))?;
    fs::rename(&tmp, &dir).map_err(io_err(&dir))?;
    Ok(done)
}

/// Sets the owner of a directory or symlink from its header (regular files get theirs
/// from `unpack`).
fn chown<R: Read>(entry: &tar::Entry<'_, R>, dest: &Path) -> Result<(), UnpackError> {
    let h = entry.header();
    let (Ok(uid), Ok(gid)) = (h.uid(), h.gid()) else {
        return Ok(());
    };
    let uid = u32::try_from(uid).ok();
    let gid = u32::try_from(gid).ok();
    std::os::unix::fs::lchown(dest, uid, gid).map_err(io_err(dest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileTypeExt as _;

    enum E<'a> {
        File(&'a str, &'a str),
        Dir(&'a str),
        Sym(&'a str, &'a str),
        Hard(&'a str, &'a str),
        Dev(&'a str),
    }

    /// A tar built by hand, so entries the `tar` builder refuses (`..`) can be written.
    fn layer(dir: &Path, entries: &[E<'_>], gzip: bool) -> PathBuf {
        let mut raw = Vec::new();
        {
            let mut b = tar::Builder::new(&mut raw);
            for e in entries {
                let mut h = tar::Header::new_gnu();
                let (name, kind, body, link): (&str, _, &[u8], Option<&str>) = match e {
                    E::File(n, body) => (n, tar::EntryType::Regular, body.as_bytes(), None),
                    E::Dir(n) => (n, tar::EntryType::Directory, b"", None),
                    E::Sym(n, t) => (n, tar::EntryType::Symlink, b"", Some(t)),
                    E::Hard(n, t) => (n, tar::EntryType::Link, b"", Some(t)),
                    E::Dev(n) => (n, tar::EntryType::Char, b"", None),
                };
                h.set_entry_type(kind);
                h.set_size(body.len() as u64);
                h.set_mode(if kind == tar::EntryType::Directory {
                    0o755
                } else {
                    0o644
                });
                h.set_uid(0);
                h.set_gid(0);
                // Write the name bytes directly: `set_path` refuses "..".
                let bytes = name.as_bytes();
                h.as_old_mut().name[..bytes.len()].copy_from_slice(bytes);
                if let Some(t) = link {
                    h.as_old_mut().linkname[..t.len()].copy_from_slice(t.as_bytes());
                }
                h.set_cksum();
                b.append(&h, body).expect("append");
            }
            b.finish().expect("finish");
        }
        let path = dir.join(if gzip { "layer.tar.gz" } else { "layer.tar" });
        if gzip {
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            io::Write::write_all(&mut enc, &raw).expect("gzip");
            fs::write(&path, enc.finish().expect("gzip")).expect("write");
        } else {
            fs::write(&path, raw).expect("write");
        }
        path
    }

    fn run(entries: &[E<'_>], gzip: bool) -> (tempfile::TempDir, Result<Unpacked, UnpackError>) {
        let tmp = tempfile::tempdir().expect("tmp");
        let blob = layer(tmp.path(), entries, gzip);
        let root = tmp.path().join("root");
        fs::create_dir(&root).expect("root");
        let r = unpack(&blob, &root);
        (tmp, r)
    }

    #[test]
    fn files_dirs_links_and_whiteouts() {
        let (tmp, r) = run(
            &[
                E::Dir("etc/"),
                E::File("etc/hostname", "box\n"),
                E::Sym("etc/localtime", "/usr/share/zoneinfo/UTC"),
                E::Hard("etc/hostname2", "etc/hostname"),
                E::File("./bin/tool", "#!/bin/sh\n"),
                E::File("/abs/is/relative", "x"),
                E::File("gone/.wh.old", ""),
                E::File("var/.wh..wh..opq", ""),
                E::Dev("dev/null"),
            ],
            true,
        );
        let done = r.expect("unpacks");
        assert_eq!(done.whiteouts, 2);
        assert_eq!(done.skipped_devices, 1);
        let root = tmp.path().join("root");
        assert_eq!(
            fs::read_to_string(root.join("etc/hostname")).expect("file"),
            "box\n"
        );
        assert_eq!(
            fs::read_link(root.join("etc/localtime")).expect("link"),
            Path::new("/usr/share/zoneinfo/UTC")
        );
        assert_eq!(
            fs::read_to_string(root.join("etc/hostname2")).expect("hard"),
            "box\n"
        );
        assert!(root.join("bin/tool").exists());
        assert!(root.join("abs/is/relative").exists());
        let wh = fs::symlink_metadata(root.join("gone/old")).expect("whiteout");
        assert!(wh.file_type().is_char_device());
        let opaque =
            rustix::fs::lgetxattr(root.join("var"), "trusted.overlay.opaque", &mut [0u8; 4])
                .expect("opaque xattr");
        assert_eq!(opaque, 1);
        assert!(!root.join("dev/null").exists());
    }

    #[test]
    fn plain_tar_works_too() {
        let (tmp, r) = run(&[E::File("a", "1")], false);
        r.expect("unpacks");
        assert!(tmp.path().join("root/a").exists());
    }

    #[test]
    fn escapes_are_refused_and_write_nothing_outside() {
        let cases: Vec<(&str, Vec<E<'_>>)> = vec![
            ("dot-dot", vec![E::File("../outside", "x")]),
            (
                "nested dot-dot",
                vec![E::Dir("a/"), E::File("a/../../outside", "x")],
            ),
            (
                "through a symlink",
                vec![E::Sym("link", ".."), E::File("link/outside", "x")],
            ),
            (
                "through an absolute symlink",
                vec![E::Sym("etc", "/tmp"), E::File("etc/outside", "x")],
            ),
            ("hard link out", vec![E::Hard("h", "../outside-target")]),
            (
                "hard link through a symlink",
                vec![E::Sym("l", "/"), E::Hard("h", "l/etc/passwd")],
            ),
        ];
        for (what, entries) in cases {
            let (tmp, r) = run(&entries, true);
            let err = r.expect_err(what);
            assert!(matches!(err, UnpackError::Escape { .. }), "{what}: {err}");
            assert!(
                !tmp.path().join("outside").exists(),
                "{what}: wrote outside"
            );
            assert!(!Path::new("/tmp/outside").exists(), "{what}: wrote to /tmp");
        }
    }

    #[test]
    fn a_corrupt_layer_is_a_format_error() {
        let tmp = tempfile::tempdir().expect("tmp");
        let blob = tmp.path().join("bad");
        fs::write(&blob, [0x1f, 0x8b, 0, 1, 2, 3, 4, 5]).expect("write");
        let root = tmp.path().join("root");
        fs::create_dir(&root).expect("root");
        assert!(matches!(unpack(&blob, &root), Err(UnpackError::Format(_))));
    }
}
