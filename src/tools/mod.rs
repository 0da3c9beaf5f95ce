//! The tool layer: the only code that starts processes, and the one place their output is parsed.
//!
//! A [`step::Step`] is an argv as data; [`helm`] and [`kubectl`] build them, one function per
//! verb; [`runner::Runner`] runs them (every call with a timeout, Ctrl-C stops every child);
//! [`live::Live`] parses what they print into typed objects, answered from one snapshot per
//! cluster and command ([`cache`]); [`remote_secret`] is the remote secret's shape; [`pull`]
//! fetches charts; [`reporter`] prints progress. Depends on `model` and `trust`.

pub mod cache;
pub mod helm;
pub mod kubectl;
pub mod live;
pub mod pull;
pub mod remote_secret;
pub mod reporter;
pub mod runner;
pub mod step;
