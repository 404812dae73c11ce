//! Formatter components: loading, sandboxing and calling the WebAssembly guests that turn events
//! into Kafka messages.

pub mod bindings {
    //! Host-side bindings of the `formatter` world in `wit/`. Parameters borrow the host's data
    //! (`&str` rather than `String`), so an event is lowered into the guest without a copy in the
    //! host first.
    wasmtime::component::bindgen!({
        world: "formatter",
        path: "../wit",
        ownership: Borrowing { duplicate_if_necessary: false },
    });
}

pub mod batch_bindings {
    //! Host-side bindings of the `batch-formatter` world in `wit/`, sharing the types of
    //! [`super::bindings`].
    wasmtime::component::bindgen!({
        world: "batch-formatter",
        path: "../wit",
        ownership: Borrowing { duplicate_if_necessary: false },
        with: {
            "atkafka:formatter/types": super::bindings::atkafka::formatter::types,
        },
    });
}

pub mod packed_bindings {
    //! Host-side bindings of the `packed-formatter` world in `wit/`, sharing the types of
    //! [`super::bindings`].
    wasmtime::component::bindgen!({
        world: "packed-formatter",
        path: "../wit",
        ownership: Borrowing { duplicate_if_necessary: false },
        with: {
            "atkafka:formatter/types": super::bindings::atkafka::formatter::types,
        },
    });
}

mod batch;
mod builtin;
mod convert;
mod engine;
mod instance;
mod limits;
mod output;

pub use batch::{BatchEvent, MAX_BATCH_EVENTS};
pub use builtin::FormatterSource;
pub use engine::{default_cache_dir, FormatterEngine};
pub use instance::{FormatError, Formatter, FormatterLimits, Message, Messages};
