//! The mesh model: what the user asked for, validated before any cluster is contacted.
//!
//! The raw command line ([`cli`]) and the mesh file become a [`mesh::Mesh`] ([`mesh`], with
//! [`kubeconfig`] for contexts, [`chart`] for where Istio's charts come from, [`version`] for
//! how an Istio version is read and compared); [`values`] renders each cluster's Helm values;
//! [`input::InputError`] names every problem at once (exit 2). Depends only on `trust`.

pub mod chart;
pub mod cli;
pub mod input;
pub mod kubeconfig;
pub mod mesh;
pub mod values;
pub mod version;
