//! The wire protocol, generated from `proto/metrics.proto` by build.rs.
//!
//! Everything a peer needs besides the generated types lives here: the
//! wall-clock timestamp every message carries, the session-id rule, and the
//! [`negotiated`] defaults and clamps of a `ServerConfig`, so the agent and
//! the server's defaults cannot drift apart.

#[allow(clippy::all, missing_docs)]
mod generated {
    tonic::include_proto!("metrics");
}
pub use generated::*;

pub use self::metrics_service_client::MetricsServiceClient;
pub use self::metrics_service_server::{MetricsService, MetricsServiceServer};

/// Milliseconds since the Unix epoch, the unit of every `timestamp_ms`.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The session id of a run: `device:run.hash:start_ms`, where `device`
/// and `run` are readable prefixes (48 and 40 characters, `run` with every
/// character outside `[A-Za-z0-9._-]` as `_`), `hash` is 10 hex digits of
/// a SHA-256 of the full device id, run name and the writer's start time
/// in nanoseconds, and `start_ms` that start in milliseconds. So runs named
/// alike beyond the readable part or started in the same second are
/// distinct sessions, a name reused later is a new one, and an agent
/// restart, reading the same segment header, finds the same one.
pub fn session_id(device_id: &str, run_name: &str, writer_start_unix_ns: u64) -> String {
    let run: String = run_name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .take(ID_RUN_CHARS)
        .collect();
    let device: String = device_id.chars().take(ID_DEVICE_CHARS).collect();
    let mut h = ring::digest::Context::new(&ring::digest::SHA256);
    for part in [device_id.as_bytes(), b"\0", run_name.as_bytes(), b"\0"] {
        h.update(part);
    }
    h.update(&writer_start_unix_ns.to_le_bytes());
    let hash: String = h.finish().as_ref()[..ID_HASH_HEX / 2]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{device}:{run}.{hash}:{}", writer_start_unix_ns / 1_000_000)
}

/// Readable characters of the device and the run in a session id, and the
/// hex digits of its hash: 48 + 40 + 10 + 20 for the start and separators
/// stay within [`MAX_SESSION_ID_LEN`].
const ID_DEVICE_CHARS: usize = 48;
const ID_RUN_CHARS: usize = 40;
const ID_HASH_HEX: usize = 10;

/// The device and run name an agent's session id (see [`session_id`])
/// carries, the run without its hash; `None` for an id of another shape (a
/// seed peer names its sessions as it likes).
pub fn session_parts(id: &str) -> Option<(&str, &str)> {
    let (device, rest) = id.split_once(':')?;
    let (run, start) = rest.rsplit_once(':')?;
    // Ids of agents before the hash was added have none.
    let run = match run.rsplit_once('.') {
        Some((name, hash))
            if hash.len() == ID_HASH_HEX && hash.bytes().all(|b| b.is_ascii_hexdigit()) =>
        {
            name
        }
        _ => run,
    };
    let plausible = !device.is_empty()
        && !run.is_empty()
        && !start.is_empty()
        && start.bytes().all(|b| b.is_ascii_digit());
    plausible.then_some((device, run))
}

/// The largest event or point number an agent sends: a segment's counters
/// never pass it (`shm::layout::MAX_SEQ`), so a number beyond is a forgery
/// or a bug, refused before it can move what the server has accepted.
pub const MAX_SEQ: u64 = 1 << 62;

/// Longest session id accepted.
pub const MAX_SESSION_ID_LEN: usize = 128;

/// The rule for a session id, on both sides: 1–128 characters of
/// `[A-Za-z0-9._:-]`, safe in URLs, file names and log lines. The error
/// names what is wrong and the id (its first 40 characters).
pub fn check_session_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("session_id is empty".into());
    }
    if id.len() > MAX_SESSION_ID_LEN {
        return Err(format!(
            "session_id is {} bytes long, more than {MAX_SESSION_ID_LEN}",
            id.len()
        ));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')))
    {
        let shown: String = id.chars().take(40).collect();
        return Err(format!(
            "session_id {shown:?} contains {c:?}; allowed are letters, digits, '.', '_', ':' and '-'"
        ));
    }
    Ok(())
}

/// What a `ServerConfig` settles between agent and server: the defaults the
/// server answers (the seed server's own values) and how the agent reads an
/// answer, where 0 (a field the peer left unset) means the default.
pub mod negotiated {
    use std::time::Duration;

    use super::ServerConfig;

    /// Heartbeat period: the seed's.
    pub const HEARTBEAT_INTERVAL_MS: u32 = 2000;
    /// Heartbeat periods the agent accepts: faster floods the stream,
    /// slower leaves a dead stream unnoticed for too long.
    pub const HEARTBEAT_INTERVAL_MS_MIN: u32 = 100;
    pub const HEARTBEAT_INTERVAL_MS_MAX: u32 = 600_000;
    /// Images per batch: the seed's.
    pub const MAX_BATCH_SIZE: u32 = 16;
    /// Largest image side: the seed's.
    pub const MAX_IMAGE_DIMENSION: u32 = 512;
    /// Messages a session may have waiting on the server: the seed's.
    pub const BUFFER_SIZE: u32 = 100;

