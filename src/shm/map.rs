//! The mapping: bounds-checked atomic and byte access to shared memory.
//!
//! All pointer arithmetic of the crate is here. Offsets come from a
//! validated [`Geometry`](super::layout::Geometry), so a failed check below
//! is a bug in this crate, not bad input; it panics rather than read out of
//! bounds.

use std::fs::File;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use memmap2::{MmapOptions, MmapRaw};

pub(crate) struct Mapping {
    raw: MmapRaw,
    writable: bool,
}

impl Mapping {
    pub fn map(file: &File, writable: bool) -> std::io::Result<Mapping> {
        let raw = if writable {
            MmapOptions::new().map_raw(file)?
        } else {
            MmapOptions::new().map_raw_read_only(file)?
        };
        Ok(Mapping { raw, writable })
    }

    /// A private anonymous copy of `bytes`: parses a segment image without a
    /// file (fuzzing, tests).
    pub fn from_bytes(bytes: &[u8]) -> std::io::Result<Mapping> {
        let mut anon = MmapOptions::new().len(bytes.len().max(1)).map_anon()?;
        anon[..bytes.len()].copy_from_slice(bytes);
        Ok(Mapping {
            raw: MmapRaw::from(anon),
            writable: true,
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
    /// at the same time: callers validate with the slot's seqlock and throw
    /// the copy away when it changed.
    pub fn read_bytes(&self, off: usize, dst: &mut [u8]) {
        self.check(off, dst.len(), 1);
        // SAFETY: the source range is inside the mapping (checked) and does
        // not overlap `dst`, a Rust buffer. Bytes have no invalid values; a
        // concurrent writer can only make them stale, which the caller's
        // seqlock check detects. The compiler cannot assume anything about
        // memory another process writes, since it only reaches it through
        // this raw pointer.
        unsafe {
            std::ptr::copy_nonoverlapping(self.raw.as_ptr().add(off), dst.as_mut_ptr(), dst.len())
        }
    }

    pub fn write_bytes(&self, off: usize, src: &[u8]) {
        assert!(self.writable, "store to a read-only mapping");
        self.check(off, src.len(), 1);
        // SAFETY: the destination range is inside a writable mapping
        // (checked) and does not overlap `src`. Readers see these bytes only
        // through the seqlock protocol of the slot that holds them.
        unsafe {
            std::ptr::copy_nonoverlapping(src.as_ptr(), self.raw.as_mut_ptr().add(off), src.len())
        }
    }
}
