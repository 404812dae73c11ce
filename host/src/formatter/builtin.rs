//! The built-in formatters, compiled to components when the host is built and embedded in the
//! binary, and the parsing of `--formatter` values.

use std::path::PathBuf;

static STANDARD: &[u8] = include_bytes!(env!("ATKAFKA_STANDARD_WASM"));
static OSPREY: &[u8] = include_bytes!(env!("ATKAFKA_OSPREY_WASM"));

/// Names accepted by `--formatter` besides a path.
pub const BUILTIN_NAMES: [&str; 2] = ["standard", "osprey"];

/// Where a formatter's component comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FormatterSource {
    Builtin(&'static str),
    File(PathBuf),
}

impl FormatterSource {
    /// Parses a `--formatter` value: a built-in name, or a path to a `.wasm` component.
    pub fn parse(value: &str) -> Result<Self, String> {
        if let Some(name) = BUILTIN_NAMES.iter().find(|name| **name == value) {
            return Ok(FormatterSource::Builtin(name));
        }
        if value.ends_with(".wasm") || value.contains('/') {
            return Ok(FormatterSource::File(PathBuf::from(value)));
        }
        Err(format!("`{value}` is neither a built-in formatter ({}) nor a path to a .wasm file", BUILTIN_NAMES.join(", ")))
    }

    /// A short name for logs and metric labels.
    pub fn name(&self) -> String {
        match self {
            FormatterSource::Builtin(name) => (*name).to_owned(),
            FormatterSource::File(path) => {
                path.file_stem().map(|stem| stem.to_string_lossy().into_owned()).unwrap_or_else(|| path.display().to_string())
            }
        }
    }

    /// The component's bytes.
    pub fn load(&self) -> Result<Vec<u8>, String> {
        match self {
            FormatterSource::Builtin("standard") => Ok(STANDARD.to_vec()),
            FormatterSource::Builtin("osprey") => Ok(OSPREY.to_vec()),
            FormatterSource::Builtin(other) => Err(format!("no built-in formatter named `{other}`")),
            FormatterSource::File(path) => {
                std::fs::read(path).map_err(|error| format!("cannot read formatter {}: {error}", path.display()))
            }
        }
    }
}
