//! meshup: install, link, inspect and remove an Istio multi-primary mesh with Helm.
//!
//! A run is three pure steps and one impure one: the mesh file and flags become a validated
//! [`mesh::Mesh`]; the [`topology`] decides which components each cluster gets; a
//! [`plan::Plan`] orders their actions; the executor ([`exec`]) runs them through a
//! [`runner::Runner`], the only code that starts processes. See ARCHITECTURE.md.

pub mod app;
pub mod cache;
pub mod chart;
pub mod cli;
pub mod components;
pub mod credentials;
pub mod doctor;
pub mod error;
pub mod exec;
pub mod facts;
pub mod files;
pub mod finding;
pub mod helm;
pub mod kubeconfig;
pub mod kubectl;
pub mod leave;
pub mod live;
pub mod lock;
pub mod mesh;
pub mod plan;
pub mod preflight;
pub mod pull;
pub mod remote_secret;
pub mod reporter;
pub mod revisions;
pub mod rotate;
pub mod run;
pub mod runner;
pub mod sensitive;
pub mod status;
pub mod step;
pub mod sync;
#[cfg(test)]
mod testing;
pub mod topology;
pub mod traffic;
pub mod trust;
pub mod upgrade;
pub mod values;
pub mod verify;
pub mod version;
