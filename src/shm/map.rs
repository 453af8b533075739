//! The mapping: bounds-checked atomic and byte access to shared memory,
//! and the few system calls the segment code makes.
//!
//! All pointer arithmetic and every `unsafe` block of `shm` outside the C
//! ABI is here, behind safe functions. Offsets come from a validated
//! [`Geometry`](super::layout::Geometry), so a failed check below is a bug
//! in this crate, not bad input; it panics rather than read out of bounds.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};

use memmap2::{MmapOptions, MmapRaw};

pub(crate) struct Mapping {
    raw: MmapRaw,
    writable: bool,
    /// The slot of this file mapping in [`bus`]'s table, when it has one.
    guard: Option<usize>,
}

impl Mapping {
    /// Maps `file` shared, guarded against SIGBUS (see [`bus`]): if the file
    /// shrinks under the mapping, a read or write past its end gets a page
    /// of zeros instead of killing the process, and [`Mapping::faulted`]
    /// says so.
    pub fn map(file: &File, writable: bool) -> std::io::Result<Mapping> {
        let raw = if writable {
            MmapOptions::new().map_raw(file)?
        } else {
            MmapOptions::new().map_raw_read_only(file)?
        };
        let guard = bus::register(raw.as_ptr() as usize, raw.len());
        Ok(Mapping {
            raw,
            writable,
            guard,
        })
    }

    /// Whether an access faulted past the end of the file (it shrank or
    /// was truncated while mapped): what was read since is zeros.
    pub fn faulted(&self) -> bool {
        self.guard.is_some_and(bus::faulted)
    }

    /// A private anonymous copy of `bytes`: parses a segment image without a
    /// file (fuzzing, tests).
    pub fn from_bytes(bytes: &[u8]) -> std::io::Result<Mapping> {
        let mut anon = MmapOptions::new().len(bytes.len().max(1)).map_anon()?;
        anon[..bytes.len()].copy_from_slice(bytes);
        Ok(Mapping {
            raw: MmapRaw::from(anon),
            writable: true,
            guard: None,
        })
    }

    pub fn len(&self) -> usize {
        self.raw.len()
    }

    pub fn writable(&self) -> bool {
        self.writable
    }

    fn check(&self, off: usize, size: usize, align: usize) {
        assert!(
            off.is_multiple_of(align) && off.checked_add(size).is_some_and(|end| end <= self.len()),
            "shm access out of bounds: offset {off} size {size} in {}",
            self.len()
        );
    }

    fn atomic_u64(&self, off: usize) -> &AtomicU64 {
        self.check(off, 8, 8);
        // SAFETY: in bounds and 8-aligned (checked; the mapping is
        // page-aligned). AtomicU64 has u64's layout and every bit pattern is
        // valid. The reference lives no longer than `self`, which keeps the
        // mapping. Other processes touch this word only through atomics.
        unsafe { &*(self.raw.as_ptr().add(off) as *const AtomicU64) }
    }

    fn atomic_u32(&self, off: usize) -> &AtomicU32 {
        self.check(off, 4, 4);
        // SAFETY: as in `atomic_u64`, for a 4-aligned u32.
        unsafe { &*(self.raw.as_ptr().add(off) as *const AtomicU32) }
    }

    pub fn load_u64(&self, off: usize, order: Ordering) -> u64 {
        self.atomic_u64(off).load(order)
    }

    pub fn load_u32(&self, off: usize, order: Ordering) -> u32 {
        self.atomic_u32(off).load(order)
    }

    pub fn load_f32(&self, off: usize) -> f32 {
        f32::from_bits(self.load_u32(off, Ordering::Relaxed))
    }

    pub fn store_u64(&self, off: usize, v: u64, order: Ordering) {
        assert!(self.writable, "store to a read-only mapping");
        self.atomic_u64(off).store(v, order)
    }

    pub fn store_u32(&self, off: usize, v: u32, order: Ordering) {
        assert!(self.writable, "store to a read-only mapping");
        self.atomic_u32(off).store(v, order)
    }

    pub fn store_f32(&self, off: usize, v: f32) {
        self.store_u32(off, v.to_bits(), Ordering::Relaxed)
    }

    pub fn fetch_max_u64(&self, off: usize, v: u64, order: Ordering) -> u64 {
        assert!(self.writable, "store to a read-only mapping");
        self.atomic_u64(off).fetch_max(v, order)
    }

    pub fn add_u64(&self, off: usize, v: u64) {
        // Single writer per field: load + store, no locked RMW on the hot path.
        let cur = self.load_u64(off, Ordering::Relaxed);
        self.store_u64(off, cur.wrapping_add(v), Ordering::Relaxed);
    }

