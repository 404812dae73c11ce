//! The Kafka side: producer settings, topic creation, producing with backpressure, and checking
//! every delivery report.

pub mod delivery;
pub mod producer;
pub mod topic;
pub mod topic_handle;
