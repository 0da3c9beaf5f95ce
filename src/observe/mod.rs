//! What clusters and istiods report, read the same way by components and by the checks.
//!
//! [`finding::Finding`] is one problem (level, cluster, what, why, fix); [`facts`] what a
//! component shows in `status`; [`sync`] istiod's own view of its peers (`/debug/clusterz`);
//! [`revisions`] which istiod revisions run, where the tags point, which revision injected
//! each proxy; [`drift`] what differs between the objects meshup wants and the live ones, and
//! who put each live field there. Depends on `tools` and `model`.

pub mod drift;
pub mod facts;
pub mod finding;
pub mod manager;
pub mod revisions;
pub mod sync;
