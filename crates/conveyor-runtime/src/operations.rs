//! Operations: what an operator runs against a group's topics from outside its workers.
//!
//! - [`replay`]: dead letters back to the topic they failed on as fresh jobs, each once (a
//!   ledger topic per dead-letter topic).
//! - [`lag`]: consumer lag per group and partition, read without joining the group.

pub mod lag;
pub mod replay;
