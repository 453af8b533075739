//! The shared-memory segment: format, bad input, events, control, liveness,
//! image policy, cross-language round trips, `inspect`, and a stress test.
//! Issue 3.

mod util;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command as Process, Output, Stdio};
use std::sync::mpsc;

use tempfile::TempDir;
use trainwatch::shm::layout::{self, control, event, frame, hdr};
use trainwatch::shm::{
    Batch, CommandKind, Event, EventRead, Frame, FrameRead, ImagePolicy, Images, PointRecord,
    PointsRead, Published, Reader, RunConfig, SendOutcome, ShmError, TrainingStatus, Writer,
    WriterOptions, WriterState, LOSS_KEY,
};
use trainwatch::tensor::{DType, Layout, Normalization, TensorDesc};
use util::alloc::{thread_allocations as allocs, Counting};
use util::TEST_TIMEOUT;

// ---------------------------------------------------------------- helpers

/// Counts allocations, to show the hot paths make none.
#[global_allocator]
static GLOBAL: Counting = Counting;

/// A segment directory on tmpfs when there is one (as in production), else
/// the system temp dir. Never the real /dev/shm/trainwatch.
fn shm_dir() -> TempDir {
    tempfile::Builder::new()
        .prefix("trainwatch-test-")
        .tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .expect("temp dir")
}

fn config(name: &str) -> RunConfig {
    RunConfig {
        run_name: name.into(),
        model_name: "resnet18".into(),
        dataset_name: "cifar10".into(),
        class_names: vec!["cat".into(), "dog".into(), "ünïcode".into()],
        total_epochs: 10,
        batches_per_epoch: 500,
        batch_size: 64,
    }
}

/// Small rings so tests stay light on tmpfs.
fn opts(dir: &Path) -> WriterOptions {
    let mut o = WriterOptions::new(dir);
    o.frame_capacity = 64 * 1024;
    o.event_slots = 64;
    o.control_slots = 4;
    o.image_policy = ImagePolicy::Always;
    o
}

fn desc(dtype: DType, layout: Layout, count: u32, c: u32, h: u32, w: u32) -> TensorDesc {
    TensorDesc {
        dtype,
        layout,
        count,
        channels: c,
        height: h,
        width: w,
        normalization: None,
    }
}

fn pattern(len: usize, seed: u64) -> Vec<u8> {
    (0..len)
        .map(|i| (seed.wrapping_mul(31).wrapping_add(i as u64 * 7) % 251) as u8)
        .collect()
}

fn batch<'a>(epoch: u32, idx: u32, images: Option<Images<'a>>, preds: &'a [i32]) -> Batch<'a> {
    Batch {
        epoch,
        batch_idx: idx,
        loss: 0.25 + epoch as f32,
        predictions: preds,
        confidences: &[0.5, 0.25, 0.125, 1.0][..preds.len()],
        labels: &[3, 2, 1, 0][..preds.len()],
        images,
    }
}

/// A valid segment image: 2 frames, 3 events; returns (bytes, reader of it).
fn valid_image(dir: &Path) -> (Vec<u8>, PathBuf) {
    let mut w = Writer::create(&config("valid"), &opts(dir)).unwrap();
    let d = desc(DType::U8, Layout::Nchw, 2, 3, 8, 8);
    let data = pattern(d.total_bytes(), 1);
    for i in 0..2 {
        w.publish_frame(&batch(
            i,
            i,
            Some(Images {
                desc: d,
                data: &data,
            }),
            &[1, 2],
        ))
        .unwrap();
    }
    w.publish_status(TrainingStatus::Running, "go");
    w.publish_epoch(0, 0.5, 0.75);
    w.publish_status(TrainingStatus::Completed, "done");
    let path = w.path().to_owned();
    std::mem::forget(w); // keep it "open": no close flag written
    (std::fs::read(&path).unwrap(), path)
}

fn put_u32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

fn put_u64(b: &mut [u8], off: usize, v: u64) {
    b[off..off + 8].copy_from_slice(&v.to_le_bytes());
}

fn open_err(name: &str, bytes: &[u8]) -> String {
    match Reader::from_bytes(Path::new(name), bytes) {
        Ok(_) => panic!("{name}: accepted a bad segment"),
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.starts_with(&format!("segment {name}: ")), "{msg}");
            msg
        }
    }
}

fn python(dir: &Path, args: &[&str]) -> Process {
    let mut cmd = Process::new(util::python());
    cmd.arg(util::repo_root().join("tests/python/shm_publish.py"))
        .args(args)
        .env("TRAINWATCH_LIB", util::procs::lib_path())
        .env("TRAINWATCH_SHM_DIR", dir)
        .env("PYTHONPATH", util::repo_root().join("python"))
        .env("PYTHONDONTWRITEBYTECODE", "1");
    cmd
}

/// Waits for a child's output, failing the test after TEST_TIMEOUT.
fn output_bounded(mut cmd: Process) -> Output {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output()));
    match rx.recv_timeout(TEST_TIMEOUT) {
        Ok(out) => out.expect("wait"),
        Err(_) => {
            let _ = Process::new("kill").arg(pid.to_string()).status();
            panic!("child {pid} ran past {TEST_TIMEOUT:?}");
        }
    }
}

/// Line-by-line view of a child's stdout with a deadline per line.
struct Lines {
    rx: mpsc::Receiver<String>,
}

impl Lines {
    fn new(child: &mut Child) -> Lines {
        let out = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Lines { rx }
    }
    fn next(&self) -> String {
        self.rx
            .recv_timeout(TEST_TIMEOUT)
            .expect("a line from the child in time")
    }
}

fn skip_without_numpy() -> bool {
    let ok = Process::new(util::python())
        .args(["-c", "import numpy"])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!(
            "skipped: {} has no numpy (run scripts/test.sh)",
            util::python().display()
        );
    }
    !ok
}

fn all_events(r: &mut Reader) -> Vec<EventRead> {
    let mut out = Vec::new();
    while let Some(e) = r.next_event().unwrap() {
        out.push(e);
    }
    out
}

fn seqs(events: &[EventRead]) -> Vec<u64> {
    events
        .iter()
        .filter_map(|e| match e {
            EventRead::Event { seq, .. } => Some(*seq),
            EventRead::Missed { .. } => None,
        })
        .collect()
}

// ---------------------------------------------------------------- format

mod format {
    use super::*;

    #[test]
    fn every_field_round_trips() {
        let dir = shm_dir();
        let cfg = config("run1");
        let mut w = Writer::create(&cfg, &opts(dir.path())).unwrap();
        let mut d = desc(DType::F32, Layout::Nhwc, 3, 3, 5, 7);
        d.normalization = Some(Normalization {
            mean: [0.1, 0.2, 0.3],
            std: [0.4, 0.5, 0.6],
        });
        let data = pattern(d.total_bytes(), 9);
        let f = w
            .publish_frame(&batch(
                4,
                17,
                Some(Images {
                    desc: d,
                    data: &data,
                }),
                &[7, 8, 9],
            ))
            .unwrap();
        assert_eq!(f, 1);

        let mut r = Reader::open(w.path()).unwrap();
        assert_eq!(r.config(), &cfg);
        let mut out = Frame::default();
        assert_eq!(r.latest_frame(&mut out).unwrap(), FrameRead::New);
        assert_eq!(
            (out.frame_no, out.epoch, out.batch_idx, out.loss),
            (1, 4, 17, 4.25)
        );
        assert_eq!(out.predictions(), &[7, 8, 9]);
        assert_eq!(out.confidences(), &[0.5, 0.25, 0.125]);
        assert_eq!(out.labels(), &[3, 2, 1]);
        assert_eq!(out.images, Some(d));
        assert_eq!(out.image_bytes(), &data[..]);
        assert!(out.timestamp_unix_ns > 1_600_000_000_000_000_000);
        assert_eq!(r.latest_frame(&mut out).unwrap(), FrameRead::Unchanged);

        w.publish_frame(&batch(5, 0, None, &[])).unwrap();
        assert_eq!(r.latest_frame(&mut out).unwrap(), FrameRead::New);
        assert_eq!((out.frame_no, out.epoch, out.images), (2, 5, None));
        assert!(out.image_bytes().is_empty() && out.predictions().is_empty());
        let p = r.progress().unwrap();
        assert_eq!((p.epoch, p.batch_idx, p.loss), (5, 0, 5.25));
        let h = r.header();
        assert_eq!(
            (h.version, h.frames_published, h.batches_seen),
            (layout::VERSION, 2, 2)
        );
        assert_eq!(h.writer_pid, std::process::id());
    }

    #[test]
    fn nothing_before_the_first_frame() {
        let dir = shm_dir();
        let w = Writer::create(&config("empty"), &opts(dir.path())).unwrap();
        let mut r = Reader::open(w.path()).unwrap();
        assert_eq!(
            r.latest_frame(&mut Frame::default()).unwrap(),
            FrameRead::Nothing
        );
        assert_eq!(r.progress(), None);
        assert_eq!(r.next_event().unwrap(), None);
    }

