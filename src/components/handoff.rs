//! Who runs a part of the mesh once a fleet engine (Flux, Argo CD) takes the mesh over
//! (`meshup export`): the engine, from what meshup writes, or meshup itself.

use serde_json::Value;
use serde_yaml::Mapping;

use crate::model::chart::Chart;

/// One part's hand-off. Every component says its own (the trait method has no default), so a
/// new part cannot be forgotten by the export.
#[derive(Debug, Clone, PartialEq)]
pub enum Handoff {
    /// A Helm release the engine installs, with exactly the values meshup installs with.
    Release {
        name: String,
        chart: Chart,
        namespace: String,
        values: Mapping,
        /// Runs a primary's istiod, which signs with `cacerts`: it waits for it.
        istiod: bool,
    },
    /// Objects the engine applies as plain manifests, after the releases (they are of kinds
    /// whose CRDs istio-base installs, or deployed by istiod).
    Manifests {
        /// The file's stem: `east-west-objects`.
        name: &'static str,
        objects: Vec<Value>,
    },
    /// What meshup keeps doing: secrets never land in Git, and cross-cluster work is meshup's.
    Kept {
        /// What it is, for the ownership table.
        what: String,
        /// The meshup command that does it.
        by: &'static str,
    },
}

/// The command that puts what istiod needs in place before an engine starts it.
pub const TRUST_COMMAND: &str = "meshup install --only trust";
/// The command that exchanges remote secrets once istiod runs.
pub const LINK_COMMAND: &str = "meshup link";
