//! Effects: what a job does on the log besides finishing, and how each is made safe to repeat.
//!
//! - `outputs`: the records an attempt emits and its reply, published only when it finishes as
//!   done (transactional workers: with its offset, atomically).
//! - [`request`]: request/reply ([`crate::Client::request`]): one reply topic per client,
//!   replies handed to their waiting callers, late ones dropped and counted.
//! - [`unique`]: unique jobs: the ledger of unique keys that jobs hold, shared through the
//!   backend.

pub(crate) mod outputs;
pub mod request;
pub mod unique;
