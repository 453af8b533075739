//! A throw-away PostgreSQL server for the store tests: one cluster per test
//! binary, started on first use in a temp dir on a free loopback port, a
//! fresh database per test.
//!
//! initdb refuses to run as root, so as root the cluster belongs to a system
//! user (`trainwatch-test`, created when missing) and every PostgreSQL
//! command runs through `runuser`. A guardian shell holds a pipe from this
//! process: when the process ends, however it ends, the pipe closes and the
//! guardian stops the cluster (`pg_ctl stop -m immediate`) and removes it.

use std::io::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::TEST_TIMEOUT;

/// The system user that owns the cluster when the tests run as root.
const PG_USER: &str = "trainwatch-test";
/// The cluster's superuser (initdb -U); connections use trust auth.
const PG_ROLE: &str = "trainwatch";

pub struct Cluster {
    pub port: u16,
    dir: PathBuf,
    /// Closing it (drop, or this process ending) makes the guardian stop
    /// and remove the cluster.
    guardian: Mutex<Option<ChildStdin>>,
}

static CLUSTER: OnceLock<Option<Cluster>> = OnceLock::new();
static NEXT_DB: AtomicU32 = AtomicU32::new(0);

/// The directory holding initdb and pg_ctl: `TRAINWATCH_PG_BIN`, else the
/// newest /usr/lib/postgresql/*/bin (Debian), else one on PATH.
pub fn bin_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("TRAINWATCH_PG_BIN") {
        return Some(PathBuf::from(d));
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    found.sort();
    if let Some((_, bin)) = found.pop() {
        return Some(bin);
    }
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p).find(|d| d.join("initdb").exists() && d.join("pg_ctl").exists())
    })
}

/// The shared cluster, started on first call; `None` (after a loud
/// SKIPPED line) when PostgreSQL is not installed. Panics when it is
/// installed but will not start: that is a failure, not a skip.
pub fn cluster() -> Option<&'static Cluster> {
    CLUSTER
        .get_or_init(|| {
            let bin = bin_dir()?;
            Some(Cluster::start(&bin).unwrap_or_else(|e| panic!("PostgreSQL test cluster: {e}")))
        })
        .as_ref()
}

/// Prints a loud SKIPPED line and returns `None` when
/// PostgreSQL is missing.
pub fn cluster_or_skip(test: &str) -> Option<&'static Cluster> {
    let c = cluster();
    if c.is_none() {
        eprintln!(
            "SKIPPED: {test}: PostgreSQL (initdb, pg_ctl) not installed; \
             set TRAINWATCH_PG_BIN or install Debian's postgresql"
        );
    }
    c
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// `program args…`, through `runuser -u trainwatch-test` when root.
fn pg_command(root: bool, program: &Path) -> Command {
    if root {
        let mut c = Command::new("runuser");
        c.args(["-u", PG_USER, "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn run(mut c: Command, what: &str) -> Result<(), String> {
    let out = c
        .output()
        .map_err(|e| format!("{what}: cannot start: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

fn ensure_user() -> Result<(), String> {
    let known = Command::new("id")
        .arg("-u")
        .arg(PG_USER)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if known {
        return Ok(());
    }
    let mut c = Command::new("useradd");
    c.args(["-r", "-M", "-s", "/usr/sbin/nologin", PG_USER]);
    run(c, "useradd trainwatch-test")
}

fn free_port() -> Result<u16, String> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("free port: {e}"))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("free port: {e}"))
}

impl Cluster {
    fn start(bin: &Path) -> Result<Cluster, String> {
        let root = is_root();
        if root {
            ensure_user()?;
        }
        let dir = std::env::temp_dir().join(format!("trainwatch-pg-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        if root {
            let mut c = Command::new("chown");
            c.arg(PG_USER).arg(&dir);
            run(c, "chown")?;
        }
        let data = dir.join("data");
        let mut initdb = pg_command(root, &bin.join("initdb"));
        initdb
            .arg("-D")
            .arg(&data)
            .args(["-A", "trust", "-U", PG_ROLE, "-E", "UTF8", "--no-sync"]);
        run(initdb, "initdb")?;

        let port = free_port()?;
        let opts = format!(
            "-c listen_addresses=127.0.0.1 -p {port} -k {} -c fsync=off",
            dir.display()
        );
        let mut start = pg_command(root, &bin.join("pg_ctl"));
        start
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(dir.join("log"))
            .args(["-o", &opts, "start"]);
        run(start, "pg_ctl start")?;

        // From here on the guardian owns the cluster's end.
        let stop = format!(
            "read _ ; {} -D '{}' stop -m immediate >/dev/null 2>&1 ; rm -rf '{}'",
            shell_pg(root, &bin.join("pg_ctl")),
            data.display(),
            dir.display()
        );
        let mut guardian = Command::new("sh")
            .args(["-c", &stop])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("guardian: {e}"))?;
        let cluster = Cluster {
            port,
            dir: dir.clone(),
            guardian: Mutex::new(guardian.stdin.take()),
        };
        cluster.wait_ready(bin, root)?;
        Ok(cluster)
    }

    /// Polls `pg_isready` until the server accepts connections or the
    /// deadline passes.
    fn wait_ready(&self, bin: &Path, root: bool) -> Result<(), String> {
        let deadline = Instant::now() + TEST_TIMEOUT;
        loop {
            let ok = pg_command(root, &bin.join("pg_isready"))
                .args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string()])
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ok {
                return Ok(());
            }
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(self.dir.join("log")).unwrap_or_default();
                return Err(format!(
                    "not accepting connections on 127.0.0.1:{} after {TEST_TIMEOUT:?}; log:\n{log}",
                    self.port
                ));
            }
            // A poll interval, not a synchronisation: the loop ends on the
            // server's answer.
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn url(&self, db: &str) -> String {
        format!("postgres://{PG_ROLE}@127.0.0.1:{}/{db}", self.port)
    }

    /// Creates an empty database and returns its URL.
    pub async fn fresh_db(&self) -> String {
        let name = format!(
            "t{}_{}",
            std::process::id(),
            NEXT_DB.fetch_add(1, Ordering::Relaxed)
        );
        let (client, conn) = tokio_postgres::connect(&self.url("postgres"), tokio_postgres::NoTls)
            .await
            .expect("connect to the test cluster");
        let conn = tokio::spawn(conn);
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("CREATE DATABASE");
        drop(client);
        let _ = conn.await;
        self.url(&name)
    }
}

fn shell_pg(root: bool, program: &Path) -> String {
    if root {
        format!("runuser -u {PG_USER} -- '{}'", program.display())
    } else {
        format!("'{}'", program.display())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Closing the pipe is the guardian's signal; a newline says the same
        // to a guardian whose `read` is still waiting.
        if let Some(mut stdin) = self
            .guardian
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            let _ = stdin.write_all(b"\n");
        }
    }
}
