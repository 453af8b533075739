//! Device telemetry as the agent uses it: rates and ETA from synthetic
//! publishers with known timestamps (no wall clock in any assertion),
//! resource figures from fixture sysfs trees of an Orin, a Xavier and a
//! machine without a GPU, NVML missing as it is on this machine, a real
//! child process measured by pid, and the wire encoding of absence.

mod util;

use std::path::{Path, PathBuf};
use std::time::Duration;

use trainwatch::proto;
use trainwatch::telemetry::{
    BatchSample, FpsTracker, ResourceSample, ResourceSampler, RunTotals, TelemetryConfig,
    TelemetryError,
};
use util::alloc::{allocations_in, Counting};

/// Counts allocations, to show the per-sample paths that promise it
/// allocate nothing.
#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn close(actual: Option<f32>, expected: f32) -> bool {
    actual.is_some_and(|a| (a - expected).abs() <= 1e-3 * expected.abs().max(1.0))
}

macro_rules! assert_close {
    ($actual:expr, $expected:expr) => {
        assert!(
            close($actual, $expected),
            "{} is {:?}, expected {}",
            stringify!($actual),
            $actual,
            $expected
        )
    };
}

const MS: u64 = 1_000_000;

mod fps {
    use super::*;

    /// A trainer publishing every batch at a fixed period; batch `k` (from
    /// 0) is published at `t0 + k * period`.
    struct Publisher {
        t0: u64,
        period: u64,
        batches_per_epoch: u32,
    }

    impl Publisher {
        /// What the agent reads at `now` (same monotonic clock).
        fn at(&self, now: u64) -> BatchSample {
            let k = (now - self.t0) / self.period;
            self.batch(k)
        }

        fn batch(&self, k: u64) -> BatchSample {
            BatchSample {
                published: k + 1,
                epoch: (k / u64::from(self.batches_per_epoch)) as u32,
                batch_idx: (k % u64::from(self.batches_per_epoch)) as u32,
                publish_ns: self.t0 + k * self.period,
            }
        }
    }

    const T0: u64 = 5_000 * MS;
    const RUN: RunTotals = RunTotals {
        total_epochs: 3,
        batches_per_epoch: 100,
    };

    fn fifty_per_second() -> Publisher {
        Publisher {
            t0: T0,
            period: 20 * MS,
            batches_per_epoch: 100,
        }
    }

    #[test]
    fn a_steady_publisher_sampled_irregularly_gives_its_exact_rate_and_eta() {
        let p = fifty_per_second();
        let mut t = FpsTracker::new(Duration::from_secs(2));
        // The agent looks at uneven moments, and only every few batches.
        let mut now = T0 + 7 * MS;
        let steps = [333, 290, 411, 120, 505, 77, 388];
        for i in 0.. {
            t.observe(now, p.at(now));
            if now >= T0 + 2_500 * MS {
                break;
            }
            now += steps[i % steps.len()] * MS;
        }
        let newest = p.at(now);
        assert_eq!(newest.epoch, 1, "the run is in its second epoch");

        let perf = t.performance(now, RUN);
        assert_close!(perf.current_fps, 50.0);
        assert_close!(perf.average_fps, 50.0);
        assert_close!(perf.time_per_batch_ms, 20.0);
        let done = 100 + newest.batch_idx + 1;
        assert_close!(perf.eta_sec, (300 - done) as f32 / 50.0);
        // Batch 0 of epoch 1 went out 100 periods after T0, between two
        // samples: the epoch's time is counted from it exactly.
        assert_close!(perf.epoch_time_sec, newest.batch_idx as f32 * 0.020);
        assert_eq!(perf.batches_published, Some(newest.published));
    }

    #[test]
    fn the_window_follows_a_change_of_rate_while_the_average_lags() {
        let mut t = FpsTracker::new(Duration::from_secs(2));
        // 4 s at 50/s (200 batches), then 100/s.
        let fast_from = T0 + 200 * 20 * MS;
        let sample = |now: u64| {
            let k = if now < fast_from {
                (now - T0) / (20 * MS)
            } else {
                200 + (now - fast_from) / (10 * MS)
            };
            let ts = if k < 200 {
                T0 + k * 20 * MS
            } else {
                fast_from + (k - 200) * 10 * MS
            };
            BatchSample {
                published: k + 1,
                epoch: (k / 1000) as u32,
                batch_idx: (k % 1000) as u32,
                publish_ns: ts,
            }
        };
        let mut now = T0;
        while now <= fast_from + 3_000 * MS {
            t.observe(now, sample(now));
            now += 250 * MS;
        }
        let perf = t.performance(now - 250 * MS, RunTotals::default());
        assert_close!(perf.current_fps, 100.0);
        assert_close!(perf.time_per_batch_ms, 10.0);
        // 500 batches in 7 s.
        assert_close!(perf.average_fps, 500.0 / 7.0);
        // Totals unknown: no ETA rather than a made-up one.
        assert_eq!(perf.eta_sec, None);
    }

