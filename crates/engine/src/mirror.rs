//! The two ends of a mirror session and the plan between them.
//!
//! - [`plan`]: what a target lacks, given the source's tree and the target's (pure).
//! - [`send`]: the source's side: reads each needed block once, feeds every target.
//! - [`receive`]: the target's side: verifies and applies what arrives, atomically.
//! - [`fold`]: names the target's file system would merge (case, Unicode normalization).
//! - [`commit`]: the batch that applies a session on the target as one recorded step.
//! - [`listing`]: a target's listing, held until the source has a tree to lay it over.

pub mod commit;
pub mod fold;
pub mod listing;
pub mod plan;
pub mod receive;
pub mod send;
#[cfg(test)]
pub(crate) mod test_messages;
