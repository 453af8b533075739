//! Python peers: stubs generated with grpcio-tools, scripts in tests/python.

use std::path::Path;
use std::process::{Command, Stdio};

use super::{python, repo_root, TEST_TIMEOUT};

/// Generates `<name>_pb2.py` and `<name>_pb2_grpc.py` for `proto` into `out`.
pub fn protoc(proto: &Path, out: &Path) {
    let st = Command::new(python())
        .args(["-m", "grpc_tools.protoc"])
        .arg(format!("-I{}", proto.parent().unwrap().display()))
        .arg(format!("--python_out={}", out.display()))
        .arg(format!("--grpc_python_out={}", out.display()))
        .arg(proto)
        .status()
        .expect("run python -m grpc_tools.protoc (scripts/test.sh installs grpcio-tools)");
    assert!(
        st.success(),
        "grpc_tools.protoc failed on {}",
        proto.display()
    );
}

/// Writes the descriptor set of `proto` (one file) to `out`.
pub fn descriptor_set(proto: &Path, out: &Path) {
    let st = Command::new(python())
        .args(["-m", "grpc_tools.protoc"])
        .arg(format!("-I{}", proto.parent().unwrap().display()))
        .arg(format!("--descriptor_set_out={}", out.display()))
        .arg(proto)
        .status()
        .expect("run python -m grpc_tools.protoc");
    assert!(
        st.success(),
        "grpc_tools.protoc failed on {}",
        proto.display()
    );
}

/// Runs `tests/python/<script> ARGS` (bounded) and returns its stdout; fails
/// the test with its stderr when it exits non-zero.
pub fn run_script(script: &str, args: &[&str]) -> String {
    let mut child = Command::new(python())
        .arg(repo_root().join("tests/python").join(script))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn python");
    let (mut out, mut err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let o = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut out, &mut s).ok();
        s
    });
    let e = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut err, &mut s).ok();
        s
    });
    let status = super::proc::wait_timeout(child)
        .unwrap_or_else(|| panic!("{script} did not finish within {TEST_TIMEOUT:?}"));
    let (stdout, stderr) = (o.join().unwrap(), e.join().unwrap());
    assert!(status.success(), "{script} failed ({status}):\n{stderr}");
    stdout
}
