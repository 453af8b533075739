//! The agent and a Python trainer as real processes, for end-to-end tests.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::proc::signal;
use super::{python, repo_root, trainwatch_bin, TEST_TIMEOUT};

/// The cdylib cargo built beside this test: `TRAINWATCH_LIB`, else the
/// newest libtrainwatch.so in this test binary's target directory (cargo
/// builds it as `deps/libtrainwatch.so` and uplifts it to the profile dir).
pub fn lib_path() -> PathBuf {
    if let Some(p) = std::env::var_os("TRAINWATCH_LIB") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap();
    let mut found: Vec<PathBuf> = [deps, deps.parent().unwrap()]
        .iter()
        .flat_map(|d| std::fs::read_dir(d).into_iter().flatten().flatten())
        .map(|e| e.path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            n.starts_with("libtrainwatch") && n.ends_with(".so")
        })
        .collect();
    found.sort_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok());
    found.pop().unwrap_or_else(|| {
        panic!(
            "libtrainwatch.so not found next to {}; run `cargo build` or set TRAINWATCH_LIB",
            exe.display()
        )
    })
}

/// A `trainwatch agent` process; killed when dropped.
pub struct AgentProc {
    child: Option<Child>,
}

impl AgentProc {
    /// `trainwatch agent --insecure --server http://ADDR --shm-dir DIR ARGS`.
    pub fn start_insecure(server: SocketAddr, shm_dir: &Path, args: &[&str]) -> AgentProc {
        Self::start_insecure_with(server, shm_dir, args, &[])
    }

    /// [`AgentProc::start_insecure`] with `env` set too.
    pub fn start_insecure_with(
        server: SocketAddr,
        shm_dir: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> AgentProc {
        let url = format!("http://{server}");
        let mut all = vec![
            "--insecure",
            "--server",
            &url,
            "--shm-dir",
            shm_dir.to_str().unwrap(),
            "--device-id",
            "testdev",
        ];
        all.extend_from_slice(args);
        Self::start(&all, env)
    }

    pub fn start(args: &[&str], env: &[(&str, &str)]) -> AgentProc {
        let mut cmd = Command::new(trainwatch_bin());
        cmd.arg("agent")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .env("TRAINWATCH_LOG", "info");
        for (k, v) in env {
            cmd.env(k, v);
        }
        AgentProc {
            child: Some(cmd.spawn().expect("spawn trainwatch agent")),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// SIGKILL, and reap.
    pub fn kill(mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM; the exit status (bounded wait).
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let child = self.child.take().unwrap();
        signal(child.id(), "TERM");
        super::proc::wait_timeout(child).expect("agent did not exit after SIGTERM")
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `tests/python/trainer.py`, its JSON lines collected as they come.
pub struct Trainer {
    child: Option<Child>,
    /// Open for scripts driven from stdin (see [`Trainer::start_driven`]).
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<serde_json::Value>,
    pub seen: Vec<serde_json::Value>,
}

impl Trainer {
    pub fn start(shm_dir: &Path, run: &str, args: &[&str]) -> Trainer {
        Self::spawn(&tests_python("trainer.py"), false, shm_dir, run, args)
    }

    /// A script of tests/python/ that takes its steps from stdin
    /// ([`Trainer::ask`]).
    pub fn start_driven(script: &str, shm_dir: &Path, run: &str, args: &[&str]) -> Trainer {
        Self::spawn(&tests_python(script), true, shm_dir, run, args)
    }

    /// Any script (a path) that prints `{"ready": ...}` first and takes its
    /// steps from stdin, like [`Trainer::start_driven`].
    pub fn start_script(script: &Path, shm_dir: &Path, run: &str, args: &[&str]) -> Trainer {
        Self::spawn(script, true, shm_dir, run, args)
    }

    fn spawn(script: &Path, driven: bool, shm_dir: &Path, run: &str, args: &[&str]) -> Trainer {
        let mut child = Command::new(python())
            .arg(script)
            .args(["--shm-dir", shm_dir.to_str().unwrap(), "--run", run])
            .args(args)
            .env("TRAINWATCH_LIB", lib_path())
            .env("PYTHONPATH", repo_root().join("python"))
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(if driven {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn python trainer");
        let stdin = child.stdin.take();
        let out = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str(&line) {
                    if tx.send(v).is_err() {
                        break;
                    }
                }
            }
        });
        let mut t = Trainer {
            child: Some(child),
            stdin,
            lines: rx,
            seen: Vec::new(),
        };
        t.wait_for("segment created", |v| v.get("ready").is_some());
        t
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Waits (bounded) for a line matching `pred`; returns it.
    pub fn wait_for(
        &mut self,
        what: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        if let Some(v) = self.seen.iter().find(|v| pred(v)) {
            return v.clone();
        }
        let deadline = Instant::now() + TEST_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(v) => {
                    self.seen.push(v.clone());
                    if pred(&v) {
                        return v;
                    }
                }
                Err(_) => panic!(
                    "trainer: no {what} within {TEST_TIMEOUT:?}; saw {:?}",
                    self.seen
                ),
            }
        }
    }

    /// The next line if one has come (kept in `seen` too), without waiting.
    pub fn try_next(&mut self) -> Option<serde_json::Value> {
        let v = self.lines.try_recv().ok()?;
        self.seen.push(v.clone());
        Some(v)
    }

    /// Sends one line to a driven script and waits (bounded) for its
    /// answer, the next line it prints.
    pub fn ask(&mut self, line: &str) -> serde_json::Value {
        let stdin = self.stdin.as_mut().expect("a driven trainer");
        writeln!(stdin, "{line}").expect("write to the trainer");
        stdin.flush().expect("write to the trainer");
        match self.lines.recv_timeout(TEST_TIMEOUT) {
            Ok(v) => {
                self.seen.push(v.clone());
                v
            }
            Err(_) => panic!("trainer: no answer to {line:?} within {TEST_TIMEOUT:?}"),
        }
    }

    pub fn kill(&mut self) {
        self.stdin = None;
        if let Some(mut c) = self.child.take() {
            signal(c.id(), "KILL");
            let _ = c.wait();
        }
    }

    /// Waits (up to [`TEST_TIMEOUT`]) for the trainer to exit by itself.
    pub fn wait_exit(&mut self) {
        self.wait_exit_within(TEST_TIMEOUT);
    }

    /// Waits up to `limit` for the trainer to exit by itself.
    pub fn wait_exit_within(&mut self, limit: Duration) {
        let child = self.child.take().unwrap();
        let status = super::proc::wait_timeout_for(child, limit).expect("trainer did not exit");
        assert!(status.success(), "trainer failed: {status}");
    }
}

fn tests_python(script: &str) -> PathBuf {
    repo_root().join("tests/python").join(script)
}

impl Drop for Trainer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `check` (an HTTP read of the server, say) until it returns
/// `Some`, at most [`TEST_TIMEOUT`]: waiting for a condition, not a time.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + TEST_TIMEOUT;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {TEST_TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
