//! `meshup doctor`: every cross-cluster problem seeded on three test clusters is named with its
//! cluster, cause and fix, from the mesh file and from contexts alone; a healthy mesh — made
//! by meshup, or by plain helm and kubectl as Istio's pages do — gives no finding.

use serde_json::Value;

use super::common::*;

/// `doctor` as JSON: (exit code, report).
pub(crate) fn doctor(env: &Env, args: &[&str]) -> (Option<i32>, Value) {
    let mut all = vec!["doctor", "--output", "json"];
    all.extend_from_slice(args);
    let output = env.command(&all).output().unwrap();
    let report = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    });
    (output.status.code(), report)
}

#[test]
fn a_healthy_mesh_made_by_meshup_gives_no_finding() {
    let env = Env::new("helm4", 3);
    let mesh = env.mesh_file(&[], &[], "");
    let mesh = mesh.to_str().unwrap();
    env.meshup(&["install", "-f", mesh]).expect(0);
    let (code, report) = doctor(&env, &["-f", mesh]);
    assert_eq!(code, Some(0), "{report:#}");
    assert_eq!(
        report["findings"].as_array().unwrap().len(),
        0,
        "{report:#}"
    );
    let (code, report) = doctor(
        &env,
        &[
            "--context",
            "cluster1",
            "--context",
            "cluster2",
            "--context",
            "cluster3",
        ],
    );
    assert_eq!(code, Some(0), "{report:#}");
    let names: Vec<&str> = report["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["cluster1", "cluster2", "cluster3"]);
    assert_eq!(report["meshId"], "mesh1", "{report:#}");
}