    /// Copies bytes out of the mapping. The other side may be writing them
    /// at the same time: callers validate with the slot's seqlock
    /// ([`read_slot`](super::seqlock::read_slot)) and throw the copy away
    /// when it changed.
    ///
    /// The copy is made of Relaxed atomic loads (bytes up to an 8-aligned
    /// address, then u64 words), not a memcpy: a plain read racing with the
    /// writer's stores would be a data race, undefined behaviour in Rust's
    /// memory model even when the result is discarded, and the seqlock's
    /// fence argument needs the loads to be atomic. Relaxed word loads
    /// compile to ordinary 8-byte moves (the loop comes out unrolled four
    /// times), where memcpy moves 32 bytes at a time; stable Rust has no
    /// atomic load that wide. Measured on a 2-vCPU x86_64 VM, a 196 KB
    /// frame (16 x 32x32x3 f32) copies in about 7.7 us against memcpy's
    /// 3.7 us: some 0.25 ms of CPU a second at 60 FPS, the price of a read
    /// that is defined behaviour (`cargo bench --bench shm -- read_newest`
    /// for the frame read as a whole).
    pub fn read_bytes(&self, off: usize, dst: &mut [u8]) {
        self.check(off, dst.len(), 1);
        let len = dst.len();
        let head = (off.next_multiple_of(8) - off).min(len);
        let words = (len - head) / 8;
        let (lead, rest) = dst.split_at_mut(head);
        let (body, tail) = rest.split_at_mut(words * 8);
        for (i, b) in lead.iter_mut().enumerate() {
            *b = self.atomic_u8(off + i).load(Ordering::Relaxed);
        }
        let body_off = off + head;
        for (i, chunk) in body.chunks_exact_mut(8).enumerate() {
            let w = self
                .word_unchecked(body_off + 8 * i)
                .load(Ordering::Relaxed);
            chunk.copy_from_slice(&w.to_ne_bytes());
        }
        let tail_off = body_off + words * 8;
        for (i, b) in tail.iter_mut().enumerate() {
            *b = self.atomic_u8(tail_off + i).load(Ordering::Relaxed);
        }
    }

    fn atomic_u8(&self, off: usize) -> &AtomicU8 {
        self.check(off, 1, 1);
        // SAFETY: in bounds (checked); AtomicU8 has u8's layout and any
        // alignment. As in `atomic_u64`, the reference lives no longer than
        // the mapping, and the other side writes these bytes with stores
        // that the slot's seqlock orders.
        unsafe { &*(self.raw.as_ptr().add(off) as *const AtomicU8) }
    }

    /// `atomic_u64` without the bounds check, for `read_bytes`'s loop:
    /// the caller checked the whole range once, and a check per word would
    /// cost a third of the copy.
    fn word_unchecked(&self, off: usize) -> &AtomicU64 {
        debug_assert!(off.is_multiple_of(8) && off + 8 <= self.len());
        // SAFETY: `read_bytes` checked that its whole range lies inside the
        // mapping and passes only 8-aligned offsets of whole words in it;
        // otherwise as in `atomic_u64`.
        unsafe { &*(self.raw.as_ptr().add(off) as *const AtomicU64) }
    }

    pub fn write_bytes(&self, off: usize, src: &[u8]) {
        assert!(self.writable, "store to a read-only mapping");
        self.check(off, src.len(), 1);
        // SAFETY: the destination range is inside a writable mapping
        // (checked) and does not overlap `src`. Readers see these bytes only
        // through the seqlock protocol of the slot that holds them. This
        // side stays a memcpy: it is the trainer's one cost per copied
        // frame, and word-at-a-time atomic stores measured 30% (9.6 MB) to
        // 2x (192 KB) slower; the reader's copy is the atomic one.
        unsafe {
            std::ptr::copy_nonoverlapping(src.as_ptr(), self.raw.as_mut_ptr().add(off), src.len())
        }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // Before the unmapping (the field's drop, after this).
        if let Some(slot) = self.guard {
            bus::unregister(slot);
        }
    }
}

/// SIGBUS confined to segment mappings. Any process that may write a
/// segment's file can truncate it; the next access to a page past the new
/// end raises SIGBUS, whose default kills the process (the agent, for every
/// run on the device). The handler, installed once, looks the faulting
/// address up in a fixed table of file mappings (atomics only: nothing in
/// it allocates or locks); inside one, it maps a private page of zeros
/// over the faulting page and marks the mapping faulted, so the access is
/// retried, reads zeros, and the reader reports the run corrupt. Any other
/// SIGBUS goes to the handler that was there before (or the default).
mod bus {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::OnceLock;

    /// File mappings guarded at once; beyond it a mapping is unguarded.
    const SLOTS: usize = 4096;

    struct Region {
        start: AtomicUsize,
        len: AtomicUsize,
        faulted: AtomicBool,
    }