    #[test]
    fn images_beyond_capacity_or_sixteen_are_dropped_and_counted() {
        let dir = shm_dir();
        let mut o = opts(dir.path());
        o.frame_capacity = 2 * 3 * 8 * 8; // two u8 images
        let mut w = Writer::create(&config("cap"), &o).unwrap();
        let d = desc(DType::U8, Layout::Nchw, 5, 3, 8, 8);
        let data = pattern(d.total_bytes(), 3);
        let preds: Vec<i32> = (0..20).collect();
        let b = Batch {
            epoch: 0,
            batch_idx: 0,
            loss: 1.0,
            predictions: &preds,
            confidences: &[0.5; 20],
            labels: &preds,
            images: Some(Images {
                desc: d,
                data: &data,
            }),
        };
        w.publish_frame(&b).unwrap();
        let mut r = Reader::open(w.path()).unwrap();
        let mut out = Frame::default();
        r.latest_frame(&mut out).unwrap();
        assert_eq!(out.images.unwrap().count, 2);
        assert_eq!(out.image_bytes(), &data[..2 * 3 * 8 * 8]);
        assert_eq!(out.predictions().len(), layout::MAX_IMAGES);
        assert_eq!(r.header().images_dropped, 3);
    }

    #[test]
    fn writer_rejects_a_descriptor_that_does_not_match_its_bytes() {
        let dir = shm_dir();
        let mut w = Writer::create(&config("bad"), &opts(dir.path())).unwrap();
        let d = desc(DType::F32, Layout::Nchw, 2, 3, 4, 4);
        let short = vec![0u8; d.total_bytes() - 1];
        let e = w
            .publish_frame(&batch(
                0,
                0,
                Some(Images {
                    desc: d,
                    data: &short,
                }),
                &[],
            ))
            .unwrap_err();
        assert!(e.to_string().contains("bytes given"), "{e}");
        let two = desc(DType::U8, Layout::Nchw, 1, 2, 4, 4);
        let data = vec![0u8; two.total_bytes()];
        let e = w
            .publish_frame(&batch(
                0,
                0,
                Some(Images {
                    desc: two,
                    data: &data,
                }),
                &[],
            ))
            .unwrap_err();
        assert!(
            e.to_string().contains("channels is 2, expected 1 or 3"),
            "{e}"
        );
        let e = w
            .publish_frame(&Batch {
                confidences: &[],
                ..batch(0, 0, None, &[1])
            })
            .unwrap_err();
        assert!(e.to_string().contains("expected equal counts"), "{e}");
    }

    /// Issue 20: a u8 tensor with mean/std passed the writer and the
    /// reader, then failed in the agent's pipeline on every frame. The one
    /// tensor rule refuses it when it is published, naming the field.
    #[test]
    fn a_normalized_u8_tensor_is_refused_at_publish() {
        let dir = shm_dir();
        let mut w = Writer::create(&config("u8norm"), &opts(dir.path())).unwrap();
        let d = TensorDesc {
            normalization: Some(Normalization {
                mean: [0.5; 3],
                std: [0.25; 3],
            }),
            ..desc(DType::U8, Layout::Nchw, 1, 3, 4, 4)
        };
        let data = vec![0u8; d.total_bytes()];
        let e = w
            .publish_frame(&batch(
                0,
                0,
                Some(Images {
                    desc: d,
                    data: &data,
                }),
                &[],
            ))
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("has_norm is 1 with dtype u8, expected 0"),
            "{e}"
        );
        assert!(
            !e.is_corrupt(),
            "the caller's mistake, not a bad segment: {e}"
        );
        let r = Reader::open(w.path()).unwrap();
        assert_eq!(r.header().frames_published, 0);
    }

    #[test]
    fn run_names_are_plain_file_names() {
        let dir = shm_dir();
        for bad in ["", ".hidden", "a/b", "../x", "sp ace"] {
            let e = Writer::create(&config(bad), &opts(dir.path()))
                .err()
                .unwrap();
            assert!(matches!(e, ShmError::InvalidArgument(_)), "{bad:?}: {e}");
        }
    }

    #[test]
    fn a_new_run_of_the_same_name_replaces_the_old_segment() {
        let dir = shm_dir();
        let mut w1 = Writer::create(&config("same"), &opts(dir.path())).unwrap();
        w1.publish_epoch(1, 1.0, 1.0);
        let w2 = Writer::create(&config("same"), &opts(dir.path())).unwrap();
        let r = Reader::open(w2.path()).unwrap();
        assert_eq!(r.header().events_published, 0);
        // No temporary file is left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("same")]);
    }
}

// ---------------------------------------------------------------- bad input

mod bad_input {
    use super::*;

    #[test]
    fn truncated_file() {
        let dir = shm_dir();
        let (bytes, _) = valid_image(dir.path());
        let msg = open_err("t1", &bytes[..100]);
        assert!(
            msg.contains("file is 100 bytes, shorter than the 4096-byte header"),
            "{msg}"
        );
        let msg = open_err("t2", &bytes[..bytes.len() - 4096]);
        assert!(msg.contains("header total_size is"), "{msg}");
    }

    #[test]
    fn wrong_magic_names_the_value() {
        let dir = shm_dir();
        let (mut bytes, _) = valid_image(dir.path());
        put_u64(&mut bytes, hdr::MAGIC, 0);
        let msg = open_err("m", &bytes);
        assert_eq!(
            msg,
            "segment m: header magic is 0x0000000000000000, expected 0x48435441574e5254 (\"TRNWATCH\")"
        );
    }

    #[test]
    fn future_version() {
        let dir = shm_dir();
        let (mut bytes, _) = valid_image(dir.path());
        put_u32(&mut bytes, hdr::VERSION, 3);
        let msg = open_err("v", &bytes);
        assert!(msg.contains("header version is 3, expected 1..=2"), "{msg}");
    }

    #[test]
    fn counts_beyond_capacity() {
        let dir = shm_dir();
        let (bytes, _) = valid_image(dir.path());
        let cases: [(usize, u32, &str); 4] = [
            (hdr::FRAME_SLOTS, 1000, "header frame_slots is 1000"),
            (hdr::EVENT_SLOTS, 0, "header event_slots is 0"),
            (
                hdr::CONTROL_SLOTS,
                1 << 20,
                "header control_slots is 1048576",
            ),
            (hdr::CONFIG_LEN, u32::MAX, "header config_len is 4294967295"),
        ];
        for (off, v, want) in cases {
            let mut b = bytes.clone();
            put_u32(&mut b, off, v);
            let msg = open_err("c", &b);
            assert!(msg.contains(want), "{msg}");
        }
        let mut b = bytes.clone();
        put_u64(&mut b, hdr::FRAMES_OFFSET, bytes.len() as u64 - 64);
        assert!(open_err("o", &b).contains("header frame ring end is"));
        let mut b = bytes.clone();
        put_u64(&mut b, hdr::EVENT_ACK_SEQ, 99);
        assert!(open_err("a", &b)
            .contains("header event_ack_seq is 99, expected at most event_write_seq 3"));
    }

    #[test]
    fn corrupt_config() {
        let dir = shm_dir();
        let (bytes, _) = valid_image(dir.path());
        let cfg = layout::HEADER_SIZE;
        let mut b = bytes.clone();
        put_u32(&mut b, cfg + 12, 1 << 30); // run_name length
        assert!(open_err("cfg", &b).contains("config run_name length is 1073741824"));
        let mut b = bytes.clone();
        let name_len = "valid".len();
        b[cfg + 16] = 0xff; // run_name's first byte
        assert!(
            open_err("cfg", &b).contains("config run_name is not UTF-8"),
            "{name_len}"
        );
    }

    #[test]
    fn frame_slot_with_impossible_sizes() {
        let dir = shm_dir();
        let (bytes, _) = valid_image(dir.path());
        let r = Reader::from_bytes(Path::new("s"), &bytes).unwrap();
        let slot = r.geometry().frame_slot(2);
        let cases: [(usize, u64, &str); 6] = [
            (
                frame::DATA_LEN,
                1 << 40,
                "frame 2 data_len is 1099511627776, expected 384",
            ),
            (
                frame::IMAGE_COUNT,
                17,
                "frame 2 image_count is 17, expected at most 16",
            ),
            (frame::SAMPLE_COUNT, 99, "frame 2 sample_count is 99"),
            (frame::CHANNELS, 2, "frame 2 channels is 2, expected 1 or 3"),
            (frame::DTYPE, 9, "frame 2 dtype is 9"),
            (frame::HEIGHT, 0, "frame 2 height is 0"),
        ];
        for (off, v, want) in cases {
            let mut b = bytes.clone();
            if off == frame::DATA_LEN {
                put_u64(&mut b, slot + off, v);
            } else {
                put_u32(&mut b, slot + off, v as u32);
            }
            let mut r = Reader::from_bytes(Path::new("s"), &b).unwrap();
            let e = r.latest_frame(&mut Frame::default()).unwrap_err();
            assert!(e.to_string().contains(want), "{e}");
            assert!(e.is_corrupt());
        }
        // Data that would overrun the slot even though it matches its shape.
        let mut b = bytes.clone();
        put_u32(&mut b, slot + frame::HEIGHT, 4096);
        put_u32(&mut b, slot + frame::WIDTH, 4096);
        put_u64(&mut b, slot + frame::DATA_LEN, 2 * 3 * 4096 * 4096);
        let mut r = Reader::from_bytes(Path::new("s"), &b).unwrap();
        let e = r.latest_frame(&mut Frame::default()).unwrap_err();
        assert!(
            e.to_string().contains("expected at most the slot capacity"),
            "{e}"
        );
    }

