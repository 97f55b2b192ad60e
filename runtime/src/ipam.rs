//! Pod addresses from the node's `spec.podCIDR`, kept as CNI's `host-local` plugin keeps
//! them: one file per address in use, named by the address and holding the pod's UID,
//! so the allocation survives agent restarts and is read back by listing a directory.
//!
//! An address is claimed by linking a finished file into place, which fails if the name
//! exists: two allocators (threads, or agents sharing a directory by mistake) can never
//! both get one. Allocation goes round-robin from the last address handed out, so a
//! released address is not given to the next pod at once (a client may still hold it).
//! The first host address is the node bridge's (the pods' gateway) and is never given.

use ipnet::Ipv4Net;
use std::collections::BTreeMap;
use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The file remembering the last address handed out.
const LAST: &str = "last_reserved_ip";

/// Why no address could be had.
#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    /// Every address of the block is in use.
    #[error("no free address left in {0}")]
    Full(Ipv4Net),
    /// The state directory could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
}

/// The addresses of one node's pod CIDR.
pub struct Ipam {
    dir: PathBuf,
    range: Ipv4Net,
    turn: Mutex<()>,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> IpamError + '_ {
    move |source| IpamError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl Ipam {
    /// The allocator of `range`, keeping its state in `dir` (made if missing, 0700).
    pub fn open(dir: &Path, range: Ipv4Net) -> Result<Ipam, IpamError> {
        use std::os::unix::fs::DirBuilderExt as _;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_err(dir))?;
        Ok(Ipam {
            dir: dir.to_path_buf(),
            range: range.trunc(),
            turn: Mutex::new(()),
        })
    }

