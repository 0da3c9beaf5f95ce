//! Plan builders for the operations that span clusters and steps: each returns a [`Plan`]
//! of `Work` tasks and gates that the engine runs.
//!
//! [`rotate`] a reader-token rotation, [`leave`] a cluster's removal, [`upgrade`] a canary
//! upgrade (start, promote, finish, rollback). Depends on `engine` and below.
//!
//! [`Plan`]: crate::engine::plan::Plan

pub mod leave;
pub mod rotate;
pub mod upgrade;