    /// The reader applies the same tensor rule as the writer: a slot
    /// whose u8 images claim mean/std is corrupt, not a frame that fails
    /// later in the pipeline.
    #[test]
    fn a_stored_normalized_u8_tensor_is_corrupt() {
        let dir = shm_dir();
        let (bytes, _) = valid_image(dir.path());
        let r = Reader::from_bytes(Path::new("s"), &bytes).unwrap();
        let slot = r.geometry().frame_slot(2);
        let mut b = bytes.clone();
        put_u32(&mut b, slot + frame::HAS_NORM, 1);
        for i in 0..3 {
            put_u32(&mut b, slot + frame::MEAN + 4 * i, 0.5f32.to_bits());
            put_u32(&mut b, slot + frame::STD + 4 * i, 0.25f32.to_bits());
        }
        let mut r = Reader::from_bytes(Path::new("s"), &b).unwrap();
        let e = r.latest_frame(&mut Frame::default()).unwrap_err();
        assert!(
            e.to_string()
                .contains("frame 2 has_norm is 1 with dtype u8, expected 0"),
            "{e}"
        );
        assert!(e.is_corrupt());
    }

    #[test]
    fn a_slot_being_rewritten_is_never_used() {
        let dir = shm_dir();
        let (mut bytes, _) = valid_image(dir.path());
        let r = Reader::from_bytes(Path::new("w"), &bytes).unwrap();
        // Frame 2's slot, as the writer leaves it while it writes frame 4
        // (3 slots: frame 5 reuses it; 2*5-1 marks "being written").
        let slot = r.geometry().frame_slot(2);
        assert_eq!(slot, r.geometry().frame_slot(5));
        put_u64(&mut bytes, slot + frame::SEQ, 2 * 5 - 1);
        let mut r = Reader::from_bytes(Path::new("w"), &bytes).unwrap();
        assert_eq!(
            r.latest_frame(&mut Frame::default()).unwrap(),
            FrameRead::Busy
        );
        // A sequence word from the past is corruption, and named.
        put_u64(&mut bytes, slot + frame::SEQ, 2);
        let mut r = Reader::from_bytes(Path::new("w"), &bytes).unwrap();
        let e = r.latest_frame(&mut Frame::default()).unwrap_err();
        assert!(
            e.to_string()
                .contains("frame slot for frame 2 seq is 2, expected 4"),
            "{e}"
        );
    }

    #[test]
    fn corrupt_event_is_reported_once_then_skipped() {
        let dir = shm_dir();
        let (mut bytes, _) = valid_image(dir.path());
        let r = Reader::from_bytes(Path::new("e"), &bytes).unwrap();
        let slot = r.geometry().event_slot(2);
        put_u32(&mut bytes, slot + event::KIND, 9);
        let mut r = Reader::from_bytes(Path::new("e"), &bytes).unwrap();
        assert!(matches!(
            r.next_event().unwrap(),
            Some(EventRead::Event { seq: 1, .. })
        ));
        let e = r.next_event().unwrap_err();
        assert!(e.to_string().contains("event 2 kind is 9"), "{e}");
        assert!(matches!(
            r.next_event().unwrap(),
            Some(EventRead::Event { seq: 3, .. })
        ));
    }

    #[test]
    fn random_bytes() {
        let mut b = pattern(10_000, 5);
        assert!(open_err("r", &b).contains("header magic is"));
        b[..8].copy_from_slice(&layout::MAGIC.to_le_bytes());
        assert!(open_err("r", &b).contains("header version is"));
    }
}

// ---------------------------------------------------------------- fuzz

/// The reader's parsing under arbitrary and mutated input (cargo-fuzz
/// harness of the same: fuzz/fuzz_targets/segment.rs).
mod fuzz {
    use super::*;
    use proptest::prelude::*;
    use std::sync::OnceLock;

    fn exercise(bytes: &[u8]) {
        trainwatch::shm::inspect::fuzz_exercise(bytes);
    }

    fn valid() -> &'static Vec<u8> {
        static V: OnceLock<Vec<u8>> = OnceLock::new();
        V.get_or_init(|| {
            let dir = shm_dir();
            valid_image(dir.path()).0
        })
    }

    proptest! {
        // 128 cases in CI; PROPTEST_CASES=100000 for a longer hunt.
        #![proptest_config(ProptestConfig {
            cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(128),
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..9000)) {
            exercise(&bytes);
        }

        #[test]
        fn arbitrary_bytes_behind_a_valid_magic(mut bytes in proptest::collection::vec(any::<u8>(), 4096..9000)) {
            bytes[..8].copy_from_slice(&layout::MAGIC.to_le_bytes());
            bytes[8..12].copy_from_slice(&layout::VERSION.to_le_bytes());
            exercise(&bytes);
        }

        #[test]
        fn mutated_valid_segments_never_panic(
            muts in proptest::collection::vec((0usize..6, any::<u16>(), any::<u64>(), 0usize..4), 1..12)
        ) {
            let base = valid();
            let r = Reader::from_bytes(Path::new("v"), base).unwrap();
            let g = *r.geometry();
            let regions = [
                (0, 512),
                (g.config_offset, g.config_len + 8),
                (g.control_offset, 4 * control::SIZE),
                (g.events_offset, 4 * event::SIZE),
                (g.frames_offset, 2 * g.frame_slot_size),
                (0, base.len()),
            ];
            let mut b = base.clone();
            for (region, pos, value, width) in muts {
                let (start, len) = regions[region];
                let w = [1, 2, 4, 8][width];
                let off = (start + pos as usize % len.max(1)) & !(w - 1);
                if off + w <= b.len() {
                    b[off..off + w].copy_from_slice(&value.to_le_bytes()[..w]);
                }
            }
            exercise(&b);
        }
    }
}

// ---------------------------------------------------------------- events

mod events {
    use super::*;

    #[test]
    fn in_order_with_the_exact_count_of_missed_ones() {
        let dir = shm_dir();
        let mut o = opts(dir.path());
        o.event_slots = 8;
        let mut w = Writer::create(&config("ev"), &o).unwrap();
        for i in 1..=20 {
            w.publish_epoch(i, i as f32, 0.5);
        }
        let mut r = Reader::open(w.path()).unwrap();
        let got = all_events(&mut r);
        assert_eq!(
            got[0],
            EventRead::Missed {
                first: 1,
                count: 12
            }
        );
        assert_eq!(seqs(&got), (13..=20).collect::<Vec<_>>());
        for e in &got[1..] {
            let EventRead::Event {
                seq,
                event: Event::Epoch { epoch, .. },
                ..
            } = e
            else {
                panic!("{e:?}")
            };
            assert_eq!(u64::from(*epoch), *seq);
        }
        w.publish_status(TrainingStatus::Paused, "by request");
        let got = all_events(&mut r);
        assert!(matches!(
            &got[..],
            [EventRead::Event { seq: 21, event: Event::Status { status: TrainingStatus::Paused, message }, .. }]
                if message == "by request"
        ));
    }

    #[test]
    fn a_restarted_agent_resumes_after_the_acknowledged_event() {
        let dir = shm_dir();
        let mut w = Writer::create(&config("resume"), &opts(dir.path())).unwrap();
        for i in 1..=10 {
            w.publish_epoch(i, 0.0, 0.0);
        }
        {
            let mut r1 = Reader::open(w.path()).unwrap();
            for _ in 0..6 {
                r1.next_event().unwrap().unwrap();
            }
            r1.ack_events(4).unwrap(); // the server confirmed 1..=4
            r1.ack_events(2).unwrap(); // never moves backwards
            assert!(r1.ack_events(11).is_err());
        } // agent exits
        let mut r2 = Reader::open(w.path()).unwrap();
        assert_eq!(seqs(&all_events(&mut r2)), (5..=10).collect::<Vec<_>>());
        r2.ack_events(8).unwrap();
        r2.rewind_to_ack(); // connection lost: resend the unacknowledged
        assert_eq!(seqs(&all_events(&mut r2)), vec![9, 10]);
        r2.ack_events(10).unwrap();
        drop(r2);
        let mut r3 = Reader::open(w.path()).unwrap();
        assert_eq!(r3.next_event().unwrap(), None);
        w.publish_epoch(11, 0.0, 0.0);
        assert_eq!(seqs(&all_events(&mut r3)), vec![11]);
        assert_eq!(r3.event_positions(), (10, 11, 11));
    }

