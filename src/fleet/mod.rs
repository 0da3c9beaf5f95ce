//! Handing the mesh to a fleet engine (`meshup export`): what each cluster needs, who owns
//! each part (the engine, or meshup), and the files the engine runs — Flux ([`flux`]) or
//! Argo CD ([`argocd`]). Contacts no cluster; the same mesh file gives the same bytes.
//!
//! The hand-off comes from the components themselves ([`Handoff`]): the releases meshup
//! installs become the engine's, with exactly meshup's values; the objects meshup applies
//! outside charts become plain manifests; what carries secrets or spans clusters (the
//! namespace and `cacerts`, the reader tokens and remote secrets, rotation) stays meshup's.
//! Depends on `engine` (the topology) and below.

pub mod argocd;
pub mod flux;
pub mod parts;
pub mod upgrade;

use std::path::PathBuf;

use crate::components::handoff::TRUST_COMMAND;
use crate::model::input::InputError;
use crate::model::mesh::Mesh;

pub use parts::{
    ClusterHandoff, Engine, Export, Layout, Options, README_TITLE, Row, check, handoffs,
    kubeconfig_secret, render_rows, trust_gate,
};

/// The export: every file and the ownership table; with `upgrade`, each cluster at the stand
/// of its upgrade (`mesh` is then the upgrade's `to`).
pub fn export(
    mesh: &Mesh,
    options: &Options,
    upgrade: Option<&upgrade::Upgrade>,
) -> Result<Export, InputError> {
    check(mesh, options)?;
    let parts = match upgrade {
        Some(upgrade) => upgrade::handoffs_at(upgrade),
        None => handoffs(mesh),
    };
    let mut export = match options.engine {
        Engine::Flux => flux::write(mesh, &parts, options),
        Engine::ArgoCd => argocd::write(mesh, &parts, options),
    };
    export.rows.extend(kept_rows(&parts, options));
    export.rows.sort();
    export.files.insert(
        PathBuf::from("README.md"),
        readme(&export.rows, options, upgrade),
    );
    Ok(export)
}

fn kept_rows(parts: &[ClusterHandoff], options: &Options) -> Vec<Row> {
    let mut rows = Vec::new();
    for part in parts {
        for (what, by) in &part.kept {
            rows.push(Row {
                cluster: part.cluster.clone(),
                object: what.clone(),
                owner: "meshup".into(),
                how: format!("`{by}`"),
            });
        }
        if part.releases.iter().any(|r| r.istiod) {
            rows.push(Row {
                cluster: part.cluster.clone(),
                object: format!(
                    "ConfigMap `{}` in `{}` (the trust gate: written once `cacerts` is in place)",
                    trust_gate(&part.cluster),
                    options.namespace
                ),
                owner: "meshup".into(),
                how: format!("`{TRUST_COMMAND}`"),
            });
        }
        if options.layout == Layout::Hub {
            rows.push(Row {
                cluster: part.cluster.clone(),
                object: format!(
                    "Secret `{}` in the hub's `{}` (a kubeconfig; never in Git)",
                    kubeconfig_secret(&part.cluster),
                    options.namespace
                ),
                owner: "meshup".into(),
                how: format!("`{TRUST_COMMAND} --hub CONTEXT`"),
            });
        }
    }
    rows
}

/// The order an operator follows, where an upgrade stands, and the ownership table.
fn readme(rows: &[Row], options: &Options, upgrade: Option<&upgrade::Upgrade>) -> String {
    let engine = options.engine.name();
    let mut text = format!(
        "{README_TITLE} {engine}\n\nWritten by `meshup export`; do not edit by hand (re-run it).\n\n{}## Hand-off order\n\n1. `{TRUST_COMMAND}`{hub}: the namespace with its network label, `cacerts` and the trust gate. No istiod of {engine} starts before it.\n2. Commit this folder; {engine} installs istio-base, istiod, the gateways and the plain manifests, in order.\n3. `meshup link`, once istiod runs: the remote secrets (never in Git).\n4. `meshup verify` (and `status`, `doctor`, `link --rotate`) as before.\n\n## Who owns what\n\n| cluster | object | owner | how |\n| --- | --- | --- | --- |\n",
        upgrade.map(upgrade_section).unwrap_or_default(),
        hub = if options.layout == Layout::Hub {
            " --hub CONTEXT (and the hub's kubeconfig Secrets)"
        } else {
            ""
        }
    );
    for row in rows {
        text.push_str(&format!(
            "| {} | {} | {} | {} |\n",
            row.cluster, row.object, row.owner, row.how
        ));
    }
    text
}

/// Which phase of an upgrade the export is, and what each cluster runs once it is applied.
fn upgrade_section(upgrade: &upgrade::Upgrade) -> String {
    let phase = upgrade.phase;
    let mut text = format!(
        "## Upgrade under way\n\nThis is `meshup export --upgrade {phase}` of the upgrade to `{}`: commit it, then `meshup upgrade {phase} --wait-only`.\n\n| cluster | runs once applied |\n| --- | --- |\n",
        upgrade.to.revision.as_deref().unwrap_or("default"),
    );
    for (cluster, stand) in &upgrade.stands {
        text.push_str(&format!("| {cluster} | {} |\n", stand.describe()));
    }
    text.push('\n');
    text
}
