//! systemd notification for `trainwatch agent` (a `Type=notify` unit with a
//! watchdog): READY=1 after the first scan, WATCHDOG=1 from healthy passes
//! of the main loop, STOPPING=1 when a signal asks it to stop.
//!
//! Outside systemd every notification is a no-op (`sd_notify` finds no
//! socket), so the same agent runs unchanged from a shell or a test.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::Lifecycle;

/// The agent's [`Lifecycle`] under systemd.
pub struct Systemd {
    /// The unit's watchdog period, when it has one.
    watchdog: Option<Duration>,
    last_ping: Option<Instant>,
    /// Test hook: while this file exists the main loop is wedged.
    wedge_file: Option<PathBuf>,
}

impl Systemd {
    /// Reads the watchdog period systemd gave this process, if any;
    /// `wedge_file` is the `--debug-wedge-file` test hook.
    pub fn new(wedge_file: Option<PathBuf>) -> Self {
        Systemd {
            watchdog: sd_notify::watchdog_enabled(),
            last_ping: None,
            wedge_file,
        }
    }
}

impl Lifecycle for Systemd {
    fn ready(&mut self) {
        let _ = sd_notify::notify(&[
            sd_notify::NotifyState::Ready,
            sd_notify::NotifyState::Status("streaming runs"),
        ]);
        tracing::info!("ready");
    }

    fn alive(&mut self) {
        if let Some(f) = &self.wedge_file {
            // The test hook: block this thread, as a wedged loop would.
            while f.exists() {
                std::thread::park_timeout(Duration::from_millis(50));
            }
        }
        let Some(period) = self.watchdog else { return };
        // Twice per watchdog period, as sd_watchdog_enabled(3) advises.
        if self.last_ping.is_none_or(|t| t.elapsed() >= period / 2) {
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
            self.last_ping = Some(Instant::now());
        }
    }
}

/// Tells systemd the agent is stopping (STOPPING=1), so a slow drain is
/// not mistaken for a hang.
pub fn stopping() {
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
}