    #[test]
    fn a_stalled_trainer_reads_zero_fps_after_one_window_and_keeps_its_eta() {
        let p = fifty_per_second();
        let mut t = FpsTracker::new(Duration::from_secs(2));
        let mut now = T0;
        while now <= T0 + 3_000 * MS {
            t.observe(now, p.at(now));
            now += 500 * MS;
        }
        let last = p.at(T0 + 3_000 * MS);
        // The trainer stops (a long validation pass, a pause); the agent
        // keeps looking and sees the same batch.
        t.observe(T0 + 4_000 * MS, last);
        assert_close!(t.performance(T0 + 4_000 * MS, RUN).current_fps, 50.0);
        t.observe(T0 + 5_500 * MS, last);
        let perf = t.performance(T0 + 5_500 * MS, RUN);
        assert_eq!(perf.current_fps, Some(0.0));
        assert_close!(perf.time_per_batch_ms, 20.0);
        assert_close!(perf.eta_sec, (300 - last.published) as f32 / 50.0);
    }

    #[test]
    fn before_two_samples_only_the_count_is_known() {
        let p = fifty_per_second();
        let mut t = FpsTracker::new(Duration::from_secs(2));
        assert_eq!(t.performance(T0, RUN), Default::default());
        t.observe(T0 + 100 * MS, p.at(T0 + 100 * MS));
        let perf = t.performance(T0 + 100 * MS, RUN);
        assert_eq!(perf.batches_published, Some(6));
        assert_eq!(perf.current_fps, None);
        assert_eq!(perf.average_fps, None);
        assert_eq!(perf.eta_sec, None);
        // Batch 5 of epoch 0 and no earlier sample: its start needs a rate.
        assert_eq!(perf.epoch_time_sec, None);
    }

    #[test]
    fn an_epoch_first_seen_midway_is_timed_from_the_rate() {
        let p = fifty_per_second();
        let mut t = FpsTracker::new(Duration::from_secs(2));
        t.observe(T0 + 800 * MS, p.batch(40));
        t.observe(T0 + 1_800 * MS, p.batch(90));
        // Batch 0 was 40 batches at 50/s before batch 40.
        assert_close!(t.performance(T0 + 1_800 * MS, RUN).epoch_time_sec, 1.8);
    }

    #[test]
    fn a_count_going_backwards_starts_afresh() {
        let p = fifty_per_second();
        let mut t = FpsTracker::new(Duration::from_secs(2));
        for k in [10, 60, 110] {
            t.observe(T0 + k * 20 * MS, p.batch(k));
        }
        let restarted = Publisher {
            t0: T0 + 10_000 * MS,
            ..fifty_per_second()
        };
        t.observe(T0 + 10_000 * MS, restarted.batch(0));
        let perf = t.performance(T0 + 10_000 * MS, RUN);
        assert_eq!(perf.batches_published, Some(1));
        assert_eq!(perf.average_fps, None);
        assert_eq!(perf.epoch_time_sec, Some(0.0));
    }

    #[test]
    fn observing_and_reporting_do_not_allocate_however_long_the_run() {
        let p = fifty_per_second();
        let mut t = FpsTracker::new(Duration::from_secs(2));
        let mut perf = Default::default();
        let n = allocations_in(|| {
            // 100,000 looks, many per batch, over 40,000 batches.
            for i in 0..100_000u64 {
                let now = T0 + i * 8 * MS;
                t.observe(now, p.at(now));
                perf = t.performance(now, RUN);
            }
        });
        assert_eq!(n, 0);
        assert_close!(perf.current_fps, 50.0);
    }
}

mod resources {
    use super::*;

    fn fixture(name: &str) -> PathBuf {
        util::repo_root().join("tests/fixtures").join(name)
    }

    /// Sysfs/proc from `root`, NVML off so the machine running the tests
    /// cannot change the answer.
    fn config(root: &Path) -> TelemetryConfig {
        TelemetryConfig {
            root: root.to_path_buf(),
            nvml: false,
            ..TelemetryConfig::default()
        }
        .validate()
        .unwrap()
    }

