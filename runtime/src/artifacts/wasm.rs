//! Checking that bytes are WebAssembly, and telling a core module from a component.

use serde::{Deserialize, Serialize};
use wasmparser::{Parser, Payload, Validator, WasmFeatures};

/// Whether a `.wasm` file is a core module or a component.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WasmFlavor {
    /// A core WebAssembly module (WASI preview 1 and plain Wasm).
    Module,
    /// A component (component model; WASI preview 2 and later).
    Component,
}

impl WasmFlavor {
    /// The `os` a CNCF Wasm artifact config gives for this flavor.
    pub fn wasi_os(self) -> &'static str {
        match self {
            WasmFlavor::Module => "wasip1",
            WasmFlavor::Component => "wasip2",
        }
    }
}

/// What [`inspect`] learned about valid Wasm bytes.
#[derive(Debug, Clone)]
pub(crate) struct WasmInfo {
    pub flavor: WasmFlavor,
    /// Top-level import names of a component (empty for a module).
    pub imports: Vec<String>,
    /// Top-level export names of a component (empty for a module).
    pub exports: Vec<String>,
}

/// Checks the `\0asm` header, validates the whole binary with every proposal enabled
/// (the engine decides later which proposals it accepts; here we only reject what is not
/// WebAssembly at all), and lists a component's top-level imports and exports.
///
/// Runs in time linear in the size: call it from a blocking thread for large inputs.
pub(crate) fn inspect(bytes: &[u8]) -> Result<WasmInfo, String> {
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        let head: Vec<String> = bytes.iter().take(8).map(|b| format!("{b:02x}")).collect();
        return Err(format!(
            "not WebAssembly: the content does not start with the \\0asm header (first bytes: {})",
            if head.is_empty() {
                "none, it is empty".to_string()
            } else {
                head.join(" ")
            }
        ));
    }
    let flavor = if Parser::is_component(bytes) {
        WasmFlavor::Component
    } else if Parser::is_core_wasm(bytes) {
        WasmFlavor::Module
    } else {
        return Err(format!(
            "unsupported WebAssembly binary version/layer {:02x} {:02x} {:02x} {:02x}",
            bytes[4], bytes[5], bytes[6], bytes[7]
        ));
    };
    Validator::new_with_features(WasmFeatures::all())
        .validate_all(bytes)
        .map_err(|e| format!("invalid WebAssembly: {e}"))?;
    let (imports, exports) = match flavor {
        WasmFlavor::Module => (Vec::new(), Vec::new()),
        WasmFlavor::Component => component_interface(bytes)?,
    };
    Ok(WasmInfo {
        flavor,
        imports,
        exports,
    })
}

/// The names a component imports and exports at its top level (not those of the modules
/// and components nested inside it).
fn component_interface(bytes: &[u8]) -> Result<(Vec<String>, Vec<String>), String> {
    let mut imports = Vec::new();
    let mut exports = Vec::new();
    // parse_all flattens nested modules/components: each opens with a *Section payload
    // and closes with its own End.
    let mut depth = 0usize;
    for payload in Parser::new(0).parse_all(bytes) {
        let payload = payload.map_err(|e| format!("invalid WebAssembly: {e}"))?;
        match payload {
            Payload::ModuleSection { .. } | Payload::ComponentSection { .. } => depth += 1,
            Payload::End(_) => depth = depth.saturating_sub(1),
            Payload::ComponentImportSection(reader) if depth == 0 => {
                for import in reader {
                    let import = import.map_err(|e| format!("invalid WebAssembly: {e}"))?;
                    imports.push(import.name.name.to_string());
                }
            }
            Payload::ComponentExportSection(reader) if depth == 0 => {
                for export in reader {
                    let export = export.map_err(|e| format!("invalid WebAssembly: {e}"))?;
                    exports.push(export.name.name.to_string());
                }
            }
            _ => {}
        }
    }
    Ok((imports, exports))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_only_module_is_valid() {
        let info = inspect(b"\0asm\x01\0\0\0").unwrap();
        assert_eq!(info.flavor, WasmFlavor::Module);
    }

    #[test]
    fn rejects_non_wasm_and_truncated() {
        let err = inspect(b"#!/bin/sh\necho hi\n").unwrap_err();
        assert!(err.contains("\\0asm header"), "{err}");
        assert!(inspect(b"").unwrap_err().contains("empty"));
        // A section that claims more bytes than there are.
        let err = inspect(b"\0asm\x01\0\0\0\x01\x7f").unwrap_err();
        assert!(err.contains("invalid WebAssembly"), "{err}");
    }

    #[test]
    fn empty_component_is_a_component() {
        let info = inspect(b"\0asm\x0d\0\x01\0").unwrap();
        assert_eq!(info.flavor, WasmFlavor::Component);
        assert!(info.imports.is_empty());
    }
}
