//! `meshup verify`: istiod's view of its peers, the credentials, and with `--traffic` requests.

use super::output::{print_json, print_stdout};
use super::prelude::*;
use super::session::*;

pub(super) fn verify(
    global: &GlobalArgs,
    mesh_args: &MeshArgs,
    reporter: &Arc<Reporter>,
    args: &VerifyArgs,
) -> Result<(), Error> {
    let mut session = Session::open(global, mesh_args, reporter)?;
    session.require_tools()?;
    // The traffic check's namespace follows the mesh file: `istio-injection=enabled` (the
    // `default` tag, wherever an upgrade moved it) unless the file names a revision.
    let injection = match &session.mesh.revision {
        _ if session.mesh.ambient() => {
            ("istio.io/dataplane-mode".to_string(), "ambient".to_string())
        }
        Some(rev) => ("istio.io/rev".to_string(), rev.clone()),
        None => ("istio-injection".to_string(), "enabled".to_string()),
    };
    session.settle_revision();
    let mesh = &session.mesh;
    let topology = Topology::of(mesh, &Choices::default());
    let run = session.read();
    let sync = verify::sync_until(&run, &topology, args.wait)?;
    let credentials = verify::credentials(&run, &topology);
    let traffic = args.traffic.then(|| {
        let (helloworld, curl) = traffic::Options::images(args.registry.as_deref());
        let options = traffic::Options {
            namespace: args.namespace.clone(),
            requests: args.requests,
            keep: args.keep,
            helloworld_image: args.helloworld_image.clone().unwrap_or(helloworld),
            curl_image: args.curl_image.clone().unwrap_or(curl),
            injection: injection.clone(),
            global_service: mesh.ambient(),
        };
        reporter.info(&format!(
            "traffic: {} requests from every cluster to `helloworld.{}`",
            options.requests, options.namespace
        ));
        traffic::check(&run, &options)
    });
    if crate::tools::runner::interrupted() {
        return Err(Error::Interrupted);
    }
    let mut problems = verify::problems(&run, &sync);
    problems.extend(credentials);
    problems.extend(verify::dataplane(&run, &topology));
    let ok = problems.is_empty() && traffic.as_ref().is_none_or(|t| t.ok);
    let report = verify::Report {
        ok,
        sync,
        problems,
        traffic,
    };
    if reporter.mode() == Mode::Json {
        print_json(&report)?;
    } else {
        let mut text = verify::render_sync(&run, &report.sync);
        for finding in &report.problems {
            text.push_str(&format!("  {}\n", verify::line(finding)));
        }
        if let Some(traffic) = &report.traffic {
            let names: Vec<String> = mesh.clusters.iter().map(|c| c.name.clone()).collect();
            text.push('\n');
            text.push_str(&traffic::render(traffic, &names));
            for (from, to) in traffic.unreached(&names) {
                if !traffic.errors.contains_key(&from) {
                    text.push_str(&format!("  {from} → {to}: no answer\n"));
                }
            }
        }
        text.push_str(if report.ok {
            "the mesh works: every istiod is synced with every peer\n"
        } else {
            "the mesh does not work as the mesh file says\n"
        });
        print_stdout(&text)?;
    }
    if report.ok {
        Ok(())
    } else {
        Err(Error::Reported)
    }
}
