//! `meshup diff`, `install --repair` and `status --drift` against test clusters, with the
//! real helm 3 and 4 and kubectl.

use crate::common::*;

/// A fresh install has nothing to change.
fn fresh_install_has_no_changes(tools: &str) {
    let env = Env::new(tools, 2);
    let mesh = env.mesh_file(&[], &[], "");
    let mesh = mesh.to_str().unwrap();
    env.meshup(&["install", "-f", mesh]).expect(0);
    let run = env.meshup(&["diff", "-v", "-f", mesh]);
    eprintln!("{}\n{}", run.stdout, run.stderr);
    let run = run.expect(0);
    assert!(
        run.stdout.contains("cluster1: no changes"),
        "{}",
        run.stdout
    );
}

with_both_helms!(fresh_install_has_no_changes);
