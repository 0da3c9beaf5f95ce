//! The read-only commands' checks; none changes a cluster.
//!
//! [`status`], [`verify`] (istiod's view, the tokens, traffic), [`preflight`] (what would
//! stop an install), [`doctor`] (the mesh discovered from contexts, cross-cluster checks),
//! [`diff`] (what `install` would change, and what drifted);
//! [`credentials`] checks every held token in the cluster that issued it, [`traffic`] sends a
//! request across clusters. Depends on `engine` and below, never on `flows`.

pub mod credentials;
pub mod diff;
pub mod doctor;
pub mod preflight;
pub mod status;
pub mod traffic;
pub mod verify;
