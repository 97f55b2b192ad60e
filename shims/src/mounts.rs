//! Opening a directory inside a volume without leaving it.
//!
//! A guest can write symlinks into a volume it may write (an `emptyDir`), and a later
//! container may mount a `subPath` of that volume. Joining the path and opening it would
//! follow such a link wherever it points (`../../..` to the node's `/`). Here the volume
//! root is opened first and the rest is resolved by the kernel with `openat2(2)` and
//! `RESOLVE_BENEATH`: symlinks that stay inside the volume work, as in Kubernetes; any
//! resolution that would leave it (`..` past the root, an absolute link, a magic link)
//! fails, atomically, so a guest racing to swap a directory for a link cannot win.
//!
//! The result is an open directory; a runtime hands it on as `/proc/self/fd/N` (the Wasm
//! host preopens that), or as the source of a bind mount, never as the joined path.

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
use nix::sys::stat::{Mode, mkdirat};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

/// Why a directory inside a volume could not be opened.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum MountError {
    /// The relative path is absolute, holds `..`, or is otherwise not a plain descent.
    #[error("subPath {0:?} must be a relative path without '..'")]
    NotDescending(String),
    /// Resolving the path would leave the volume (a symlink pointing out of it).
    #[error("subPath {0:?} resolves outside of its volume (a symbolic link leads out of it)")]
    Escapes(String),
    /// Something on the way is not a directory, or is a symlink where one was created.
    #[error("subPath {path:?}: {detail}")]
    NotADirectory {
        /// The relative path.
        path: String,
        /// What was found.
        detail: String,
    },
    /// The volume root itself could not be opened.
    #[error("volume directory {root}: {errno}")]
    Root {
        /// The root.
        root: PathBuf,
        /// The error.
        errno: Errno,
    },
    /// Another system error.
    #[error("subPath {path:?}: {errno}")]
    Io {
        /// The relative path.
        path: String,
        /// The error.
        errno: Errno,
    },
}

/// An open directory and the path through which the same process can reopen it.
#[derive(Debug)]
pub struct OpenDir {
    fd: OwnedFd,
}

impl OpenDir {
    /// `/proc/self/fd/N`: valid only in this process, and only while `self` lives.
    pub fn proc_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd()))
    }

    /// The open directory.
    pub fn fd(&self) -> &OwnedFd {
        &self.fd
    }
}

fn dir_flags() -> OFlag {
    OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC
}

fn descending(rel: &str) -> Result<Vec<&str>, MountError> {
    let mut parts = Vec::new();
    for c in Path::new(rel).components() {
        match c {
            Component::Normal(p) => parts.push(p.to_str().unwrap_or_default()),
            Component::CurDir => {}
            _ => return Err(MountError::NotDescending(rel.to_string())),
        }
    }
    Ok(parts)
}

