//! Looking inside a single image layer for a lone `.wasm` file.

use std::io::{Read, Write as _};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

/// A layer larger than this (uncompressed) is not inspected: it is a container image.
const MAX_LAYER_BYTES: u64 = 4 << 30;
/// The largest `.wasm` file we take out of a layer.
const MAX_WASM_BYTES: u64 = 1 << 30;

/// What a layer holds.
#[derive(Debug)]
pub(crate) enum TarScan {
    /// Exactly one regular file, named `*.wasm`, now copied to `tmp`.
    Wasm {
        tmp: PathBuf,
        digest: String,
        size: u64,
        name: String,
    },
    /// Anything else: a container image's layer, with why.
    NotWasm(String),
}

/// Scans the layer blob at `layer` (tar, or gzip-compressed tar; detected from the
/// content, not the media type) and copies a lone `.wasm` file to `tmp`. Directories are
/// ignored; any other entry (a second file, a link, a device) makes it a container layer.
/// Errors are reasons for `InvalidArtifact` (a layer that is not a readable tar).
pub(crate) fn scan(layer: &Path, tmp: &Path) -> Result<TarScan, String> {
    let mut file = std::fs::File::open(layer).map_err(|e| format!("open layer: {e}"))?;
    let mut magic = [0u8; 4];
    let n = read_up_to(&mut file, &mut magic).map_err(|e| format!("read layer: {e}"))?;
    let file = std::fs::File::open(layer).map_err(|e| format!("open layer: {e}"))?;
    let reader: Box<dyn Read> = match &magic[..n] {
        [0x1f, 0x8b, ..] => Box::new(flate2::read::GzDecoder::new(file)),
        [0x28, 0xb5, 0x2f, 0xfd] => {
            return Ok(TarScan::NotWasm(
                "zstd-compressed layer (not inspected for a .wasm file)".to_string(),
            ));
        }
        _ => Box::new(file),
    };
    let mut archive = tar::Archive::new(reader.take(MAX_LAYER_BYTES));
    let entries = archive
        .entries()
        .map_err(|e| format!("layer is not a tar archive: {e}"))?;
    let mut found: Option<(PathBuf, String, u64, String)> = None;
    let mut verdict: Option<String> = None;
    for entry in entries {
        let mut entry = entry.map_err(|e| format!("layer is not a readable tar archive: {e}"))?;
        let kind = entry.header().entry_type();
        let name = entry
            .path()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| "(unreadable name)".to_string());
        if kind.is_dir() {
            continue;
        }
        if verdict.is_some() {
            // Keep reading only to prove the tar is well formed up to the limit.
            continue;
        }
        let is_file = kind.is_file() || kind == tar::EntryType::Continuous;
        if !is_file {
            verdict = Some(format!("layer holds a non-regular entry {name:?}"));
            continue;
        }
        if !name.to_ascii_lowercase().ends_with(".wasm") {
            verdict = Some(format!("layer holds {name:?}, not only a .wasm file"));
            continue;
        }
        if found.is_some() {
            verdict = Some("layer holds more than one .wasm file".to_string());
            continue;
        }
        let size = entry.header().size().map_err(|e| format!("{name}: {e}"))?;
        if size > MAX_WASM_BYTES {
            verdict = Some(format!("{name} is larger than {MAX_WASM_BYTES} bytes"));
            continue;
        }
        let (digest, written) = copy_hashed(&mut entry, tmp).map_err(|e| format!("{name}: {e}"))?;
        found = Some((tmp.to_path_buf(), digest, written, name));
    }
    match (verdict, found) {
        (Some(why), found) => {
            if found.is_some() {
                let _ = std::fs::remove_file(tmp);
            }
            Ok(TarScan::NotWasm(why))
        }
        (None, Some((tmp, digest, size, name))) => Ok(TarScan::Wasm {
            tmp,
            digest,
            size,
            name,
        }),
        (None, None) => Ok(TarScan::NotWasm("layer holds no .wasm file".to_string())),
    }
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

pub(crate) fn copy_hashed(from: &mut impl Read, to: &Path) -> std::io::Result<(String, u64)> {
    let mut out = std::fs::File::create(to)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let n = from.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])?;
        total += n as u64;
    }
    out.flush()?;
    Ok((format!("sha256:{}", hex::encode(hasher.finalize())), total))
}