    /// A `ServerConfig` as the agent applies it.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Negotiated {
        pub heartbeat: Duration,
        /// Images per batch sent.
        pub max_images: usize,
        /// Largest image side sent, as the server gave it.
        pub max_dim: u32,
    }

    impl Negotiated {
        /// Reads `sc`: unset fields take the defaults, the heartbeat is
        /// clamped to what the agent accepts.
        pub fn from_server(sc: &ServerConfig) -> Negotiated {
            let heartbeat_ms = if sc.heartbeat_interval_ms == 0 {
                HEARTBEAT_INTERVAL_MS
            } else {
                sc.heartbeat_interval_ms
                    .clamp(HEARTBEAT_INTERVAL_MS_MIN, HEARTBEAT_INTERVAL_MS_MAX)
            };
            let max_batch = if sc.max_batch_size == 0 {
                MAX_BATCH_SIZE
            } else {
                sc.max_batch_size
            };
            Negotiated {
                heartbeat: Duration::from_millis(u64::from(heartbeat_ms)),
                max_images: max_batch as usize,
                max_dim: sc.max_image_dimension,
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn unset_fields_take_the_defaults_and_the_heartbeat_is_clamped() {
            let n = Negotiated::from_server(&ServerConfig::default());
            assert_eq!(n.heartbeat, Duration::from_millis(2000));
            assert_eq!((n.max_images, n.max_dim), (16, 0));
            let sc = |hb| ServerConfig {
                heartbeat_interval_ms: hb,
                max_batch_size: 4,
                max_image_dimension: 128,
                buffer_size: 7,
            };
            let n = Negotiated::from_server(&sc(5));
            assert_eq!(n.heartbeat, Duration::from_millis(100));
            assert_eq!((n.max_images, n.max_dim), (4, 128));
            let n = Negotiated::from_server(&sc(u32::MAX));
            assert_eq!(n.heartbeat, Duration::from_millis(600_000));
            assert_eq!(
                Negotiated::from_server(&sc(750)).heartbeat,
                Duration::from_millis(750)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_agents_session_id_gives_back_its_device_and_run() {
        let id = session_id("jetson-7", "resnet:sweep/3", 1_700_000_000_123_000_000);
        let (readable, hash) = id.rsplit_once(':').unwrap().0.rsplit_once('.').unwrap();
        assert_eq!(readable, "jetson-7:resnet_sweep_3");
        assert!(
            hash.len() == 10 && hash.bytes().all(|b| b.is_ascii_hexdigit()),
            "{id}"
        );
        assert!(id.ends_with(":1700000000123"), "{id}");
        assert_eq!(session_parts(&id), Some(("jetson-7", "resnet_sweep_3")));
        // An id from an agent before the hash.
        assert_eq!(
            session_parts("jetson-7:resnet_sweep_3:1700000000"),
            Some(("jetson-7", "resnet_sweep_3"))
        );
        for other in ["seed-session", "a:b", ":run:1", "dev::1", "dev:run:x"] {
            assert_eq!(session_parts(other), None, "{other}");
        }
    }

    #[test]
    fn distinct_runs_get_distinct_ids_that_stay_the_same_across_restarts() {
        // A sweep: names sharing more than the readable part, started in
        // the same second (issue 15 item 2).
        let prefix = "sweep_resnet18_cifar10_".repeat(4);
        let t = 1_700_000_000_123_000_000;
        let a = session_id("jetson-7", &format!("{prefix}lr0.1"), t);
        let b = session_id("jetson-7", &format!("{prefix}lr0.2"), t);
        assert_ne!(a, b);
        assert_eq!(a, session_id("jetson-7", &format!("{prefix}lr0.1"), t));
        // The same name started again within the second.
        assert_ne!(session_id("d", "r", t), session_id("d", "r", t + 1_000));
        // Devices named alike beyond the readable part.
        let dev = "edge-".repeat(12);
        assert_ne!(
            session_id(&format!("{dev}1"), "r", t),
            session_id(&format!("{dev}2"), "r", t)
        );
        let long = session_id(&"d".repeat(300), &"r".repeat(500), u64::MAX);
        for id in [&a, &b, &long] {
            assert_eq!(check_session_id(id), Ok(()), "{id}");
        }
        // The readable parts come back without the hash.
        let (device, run) = session_parts(&a).unwrap();
        assert_eq!(device, "jetson-7");
        assert!(prefix.starts_with(run) && run.len() >= 32, "{run}");
    }
}