    /// Two samples: the second has CPU percentages.
    fn sample_twice(sampler: &mut ResourceSampler, pid: Option<u32>) -> ResourceSample {
        let first = sampler.sample(pid);
        assert_eq!(first.device_cpu_percent, None, "no CPU % before a delta");
        assert_eq!(first.process_cpu_percent, None, "no CPU % before a delta");
        // The interval the CPU shares are measured over (not a wait for an
        // event): the kernel's counters need real time to pass.
        std::thread::sleep(sysinfo_interval());
        sampler.sample(pid)
    }

    /// sysinfo's shortest CPU interval (200 ms), plus a margin.
    fn sysinfo_interval() -> Duration {
        Duration::from_millis(250)
    }

    fn assert_device_figures_present(s: &ResourceSample) {
        let cpu = s.device_cpu_percent.expect("device CPU %");
        assert!((0.0..=100.0).contains(&cpu), "device CPU {cpu}");
        let total = s.device_memory_total_mb.expect("device memory total");
        let used = s.device_memory_used_mb.expect("device memory used");
        assert!(
            total > 0.0 && used > 0.0 && used <= total,
            "{used} of {total}"
        );
    }

    #[test]
    fn an_orin_reports_load_clock_and_nvmap_memory_from_sysfs() {
        let mut sampler = ResourceSampler::new(&config(&fixture("orin")));
        let s = sample_twice(&mut sampler, None);
        assert_close!(s.gpu.percent, 45.7);
        assert_close!(s.gpu.frequency_mhz, 1300.5);
        assert_close!(s.gpu.memory_used_mb, 1024.0);
        assert_close!(s.gpu.memory_total_mb, 30_536_244.0 / 1024.0);
        assert_eq!(s.gpu.source(), "jetson-sysfs");
        // The decoy video-engine node is not taken for the GPU.
        let node = sampler.jetson().devfreq_node().unwrap();
        assert!(node.ends_with("17000000.ga10b"), "{node:?}");
        assert_device_figures_present(&s);
    }

    #[test]
    fn a_xavier_reports_the_same_figures_from_its_own_paths() {
        let mut sampler = ResourceSampler::new(&config(&fixture("xavier")));
        let s = sample_twice(&mut sampler, None);
        assert_close!(s.gpu.percent, 12.3);
        assert_close!(s.gpu.frequency_mhz, 114.75);
        assert_close!(s.gpu.memory_used_mb, 256.0);
        assert_close!(s.gpu.memory_total_mb, 15_817_816.0 / 1024.0);
        let load = sampler.jetson().load_file().unwrap();
        assert!(load.ends_with("sys/devices/gpu.0/load"), "{load:?}");
        assert_device_figures_present(&s);
    }

    #[test]
    fn a_machine_without_a_gpu_has_gpu_figures_absent_and_the_rest_present() {
        let mut sampler = ResourceSampler::new(&config(&fixture("none")));
        let s = sample_twice(&mut sampler, Some(std::process::id()));
        assert_eq!(s.gpu, Default::default());
        assert_eq!(sampler.jetson().devfreq_node(), None, "dmc is not a GPU");
        assert_device_figures_present(&s);
        assert!(s.process_cpu_percent.is_some() && s.process_memory_mb.unwrap() > 0.0);

        let wire = proto::ResourceUsage::from(&s);
        assert_eq!(wire.unavailable, ["gpu_percent", "gpu_memory_mb"]);
        assert_eq!((wire.gpu_percent, wire.gpu_memory_mb), (0.0, 0.0));
        assert_eq!(wire.gpu_frequency_mhz, None);
        assert_eq!(wire.gpu_memory_total_mb, None);
        assert_eq!(wire.gpu_source, "");
    }

