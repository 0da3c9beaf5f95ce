//! The engine: which components each cluster gets, in which order, and running that.
//!
//! [`topology`] is the only place that knows the shape of the mesh; a [`plan::Plan`] is waves
//! of per-cluster task chains with gates; [`exec`] runs a plan (parallel chains, retries,
//! locks, Ctrl-C, the report); [`run::Run`] is how a command reaches its clusters; [`lock`]
//! the per-cluster Lease. Depends on `components` and the layers below.

pub mod exec;
pub mod lock;
pub mod plan;
pub mod run;
pub mod topology;