    /// The pods' gateway: the block's first host address.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.range.network()) + 1)
    }

    /// The block.
    pub fn range(&self) -> Ipv4Net {
        self.range
    }

    /// The address of pod `uid`: the one it already holds, or a free one.
    pub fn allocate(&self, uid: &str) -> Result<Ipv4Addr, IpamError> {
        let _turn = self.turn.lock().unwrap_or_else(|e| e.into_inner());
        let held = self.held()?;
        if let Some((ip, _)) = held.iter().find(|(_, u)| u.as_str() == uid) {
            return Ok(*ip);
        }
        let first = u32::from(self.range.network()) + 2;
        let last = u32::from(self.range.broadcast()).saturating_sub(1);
        if last < first {
            return Err(IpamError::Full(self.range));
        }
        let count = last - first + 1;
        let after = self
            .last_reserved()
            .map(u32::from)
            .filter(|a| (first..=last).contains(a))
            .map_or(0, |a| a - first + 1);
        for i in 0..count {
            let ip = Ipv4Addr::from(first + (after + i) % count);
            if held.contains_key(&ip) {
                continue;
            }
            if self.claim(ip, uid)? {
                let path = self.dir.join(LAST);
                std::fs::write(&path, ip.to_string()).map_err(io_err(&path))?;
                return Ok(ip);
            }
        }
        Err(IpamError::Full(self.range))
    }

    /// Frees what pod `uid` holds (nothing held is fine).
    pub fn release(&self, uid: &str) -> Result<(), IpamError> {
        let _turn = self.turn.lock().unwrap_or_else(|e| e.into_inner());
        for (ip, owner) in self.held()? {
            if owner == uid {
                let path = self.dir.join(ip.to_string());
                match std::fs::remove_file(&path) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => {
                        return Err(io_err(&path)(e));
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }

    /// Every address in use, with the pod holding it.
    pub fn held(&self) -> Result<BTreeMap<Ipv4Addr, String>, IpamError> {
        let mut out = BTreeMap::new();
        for entry in std::fs::read_dir(&self.dir).map_err(io_err(&self.dir))? {
            let entry = entry.map_err(io_err(&self.dir))?;
            let Some(ip) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<Ipv4Addr>().ok())
            else {
                continue;
            };
            let path = entry.path();
            match std::fs::read_to_string(&path) {
                Ok(owner) => {
                    out.insert(ip, owner.trim().to_string());
                }
                // Released meanwhile.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(&path)(e)),
            }
        }
        Ok(out)
    }

    fn last_reserved(&self) -> Option<Ipv4Addr> {
        std::fs::read_to_string(self.dir.join(LAST))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Links a finished file naming `uid` into place as `ip`; false if it was taken.
    fn claim(&self, ip: Ipv4Addr, uid: &str) -> Result<bool, IpamError> {
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = self.dir.join(format!(".{ip}.{}.{seq}", std::process::id()));
        std::fs::write(&tmp, uid).map_err(io_err(&tmp))?;
        let target = self.dir.join(ip.to_string());
        let linked = std::fs::hard_link(&tmp, &target);
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(io_err(&target)(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn addresses_go_round_robin_skip_the_gateway_and_stay_with_their_pod() {
        let dir = tempfile::tempdir().unwrap();
        // 10.42.3.0/29: gateway .1, pods .2 to .6.
        let ipam = Ipam::open(dir.path(), "10.42.3.0/29".parse().unwrap()).unwrap();
        assert_eq!(ipam.gateway(), ip("10.42.3.1"));
        let table = [
            ("a", "10.42.3.2"),
            ("b", "10.42.3.3"),
            ("a", "10.42.3.2"),
            ("c", "10.42.3.4"),
        ];
        for (uid, want) in table {
            assert_eq!(ipam.allocate(uid).unwrap(), ip(want), "{uid}");
        }
        // A released address is not the next one handed out.
        ipam.release("b").unwrap();
        assert_eq!(ipam.allocate("d").unwrap(), ip("10.42.3.5"));
        assert_eq!(ipam.allocate("e").unwrap(), ip("10.42.3.6"));
        assert_eq!(
            ipam.allocate("f").unwrap(),
            ip("10.42.3.3"),
            "wraps to the freed one"
        );
        assert!(matches!(ipam.allocate("g"), Err(IpamError::Full(_))));
        ipam.release("nobody").unwrap();

        // A new allocator on the same directory (an agent restart) sees the same.
        let again = Ipam::open(dir.path(), "10.42.3.0/29".parse().unwrap()).unwrap();
        let held = again.held().unwrap();
        assert_eq!(held.len(), 5);
        assert_eq!(held[&ip("10.42.3.4")], "c");
        assert_eq!(again.allocate("c").unwrap(), ip("10.42.3.4"));
        again.release("a").unwrap();
        assert_eq!(again.allocate("h").unwrap(), ip("10.42.3.2"));
    }

    #[test]
    fn concurrent_allocators_never_share_an_address() {
        let dir = tempfile::tempdir().unwrap();
        let range: Ipv4Net = "10.42.0.0/24".parse().unwrap();
        // Two allocators on one directory, as two agents sharing it would be.
        let (x, y) = (
            Ipam::open(dir.path(), range).unwrap(),
            Ipam::open(dir.path(), range).unwrap(),
        );
        let got = std::thread::scope(|s| {
            let hs: Vec<_> = (0..8)
                .map(|t| {
                    let ipam = if t % 2 == 0 { &x } else { &y };
                    s.spawn(move || {
                        (0..20)
                            .map(|i| ipam.allocate(&format!("pod-{t}-{i}")).unwrap())
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            hs.into_iter()
                .flat_map(|h| h.join().unwrap())
                .collect::<Vec<_>>()
        });
        let distinct: std::collections::BTreeSet<_> = got.iter().collect();
        assert_eq!(distinct.len(), 160);
        assert_eq!(x.held().unwrap().len(), 160);
    }

    #[test]
    fn a_block_without_pod_addresses_is_full() {
        let dir = tempfile::tempdir().unwrap();
        let ipam = Ipam::open(dir.path(), "10.0.0.0/31".parse().unwrap()).unwrap();
        assert!(matches!(ipam.allocate("a"), Err(IpamError::Full(_))));
    }
}
