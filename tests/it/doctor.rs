//! `meshup doctor`, as the tests call it (`doctor_cases.rs` seeds every problem; a healthy
//! mesh made by meshup is checked after an upgrade in `upgrade.rs`, one made by hand in
//! `doctor_cases.rs`).

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
