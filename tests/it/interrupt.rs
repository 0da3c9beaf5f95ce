//! Ctrl-C: meshup stops its running children, leaves nothing behind, and exits 130.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use meshup_testcluster::{Options, TestCluster, write_kubeconfig};

fn write_executable(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn alive(pid: u32) -> bool {
    // A zombie still has a /proc entry; only a running or sleeping process counts.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat.contains(") Z "),
        Err(_) => false,
    }
}

#[test]
fn ctrl_c_stops_running_helm_and_exits_130() {
    let kubectl = Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools/helm4/kubectl");
    assert!(
        kubectl.is_file(),
        "run scripts/fetch-tools.sh first (scripts/test.sh does)"
    );
    let dir = tempfile::tempdir().unwrap();
    let clusters = [
        TestCluster::start("cluster1", Options::default()),
        TestCluster::start("cluster2", Options::default()),
    ];
    let kubeconfig = dir.path().join("kubeconfig");
    write_kubeconfig(&kubeconfig, &clusters.iter().collect::<Vec<_>>()).unwrap();

    // A helm whose installs hang: it records its pid, then sleeps (ignoring nothing).
    let pids = dir.path().join("pids");
    let helm = dir.path().join("helm");
    write_executable(
        &helm,
        &format!(
            "#!/bin/sh\ncase \"$1\" in\n  version) printf v3.19.0; exit 0;;\n  list) echo '[]'; exit 0;;\nesac\necho $$ >> {}\nexec sleep 120\n",
            pids.display()
        ),
    );
    let mesh = dir.path().join("mesh.yaml");
    std::fs::write(
        &mesh,
        format!(
            "meshID: m\ntrust: {{mode: none}}\nistio: {{charts: {}}}\nclusters:\n  - {{name: cluster1, context: cluster1}}\n  - {{name: cluster2, context: cluster2}}\n",
            meshup_testcluster::istio_charts(meshup_testcluster::ISTIO_FROM).display()
        ),
    )
    .unwrap();

    let child = Command::new(env!("CARGO_BIN_EXE_meshup"))
        .args(["install", "--output", "plain", "-f"])
        .arg(&mesh)
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .arg("--helm")
        .arg(&helm)
        .arg("--kubectl")
        .arg(&kubectl)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    // Wait until both clusters' helm installs are running.
    let start = Instant::now();
    let running = loop {
        let text = std::fs::read_to_string(&pids).unwrap_or_default();
        let found: Vec<u32> = text.lines().filter_map(|l| l.trim().parse().ok()).collect();
        if found.len() == 2 {
            break found;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "helm never started; pids: {text:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(running.iter().all(|p| alive(*p)));

    let interrupted = Instant::now();
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(130), "{stderr}");
    assert!(
        interrupted.elapsed() < Duration::from_secs(10),
        "took {:?}",
        interrupted.elapsed()
    );
    assert!(stderr.contains("interrupted"), "{stderr}");
    for pid in running {
        assert!(!alive(pid), "helm (pid {pid}) still runs after Ctrl-C");
    }
}
