//! Named network namespaces, kept as `ip netns` keeps them (a file under `/run/netns`
//! with the namespace bind-mounted on it, so it lives without a process and `ip netns
//! exec` finds it), and rtnetlink requests made inside one.
//!
//! Done in-process, not by running `ip`: two `ip` processes cost a pod ~7 ms of its
//! start on a 2-core machine. A namespace is entered on a thread of its own that ends
//! with the work, so no thread of the agent ever changes namespace.

use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::link::{LinkFlags, LinkMessage};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

/// The loopback device's index in every new network namespace.
const LOOPBACK_INDEX: u32 = 1;

/// Serializes the one-time set-up of a namespace directory's mount.
static DIR_SETUP: Mutex<()> = Mutex::new(());

/// Makes `dir` a shared mount point, as `ip netns` does, so namespaces mounted in it are
/// seen from mount namespaces created afterwards (containers' among them, if they ask).
fn share_dir(dir: &Path) -> io::Result<()> {
    use rustix::mount::{MountPropagationFlags, mount_bind_recursive, mount_change};
    let _once = DIR_SETUP.lock().unwrap_or_else(|e| e.into_inner());
    std::fs::create_dir_all(dir)?;
    let shared = MountPropagationFlags::SHARED | MountPropagationFlags::REC;
    match mount_change(dir, shared) {
        Ok(()) => Ok(()),
        // Not a mount point yet: make it one.
        Err(rustix::io::Errno::INVAL) => {
            mount_bind_recursive(dir, dir)?;
            Ok(mount_change(dir, shared)?)
        }
        Err(e) => Err(e.into()),
    }
}

/// Creates the network namespace `dir/name` with its loopback up (`ip netns add NAME`
/// and `ip -n NAME link set lo up`). An existing one is kept and its loopback brought
/// up.
pub fn add(dir: &Path, name: &str) -> io::Result<PathBuf> {
    let path = dir.join(name);
    if path.exists() {
        run_in(&path, |route| route.set_up(LOOPBACK_INDEX))??;
    } else {
        share_dir(dir)?;
        create(&path)?;
    }
    Ok(path)
}

fn create(path: &Path) -> io::Result<()> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)?;
    let made = std::thread::scope(|s| {
        s.spawn(|| -> io::Result<()> {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)?;
            rustix::mount::mount_bind("/proc/thread-self/ns/net", path)?;
            // Still inside it: loopback up from the same thread.
            Route::open()?.set_up(LOOPBACK_INDEX)
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("the namespace thread panicked")))
    });
    if made.is_err() {
        // Unmounted too, if the mount was made before the failure.
        let _ = delete(path);
    }
    made
}

/// Removes the network namespace at `path` (`ip netns delete`); a missing one is fine.
/// The namespace itself goes once nothing uses it any more.
pub fn delete(path: &Path) -> io::Result<()> {
    match rustix::mount::unmount(path, rustix::mount::UnmountFlags::DETACH) {
        Ok(()) | Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOENT) => {}
        Err(e) => return Err(e.into()),
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Runs `f` with an rtnetlink socket of the namespace at `netns`, on a thread that
/// joins the namespace and then ends.
pub fn run_in<T: Send>(netns: &Path, f: impl FnOnce(&mut Route) -> T + Send) -> io::Result<T> {
    let ns = std::fs::File::open(netns)?;
    std::thread::scope(|s| {
        s.spawn(|| -> io::Result<T> {
            rustix::thread::move_into_link_name_space(
                ns.as_fd(),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )?;
            let mut route = Route::open()?;
            Ok(f(&mut route))
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("the namespace thread panicked")))
    })
}

/// A blocking rtnetlink socket: one request at a time, each acknowledged.
pub struct Route {
    socket: Socket,
    seq: u32,
}

impl Route {
    /// A socket in the calling thread's network namespace.
    pub fn open() -> io::Result<Route> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        Ok(Route { socket, seq: 0 })
    }

    /// Sets link `index` up (`ip link set DEV up`).
    pub fn set_up(&mut self, index: u32) -> io::Result<()> {
        let mut link = LinkMessage::default();
        link.header.index = index;
        link.header.flags = LinkFlags::Up;
        link.header.change_mask = LinkFlags::Up;
        self.request(RouteNetlinkMessage::SetLink(link))
    }

    /// Sends `message` and waits for the kernel's acknowledgement; a refusal is its errno.
    pub fn request(&mut self, message: RouteNetlinkMessage) -> io::Result<()> {
        self.exchange(message, 0).map(|_| ())
    }

    /// Sends `message` with `flags` (e.g. `NLM_F_CREATE | NLM_F_EXCL`) besides request
    /// and ack; returns what the kernel answered before its acknowledgement.
    pub fn exchange(
        &mut self,
        message: RouteNetlinkMessage,
        flags: u16,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.seq = self.seq.wrapping_add(1);
        let mut packet =
            NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::from(message));
        packet.header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        packet.header.sequence_number = self.seq;
        packet.finalize();
        let mut buf = vec![0; packet.buffer_len()];
        packet.serialize(&mut buf);
        self.socket.send(&buf, 0)?;
        let mut reply = vec![0u8; 16384];
        let mut answers = Vec::new();
        loop {
            let n = self.socket.recv(&mut &mut reply[..], 0)?;
            let mut at = 0;
            while at < n {
                let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&reply[at..n])
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                let len = msg.header.length as usize;
                if msg.header.sequence_number == self.seq {
                    match msg.payload {
                        NetlinkPayload::Error(e) => {
                            return match e.code {
                                None => Ok(answers),
                                Some(_) => Err(e.to_io()),
                            };
                        }
                        NetlinkPayload::Done(_) => return Ok(answers),
                        NetlinkPayload::InnerMessage(m) => answers.push(m),
                        _ => {}
                    }
                }
                if len == 0 {
                    break;
                }
                at += len;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Real namespaces: needs root, as the agent does.
    #[test]
    fn a_namespace_is_made_with_loopback_up_and_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let path = add(dir.path(), "t1").unwrap();
        let ours = std::fs::metadata(&path).unwrap();
        let host = std::fs::metadata("/proc/self/ns/net").unwrap();
        use std::os::unix::fs::MetadataExt as _;
        assert_ne!(ours.ino(), host.ino(), "a namespace of its own");
        // Loopback answers inside it: a listener and a connection on 127.0.0.1.
        let connected = run_in(&path, |_| {
            let l = std::net::TcpListener::bind("127.0.0.1:0")?;
            std::net::TcpStream::connect(l.local_addr()?).map(|_| ())
        })
        .unwrap();
        assert!(connected.is_ok(), "{connected:?}");
        // Adding again keeps it.
        assert_eq!(add(dir.path(), "t1").unwrap(), path);
        delete(&path).unwrap();
        assert!(!path.exists());
        delete(&path).unwrap();
        let _ = rustix::mount::unmount(dir.path(), rustix::mount::UnmountFlags::DETACH);
    }

    #[test]
    fn a_refused_request_is_its_errno() {
        let dir = tempfile::tempdir().unwrap();
        let path = add(dir.path(), "t2").unwrap();
        let e = run_in(&path, |r| r.set_up(9999)).unwrap().unwrap_err();
        assert_eq!(
            e.raw_os_error(),
            Some(rustix::io::Errno::NODEV.raw_os_error()),
            "{e}"
        );
        delete(&path).unwrap();
        let _ = rustix::mount::unmount(dir.path(), rustix::mount::UnmountFlags::DETACH);
    }
}