    /// Copies a fixture tree into a temporary root the test may change.
    fn copy_tree(from: &Path, to: &Path) {
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            let dest = to.join(entry.file_name());
            if entry.file_type().unwrap().is_dir() {
                std::fs::create_dir_all(&dest).unwrap();
                copy_tree(&entry.path(), &dest);
            } else {
                std::fs::copy(entry.path(), dest).unwrap();
            }
        }
    }

    #[test]
    fn a_devfreq_node_that_appears_after_start_is_found_on_a_later_sample() {
        let root = tempfile::tempdir().unwrap();
        copy_tree(&fixture("orin"), root.path());
        let node = root.path().join("sys/class/devfreq/17000000.ga10b");
        let hidden = root.path().join("ga10b.later");
        std::fs::rename(&node, &hidden).unwrap();
        // A kernel without NvMap lines: memory in use is unknown, the
        // rest of the GPU figures are not affected.
        let meminfo = root.path().join("proc/meminfo");
        let text = std::fs::read_to_string(&meminfo).unwrap();
        let text: String = text
            .lines()
            .filter(|l| !l.starts_with("NvMap"))
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(&meminfo, text).unwrap();

        let cfg = TelemetryConfig {
            reprobe_every: 3,
            ..config(root.path())
        };
        let mut sampler = ResourceSampler::new(&cfg);
        let s = sampler.sample(None);
        assert_close!(s.gpu.percent, 45.7);
        assert_eq!(s.gpu.frequency_mhz, None);
        assert_eq!(s.gpu.memory_used_mb, None);
        assert_close!(s.gpu.memory_total_mb, 30_536_244.0 / 1024.0);

        // The GPU driver probes late.
        std::fs::rename(&hidden, &node).unwrap();
        // The sampler looks again on its 3rd sample.
        assert_eq!(sampler.sample(None).gpu.frequency_mhz, None);
        assert_close!(sampler.sample(None).gpu.frequency_mhz, 1300.5);
        assert_close!(sampler.sample(None).gpu.frequency_mhz, 1300.5);
    }

    #[test]
    fn without_nvml_the_gpu_figures_are_absent_and_everything_else_present() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("libnvidia-ml.so.1");
        let cfg = TelemetryConfig {
            root: fixture("none"),
            nvml: true,
            nvml_library: Some(missing.clone()),
            ..TelemetryConfig::default()
        }
        .validate()
        .unwrap();
        let mut sampler = ResourceSampler::new(&cfg);
        assert!(!sampler.has_nvml());
        match sampler.nvml_error() {
            Some(TelemetryError::NvmlUnavailable { library, .. }) => {
                assert_eq!(Path::new(library), missing)
            }
            other => panic!("expected NvmlUnavailable, got {other:?}"),
        }
        let s = sample_twice(&mut sampler, Some(std::process::id()));
        assert_eq!(s.gpu, Default::default());
        assert_device_figures_present(&s);
        assert!(s.process_cpu_percent.is_some());
        assert!(s.process_memory_mb.is_some());
    }

    #[test]
    fn the_default_nvml_library_opens_or_says_why_not() {
        // On a machine without the driver (CI) this reports why; on a GPU
        // machine it opens. Either way the sampler works.
        let cfg = TelemetryConfig {
            root: fixture("none"),
            ..TelemetryConfig::default()
        };
        let mut sampler = ResourceSampler::new(&cfg);
        assert_ne!(sampler.has_nvml(), sampler.nvml_error().is_some());
        if let Some(e) = sampler.nvml_error() {
            assert!(e.to_string().starts_with("NVML (libnvidia-ml.so"), "{e}");
        }
        assert_device_figures_present(&sample_twice(&mut sampler, None));
    }

    #[test]
    fn a_trainer_process_is_measured_by_pid_until_it_exits() {
        let mut child = std::process::Command::new("yes")
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("spawn yes");
        let pid = child.id();
        let mut sampler = ResourceSampler::new(&config(&fixture("none")));
        // `yes` spins through the whole measured interval.
        let second = sample_twice(&mut sampler, Some(pid));
        assert!(second.process_memory_mb.unwrap() > 0.0);
        let cpu = second.process_cpu_percent.expect("process CPU %");
        assert!(cpu > 5.0, "a spinning process used {cpu}% CPU");

        child.kill().unwrap();
        child.wait().unwrap();
        let gone = sampler.sample(Some(pid));
        assert_eq!(gone.process_cpu_percent, None);
        assert_eq!(gone.process_memory_mb, None);
        assert!(gone.device_memory_used_mb.is_some());
    }

    #[test]
    fn reading_jetson_sysfs_does_not_allocate_once_started() {
        let mut jetson = trainwatch::telemetry::gpu::JetsonGpu::new(&fixture("orin"), 1);
        let mut r = Default::default();
        jetson.read(&mut r);
        let n = allocations_in(|| {
            for _ in 0..100 {
                r = Default::default();
                jetson.read(&mut r);
            }
        });
        assert_eq!(n, 0);
        assert_close!(r.percent, 45.7);
    }
}

mod wire {
    use super::*;
    use trainwatch::server::validate;
    use trainwatch::telemetry::fps::Performance;
    use trainwatch::telemetry::GpuReading;

