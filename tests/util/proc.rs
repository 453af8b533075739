//! The real `trainwatch` binary as a child process.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;

use super::{trainwatch_bin, TempStore, TEST_TIMEOUT};

/// A `trainwatch server` process; killed when dropped.
pub struct ServerProc {
    child: Option<Child>,
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    /// The temp store given when ARGS name none; removed after the process.
    _store: Option<TempStore>,
}

impl ServerProc {
    /// Starts `trainwatch server ARGS` (with ephemeral loopback ports unless
    /// ARGS set them, and a temp SQLite store unless ARGS give `--store`)
    /// and waits for its `listening` line.
    pub fn start(args: &[&str], env: &[(&str, &str)]) -> ServerProc {
        let mut cmd = Command::new(trainwatch_bin());
        cmd.arg("server");
        for (flag, default) in [
            ("--listen", "127.0.0.1:0"),
            ("--http-listen", "127.0.0.1:0"),
        ] {
            if !args.contains(&flag) {
                cmd.args([flag, default]);
            }
        }
        let store = (!args.contains(&"--store")).then(TempStore::new);
        if let Some(s) = &store {
            cmd.args(["--store", &s.place()]);
        }
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn trainwatch server");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.starts_with("listening ") {
                    let _ = tx.send(line);
                }
            }
        });
        let line = match rx.recv_timeout(TEST_TIMEOUT) {
            Ok(l) => l,
            Err(_) => {
                let _ = child.kill();
                let status = child.wait().unwrap();
                panic!("server did not print its listening line ({status})");
            }
        };
        let field = |name: &str| -> SocketAddr {
            line.split_whitespace()
                .find_map(|kv| kv.strip_prefix(name))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no {name} in {line:?}"))
        };
        ServerProc {
            grpc: field("grpc="),
            http: field("http="),
            child: Some(child),
            _store: store,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Sends SIGTERM and waits (bounded) for the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let child = self.child.take().unwrap();
        signal(child.id(), "TERM");
        wait_timeout(child).expect("server did not exit after SIGTERM")
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(ok.success(), "kill -{sig} {pid} failed");
}

/// Waits for a child up to [`TEST_TIMEOUT`]; kills it and returns `None`
/// when it has not exited by then.
pub fn wait_timeout(child: Child) -> Option<std::process::ExitStatus> {
    wait_timeout_for(child, TEST_TIMEOUT)
}

/// Waits for a child up to `limit`; kills it and returns `None` when it has
/// not exited by then.
pub fn wait_timeout_for(
    mut child: Child,
    limit: std::time::Duration,
) -> Option<std::process::ExitStatus> {
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    match rx.recv_timeout(limit) {
        Ok(status) => Some(status.expect("wait for child")),
        Err(_) => {
            signal(pid, "KILL");
            None
        }
    }
}

/// Runs `trainwatch ARGS` to completion (bounded) → (exit code, stderr).
pub fn run(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let mut cmd = Command::new(trainwatch_bin());
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn trainwatch");
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut stderr, &mut s).ok();
        s
    });
    let Some(status) = wait_timeout(child) else {
        panic!("trainwatch {args:?} did not exit");
    };
    (status.code().unwrap_or(-1), reader.join().unwrap())
}

/// Resident set size of process `pid` in KiB (`VmRSS` of /proc/PID/status).
pub fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS")
}

/// A KiB figure of /proc/PID/status, e.g. `VmHWM` (peak resident set).
pub fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"))
}

/// utime + stime of process `pid` (all its threads), in seconds.
pub fn cpu_s(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read stat");
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    ticks as f64 / clock_ticks_per_s()
}

/// The whole machine's busy CPU time (all cores, not idle or iowait) from
/// /proc/stat, in seconds: what else was running beside a benchmark.
pub fn machine_busy_s() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").expect("read /proc/stat");
    let f: Vec<u64> = stat
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let total: u64 = f.iter().take(8).sum();
    (total - f[3] - f[4]) as f64 / clock_ticks_per_s()
}

fn clock_ticks_per_s() -> f64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) as f64 }
}
