//! `meshup doctor [--context CTX ...]`: the mesh file's mesh, or the one the contexts hold,
//! checked across all clusters (`doctor.rs`).

use super::output::{print_json, print_stdout};
use super::prelude::*;
use super::session::*;
use crate::checks::doctor;
use crate::model::cli::DoctorArgs;

pub(super) fn doctor(
    global: &GlobalArgs,
    mesh_args: &MeshArgs,
    reporter: &Arc<Reporter>,
    args: &DoctorArgs,
) -> Result<(), Error> {
    let mut session = if args.contexts.is_empty() {
        let mut session = Session::open(global, mesh_args, reporter)?;
        session.require_tools()?;
        session.settle_revision();
        session
    } else {
        if mesh_args.file.is_some() {
            return Err(InputError::new(
                "flags",
                "`--context` discovers the mesh from the clusters; leave out `-f` (or leave out `--context` to check the mesh file's mesh)",
            )
            .into());
        }
        let kubeconfig = Kubeconfig::load(global.kubeconfig.as_deref())?;
        let placeholder = doctor::placeholder(&kubeconfig, &args.contexts);
        let mut session = Session::with_mesh(global, placeholder, reporter);
        session.require_tools()?;
        session.mesh = doctor::discover(&session.read(), &kubeconfig, &args.contexts)?;
        // The revision istiod runs under (after an upgrade, `1-29-0`), as for a mesh file.
        session.settle_revision();
        session
    };
    session.jobs = session.read_jobs;
    let report = doctor::examine(&session.read());
    if reporter.mode() == Mode::Json {
        print_json(&report)?;
    } else {
        print_stdout(&doctor::render(&report))?;
    }
    if report.ok {
        Ok(())
    } else {
        Err(Error::Reported)
    }
}