    #[allow(clippy::declare_interior_mutable_const)]
    const EMPTY: Region = Region {
        start: AtomicUsize::new(0),
        len: AtomicUsize::new(0),
        faulted: AtomicBool::new(false),
    };
    static REGIONS: [Region; SLOTS] = [EMPTY; SLOTS];
    static PAGE: AtomicUsize = AtomicUsize::new(4096);
    /// The disposition before ours, for signals outside our mappings.
    static PREVIOUS: OnceLock<libc::sigaction> = OnceLock::new();

    fn install() {
        PREVIOUS.get_or_init(|| {
            // SAFETY: sysconf takes a constant; sigaction gets a zeroed,
            // then filled, struct and a pointer to write the old one into;
            // the handler is an extern "C" fn of the SA_SIGINFO shape.
            unsafe {
                let page = libc::sysconf(libc::_SC_PAGESIZE);
                if page > 0 {
                    PAGE.store(page as usize, Ordering::Relaxed);
                }
                let mut new: libc::sigaction = std::mem::zeroed();
                new.sa_sigaction = handler as *const () as usize;
                new.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
                libc::sigemptyset(&mut new.sa_mask);
                let mut old: libc::sigaction = std::mem::zeroed();
                libc::sigaction(libc::SIGBUS, &new, &mut old);
                old
            }
        });
    }

    pub fn register(start: usize, len: usize) -> Option<usize> {
        if start == 0 || len == 0 {
            return None;
        }
        install();
        for (i, r) in REGIONS.iter().enumerate() {
            if r.start
                .compare_exchange(0, start, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                r.faulted.store(false, Ordering::Relaxed);
                r.len.store(len, Ordering::Release);
                return Some(i);
            }
        }
        None
    }

    pub fn unregister(slot: usize) {
        let r = &REGIONS[slot];
        r.len.store(0, Ordering::Release);
        r.start.store(0, Ordering::Release);
    }

    pub fn faulted(slot: usize) -> bool {
        REGIONS[slot].faulted.load(Ordering::Acquire)
    }

    extern "C" fn handler(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
        // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers.
        let addr = unsafe { (*info).si_addr() } as usize;
        for r in &REGIONS {
            let start = r.start.load(Ordering::Acquire);
            let len = r.len.load(Ordering::Acquire);
            if start == 0 || addr < start || addr - start >= len {
                continue;
            }
            r.faulted.store(true, Ordering::Release);
            let page = PAGE.load(Ordering::Relaxed);
            let at = addr & !(page - 1);
            // SAFETY: `at` is a page inside one of our live mappings; a
            // fixed private anonymous page replaces the one past the file's
            // end (mmap is a plain system call, safe in a handler).
            let p = unsafe {
                libc::mmap(
                    at as *mut libc::c_void,
                    page,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                    -1,
                    0,
                )
            };
            if p != libc::MAP_FAILED {
                return;
            }
            break;
        }
        chain(sig, info, ctx);
    }

    /// The previous disposition of a SIGBUS that is not ours.
    fn chain(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
        let Some(prev) = PREVIOUS.get() else {
            return default(sig);
        };
        let action = prev.sa_sigaction;
        if action == libc::SIG_IGN {
            return;
        }
        if action == libc::SIG_DFL {
            return default(sig);
        }
        // SAFETY: the previous handler was installed for this signal with
        // the shape its flags say.
        unsafe {
            if prev.sa_flags & libc::SA_SIGINFO != 0 {
                let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                    std::mem::transmute(action);
                f(sig, info, ctx);
            } else {
                let f: extern "C" fn(libc::c_int) = std::mem::transmute(action);
                f(sig);
            }
        }
    }

    /// The default action: on return the faulting access is retried and
    /// raises SIGBUS again, now with its default (the process ends, as it
    /// would have without us).
    fn default(sig: libc::c_int) {
        // SAFETY: signal() with SIG_DFL for the signal being handled.
        unsafe {
            libc::signal(sig, libc::SIG_DFL);
        }
    }
}

/// `clock_gettime(clock)` in nanoseconds; 0 if the clock is unavailable.
pub(crate) fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; clock_gettime writes only it.
    let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
    if rc != 0 {
        return 0;
    }
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// Whether a process with this pid exists (alive, or ours to not signal).
pub(crate) fn pid_exists(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if pid <= 0 {
        return false;
    }
    // SAFETY: kill with signal 0 sends nothing; it only checks the pid.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// `posix_fallocate(file, 0, len)`: reserves the file's pages now. File
/// systems that cannot (EOPNOTSUPP, EINVAL) are not an error.
pub(crate) fn fallocate(file: &File, len: libc::off_t) -> io::Result<()> {
    // SAFETY: posix_fallocate takes a valid open fd and plain integers.
    let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len) };
    match rc {
        0 | libc::EOPNOTSUPP | libc::EINVAL => Ok(()),
        e => Err(io::Error::from_raw_os_error(e)),
    }
}
