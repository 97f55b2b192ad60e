//! Container logs on the node: where each container's files are, and reading them the
//! way `kubectl logs` asks (`--tail`, `--since`, `--timestamps`, `--limit-bytes`,
//! `--previous`, `-f`).
//!
//! Files are in CRI format (`RFC3339NANO stdout|stderr F|P text`), rotated by size to
//! `PATH.1` by the writer.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

/// Where one container's logs are.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ContainerLogs {
    /// The current (or last) instance's file.
    pub current: Option<PathBuf>,
    /// The previous instance's file.
    pub previous: Option<PathBuf>,
    /// Running now (a follower keeps reading while it does).
    pub running: bool,
    /// Waiting reason, when not started.
    pub waiting: Option<String>,
    /// The running instance's executor and id (for exec and attach).
    pub running_on: Option<(crate::executors::Runtime, String)>,
}

/// What the streaming endpoints know of a pod: its containers' logs and instances, and
/// its network namespace (for port-forward).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodLogs {
    /// By container name.
    pub containers: BTreeMap<String, ContainerLogs>,
    /// The pod's network namespace, once its sandbox exists.
    pub netns: Option<PathBuf>,
    /// The pod's uid.
    pub uid: String,
    /// The pod's cgroup, relative to each hierarchy's root, once its sandbox exists.
    pub cgroup: Option<String>,
}

/// Pod (namespace, name) → [`PodLogs`], kept up to date by the pod workers; read by the
/// logs, exec, attach and port-forward endpoints.
#[derive(Clone, Default)]
pub struct LogRegistry {
    inner: Arc<Mutex<HashMap<(String, String), PodLogs>>>,
}

impl LogRegistry {
    /// Record a pod's containers.
    pub fn update(&self, ns: &str, pod: &str, containers: PodLogs) {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert((ns.to_string(), pod.to_string()), containers);
    }

    /// Forget a pod.
    pub fn remove(&self, ns: &str, pod: &str) {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&(ns.to_string(), pod.to_string()));
    }

    /// Every pod, by (namespace, name).
    pub fn all(&self) -> Vec<((String, String), PodLogs)> {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// A pod's containers.
    pub fn get(&self, ns: &str, pod: &str) -> Option<PodLogs> {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&(ns.to_string(), pod.to_string()))
            .cloned()
    }
}

/// `kubectl logs` options.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Options {
    /// Prefix each line with its RFC 3339 timestamp.
    pub timestamps: bool,
    /// Only the last N lines.
    pub tail_lines: Option<usize>,
    /// Only lines newer than this.
    pub since: Option<jiff::Timestamp>,
    /// Stop after this many bytes.
    pub limit_bytes: Option<usize>,
}

/// One parsed CRI log line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line<'a> {
    /// The timestamp text.
    pub time: &'a str,
    /// `stdout` or `stderr`.
    pub stream: &'a str,
    /// A full line (`F`) rather than part of one (`P`).
    pub full: bool,
    /// The text.
    pub text: &'a str,
}

/// Parse one CRI line.
pub fn parse_line(line: &str) -> Option<Line<'_>> {
    let mut it = line.splitn(4, ' ');
    let time = it.next()?;
    let stream = it.next()?;
    let tag = it.next()?;
    Some(Line {
        time,
        stream,
        full: tag != "P",
        text: it.next().unwrap_or(""),
    })
}

/// Render CRI text as `kubectl logs` prints it.
pub fn render(cri: &str, opts: &Options) -> Vec<u8> {
    let mut lines: Vec<Line<'_>> = cri
        .lines()
        .filter_map(parse_line)
        .filter(|l| {
            opts.since
                .is_none_or(|since| l.time.parse::<jiff::Timestamp>().is_ok_and(|t| t >= since))
        })
        .collect();
    if let Some(n) = opts.tail_lines {
        // Count whole lines: a run of partials ends with its full line.
        let mut full_seen = 0;
        let mut start = lines.len();
        for (i, l) in lines.iter().enumerate().rev() {
            if l.full {
                if full_seen == n {
                    break;
                }
                full_seen += 1;
            }
            start = i;
        }
        lines.drain(..start);
    }
    let mut out = Vec::new();
    let mut at_line_start = true;
    for l in lines {
        if opts.timestamps && at_line_start {
            out.extend_from_slice(l.time.as_bytes());
            out.push(b' ');
        }
        out.extend_from_slice(l.text.as_bytes());
        if l.full {
            out.push(b'\n');
        }
        at_line_start = l.full;
    }
    if let Some(limit) = opts.limit_bytes {
        out.truncate(limit);
    }
    out
}

/// The whole of a log (rotated part first).
pub fn read_all(path: &Path) -> String {
    let mut text = String::new();
    let rotated = PathBuf::from(format!("{}.1", path.display()));
    for p in [rotated.as_path(), path] {
        if let Ok(s) = std::fs::read_to_string(p) {
            text.push_str(&s);
        }
    }
    text
}

/// Reads what a growing log file adds, across rotations.
pub struct Follower {
    path: PathBuf,
    offset: u64,
    pending: String,
    /// The file being read, kept open: lines written just before the file is rotated
    /// away or removed (the pod deleted) are still read.
    file: Option<std::fs::File>,
}

