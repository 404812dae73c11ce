//! The pure decode path: firehose frame bytes in, typed events out. Nothing here does I/O.

pub mod car;
pub mod cbor;
pub mod cid_ref;
pub mod commit;
pub mod decode;
pub mod event;
pub mod frame;
pub mod record;