    #[test]
    fn long_status_messages_are_cut_at_a_character_boundary() {
        let dir = shm_dir();
        let mut w = Writer::create(&config("msg"), &opts(dir.path())).unwrap();
        let long = "é".repeat(200); // 400 bytes
        w.publish_status(TrainingStatus::Failed, &long);
        let mut r = Reader::open(w.path()).unwrap();
        let Some(EventRead::Event {
            event: Event::Status { message, .. },
            ..
        }) = r.next_event().unwrap()
        else {
            panic!()
        };
        assert!(message.len() <= event::MSG_CAP && message.len() >= event::MSG_CAP - 1);
        assert!(long.starts_with(&message));
    }
}

// ---------------------------------------------------------------- control

mod control_ring {
    use super::*;

    #[test]
    fn commands_reach_the_trainer_in_order_until_applied() {
        let dir = shm_dir();
        let mut w = Writer::create(&config("ctl"), &opts(dir.path())).unwrap();
        let mut r = Reader::open(w.path()).unwrap();
        assert_eq!(
            r.send_command(CommandKind::Pause, &[]).unwrap(),
            SendOutcome::Sent(1)
        );
        assert_eq!(
            r.send_command(CommandKind::Stop, &[("grace_period_s", "30")])
                .unwrap(),
            SendOutcome::Sent(2)
        );
        let c = w.next_command().unwrap().unwrap();
        assert_eq!((c.seq, c.kind), (1, CommandKind::Pause));
        // Not applied yet: offered again.
        assert_eq!(w.next_command().unwrap().unwrap().seq, 1);
        w.ack_command(1);
        let c = w.next_command().unwrap().unwrap();
        assert_eq!(
            (c.seq, c.kind, c.param("grace_period_s")),
            (2, CommandKind::Stop, Some("30"))
        );
        w.ack_command(2);
        assert_eq!(w.next_command().unwrap(), None);
        assert_eq!(r.control_positions(), (2, 2));
    }

    #[test]
    fn a_full_ring_hands_the_command_back() {
        let dir = shm_dir();
        let mut o = opts(dir.path());
        o.control_slots = 2;
        let mut w = Writer::create(&config("full"), &o).unwrap();
        let mut r = Reader::open(w.path()).unwrap();
        r.send_command(CommandKind::Pause, &[]).unwrap();
        r.send_command(CommandKind::Resume, &[]).unwrap();
        assert_eq!(
            r.send_command(CommandKind::Pause, &[]).unwrap(),
            SendOutcome::Full
        );
        let first = w.next_command().unwrap().unwrap().seq;
        w.ack_command(first);
        assert_eq!(
            r.send_command(
                CommandKind::ChangeLearningRate,
                &[("learning_rate", "0.01")]
            )
            .unwrap(),
            SendOutcome::Sent(3)
        );
        assert!(r.send_command(CommandKind::Pause, &[("a\0b", "")]).is_err());
    }

    #[test]
    fn a_malformed_command_is_reported_and_skipped() {
        let dir = shm_dir();
        let mut w = Writer::create(&config("badcmd"), &opts(dir.path())).unwrap();
        let r = Reader::open(w.path()).unwrap();
        let slot = r.geometry().control_slot(1) as u64;
        // Another process writes garbage through the file.
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(w.path())
            .unwrap();
        f.write_all_at(&99u32.to_le_bytes(), slot + control::COMMAND as u64)
            .unwrap();
        f.write_all_at(&2u64.to_le_bytes(), slot + control::SEQ as u64)
            .unwrap();
        f.write_all_at(&1u64.to_le_bytes(), hdr::CONTROL_WRITE_SEQ as u64)
            .unwrap();
        let e = w.next_command().unwrap_err();
        assert!(e.to_string().contains("command 1 type is 99"), "{e}");
        assert_eq!(w.next_command().unwrap(), None);
        assert_eq!(r.control_positions(), (1, 1));
    }