/// Opens `rel` inside the directory `root` without leaving it, creating the missing
/// directories of `rel` when `create` (as the kubelet does for a `subPath`). An empty
/// `rel` opens the root.
pub fn open_beneath(root: &Path, rel: &str, create: bool) -> Result<OpenDir, MountError> {
    let parts = descending(rel)?;
    let root_fd =
        nix::fcntl::open(root, dir_flags(), Mode::empty()).map_err(|errno| MountError::Root {
            root: root.to_path_buf(),
            errno,
        })?;
    if parts.is_empty() {
        return Ok(OpenDir { fd: root_fd });
    }
    let beneath = OpenHow::new()
        .flags(dir_flags())
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    match openat2(root_fd.as_fd(), rel, beneath) {
        Ok(fd) => return Ok(OpenDir { fd }),
        Err(Errno::EXDEV | Errno::ELOOP) => return Err(MountError::Escapes(rel.to_string())),
        Err(Errno::ENOTDIR) => {
            return Err(MountError::NotADirectory {
                path: rel.to_string(),
                detail: "a part of it is not a directory".into(),
            });
        }
        Err(Errno::ENOENT) if create => {}
        Err(errno) => {
            return Err(MountError::Io {
                path: rel.to_string(),
                errno,
            });
        }
    }
    // Create what is missing one level at a time, following no symlink at all: each
    // step is relative to the directory just opened, so nothing can redirect it.
    let step = OpenHow::new()
        .flags(dir_flags() | OFlag::O_NOFOLLOW)
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS);
    let mut cur = root_fd;
    for part in parts {
        match mkdirat(cur.as_fd(), part, Mode::from_bits_truncate(0o755)) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(errno) => {
                return Err(MountError::Io {
                    path: rel.to_string(),
                    errno,
                });
            }
        }
        cur = openat2(cur.as_fd(), part, step).map_err(|errno| match errno {
            Errno::ELOOP | Errno::EXDEV => MountError::Escapes(rel.to_string()),
            Errno::ENOTDIR => MountError::NotADirectory {
                path: rel.to_string(),
                detail: format!("{part:?} is not a directory"),
            },
            errno => MountError::Io {
                path: rel.to_string(),
                errno,
            },
        })?;
    }
    Ok(OpenDir { fd: cur })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn sub_paths_stay_inside_their_volume() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("marker"), "host").unwrap();
        let vol = tmp.path().join("vol");
        std::fs::create_dir_all(vol.join("in/deep")).unwrap();
        symlink("../outside", vol.join("up")).unwrap();
        symlink("../../outside", vol.join("in/up2")).unwrap();
        symlink(&outside, vol.join("abs")).unwrap();
        symlink("in/deep", vol.join("inside")).unwrap();
        symlink("/proc/self/root", vol.join("magic")).unwrap();
        std::fs::write(vol.join("file"), "x").unwrap();

        let escapes = |rel: &str| MountError::Escapes(rel.to_string());
        let cases: &[(&str, bool, Result<&str, MountError>)] = &[
            ("", false, Ok("vol")),
            ("in", false, Ok("in")),
            ("in/deep", false, Ok("deep")),
            ("./in", false, Ok("in")),
            // A link that stays inside is followed, as Kubernetes does.
            ("inside", false, Ok("deep")),
            ("up", false, Err(escapes("up"))),
            ("up", true, Err(escapes("up"))),
            ("in/up2", true, Err(escapes("in/up2"))),
            ("abs", true, Err(escapes("abs"))),
            ("magic", true, Err(escapes("magic"))),
            // Created below a link that leads out: refused, nothing made outside.
            ("up/new", true, Err(escapes("up/new"))),
            (
                "../outside",
                true,
                Err(MountError::NotDescending("../outside".into())),
            ),
            ("/etc", true, Err(MountError::NotDescending("/etc".into()))),
            ("new/a/b", true, Ok("b")),
            (
                "missing",
                false,
                Err(MountError::Io {
                    path: "missing".into(),
                    errno: Errno::ENOENT,
                }),
            ),
        ];
        for (rel, create, want) in cases {
            let got = open_beneath(&vol, rel, *create).map(|d| {
                let real = std::fs::read_link(d.proc_path()).unwrap();
                assert!(real.starts_with(&vol), "{rel:?} opened {}", real.display());
                real.file_name().unwrap().to_str().unwrap().to_string()
            });
            let want = want.clone().map(String::from);
            assert_eq!(got, want, "{rel:?} create={create}");
        }
        assert!(
            !outside.join("new").exists(),
            "nothing was created outside the volume"
        );
        assert!(matches!(
            open_beneath(&vol, "file", true),
            Err(MountError::NotADirectory { .. })
        ));
        // The opened directory is what a preopen of its /proc path sees.
        let d = open_beneath(&vol, "in", false).unwrap();
        std::fs::write(d.proc_path().join("through-fd"), "ok").unwrap();
        assert!(vol.join("in/through-fd").exists());
    }
}
