//! Two users' trainers on one device (issue 15 item 8), with real Unix
//! users the test creates: neither can read, forge, remove or replace the
//! other's segment, and the agent, running as a third user that owns the
//! segment directory, still streams both. Needs root (useradd, runuser);
//! elsewhere it says loudly that it did not run.

mod util;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use trainwatch::config::ServerSettings;
use trainwatch::server::Server;
use util::http::get_json;
use util::procs::{eventually, lib_path};
use util::{repo_root, trainwatch_bin};

/// Users and a group made for one test, removed when it ends.
struct Users {
    group: String,
    users: Vec<String>,
}

impl Users {
    /// None (and why) where users cannot be made here.
    fn make(tag: &str) -> Result<Users, String> {
        let is_root = Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
            .unwrap_or(false);
        if !is_root {
            return Err("not root: cannot create users".into());
        }
        let id = std::process::id();
        let group = format!("twpub{id}");
        run("groupadd", &["-r", &group])?;
        let mut made = Users {
            group,
            users: Vec::new(),
        };
        for who in ["a", "b", "agent"] {
            let name = format!("tw{tag}{who}{id}");
            let mut args = vec!["-r", "-M", "-N", "-s", "/usr/sbin/nologin"];
            if who != "agent" {
                args.extend(["-g", made.group.as_str()]);
            }
            args.push(&name);
            run("useradd", &args)?;
            made.users.push(name);
        }
        Ok(made)
    }

    fn name(&self, i: usize) -> &str {
        &self.users[i]
    }

    fn uid(&self, i: usize) -> u32 {
        let out = Command::new("id")
            .args(["-u", self.name(i)])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    }

    fn gid(&self) -> u32 {
        let out = Command::new("getent")
            .args(["group", &self.group])
            .output()
            .unwrap();
        let line = String::from_utf8_lossy(&out.stdout).to_string();
        line.split(':').nth(2).unwrap().parse().unwrap()
    }
}

impl Drop for Users {
    fn drop(&mut self) {
        for u in &self.users {
            let _ = Command::new("userdel").arg(u).output();
        }
        let _ = Command::new("groupdel").arg(&self.group).output();
    }
}

fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// What the other users run, copied where they can read it: the binary,
/// the publisher library and the Python package.
fn tools(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    std::fs::create_dir_all(dir).unwrap();
    let bin = dir.join("trainwatch");
    std::fs::copy(trainwatch_bin(), &bin).unwrap();
    let lib = dir.join("libtrainwatch.so");
    std::fs::copy(lib_path(), &lib).unwrap();
    let py = dir.join("python/trainwatch");
    std::fs::create_dir_all(&py).unwrap();
    for e in std::fs::read_dir(repo_root().join("python/trainwatch")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "py") {
            std::fs::copy(&p, py.join(p.file_name().unwrap())).unwrap();
        }
    }
    run("chmod", &["-R", "a+rX", dir.to_str().unwrap()]).unwrap();
    (bin, lib, dir.join("python"))
}

/// A process and its group (runuser and what it runs), killed when dropped.
struct Group(Child);

impl Drop for Group {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.0.id())])
            .status();
        let _ = self.0.wait();
    }
}

/// A trainer as `user`: publishes RUNNING and one epoch, prints its
/// segment's path, and finishes (COMPLETED) when its stdin closes.
struct Publisher {
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    path: PathBuf,
}

impl Drop for Publisher {
    fn drop(&mut self) {
        if let Some(c) = self.child.take() {
            drop(Group(c));
        }
    }
}

const PUBLISH: &str = r#"
import json, sys
from trainwatch import Publisher
pub = Publisher(sys.argv[1], total_epochs=2, batches_per_epoch=10, shm_dir=sys.argv[2],
                model_name="m", dataset_name="d", class_names=["a", "b"])
pub.status("RUNNING", "started")
pub.epoch(0, 0.5, 0.7)
print(json.dumps({"ready": pub.path}), flush=True)
sys.stdin.read()
pub.status("COMPLETED", "done")
pub.close()
"#;

fn as_user(user: &str, lib: &Path, py: &Path) -> Command {
    let mut c = Command::new("runuser");
    c.args(["-u", user, "--", "env"])
        .arg(format!("TRAINWATCH_LIB={}", lib.display()))
        .arg(format!("PYTHONPATH={}", py.display()))
        .arg("python3");
    c
}

