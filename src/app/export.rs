//! `meshup export`: the files a fleet engine runs, and who owns each part. Contacts no
//! cluster.

use super::output::{print_stdout, warn_about_mesh};
use super::prelude::*;
use super::session::Session;
use crate::fleet::{self, Engine, Layout, Options};
use crate::model::cli::{ExportArgs, ExportFormat, ExportLayout, ExportPhase};

pub(super) fn export(
    global: &GlobalArgs,
    mesh_args: &MeshArgs,
    reporter: &Arc<Reporter>,
    args: &ExportArgs,
) -> Result<(), Error> {
    let engine = match args.format {
        ExportFormat::Flux => Engine::Flux,
        ExportFormat::Argocd => Engine::ArgoCd,
    };
    let options = Options {
        engine,
        layout: match args.layout {
            ExportLayout::Every => Layout::Every,
            ExportLayout::Hub => Layout::Hub,
        },
        namespace: args.engine_namespace.clone().unwrap_or_else(|| {
            match engine {
                Engine::Flux => "flux-system",
                Engine::ArgoCd => "argocd",
            }
            .to_string()
        }),
        path: args.path.trim_end_matches('/').to_string(),
        source: args.source.clone(),
        repo_url: args.repo_url.clone(),
        revision: args.revision.clone(),
        interval: args.interval.clone(),
    };
    let (mesh, upgrade) = match args.upgrade {
        None => (mesh::load(mesh_args, None)?, None),
        Some(phase) => {
            // Every input checked before a cluster is read.
            let session = Session::open(global, mesh_args, reporter)?;
            fleet::check(&session.mesh, &options)?;
            match super::upgrade::for_export(&session, &phase.phase(&args.clusters))? {
                Some(upgrade) => (upgrade.to.clone(), Some(upgrade)),
                None => {
                    reporter.line("nothing to roll back: no upgrade is under way");
                    return Ok(());
                }
            }
        }
    };
    warn_about_mesh(reporter, &mesh);
    let export = fleet::export(&mesh, &options, upgrade.as_ref())?;
    if args.list {
        return print_stdout(&fleet::render_rows(&export.rows));
    }
    remove_stale(&args.out, &export.files)?;
    for (path, text) in &export.files {
        let path = args.out.join(path);
        if let Some(dir) = path.parent() {
            files::ensure_dir(dir, 0o755)?;
        }
        files::write(&path, text.as_bytes(), 0o644, Existing::Replace)?;
    }
    let next = match &upgrade {
        None => "`meshup install --only trust`, commit, then `meshup link`".to_string(),
        Some(upgrade) => {
            let name = upgrade.phase;
            let after = match args.upgrade {
                Some(ExportPhase::Finish) => format!(
                    "; then set `istio.revision: {}` in the mesh file, so that a plain export writes the same releases",
                    mesh.revision.as_deref().unwrap_or_default()
                ),
                _ => String::new(),
            };
            format!("commit, then `meshup upgrade {name} --wait-only`{after}")
        }
    };
    reporter.info(&format!(
        "wrote {} files for {} in {}; next: {next}",
        export.files.len(),
        engine.name(),
        args.out.display()
    ));
    Ok(())
}

/// Files an earlier export wrote that this one does not (a cluster or part gone), so that the
/// folder is exactly this export. Only in a folder meshup wrote (its README says so), and only
/// `.yaml` and `.md` files.
fn remove_stale(
    out: &Path,
    written: &std::collections::BTreeMap<PathBuf, String>,
) -> Result<(), Error> {
    let readme = std::fs::read_to_string(out.join("README.md")).unwrap_or_default();
    if !readme.starts_with(fleet::README_TITLE) {
        return Ok(());
    }
    let mut stack = vec![out.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let ours = path.extension().is_some_and(|e| e == "yaml" || e == "md");
            let relative = path.strip_prefix(out).unwrap_or(&path);
            if ours && !written.contains_key(relative) {
                std::fs::remove_file(&path).map_err(|source| files::FileError {
                    action: "remove",
                    path: path.clone(),
                    source,
                })?;
            }
        }
    }
    Ok(())
}
