//! Container log files in the CRI format the kubelet uses, so the agent can serve
//! `kubectl logs` (timestamps, per stream) straight from the file:
//!
//! ```text
//! 2025-01-02T03:04:05.123456789Z stdout F a whole line
//! 2025-01-02T03:04:05.123456790Z stderr P the first part of a very long line
//! ```
//!
//! `F` marks a complete line, `P` a partial one (a line longer than [`MAX_LINE`], or the
//! unterminated tail written when the container ends). The file is rotated by size: past
//! `max_bytes` it is renamed to `PATH.1` (replacing an older one) and started anew.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError, StreamResult};

use crate::executor::LogSpec;

/// A log line longer than this is cut into `P` records.
pub const MAX_LINE: usize = 16 * 1024;

/// Errors of the log module.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The log file could not be created or opened.
    #[error("cannot open log file {path}: {source}")]
    Open {
        /// The log path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
}

/// Which output stream a record came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

impl Stream {
    fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }

    fn index(self) -> usize {
        match self {
            Stream::Stdout => 0,
            Stream::Stderr => 1,
        }
    }
}

/// A shared handle on one container's log file; cheap to clone, safe across threads.
#[derive(Clone)]
pub struct LogWriter {
    inner: Arc<Mutex<LogFile>>,
}

struct LogFile {
    path: PathBuf,
    max_bytes: u64,
    file: File,
    size: u64,
    /// Bytes of an unterminated line, per stream.
    pending: [Vec<u8>; 2],
}

impl std::fmt::Debug for LogWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogWriter").finish_non_exhaustive()
    }
}

impl LogWriter {
    /// Opens (appending) or creates the log file, creating its directory if needed.
    pub fn open(spec: &LogSpec) -> Result<Self, Error> {
        let open_err = |source| Error::Open {
            path: spec.path.clone(),
            source,
        };
        if let Some(dir) = spec.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(open_err)?;
        }
        let file = open_append(&spec.path).map_err(open_err)?;
        let size = file.metadata().map_err(open_err)?.len();
        Ok(LogWriter {
            inner: Arc::new(Mutex::new(LogFile {
                path: spec.path.clone(),
                max_bytes: spec.max_bytes,
                file,
                size,
                pending: [Vec::new(), Vec::new()],
            })),
        })
    }

    /// Appends guest output; complete lines are written at once, a tail waits for its
    /// newline (or for [`LogWriter::finish`]).
    pub fn write(&self, stream: Stream, bytes: &[u8]) -> io::Result<()> {
        let mut log = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        log.append(stream, bytes)
    }

    /// Writes one complete line, e.g. the host's note of why the container ended.
    pub fn line(&self, stream: Stream, text: &str) {
        let mut log = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if let Err(error) = log.record(stream, b'F', text.as_bytes()) {
            tracing::warn!(path = %log.path.display(), %error, "cannot write log line");
        }
    }

    /// Flushes unterminated tails as partial records; called when the container ends.
    pub fn finish(&self) {
        let mut log = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        for stream in [Stream::Stdout, Stream::Stderr] {
            let tail = std::mem::take(&mut log.pending[stream.index()]);
            if !tail.is_empty()
                && let Err(error) = log.record(stream, b'P', &tail)
            {
                tracing::warn!(path = %log.path.display(), %error, "cannot write log tail");
            }
        }
    }

    /// A WASI output stream writing into this log as `stream`.
    pub fn wasi_stream(&self, stream: Stream) -> LogStream {
        LogStream {
            log: self.clone(),
            stream,
        }
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

impl LogFile {
    fn append(&mut self, stream: Stream, bytes: &[u8]) -> io::Result<()> {
        let i = stream.index();
        self.pending[i].extend_from_slice(bytes);
        loop {
            let pending = &self.pending[i];
            if let Some(pos) = pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.pending[i].drain(..=pos).collect();
                self.record(stream, b'F', &line[..line.len() - 1])?;
            } else if pending.len() >= MAX_LINE {
                let part: Vec<u8> = self.pending[i].drain(..MAX_LINE).collect();
                self.record(stream, b'P', &part)?;
            } else {
                return Ok(());
            }
        }
    }

    fn record(&mut self, stream: Stream, tag: u8, text: &[u8]) -> io::Result<()> {
        let now = jiff::Timestamp::now();
        let mut entry = format!("{now:.9} {} {} ", stream.as_str(), tag as char).into_bytes();
        entry.extend_from_slice(text);
        entry.push(b'\n');
        let len = entry.len() as u64;
        if self.max_bytes > 0 && self.size > 0 && self.size + len > self.max_bytes {
            self.rotate()?;
        }
        self.file.write_all(&entry)?;
        self.size += len;
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        let mut old = self.path.clone().into_os_string();
        old.push(".1");
        std::fs::rename(&self.path, &old)?;
        self.file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&self.path)?;
        self.size = 0;
        Ok(())
    }
}

/// A guest's stdout or stderr, writing into a [`LogWriter`].
#[derive(Clone)]
pub struct LogStream {
    log: LogWriter,
    stream: Stream,
}

impl IsTerminal for LogStream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LogStream {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }

    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
}

impl OutputStream for LogStream {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.log
            .write(self.stream, &bytes)
            .map_err(|e| StreamError::LastOperationFailed(wasmtime::Error::new(e)))
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for LogStream {
    async fn ready(&mut self) {}
}

impl AsyncWrite for LogStream {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Poll::Ready(self.log.write(self.stream, buf).map(|()| buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| l.split_once(' ').unwrap().1.to_string())
            .collect()
    }

    #[test]
    fn lines_are_split_per_stream_and_tails_flushed_as_partial() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.log");
        let log = LogWriter::open(&LogSpec {
            path: path.clone(),
            max_bytes: 0,
        })
        .unwrap();
        log.write(Stream::Stdout, b"hello\nwor").unwrap();
        log.write(Stream::Stderr, b"oops\n").unwrap();
        log.write(Stream::Stdout, b"ld\ntail").unwrap();
        log.finish();
        assert_eq!(
            read(&path),
            [
                "stdout F hello",
                "stderr F oops",
                "stdout F world",
                "stdout P tail"
            ]
        );
        let first = std::fs::read_to_string(&path).unwrap();
        let ts = first.split(' ').next().unwrap();
        assert!(ts.parse::<jiff::Timestamp>().is_ok(), "{ts}");
    }

    #[test]
    fn long_lines_become_partial_records() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.log");
        let log = LogWriter::open(&LogSpec {
            path: path.clone(),
            max_bytes: 0,
        })
        .unwrap();
        let long = vec![b'x'; MAX_LINE + 10];
        log.write(Stream::Stdout, &long).unwrap();
        log.write(Stream::Stdout, b"\n").unwrap();
        let lines = read(&path);
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("stdout P xxx"));
        assert_eq!(lines[1], format!("stdout F {}", "x".repeat(10)));
    }

    #[test]
    fn rotates_past_max_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.log");
        let log = LogWriter::open(&LogSpec {
            path: path.clone(),
            max_bytes: 200,
        })
        .unwrap();
        for i in 0..10 {
            log.write(Stream::Stdout, format!("line {i}\n").as_bytes())
                .unwrap();
        }
        let rotated = dir.path().join("c.log.1");
        assert!(rotated.exists());
        assert!(std::fs::metadata(&path).unwrap().len() <= 200);
        let current = read(&path);
        assert_eq!(current.last().unwrap(), "stdout F line 9");
    }
}