impl Publisher {
    fn start(user: &str, run: &str, shm: &Path, lib: &Path, py: &Path) -> Publisher {
        let mut child = as_user(user, lib, py)
            .args(["-c", PUBLISH, run, shm.to_str().unwrap()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .process_group(0)
            .spawn()
            .expect("runuser python3");
        let stdin = child.stdin.take();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let v: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("{user}'s trainer said {line:?}: {e}"));
        Publisher {
            child: Some(child),
            stdin,
            path: PathBuf::from(v["ready"].as_str().unwrap()),
        }
    }

    fn finish(mut self) {
        drop(self.stdin.take());
        let child = self.child.take().unwrap();
        let status = util::proc::wait_timeout(child).expect("trainer did not finish");
        assert!(status.success(), "{status}");
    }
}

/// What `user` gets trying `code` (Python, `p` = the path): "ok" or the
/// exception's name.
fn attempt(user: &str, lib: &Path, py: &Path, code: &str, p: &Path) -> String {
    let script = format!(
        "import os, sys\np = sys.argv[1]\ntry:\n    {code}\n    print('ok')\nexcept OSError as e:\n    print(type(e).__name__)"
    );
    let out = as_user(user, lib, py)
        .args(["-c", &script, p.to_str().unwrap()])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_users_trainer_cannot_touch_anothers_segment_and_the_agent_streams_both() {
    let users = match Users::make("iso") {
        Ok(u) => u,
        Err(why) => {
            eprintln!("SKIPPED two-user isolation test: {why}");
            return;
        }
    };
    let (alice, bob, agent) = (users.name(0), users.name(1), users.name(2));
    let work = tempfile::tempdir().unwrap();
    std::fs::set_permissions(work.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let (bin, lib, py) = tools(&work.path().join("tools"));
    // As the package's tmpfiles rule makes it: the agent's, the trainers'
    // group, sticky and setgid.
    let shm = work.path().join("shm");
    std::fs::create_dir(&shm).unwrap();
    std::os::unix::fs::chown(&shm, Some(users.uid(2)), Some(users.gid())).unwrap();
    std::fs::set_permissions(&shm, std::fs::Permissions::from_mode(0o3770)).unwrap();

    let a = Publisher::start(alice, "alice-run", &shm, &lib, &py);
    let b = Publisher::start(bob, "bob-run", &shm, &lib, &py);
    let meta = std::fs::metadata(&a.path).unwrap();
    assert_eq!(meta.uid(), users.uid(0), "alice's segment is hers");

    // Bob, in the same group, can neither read, write, remove nor replace
    // alice's segment; alice cannot touch bob's.
    let tries = [
        ("open(p, 'rb').read(1)", "read"),
        ("open(p, 'r+b').write(b'x')", "write"),
        ("os.remove(p)", "remove"),
        (
            "q = os.path.join(os.path.dirname(p), '.%d' % os.getuid()); open(q, 'w'); os.rename(q, p)",
            "replace",
        ),
    ];
    for (code, what) in tries {
        let got = attempt(bob, &lib, &py, code, &a.path);
        assert_eq!(got, "PermissionError", "bob could {what} alice's segment");
        let got = attempt(alice, &lib, &py, code, &b.path);
        assert_eq!(got, "PermissionError", "alice could {what} bob's segment");
    }
    assert_eq!(
        attempt(alice, &lib, &py, "open(p, 'rb').read(1)", &a.path),
        "ok",
        "alice reads her own"
    );

    // The agent, as its own user, streams both runs (it maps each segment
    // read/write: acks and commands go back into it).
    let server = Server::start(&ServerSettings::local_insecure())
        .await
        .expect("server starts");
    let http = server.http_addr;
    let _agent = Group(
        Command::new("runuser")
            .args(["-u", agent, "--"])
            .arg(&bin)
            .args(["agent", "--insecure", "--server"])
            .arg(format!("http://{}", server.grpc_addr))
            .arg("--shm-dir")
            .arg(&shm)
            .args(["--device-id", "twodev"])
            .env("TRAINWATCH_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .process_group(0)
            .spawn()
            .expect("runuser trainwatch agent"),
    );
    let sessions = eventually("both runs streaming with their epoch", || async {
        let v = get_json(http, "/api/sessions").await;
        let s = v["sessions"].as_array().cloned().unwrap_or_default();
        let ready = s.len() == 2
            && s.iter()
                .all(|x| x["status"] == "RUNNING" && x["epochs"].as_u64() == Some(1));
        ready.then_some(s)
    })
    .await;
    for run in ["alice-run", "bob-run"] {
        let mine = format!("twodev:{run}.");
        assert!(
            sessions
                .iter()
                .any(|s| s["id"].as_str().unwrap().starts_with(&mine)),
            "{run}: {sessions:?}"
        );
    }
    a.finish();
    b.finish();
    eventually("both runs completed", || async {
        let v = get_json(http, "/api/sessions").await;
        let s = v["sessions"].as_array().cloned().unwrap_or_default();
        s.iter()
            .filter(|x| x["status"] == "COMPLETED")
            .count()
            .eq(&2)
            .then_some(())
    })
    .await;
    server.shutdown(Duration::from_secs(10)).await.unwrap();
}
