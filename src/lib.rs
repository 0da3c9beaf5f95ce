//! meshup: install, link, inspect and remove an Istio multi-primary mesh with Helm.
//!
//! A run is three pure steps and one impure one: the mesh file and flags become a validated
//! [`model::mesh::Mesh`]; the [`engine::topology`] decides which components each cluster gets;
//! a [`engine::plan::Plan`] orders their actions; the executor ([`engine::exec`]) runs them
//! through a [`tools::runner::Runner`], the only code that starts processes. See
//! ARCHITECTURE.md.
//!
//! The folders are the layers, each depending only on those listed after it
//! (`tests/it/layout.rs` checks that no file and no folder reaches itself):
//!
//! - [`app`]: one file per command, a thin wrapper over the layers below.
//! - [`checks`]: the read-only checks (status, verify, preflight, doctor, credentials, traffic).
//! - [`fleet`]: the mesh handed to Flux or Argo CD (`meshup export`), and who owns each part.
//! - [`flows`]: plan builders for multi-step operations (rotation, removal, canary upgrade).
//! - [`engine`]: topology, plans of waves and gates, the executor, the per-cluster locks.
//! - [`components`]: the parts of a mesh in one cluster, one file each.
//! - [`observe`]: what clusters and istiods report (findings, facts, sync, revisions).
//! - [`tools`]: helm and kubectl as data, the runner, the typed reads and their snapshot.
//! - [`model`]: the mesh file and flags, validated; values; versions.
//! - [`trust`]: certificate material, secret-holding types and the files they are written to.
//!
//! [`error`] gathers every layer's error for `main` and decides the exit code.

pub mod app;
pub mod checks;
pub mod components;
pub mod engine;
pub mod error;
pub mod fleet;
pub mod flows;
pub mod model;
pub mod observe;
#[cfg(test)]
mod testing;
pub mod tools;
pub mod trust;
