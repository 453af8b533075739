//! tests/browser/dashboard.mjs (Debian's chromium through playwright-core)
//! as a child process, for the dashboard tests and benches/dashboard.rs.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::mpsc;

use super::repo_root;

/// The browser script as a child process, its JSON lines on a channel;
/// killed when dropped.
pub struct Browser {
    child: Child,
    lines: mpsc::UnboundedReceiver<Value>,
    /// Chromium's profile, removed when the test ends however it ends.
    _profile: tempfile::TempDir,
    timeout: Duration,
}

impl Browser {
    /// Runs the script on `args` (its `timeout_ms` bounds every wait here
    /// too, 5 s later, so the script's own deadline fails first).
    pub fn start(mut args: Value) -> Browser {
        let profile = tempfile::tempdir().unwrap();
        args["profile"] = profile.path().to_str().unwrap().into();
        let chromium = std::env::var_os("TRAINWATCH_CHROMIUM")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
        assert!(
            chromium.exists(),
            "the dashboard tests need Chromium at {} (Debian: apt-get install chromium; \
             .ci/run installs it) or TRAINWATCH_CHROMIUM pointing at one",
            chromium.display()
        );
        let dir = repo_root().join("tests/browser");
        assert!(
            dir.join("node_modules/playwright-core").exists(),
            "tests/browser/node_modules is missing: run `npm ci` in tests/browser \
             (./scripts/test.sh does it)"
        );
        let mut child = Command::new("node")
            .arg(dir.join("dashboard.mjs"))
            .arg(args.to_string())
            .env("TRAINWATCH_CHROMIUM", &chromium)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("run node (Node.js 20+ is needed for the browser tests)");
        let out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                match serde_json::from_str::<Value>(&line) {
                    Ok(v) => {
                        let _ = tx.send(v);
                    }
                    Err(_) => eprintln!("browser: {line}"),
                }
            }
        });
        let timeout_ms = args["timeout_ms"].as_u64().unwrap_or(85_000);
        Browser {
            child,
            lines,
            _profile: profile,
            timeout: Duration::from_millis(timeout_ms + 5000),
        }
    }

    /// The next line that has `key`; an `error` line fails the test.
    pub async fn expect(&mut self, key: &str) -> Value {
        loop {
            let v = tokio::time::timeout(self.timeout, self.lines.recv())
                .await
                .unwrap_or_else(|_| panic!("browser script sent no {key:?} in time"))
                .unwrap_or_else(|| panic!("browser script ended before {key:?}"));
            if let Some(e) = v.get("error") {
                panic!("browser script failed: {}", e.as_str().unwrap_or_default());
            }
            if let Some(x) = v.get(key) {
                return x.clone();
            }
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
