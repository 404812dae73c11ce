//! Tenants: independent consumers of the firehose, each with its own formatter, topic, filter,
//! limits and error policy.

pub mod config;
pub mod filter;
pub mod policy;
pub mod worker;

pub use config::TenantSpec;
