//! What commands print: stdout (a closed pipe is an error, not a panic), JSON, and the
//! warnings about the mesh file.

use std::io::Write;

use crate::error::Error;
use crate::model::mesh::Mesh;
use crate::tools::reporter::Reporter;

pub(super) fn print_stdout(text: &str) -> Result<(), Error> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(Error::Stdout)
}

pub(super) fn print_json(value: &impl serde::Serialize) -> Result<(), Error> {
    let text = serde_json::to_string_pretty(value).expect("meshup's reports serialize");
    print_stdout(&format!("{text}\n"))
}

/// Warnings for commands that contact no cluster (install says them as it pins a version).
pub(super) fn warn_about_mesh(reporter: &Reporter, mesh: &Mesh) {
    warn_unpinned(reporter, mesh);
}

fn warn_unpinned(reporter: &Reporter, mesh: &Mesh) {
    if mesh.version.is_none() && !mesh.charts.is_local() {
        reporter.warn("`istio.version` is not set, so helm takes the newest chart and two runs may install different Istio versions; pin it (or pass --istio-version)");
    }
}
