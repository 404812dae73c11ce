//! The one place where wasmtime is configured: the engine, its epoch ticker, and the linker that
//! gives guests the deny-by-default WASI world.
//!
//! Guarantees: every store created from this engine has epoch interruption on (a guest can be
//! stopped at a deadline), a memory limiter (see `limits`), and a WASI context with no preopened
//! directories, no environment, no arguments, no sockets and no name lookup. Clocks and random
//! are granted. Stdout and stderr go to a capped capture (see `output`).

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};

use anyhow::Context as _;
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Config, Engine, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::limits::GuestLimiter;
use super::output::CapturedOutput;

/// How often the epoch advances. A deadline is rounded up to whole ticks.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);

/// The state a guest's store carries.
pub struct GuestState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub limiter: GuestLimiter,
    pub stdout: CapturedOutput,
    pub stderr: CapturedOutput,
}

impl WasiView for GuestState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

/// The shared engine and linker. Cheap to clone.
#[derive(Clone)]
pub struct FormatterEngine {
    engine: Engine,
    linker: Arc<Linker<GuestState>>,
    cache_dir: Option<PathBuf>,
}

impl FormatterEngine {
    /// Creates the engine and starts the thread that advances its epoch every [`EPOCH_TICK`]. The
    /// thread holds only a weak handle and ends when the engine is dropped. Compiled components are
    /// kept in `cache_dir` when one is given.
    pub fn new(cache_dir: Option<PathBuf>) -> anyhow::Result<Self> {
        let mut config = Config::new();
        config.wasm_component_model(true);
        config.epoch_interruption(true);
        config.cranelift_opt_level(wasmtime::OptLevel::Speed);
        let engine = Engine::new(&config).map_err(anyhow::Error::from).context("failed to create the WebAssembly engine")?;

        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(anyhow::Error::from).context("failed to link WASI")?;

        let weak = engine.weak();
        std::thread::Builder::new()
            .name("wasm-epoch".to_owned())
            .spawn(move || loop {
                std::thread::sleep(EPOCH_TICK);
                match weak.upgrade() {
                    Some(engine) => engine.increment_epoch(),
                    None => break,
                }
            })
            .context("failed to start the epoch thread")?;

        Ok(FormatterEngine { engine, linker: Arc::new(linker), cache_dir })
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn linker(&self) -> &Linker<GuestState> {
        &self.linker
    }

    /// Compiles a component from its bytes, or loads its compiled form from the cache. The cache
    /// key covers the component's bytes and everything about this engine that compiled code
    /// depends on, so a stale or foreign artefact is never loaded; a cache that cannot be read or
    /// written only costs the compilation.
    pub fn compile(&self, bytes: &[u8]) -> anyhow::Result<Component> {
        let Some(cache_dir) = &self.cache_dir else {
            return Component::new(&self.engine, bytes).map_err(anyhow::Error::from);
        };
        let mut engine_hash = std::collections::hash_map::DefaultHasher::new();
        self.engine.precompile_compatibility_hash().hash(&mut engine_hash);
        let digest = Sha256::digest(bytes);
        let key: String = digest.iter().map(|byte| format!("{byte:02x}")).collect();
        let path = cache_dir.join(format!("{key}-{:016x}.cwasm", engine_hash.finish()));

        if path.exists() {
            // SAFETY: the file was written by `Component::serialize` of an engine with the same
            // compatibility hash, into a cache directory that only this host's user should be
            // able to write (see the `--compile-cache-dir` documentation).
            match unsafe { Component::deserialize_file(&self.engine, &path) } {
                Ok(component) => return Ok(component),
                Err(error) => tracing::warn!(path = %path.display(), %error, "ignoring an unreadable compiled component"),
            }
        }
        let component = Component::new(&self.engine, bytes).map_err(anyhow::Error::from)?;
        if let Err(error) = store_compiled(&component, cache_dir, &path) {
            tracing::warn!(path = %path.display(), %error, "cannot cache the compiled component");
        }
        Ok(component)
    }

    /// Creates a store for one guest instance, with its own limits and a deny-by-default WASI
    /// context. The epoch deadline is set to `deadline_ticks` already, because a new store's
    /// deadline starts at zero and instantiation itself runs guest code.
    pub fn new_store(&self, limiter: GuestLimiter, output_cap: usize, deadline_ticks: u64) -> Store<GuestState> {
        let stdout = CapturedOutput::new(output_cap);
        let stderr = CapturedOutput::new(output_cap);
        let wasi = WasiCtxBuilder::new()
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        let state = GuestState { wasi, table: ResourceTable::new(), limiter, stdout, stderr };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| &mut state.limiter);
        store.set_epoch_deadline(deadline_ticks);
        store.epoch_deadline_trap();
        store
    }
}

/// Writes a compiled component atomically (temporary file, then rename).
fn store_compiled(component: &Component, cache_dir: &Path, path: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(cache_dir)?;
    let serialized = component.serialize().map_err(anyhow::Error::from)?;
    let temporary = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&temporary, serialized)?;
    std::fs::rename(&temporary, path)?;
    Ok(())
}

/// Returns the default cache of compiled components: `$XDG_CACHE_HOME/atkafka-host`, else
/// `$HOME/.cache/atkafka-host`; none when neither variable is set.
pub fn default_cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|value| !value.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").filter(|value| !value.is_empty()).map(|home| PathBuf::from(home).join(".cache")))?;
    Some(base.join("atkafka-host"))
}

/// Returns the number of epoch ticks that covers `timeout`, rounded up, plus one so that a call starting
/// just before a tick still gets its full time.
pub fn deadline_ticks(timeout: Duration) -> u64 {
    let tick = EPOCH_TICK.as_micros();
    (timeout.as_micros().div_ceil(tick) + 1) as u64
}