impl Follower {
    /// Follow `path` from byte `offset`.
    pub fn new(path: &Path, offset: u64) -> Follower {
        Follower {
            path: path.to_path_buf(),
            offset,
            pending: String::new(),
            file: None,
        }
    }

    /// Size of the file now.
    pub fn size(path: &Path) -> u64 {
        std::fs::metadata(path).map_or(0, |m| m.len())
    }

    fn read_open(&mut self, buf: &mut Vec<u8>) {
        if self.file.is_none() {
            self.file = std::fs::File::open(&self.path).ok().and_then(|mut f| {
                f.seek(SeekFrom::Start(self.offset)).ok()?;
                Some(f)
            });
        }
        if let Some(f) = self.file.as_mut() {
            let before = buf.len();
            let _ = f.read_to_end(buf);
            self.offset += (buf.len() - before) as u64;
        }
    }

    /// Complete new lines since the last call (a line still being written waits).
    pub fn poll(&mut self) -> String {
        use std::os::unix::fs::MetadataExt as _;
        let mut buf = Vec::new();
        self.read_open(&mut buf);
        // Rotated (the path is another file now) or truncated: the old file is read to
        // its end above; go on from the start of the new one.
        let now = std::fs::metadata(&self.path).ok();
        let open = self.file.as_ref().and_then(|f| f.metadata().ok());
        let replaced = match (&now, &open) {
            (Some(n), Some(o)) => n.ino() != o.ino() || n.dev() != o.dev() || n.len() < self.offset,
            (Some(_), None) => false,
            (None, _) => false,
        };
        if replaced {
            self.file = None;
            self.offset = 0;
            self.read_open(&mut buf);
        }
        self.pending.push_str(&String::from_utf8_lossy(&buf));
        match self.pending.rfind('\n') {
            Some(i) => {
                let rest = self.pending.split_off(i + 1);
                std::mem::replace(&mut self.pending, rest)
            }
            None => String::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "2026-11-24T10:00:00.000000001Z stdout F one\n\
2026-11-24T10:00:01.000000000Z stderr F two\n\
2026-11-24T10:00:02.000000000Z stdout P thr\n\
2026-11-24T10:00:02.000000001Z stdout F ee\n\
2026-11-24T10:00:03.000000000Z stdout F four\n";

    #[test]
    fn renders_like_kubectl_logs() {
        let cases = [
            (Options::default(), "one\ntwo\nthree\nfour\n"),
            (
                Options {
                    tail_lines: Some(2),
                    ..Default::default()
                },
                "three\nfour\n",
            ),
            (
                Options {
                    tail_lines: Some(0),
                    ..Default::default()
                },
                "",
            ),
            (
                Options {
                    tail_lines: Some(9),
                    ..Default::default()
                },
                "one\ntwo\nthree\nfour\n",
            ),
            (
                Options {
                    since: "2026-11-24T10:00:01Z".parse().ok(),
                    ..Default::default()
                },
                "two\nthree\nfour\n",
            ),
            (
                Options {
                    limit_bytes: Some(6),
                    ..Default::default()
                },
                "one\ntw",
            ),
            (
                Options {
                    timestamps: true,
                    tail_lines: Some(1),
                    ..Default::default()
                },
                "2026-11-24T10:00:03.000000000Z four\n",
            ),
        ];
        for (opts, want) in cases {
            assert_eq!(
                String::from_utf8_lossy(&render(LOG, &opts)),
                want,
                "{opts:?}"
            );
        }
    }

    #[test]
    fn a_follower_sees_whole_lines_across_rotation() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let p = dir.path().join("0.log");
        std::fs::write(&p, "a\nb").unwrap_or_default();
        let mut f = Follower::new(&p, 0);
        assert_eq!(f.poll(), "a\n");
        std::fs::write(&p, "a\nbc\n").unwrap_or_default();
        assert_eq!(f.poll(), "bc\n");
        std::fs::rename(&p, dir.path().join("0.log.1")).unwrap_or_default();
        std::fs::write(&p, "d\n").unwrap_or_default();
        assert_eq!(f.poll(), "d\n");
    }

    #[test]
    fn lines_written_just_before_a_rotation_or_a_removal_are_not_lost() {
        use std::io::Write as _;
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let p = dir.path().join("0.log");
        let mut w = std::fs::File::create(&p).unwrap_or_else(|e| panic!("{e}"));
        w.write_all(b"one\n").unwrap_or_default();
        let mut f = Follower::new(&p, 0);
        assert_eq!(f.poll(), "one\n");
        // The writer's last line, then the file moves away and a new one starts.
        w.write_all(b"two\n").unwrap_or_default();
        std::fs::rename(&p, dir.path().join("0.log.1")).unwrap_or_default();
        std::fs::write(&p, "three\n").unwrap_or_default();
        assert_eq!(f.poll(), "two\nthree\n");
        // A last line, then the file is removed with its pod.
        let mut w = std::fs::OpenOptions::new()
            .append(true)
            .open(&p)
            .unwrap_or_else(|e| panic!("{e}"));
        w.write_all(b"four\n").unwrap_or_default();
        std::fs::remove_file(&p).unwrap_or_default();
        assert_eq!(f.poll(), "four\n");
        assert_eq!(f.poll(), "");
    }
}
