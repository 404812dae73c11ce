//! Formatter components: loading, sandboxing and calling the WebAssembly guests that turn events
//! into Kafka messages.

pub mod bindings {
    //! Host-side bindings of the `formatter` world in `wit/`.
    wasmtime::component::bindgen!({
        world: "formatter",
        path: "../wit",
    });
}

mod builtin;
mod convert;
mod engine;
mod instance;
mod limits;
mod output;

pub use builtin::FormatterSource;
pub use engine::{default_cache_dir, FormatterEngine};
pub use instance::{FormatError, Formatter, FormatterLimits, Message};
