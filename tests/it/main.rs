//! meshup's integration tests, in one binary (one link instead of one per file): the built
//! meshup driving the real helm and kubectl against in-memory API servers.

#[macro_use]
mod common;

mod ambient;
mod charts;
mod cli;
mod crash;
mod credentials;
mod diff;
mod doctor;
mod doctor_cases;
mod doctor_istio;
mod e2e;
mod export;
mod export_upgrade;
mod interrupt;
mod layout;
mod topologies;
mod upgrade;
mod verify;
mod versions;