    fn jetson_sample() -> ResourceSample {
        ResourceSample {
            process_cpu_percent: Some(180.5),
            process_memory_mb: Some(2048.0),
            device_cpu_percent: Some(37.5),
            device_memory_used_mb: Some(6000.0),
            device_memory_total_mb: Some(30_000.0),
            gpu: GpuReading {
                percent: Some(45.7),
                memory_used_mb: None,
                memory_total_mb: Some(30_000.0),
                frequency_mhz: Some(1300.5),
                from_nvml: false,
                from_jetson: true,
            },
        }
    }

    #[test]
    fn absent_seed_figures_are_zero_and_named_and_read_back_as_absent() {
        let s = jetson_sample();
        let wire = proto::ResourceUsage::from(&s);
        assert_eq!(wire.cpu_percent, 180.5);
        assert_eq!(wire.gpu_memory_mb, 0.0);
        assert_eq!(wire.unavailable, ["gpu_memory_mb"]);
        assert_eq!(wire.gpu_frequency_mhz, Some(1300.5));
        assert_eq!(wire.gpu_source, "jetson-sysfs");
        assert_eq!(ResourceSample::from(&wire), s);

        let perf = Performance {
            current_fps: Some(50.0),
            average_fps: Some(48.0),
            time_per_batch_ms: Some(20.0),
            batches_published: Some(1234),
            ..Default::default()
        };
        let msg = perf.to_proto(1_700_000_000_000, Some(wire));
        assert_eq!(
            msg.unavailable,
            ["total_time_for_epoch_sec", "estimated_time_remaining_sec"]
        );
        assert_eq!(Performance::from(&msg), perf);
        validate::performance(&msg).unwrap();
    }

    #[test]
    fn a_seed_peers_message_has_every_seed_figure_present_and_no_others() {
        let seed = proto::ResourceUsage {
            cpu_percent: 12.0,
            memory_mb: 300.0,
            gpu_percent: 0.0,
            gpu_memory_mb: 0.0,
            ..Default::default()
        };
        let s = ResourceSample::from(&seed);
        assert_eq!(s.gpu.percent, Some(0.0));
        assert_eq!(s.device_cpu_percent, None);
        assert_eq!(s.gpu.frequency_mhz, None);
    }

    #[test]
    fn the_server_refuses_inconsistent_absence_naming_the_field() {
        let ok = || {
            Performance::default().to_proto(1, Some(proto::ResourceUsage::from(&jetson_sample())))
        };
        validate::performance(&ok()).unwrap();

        let mut m = ok();
        m.unavailable.push("current_fps".into());
        let e = validate::performance(&m).unwrap_err().0;
        assert!(e.contains("names \"current_fps\" twice"), "{e}");

        let mut m = ok();
        m.resource_usage
            .as_mut()
            .unwrap()
            .unavailable
            .push("gpu_temperature".into());
        let e = validate::performance(&m).unwrap_err().0;
        assert!(
            e.contains("resource_usage.unavailable[1] is \"gpu_temperature\""),
            "{e}"
        );

        let mut m = ok();
        m.resource_usage.as_mut().unwrap().gpu_memory_mb = 5.0;
        let e = validate::performance(&m).unwrap_err().0;
        assert!(
            e.contains("gpu_memory_mb is 5 but named unavailable"),
            "{e}"
        );

        let mut m = ok();
        m.resource_usage.as_mut().unwrap().gpu_frequency_mhz = Some(f32::NAN);
        let e = validate::performance(&m).unwrap_err().0;
        assert!(e.contains("resource_usage.gpu_frequency_mhz is NaN"), "{e}");
    }
}

mod config {
    use super::*;

    #[test]
    fn the_sampler_and_tracker_can_move_into_an_agent_task() {
        fn send<T: Send + 'static>() {}
        send::<ResourceSampler>();
        send::<FpsTracker>();
    }

    #[test]
    fn defaults_are_valid_and_bad_values_are_named() {
        assert!(TelemetryConfig::default().validate().is_ok());
        let bad = |c: TelemetryConfig| c.validate().unwrap_err().to_string();
        let e = bad(TelemetryConfig {
            interval: Duration::from_millis(10),
            ..Default::default()
        });
        assert_eq!(
            e,
            "telemetry.interval = 10ms: expected between 100 ms and 1 hour"
        );
        let e = bad(TelemetryConfig {
            root: "sys".into(),
            ..Default::default()
        });
        assert_eq!(e, "telemetry.root = \"sys\": expected an absolute path");
        let e = bad(TelemetryConfig {
            reprobe_every: 0,
            ..Default::default()
        });
        assert!(e.starts_with("telemetry.reprobe_every = 0"), "{e}");
    }
}