    #[test]
    fn python_trainer_receives_commands() {
        if skip_without_numpy() {
            return;
        }
        let dir = shm_dir();
        let mut child = python(dir.path(), &["control"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = Lines::new(&mut child);
        let path = PathBuf::from(lines.next());
        let mut r = Reader::open(&path).unwrap();
        r.send_command(CommandKind::Pause, &[]).unwrap();
        r.send_command(
            CommandKind::ChangeLearningRate,
            &[("learning_rate", "0.001")],
        )
        .unwrap();
        r.send_command(
            CommandKind::Stop,
            &[("grace_period_s", "30"), ("reason", "ünïcode")],
        )
        .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        writeln!(stdin, "go").unwrap();
        let got: serde_json::Value = serde_json::from_str(&lines.next()).unwrap();
        assert_eq!(
            got,
            serde_json::json!([
                ["PAUSE_TRAINING", {}],
                ["CHANGE_LEARNING_RATE", {"learning_rate": "0.001"}],
                ["STOP_TRAINING", {"grace_period_s": "30", "reason": "ünïcode"}],
            ])
        );
        assert_eq!(r.control_positions(), (3, 3));
        writeln!(stdin, "end").unwrap();
        drop(stdin);
        assert!(child.wait().unwrap().success());
        assert_eq!(r.writer_state(u64::MAX), WriterState::Closed);
    }
}

// ---------------------------------------------------------------- liveness

mod liveness {
    use super::*;

    #[test]
    fn live_idle_then_closed() {
        let dir = shm_dir();
        let w = Writer::create(&config("live"), &opts(dir.path())).unwrap();
        let r = Reader::open(w.path()).unwrap();
        assert_eq!(r.writer_state(60_000_000_000), WriterState::Live);
        assert!(matches!(r.writer_state(0), WriterState::Idle { .. }));
        w.close(false).unwrap();
        assert_eq!(r.writer_state(0), WriterState::Closed);
    }

    #[test]
    fn a_reused_pid_is_not_the_writer() {
        let dir = shm_dir();
        let w = Writer::create(&config("reuse"), &opts(dir.path())).unwrap();
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(w.path())
            .unwrap();
        f.write_all_at(&1u64.to_le_bytes(), hdr::WRITER_START_TICKS as u64)
            .unwrap();
        let r = Reader::open(w.path()).unwrap();
        assert_eq!(r.writer_state(u64::MAX), WriterState::Dead);
        std::mem::forget(w);
    }

    #[test]
    fn a_trainer_that_died_is_dead_not_idle() {
        if skip_without_numpy() {
            return;
        }
        let dir = shm_dir();
        let out = output_bounded(python(dir.path(), &["die"]));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let path = String::from_utf8(out.stdout).unwrap();
        let mut r = Reader::open(Path::new(path.trim())).unwrap();
        assert_eq!(r.writer_state(u64::MAX), WriterState::Dead);
        // What it published before dying is still there.
        assert_eq!(seqs(&all_events(&mut r)), vec![1]);
    }
}

// ---------------------------------------------------------------- image policy

mod image_policy {
    use super::*;

    #[test]
    fn without_an_agent_batches_cost_no_copy() {
        let dir = shm_dir();
        let mut o = opts(dir.path());
        o.image_policy = ImagePolicy::Auto;
        let mut w = Writer::create(&config("auto"), &o).unwrap();
        assert!(!w.wants_frame());
        assert_eq!(
            w.publish_batch(&batch(1, 2, None, &[])).unwrap(),
            Published::Skipped
        );
        let mut r = Reader::open(w.path()).unwrap();
        assert_eq!(
            r.latest_frame(&mut Frame::default()).unwrap(),
            FrameRead::Nothing
        );
        let p = r.progress().unwrap();
        assert_eq!((p.epoch, p.batch_idx), (1, 2));
        let h = r.header();
        assert_eq!((h.batches_seen, h.frames_skipped), (1, 1));
    }

    #[test]
    fn copies_around_the_agents_announced_reads() {
        let dir = shm_dir();
        let mut o = opts(dir.path());
        o.image_policy = ImagePolicy::Auto;
        let mut w = Writer::create(&config("auto2"), &o).unwrap();
        let mut r = Reader::open(w.path()).unwrap();
        // 0.01 fps: after a read, the next one is 100 s away.
        r.attach(0.01).unwrap();
        assert!(w.wants_frame(), "a fresh agent reads now");
        assert_eq!(
            w.publish_batch(&batch(0, 0, None, &[])).unwrap(),
            Published::Frame(1)
        );
        let mut f = Frame::default();
        assert_eq!(r.latest_frame(&mut f).unwrap(), FrameRead::New);
        assert_eq!(
            w.publish_batch(&batch(0, 1, None, &[])).unwrap(),
            Published::Skipped
        );
        // The agent found nothing new when it was ready to read: it waits
        // now, so the next batch is copied, however fast the trainer runs
        // (regression: the stamp used to move one interval ahead on every
        // call, and a trainer faster than the agent's rate never got copied).
        assert_eq!(r.latest_frame(&mut f).unwrap(), FrameRead::Unchanged);
        assert!(w.wants_frame(), "a waiting agent wants the next batch");
        assert_eq!(
            w.publish_batch(&batch(0, 2, None, &[])).unwrap(),
            Published::Frame(2)
        );
        drop(r); // the agent detaches
        assert!(!w.wants_frame());
    }
}

// ---------------------------------------------------------------- permissions

mod permissions {
    use super::*;

    #[test]
    fn segments_are_the_owners_alone_whatever_the_umask() {
        // The directory is the trainer's own: no one else to let in.
        let dir = shm_dir();
        let w = Writer::create(&config("perm"), &opts(dir.path())).unwrap();
        let mode = std::fs::metadata(w.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(access_acl(w.path()), None);
    }

    /// The file's `system.posix_acl_access` value, if it has one.
    fn access_acl(path: &std::path::Path) -> Option<Vec<u8>> {
        let out = std::process::Command::new("python3")
            .args([
                "-c",
                "import os,sys\ntry: print(os.getxattr(sys.argv[1], 'system.posix_acl_access').hex())\nexcept OSError: print('none')",
            ])
            .arg(path)
            .output()
            .unwrap();
        let hex = String::from_utf8_lossy(&out.stdout).trim().to_string();
        (hex != "none").then(|| {
            (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                .collect()
        })
    }

    #[test]
    fn the_directorys_owner_gets_read_write_by_an_acl_and_no_one_else() {
        let dir = shm_dir();
        let agent = 4243;
        if std::os::unix::fs::chown(dir.path(), Some(agent), Some(4242)).is_err() {
            eprintln!("skipped: cannot chown (not root)");
            return;
        }
        let w = Writer::create(&config("acl"), &opts(dir.path())).unwrap();
        let acl = access_acl(w.path()).expect("an access ACL");
        // version 2; then (tag, perm, id): user::rw-, user:4243:rw-,
        // group::---, mask::rw-, other::---.
        let mut want = 2u32.to_le_bytes().to_vec();
        for (tag, perm, id) in [
            (1u16, 6u16, u32::MAX),
            (2, 6, agent),
            (4, 0, u32::MAX),
            (0x10, 6, u32::MAX),
            (0x20, 0, u32::MAX),
        ] {
            want.extend(tag.to_le_bytes());
            want.extend(perm.to_le_bytes());
            want.extend(id.to_le_bytes());
        }
        assert_eq!(acl, want);
        // The agent's side still opens it (root here; tests/isolation.rs
        // runs the agent as the directory's real owner).
        Reader::open(w.path()).unwrap();
    }

    #[test]
    fn a_missing_directory_is_created_sticky_and_setgid() {
        let dir = shm_dir();
        let sub = dir.path().join("a/b");
        Writer::create(&config("x"), &opts(&sub)).unwrap();
        assert_eq!(std::fs::metadata(&sub).unwrap().mode() & 0o7777, 0o3770);
    }

    #[test]
    fn the_directory_group_is_inherited() {
        let dir = shm_dir();
        let gid = 4242;
        if std::os::unix::fs::chown(dir.path(), None, Some(gid)).is_err() {
            eprintln!("skipped: cannot chown (not root)");
            return;
        }
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o2770)).unwrap();
        let w = Writer::create(&config("grp"), &opts(dir.path())).unwrap();
        assert_eq!(std::fs::metadata(w.path()).unwrap().gid(), gid);
    }
}

// ---------------------------------------------------------------- python

mod python {
    use super::*;

    #[test]
    fn python_publishes_rust_reads_every_field() {
        if skip_without_numpy() {
            return;
        }
        let dir = shm_dir();
        let expect = tempfile::tempdir().unwrap();
        let out = output_bounded(python(
            dir.path(),
            &["roundtrip", expect.path().to_str().unwrap()],
        ));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let cases = [
            "f32_nchw_norm",
            "u8_nhwc",
            "f16_nchw",
            "gray_u8_nhw",
            "gray_f32_nchw",
            "strided_nhwc",
            "bytes_explicit",
            "torch_like",
            "over16",
        ];
        for name in cases {
            let meta: serde_json::Value = serde_json::from_slice(
                &std::fs::read(expect.path().join(format!("{name}.json"))).unwrap(),
            )
            .unwrap();
            let data = std::fs::read(expect.path().join(format!("{name}.bin"))).unwrap();
            let path = dir.path().join(name);
            assert_eq!(meta["path"], path.to_str().unwrap());
            assert_eq!(
                std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600
            );
            let mut r = Reader::open(&path).unwrap();
            let c = r.config();
            assert_eq!(
                (
                    c.run_name.as_str(),
                    c.model_name.as_str(),
                    c.dataset_name.as_str()
                ),
                (name, "resnet18", "cifar10")
            );
            assert_eq!(
                (
                    c.total_epochs,
                    c.batches_per_epoch,
                    c.batch_size,
                    c.class_names.len()
                ),
                (10, 500, 64, 10)
            );
            assert_eq!(c.class_names[9], "truck");

            let mut f = Frame::default();
            assert_eq!(r.latest_frame(&mut f).unwrap(), FrameRead::New, "{name}");
            assert_eq!(f.epoch, meta["epoch"].as_u64().unwrap() as u32, "{name}");
            assert_eq!(f.batch_idx, meta["batch_idx"].as_u64().unwrap() as u32);
            assert_eq!(f.loss, meta["loss"].as_f64().unwrap() as f32);
            let ints = |k: &str| {
                meta[k]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_i64().unwrap() as i32)
                    .collect::<Vec<_>>()
            };
            let floats = |k: &str| {
                meta[k]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_f64().unwrap() as f32)
                    .collect::<Vec<_>>()
            };
            assert_eq!(f.predictions(), &ints("predictions")[..], "{name}");
            assert_eq!(f.labels(), &ints("labels")[..]);
            assert_eq!(f.confidences(), &floats("confidences")[..]);

            let d = f.images.unwrap();
            let shape: Vec<u32> = meta["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect();
            assert_eq!(d.dtype.name(), meta["dtype"], "{name}");
            assert_eq!(d.layout.name(), meta["layout"], "{name}");
            assert_eq!(
                vec![d.count, d.channels, d.height, d.width],
                shape,
                "{name}"
            );
            assert_eq!(f.image_bytes(), &data[..], "{name}: tensor bytes");
            match d.normalization {
                Some(n) => {
                    let (mean, std) = (floats("mean"), floats("std"));
                    let ch = d.channels as usize;
                    assert_eq!(&n.mean[..ch], &mean[..ch], "{name}");
                    assert_eq!(&n.std[..ch], &std[..ch], "{name}");
                }
                None => assert!(meta["norm"].is_null(), "{name}: normalization lost"),
            }
            let ev = all_events(&mut r);
            assert!(
                matches!(&ev[0], EventRead::Event { seq: 1, event: Event::Status { status: TrainingStatus::Running, message }, .. } if *message == format!("started {name}"))
            );
            assert!(
                matches!(&ev[1], EventRead::Event { seq: 2, event: Event::Epoch { average_loss, average_accuracy, .. }, .. } if *average_loss == 0.25 && *average_accuracy == 0.75)
            );
            assert_eq!(r.writer_state(u64::MAX), WriterState::Closed);
        }
    }

    #[test]
    fn python_copies_a_batch_only_when_the_agent_will_read_it() {
        if skip_without_numpy() {
            return;
        }
        let dir = shm_dir();
        let mut child = python(dir.path(), &["auto"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = Lines::new(&mut child);
        let mut stdin = child.stdin.take().unwrap();
        let mut r = Reader::open(Path::new(&lines.next())).unwrap();
        r.attach(0.01).unwrap(); // after each read, the next is 100 s away
        writeln!(stdin, "attached").unwrap();
        assert_eq!(lines.next(), "[false, true]");
        let mut f = Frame::default();
        assert_eq!(r.latest_frame(&mut f).unwrap(), FrameRead::New);
        assert_eq!((f.batch_idx, f.images.unwrap().count), (1, 2));
        writeln!(stdin, "read").unwrap();
        assert_eq!(lines.next(), "false");
        let h = r.header();
        assert_eq!(
            (h.batches_seen, h.frames_published, h.frames_skipped),
            (3, 1, 2)
        );
        assert_eq!(r.progress().unwrap().batch_idx, 2);
        writeln!(stdin, "end").unwrap();
        drop(stdin);
        assert!(child.wait().unwrap().success());
    }

    /// The tensor rule reaches a Python trainer as an exception carrying
    /// the library's message, at the call that published the bad batch.
    #[test]
    fn python_gets_the_tensor_rule_error_at_once() {
        if skip_without_numpy() {
            return;
        }
        let dir = shm_dir();
        let out = output_bounded(python(dir.path(), &["u8norm"]));
        assert!(
            out.status.success(),
            "exit {:?}: {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("TrainwatchError")
                && text.contains("has_norm is 1 with dtype u8, expected 0"),
            "{text}"
        );
    }

    /// Issue 14: `pub.log` through the C ABI; Rust reads every point.
    #[test]
    fn python_logs_named_scalars_and_bad_ones_are_refused() {
        if skip_without_numpy() {
            return;
        }
        let dir = shm_dir();
        let out = output_bounded(python(dir.path(), &["scalars"]));
        assert!(
            out.status.success(),
            "exit {:?}: {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        for want in [
            "seq 2\n",
            "TrainwatchError: invalid argument: key \"bad key\" (value 2)",
            "TrainwatchError: invalid argument: key \"loss\": value NaN is not finite",
            "seq 3\n",
        ] {
            assert!(text.contains(want), "{want:?} not in {text}");
        }
        assert!(!text.contains("accepted"), "{text}");
        let mut r = Reader::open(&dir.path().join("scalars")).unwrap();
        let mut out = Vec::new();
        assert_eq!(r.next_points(&mut out, 10).unwrap(), PointsRead::Points(3));
        let seen: Vec<(&str, i64, f64)> = out.iter().map(|p| (&*p.key, p.step, p.value)).collect();
        assert_eq!(
            seen,
            vec![
                ("val_loss", 7, 0.41),
                ("lr", 7, 1e-3),
                ("grad_norm", 9, 2.5)
            ]
        );
    }

    #[test]
    fn a_missing_library_names_every_path_tried() {
        if skip_without_numpy() {
            return;
        }
        let dir = shm_dir();
        let mut cmd = python(dir.path(), &["load"]);
        cmd.env("TRAINWATCH_LIB", "/nonexistent/libtrainwatch.so");
        // cargo puts target/*/deps on the loader path; a trainer has no such luck.
        cmd.env_remove("LD_LIBRARY_PATH");
        let out = output_bounded(cmd);
        assert_eq!(out.status.code(), Some(3));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("/nonexistent/libtrainwatch.so (TRAINWATCH_LIB)"),
            "{err}"
        );
        assert!(
            err.contains("python/trainwatch/libtrainwatch.so (beside the package)"),
            "{err}"
        );
        assert!(err.contains("(system library path)"), "{err}");
    }
}

// ---------------------------------------------------------------- c abi

mod c_abi {
    use super::*;

    /// include/trainwatch.h matches the library: a C trainer publishes,
    /// Rust reads every field.
    #[test]
    fn a_c_trainer_publishes_through_the_header() {
        let build = tempfile::tempdir().unwrap();
        let exe = build.path().join("publish");
        let lib = util::procs::lib_path();
        let libdir = lib.parent().unwrap();
        // Link against the exact file found (its name may carry a hash).
        let mut cc = Process::new(std::env::var_os("CC").unwrap_or_else(|| "cc".into()));
        cc.arg("-Wall")
            .arg("-Werror")
            .arg("-I")
            .arg(util::repo_root().join("include"))
            .arg(util::repo_root().join("tests/c/publish.c"))
            .arg(&lib)
            .arg(format!("-Wl,-rpath,{}", libdir.display()))
            .arg("-o")
            .arg(&exe);
        let out = match cc.output() {
            Ok(out) => out,
            Err(e) => {
                eprintln!("skipped: no C compiler ({e})");
                return;
            }
        };
        assert!(
            out.status.success(),
            "cc: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let dir = shm_dir();
        let mut run = Process::new(&exe);
        run.arg(dir.path());
        let out = output_bounded(run);
        assert!(
            out.status.success(),
            "exit {:?}: {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        );
        let path = dir.path().join("c_run");
        assert_eq!(
            String::from_utf8(out.stdout).unwrap().trim(),
            path.to_str().unwrap()
        );
        let mut r = Reader::open(&path).unwrap();
        let c = r.config();
        assert_eq!(
            (
                c.model_name.as_str(),
                c.dataset_name.as_str(),
                c.class_names.len()
            ),
            ("lenet", "mnist", 2)
        );
        assert_eq!(
            (c.total_epochs, c.batches_per_epoch, c.batch_size),
            (3, 7, 2)
        );
        let mut f = Frame::default();
        assert_eq!(r.latest_frame(&mut f).unwrap(), FrameRead::New);
        assert_eq!((f.epoch, f.batch_idx, f.loss), (2, 6, 0.125));
        assert_eq!(
            (f.predictions(), f.confidences(), f.labels()),
            (&[1, 0][..], &[0.75, 0.5][..], &[1, 1][..])
        );
        let d = f.images.unwrap();
        assert_eq!(
            d,
            TensorDesc {
                normalization: Some(Normalization {
                    mean: [0.5, 0.25, 0.125],
                    std: [2.0, 4.0, 8.0]
                }),
                ..desc(DType::F32, Layout::Nchw, 2, 3, 2, 2)
            }
        );
        let want: Vec<u8> = (0..24u8)
            .flat_map(|i| (f32::from(i) * 3.0).to_le_bytes())
            .collect();
        assert_eq!(f.image_bytes(), &want[..]);
        let events = all_events(&mut r);
        assert_eq!(seqs(&events), vec![1, 2, 3]);
        match &events[2] {
            EventRead::Event {
                event: Event::Epoch {
                    epoch: 3, metrics, ..
                },
                ..
            } => assert_eq!(&*metrics[0].0, "val/acc"),
            other => panic!("expected epoch 3 with metrics, got {other:?}"),
        }
        let mut points = Vec::new();
        r.next_points(&mut points, 10).unwrap();
        let got: Vec<(&str, i64, f64)> =
            points.iter().map(|p| (&*p.key, p.step, p.value)).collect();
        assert_eq!(
            got,
            vec![
                ("train/loss", 20, 0.125),
                ("val/loss", 41, 0.25),
                ("lr", 41, 0.001)
            ]
        );
        assert_eq!(r.writer_state(u64::MAX), WriterState::Closed);
    }
}

// ---------------------------------------------------------------- inspect

mod inspect {
    use super::*;

    fn inspect(args: &[&str]) -> Output {
        let mut cmd = Process::new(util::trainwatch_bin());
        cmd.arg("inspect").args(args);
        output_bounded(cmd)
    }

    #[test]
    fn shows_header_config_frame_events_and_control() {
        let dir = shm_dir();
        let (_, path) = valid_image(dir.path());
        let out = inspect(&[path.to_str().unwrap()]);
        assert!(out.status.success());
        let text = String::from_utf8(out.stdout).unwrap();
        for want in [
            "format v2",
            "model resnet18, dataset cifar10, 10 epochs x 500 batches of 64, 3 classes [cat, dog, ünïcode]",
            "newest   frame 2: epoch 1 batch 1",
            "images 2 x 3x8x8 u8 NCHW",
            "#1 status RUNNING \"go\"",
            "#2 epoch 0: loss 0.5000, accuracy 0.7500",
            "control  0 written, 0 applied",
            "points   2 logged, 0 acknowledged, 65536 slots; 1 of 1024 keys named",
        ] {
            assert!(text.contains(want), "{want:?} not in\n{text}");
        }
        let out = inspect(&["--json", path.to_str().unwrap()]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["writer_state"]["state"], "live");
        assert_eq!(v["newest_frame"]["images"]["bytes"], 384);
        assert_eq!(v["pending_events"].as_array().unwrap().len(), 3);
        assert_eq!(v["config"]["class_names"][2], "ünïcode");
        assert_eq!(
            v["points"]["written"], 2,
            "every batch's loss: {}",
            v["points"]
        );
        assert_eq!(v["points"]["keys"], 1);
    }

    #[test]
    fn a_corrupt_file_is_one_line_naming_the_field() {
        let dir = shm_dir();
        let path = dir.path().join("junk");
        std::fs::write(&path, pattern(8192, 1)).unwrap();
        let out = inspect(&[path.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(65));
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(err.lines().count(), 1);
        assert!(
            err.contains(&format!("segment {}: header magic is 0x", path.display())),
            "{err}"
        );
        let out = inspect(&[dir.path().join("nope").to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(66));
    }

    #[test]
    fn watch_reports_repeatedly() {
        let dir = shm_dir();
        let (_, path) = valid_image(dir.path());
        let out = inspect(&[
            "--json",
            "--watch",
            "--interval-ms",
            "10",
            "--iterations",
            "3",
            path.to_str().unwrap(),
        ]);
        assert!(out.status.success());
        let text = String::from_utf8(out.stdout).unwrap();
        assert_eq!(text.lines().count(), 3);
        for line in text.lines() {
            serde_json::from_str::<serde_json::Value>(line).unwrap();
        }
    }
}

// ---------------------------------------------------------------- stress

mod stress {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    /// Frame i holds 1 + i % 16 images whose bytes, loss, indices and
    /// predictions are all functions of i: a torn read would mix two.
    #[test]
    fn concurrent_reads_are_never_torn() {
        let dir = shm_dir();
        let mut o = opts(dir.path());
        o.frame_slots = 2; // the writer reuses a slot as soon as possible
        o.event_slots = 16;
        let d1 = desc(DType::U8, Layout::Nchw, 1, 3, 16, 16);
        o.frame_capacity = 16 * d1.image_bytes() as u64;
        let mut w = Writer::create(&config("stress"), &o).unwrap();
        let path = w.path().to_owned();
        let stop = Arc::new(AtomicBool::new(false));
        // The reader decides when enough was checked; the writer runs until told.
        let (min_frames, min_time) = (300u64, Duration::from_millis(800));

        let writer = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 16 * d1.image_bytes()];
                let (mut frames, mut events) = (0u64, 0u64);
                while !stop.load(Ordering::Acquire) {
                    let i = frames + 1;
                    let n = 1 + (i % 16) as u32;
                    let d = TensorDesc { count: n, ..d1 };
                    let len = d.total_bytes();
                    for (j, b) in buf[..len].iter_mut().enumerate() {
                        *b = (i as usize).wrapping_mul(131).wrapping_add(j) as u8;
                    }
                    let p = [i as i32; 4];
                    let b = Batch {
                        epoch: i as u32,
                        batch_idx: (i * 3) as u32,
                        loss: i as f32,
                        predictions: &p,
                        confidences: &[i as f32; 4],
                        labels: &p,
                        images: Some(Images {
                            desc: d,
                            data: &buf[..len],
                        }),
                    };
                    w.publish_frame(&b).unwrap();
                    frames = i;
                    if i % 4 == 0 {
                        events += 1;
                        w.publish_epoch(events as u32, events as f32, 0.0);
                    }
                }
                (frames, events, w)
            })
        };

        let mut r = Reader::open(&path).unwrap();
        let mut f = Frame::default();
        let (mut checked, mut busy, mut last) = (0u64, 0u64, 0u64);
        let (mut seen, mut missed, mut next_seq) = (0u64, 0u64, 1u64);
        let mut drain = |r: &mut Reader| {
            while let Some(e) = r.next_event().unwrap() {
                match e {
                    EventRead::Event {
                        seq,
                        event:
                            Event::Epoch {
                                epoch,
                                average_loss,
                                ..
                            },
                        ..
                    } => {
                        assert_eq!(seq, next_seq, "events out of order");
                        assert_eq!(
                            (u64::from(epoch), average_loss),
                            (seq, seq as f32),
                            "torn event"
                        );
                        seen += 1;
                        next_seq += 1;
                    }
                    EventRead::Missed { first, count } => {
                        assert_eq!(first, next_seq);
                        missed += count;
                        next_seq += count;
                    }
                    other => panic!("{other:?}"),
                }
            }
        };
        let start = Instant::now();
        let mut polls = 0u64;
        while checked < min_frames || start.elapsed() < min_time {
            assert!(
                start.elapsed() < TEST_TIMEOUT,
                "only {checked} frames checked in time"
            );
            polls += 1;
            match r.latest_frame(&mut f).unwrap() {
                FrameRead::New => {
                    let i = f.frame_no;
                    assert!(i > last, "frames go forward");
                    last = i;
                    assert_eq!(
                        (f.epoch, f.batch_idx, f.loss),
                        (i as u32, (i * 3) as u32, i as f32),
                        "torn metadata"
                    );
                    assert_eq!(f.predictions(), &[i as i32; 4]);
                    assert_eq!(f.confidences(), &[i as f32; 4]);
                    let d = f.images.unwrap();
                    assert_eq!(d.count, 1 + (i % 16) as u32, "torn descriptor");
                    for (j, b) in f.image_bytes().iter().enumerate() {
                        assert_eq!(
                            *b,
                            (i as usize).wrapping_mul(131).wrapping_add(j) as u8,
                            "torn bytes in frame {i}"
                        );
                    }
                    checked += 1;
                }
                FrameRead::Busy => busy += 1,
                FrameRead::Nothing | FrameRead::Unchanged => {}
            }
            // Drain rarely so the small event ring gets lapped sometimes.
            if polls.is_multiple_of(256) {
                drain(&mut r);
            }
        }
        stop.store(true, Ordering::Release);
        let (frames, events, _w) = writer.join().unwrap();
        drain(&mut r);
        eprintln!("stress: {frames} frames published, {checked} read and checked, {busy} busy; {events} events, {seen} read, {missed} missed");
        assert_eq!(seen + missed, events, "every event read or counted missed");
    }
}

// ---------------------------------------------------------------- allocation

mod hot_paths {
    use super::*;

    #[test]
    fn publishing_and_reading_frames_do_not_allocate() {
        let dir = shm_dir();
        let mut w = Writer::create(&config("alloc"), &opts(dir.path())).unwrap();
        let mut r = Reader::open(w.path()).unwrap();
        r.attach(1000.0).unwrap();
        let d = desc(DType::F32, Layout::Nchw, 4, 3, 8, 8);
        let data = pattern(d.total_bytes(), 2);
        let mut f = Frame::default();
        let preds = [1, 2, 3, 4];
        let b = batch(
            0,
            0,
            Some(Images {
                desc: d,
                data: &data,
            }),
            &preds,
        );
        w.publish_frame(&b).unwrap();
        r.latest_frame(&mut f).unwrap(); // sizes the buffer once
        let before = allocs();
        for _ in 0..100 {
            w.publish_frame(&b).unwrap();
            w.publish_batch(&b).unwrap();
            w.record_progress(0, 1, 0.5);
            assert_eq!(r.latest_frame(&mut f).unwrap(), FrameRead::New);
            r.progress().unwrap();
            w.publish_epoch(1, 0.5, 0.5);
        }
        assert_eq!(allocs() - before, 0, "allocations on the hot path");
    }
}

// ---------------------------------------------------------------- points (issue 14)

/// Named scalars: format 2's key table and points ring.
mod points {
    use super::*;

    fn drain(r: &mut Reader) -> Vec<PointRecord> {
        let mut out = Vec::new();
        loop {
            match r.next_points(&mut out, 1000).unwrap() {
                PointsRead::Points(0) => return out,
                PointsRead::Points(_) => {}
                PointsRead::Missed { first, count } => panic!("missed {count} from {first}"),
            }
        }
    }

    #[test]
    fn points_round_trip_in_order_with_keys() {
        let dir = shm_dir();
        let mut w = Writer::create(&config("p"), &opts(dir.path())).unwrap();
        assert_eq!(w.log(7, &[("val_loss", 0.41), ("lr", 1e-3)]).unwrap(), 2);
        assert_eq!(
            w.log(8, &[("lr", 5e-4), ("grad/norm-2.x", 2.3)]).unwrap(),
            4
        );
        assert_eq!(w.log(9, &[]).unwrap(), 4);
        let mut r = Reader::open(w.path()).unwrap();
        assert_eq!(r.format_version(), 2);
        assert_eq!(r.point_positions(), (0, 0, 4));
        let got = drain(&mut r);
        let seen: Vec<(u64, &str, i64, f64)> = got
            .iter()
            .map(|p| (p.seq, &*p.key, p.step, p.value))
            .collect();
        assert_eq!(
            seen,
            vec![
                (1, "val_loss", 7, 0.41),
                (2, "lr", 7, 1e-3),
                (3, "lr", 8, 5e-4),
                (4, "grad/norm-2.x", 8, 2.3),
            ]
        );
        assert!(got.iter().all(|p| p.wall_unix_ns > 0));
        assert_eq!(r.point_positions(), (0, 4, 4));
        r.ack_points(3).unwrap();
        r.ack_points(2).unwrap(); // never backwards
        assert!(r.ack_points(5).unwrap_err().to_string().contains("point 5"));
        r.rewind_points_to_ack();
        assert_eq!(r.point_positions(), (3, 3, 4));
        assert_eq!(drain(&mut r).len(), 1);
        r.seek_points(1);
        assert_eq!(drain(&mut r)[0].seq, 2);
        r.seek_points(u64::MAX);
        assert_eq!(r.point_positions().1, 4);
        // A restarted reader starts at the acknowledged position.
        let mut r2 = Reader::open(w.path()).unwrap();
        assert_eq!(r2.point_positions(), (3, 3, 4));
        assert_eq!(drain(&mut r2)[0].seq, 4);
        assert_eq!(r2.points_written(), 4);
    }

    #[test]
    fn every_batch_loss_is_a_point_copied_or_not() {
        let dir = shm_dir();
        let mut o = opts(dir.path());
        o.image_policy = ImagePolicy::Auto; // nobody attached: every frame skipped
        let mut w = Writer::create(&config("l"), &o).unwrap();
        for i in 0..5u32 {
            let mut b = batch(2, i, None, &[]);
            b.loss = if i == 3 { f32::NAN } else { i as f32 };
            assert_eq!(w.publish_batch(&b).unwrap(), Published::Skipped);
        }
        let mut r = Reader::open(w.path()).unwrap();
        let got = drain(&mut r);
        let seen: Vec<(&str, i64, f64)> = got.iter().map(|p| (&*p.key, p.step, p.value)).collect();
        // batches_per_epoch is 500; the NaN loss of batch 3 is counted, not logged.
        assert_eq!(
            seen,
            vec![
                (LOSS_KEY, 1000, 0.0),
                (LOSS_KEY, 1001, 1.0),
                (LOSS_KEY, 1002, 2.0),
                (LOSS_KEY, 1004, 4.0)
            ]
        );
        assert_eq!(r.batches_published(), 5);
    }

    #[test]
    fn a_lapped_ring_reports_the_exact_missed_count() {
        let dir = shm_dir();
        let mut o = opts(dir.path());
        o.point_slots = 8;
        let mut w = Writer::create(&config("lap"), &o).unwrap();
        let mut r = Reader::open(w.path()).unwrap();
        let vals: Vec<(&str, f64)> = (0..20).map(|i| ("x", f64::from(i))).collect();
        w.log(1, &vals).unwrap();
        let mut out = Vec::new();
        assert_eq!(
            r.next_points(&mut out, 100).unwrap(),
            PointsRead::Missed {
                first: 1,
                count: 12
            }
        );
        assert_eq!(r.next_points(&mut out, 100).unwrap(), PointsRead::Points(8));
        assert_eq!(out.first().map(|p| (p.seq, p.value)), Some((13, 12.0)));
        assert_eq!(out.last().map(|p| p.seq), Some(20));
        assert_eq!(r.next_points(&mut out, 100).unwrap(), PointsRead::Points(0));
    }

    #[test]
    fn bad_key_or_value_is_refused_naming_it_and_nothing_is_written() {
        let dir = shm_dir();
        let mut w = Writer::create(&config("bad"), &opts(dir.path())).unwrap();
        let long = "k".repeat(129);
        for (pts, needle) in [
            (vec![("ok", 1.0), ("bad key", 2.0)], "\"bad key\" (value 2)"),
            (vec![("ok", 1.0), ("loss", f64::NAN)], "\"loss\": value NaN"),
            (
                vec![("ok", 1.0), ("inf", f64::INFINITY)],
                "\"inf\": value inf",
            ),
            (vec![("", 1.0)], "key \"\""),
            (vec![(long.as_str(), 1.0)], "kkkk"),
        ] {
            let e = w.log(1, &pts).unwrap_err();
            assert!(e.to_string().contains(needle), "{e} lacks {needle}");
        }
        assert_eq!(w.points_written(), 0);
        let r = Reader::open(w.path()).unwrap();
        assert_eq!(r.point_positions(), (0, 0, 0));
        assert_eq!(r.geometry().key_capacity, layout::KEY_CAPACITY);
    }

    #[test]
    fn too_many_distinct_keys_is_refused() {
        let dir = shm_dir();
        let mut w = Writer::create(&config("keys"), &opts(dir.path())).unwrap();
        let names: Vec<String> = (0..layout::KEY_CAPACITY).map(|i| format!("k{i}")).collect();
        let pts: Vec<(&str, f64)> = names.iter().map(|n| (n.as_str(), 1.0)).collect();
        w.log(0, &pts).unwrap();
        let e = w.log(1, &[("k0", 1.0), ("one_more", 2.0)]).unwrap_err();
        assert!(e.to_string().contains("one_more"), "{e}");
        assert_eq!(w.points_written(), u64::from(layout::KEY_CAPACITY));
        let mut r = Reader::open(w.path()).unwrap();
        let got = drain(&mut r);
        assert_eq!(&*got[1023].key, "k1023");
    }

    #[test]
    fn a_version_1_segment_is_still_read_and_has_no_points() {
        let dir = shm_dir();
        let mut o = opts(dir.path());
        o.point_slots = 0; // lays out the version-1 format
        let mut w = Writer::create(&config("v1"), &o).unwrap();
        w.publish_epoch(0, 1.5, 0.5);
        w.publish_batch(&batch(0, 1, None, &[])).unwrap();
        assert!(w
            .log(1, &[("x", 1.0)])
            .unwrap_err()
            .to_string()
            .contains("version 1"));
        let bytes = std::fs::read(w.path()).unwrap();
        assert_eq!(u32::from_le_bytes(bytes[8..12].try_into().unwrap()), 1);
        let mut r = Reader::open(w.path()).unwrap();
        assert_eq!(r.format_version(), 1);
        assert!(matches!(
            r.next_event().unwrap(),
            Some(EventRead::Event {
                event: Event::Epoch { epoch: 0, .. },
                ..
            })
        ));
        let mut out = Vec::new();
        assert_eq!(r.next_points(&mut out, 10).unwrap(), PointsRead::Points(0));
        assert_eq!(r.point_positions(), (0, 0, 0));
        assert!(r.ack_points(1).is_err());
        r.ack_points(0).unwrap();
    }

    #[test]
    fn epoch_metrics_ride_with_the_epoch_and_bad_ones_publish_nothing() {
        let dir = shm_dir();
        let mut w = Writer::create(&config("em"), &opts(dir.path())).unwrap();
        w.log(1, &[("val/acc", 0.5)]).unwrap();
        let seq = w
            .publish_epoch_with(2, 0.75, 0.5, &[("val/acc", 0.91), ("val/loss", 0.25)])
            .unwrap();
        assert_eq!(seq, 1);
        // Refused whole, naming the count, the key or the value.
        let many: Vec<(String, f64)> = (0..=layout::event::MAX_METRICS)
            .map(|i| (format!("m{i}"), 1.0))
            .collect();
        let many: Vec<(&str, f64)> = many.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        let e = w
            .publish_epoch_with(3, 0.0, 0.0, &many)
            .unwrap_err()
            .to_string();
        assert!(e.contains("19 metrics, at most 18"), "{e}");
        let e = w
            .publish_epoch_with(3, 0.0, 0.0, &[("ok", 1.0), ("bad key", 2.0)])
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"bad key\" (value 2)"), "{e}");
        let e = w
            .publish_epoch_with(3, 0.0, 0.0, &[("val/acc", f64::INFINITY)])
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"val/acc\": value inf"), "{e}");
        let mut r = Reader::open(w.path()).unwrap();
        assert_eq!(r.events_written(), 1, "a refused epoch publishes nothing");
        match r.next_event().unwrap() {
            Some(EventRead::Event {
                seq: 1,
                event: Event::Epoch {
                    epoch: 2, metrics, ..
                },
                ..
            }) => {
                let m: Vec<(&str, f64)> = metrics.iter().map(|(k, v)| (&**k, *v)).collect();
                assert_eq!(m, vec![("val/acc", 0.91), ("val/loss", 0.25)]);
            }
            other => panic!("expected epoch 2, got {other:?}"),
        }
        // A version-1 segment has no key table for them.
        let mut o = opts(dir.path());
        o.point_slots = 0;
        let mut w1 = Writer::create(&config("em1"), &o).unwrap();
        let e = w1
            .publish_epoch_with(0, 1.0, 0.5, &[("val/acc", 0.5)])
            .unwrap_err()
            .to_string();
        assert!(e.contains("version 1"), "{e}");
        assert_eq!(w1.publish_epoch_with(0, 1.0, 0.5, &[]).unwrap(), 1);
    }

    #[test]
    fn a_corrupt_key_id_is_reported_naming_it() {
        let dir = shm_dir();
        let mut w = Writer::create(&config("cid"), &opts(dir.path())).unwrap();
        w.log(1, &[("a", 1.0), ("b", 2.0)]).unwrap();
        let r0 = Reader::open(w.path()).unwrap();
        let slot = r0.geometry().point_slot(2) + layout::point::KEY;
        drop(r0);
        let mut bytes = std::fs::read(w.path()).unwrap();
        put_u32(&mut bytes, slot, 77);
        let mut r = Reader::from_bytes(Path::new("c"), &bytes).unwrap();
        let mut out = Vec::new();
        assert_eq!(r.next_points(&mut out, 10).unwrap(), PointsRead::Points(1));
        let e = r.next_points(&mut out, 10).unwrap_err();
        assert!(e.to_string().contains("point 2 key id is 77"), "{e}");
        assert_eq!(r.next_points(&mut out, 10).unwrap(), PointsRead::Points(0));
    }
}
