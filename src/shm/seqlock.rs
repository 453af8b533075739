//! The slot protocol every ring of the segment uses: one writer, any number
//! of readers, and a reader that can tell a torn copy from a whole one.
//!
//! A slot starts with a u64 sequence word. Writing version `n` (from 1) of
//! a slot stores `2n - 1` (odd: being written), the slot's fields, then
//! `2n` (even: complete). A reader loads the word, copies the fields, loads
//! the word again, and keeps the copy only when both loads saw `2n`. Rings
//! differ only in what `n` is (frame, event or command number) and what a
//! slot holds; [`write_slot`] and [`read_slot`] are the whole protocol.
//!
//! Memory ordering, argued once. The fields are accessed only through
//! atomics (Relaxed, or `Mapping::read_bytes`, which copies with Relaxed
//! word loads). Writer: `seq = 2n-1` Relaxed; `fence(Release)`; fields;
//! `seq = 2n` Release. Reader: `s1 = seq` Acquire; fields; `fence(Acquire)`;
//! `s2 = seq` Relaxed. (1) If `s1 == 2n`, the Acquire load synchronizes with
//! the Release store of `2n`, so every field store of version `n` happens
//! before the reader's field loads: none of them sees an older version.
//! (2) If a field load saw a store of a later version `m`, that store comes
//! after the writer's Release fence, and the load comes before the reader's
//! Acquire fence, so the fences synchronize and the store of `2m - 1`
//! happens before the load of `s2`: `s2 >= 2m - 1 > s1`, and the copy is
//! discarded. Nothing here relies on x86's strong ordering: on aarch64 the
//! Release fence is `dmb ish`, the Acquire fence `dmb ishld`, and the
//! Acquire/Release accesses `ldar`/`stlr`, which is what makes (1) and (2)
//! hold there. Processes sharing the mapping are threads to this argument:
//! the atomics are lock-free and act on the same physical memory.

use std::sync::atomic::{fence, Ordering};

use super::map::Mapping;

/// What a reader got from a slot.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum SlotRead<T> {
    /// The slot held version `n` from the first load to the last: `T` is
    /// a whole copy of it.
    Read(T),
    /// The slot's word was not `2n` when the read began: an older version,
    /// one being written (odd), or a newer one (the ring lapped the reader).
    /// The value seen lets the ring decide which.
    Seq(u64),
    /// The slot was rewritten while it was copied; the copy was discarded.
    Torn,
}

/// Writes version `n` (≥ 1) of the slot whose sequence word is at `seq`.
/// `fields` stores the slot's contents (Relaxed stores, `write_bytes`).
/// One writer per slot: the ring's owner.
pub(crate) fn write_slot<R>(map: &Mapping, seq: usize, n: u64, fields: impl FnOnce() -> R) -> R {
    map.store_u64(seq, 2 * n - 1, Ordering::Relaxed);
    fence(Ordering::Release);
    let r = fields();
    map.store_u64(seq, 2 * n, Ordering::Release);
    r
}

/// Reads version `n` of the slot whose sequence word is at `seq`. `fields`
/// loads the slot's contents (Relaxed loads, `read_bytes`); it may see a
/// torn mix, so it must not trust what it reads beyond bounds-checked
/// access, and its result is returned only when the slot did not change.
/// `n` is at most [`MAX_SEQ`](super::layout::MAX_SEQ), so `2n` fits.
pub(crate) fn read_slot<T>(
    map: &Mapping,
    seq: usize,
    n: u64,
    fields: impl FnOnce() -> T,
) -> SlotRead<T> {
    let s1 = map.load_u64(seq, Ordering::Acquire);
    if s1 != 2 * n {
        return SlotRead::Seq(s1);
    }
    let value = fields();
    fence(Ordering::Acquire);
    if map.load_u64(seq, Ordering::Relaxed) != s1 {
        return SlotRead::Torn;
    }
    SlotRead::Read(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer rewrites one slot with self-checking content (every word
    /// of version n holds n) while a reader reads it: every torn copy must
    /// be detected and no accepted copy may mix versions.
    #[test]
    fn torn_reads_are_detected_and_never_returned() {
        const WORDS: usize = 512; // 4 KiB: long enough that copies overlap writes
        const VERSIONS: u64 = 20_000;
        let map = Mapping::from_bytes(&vec![0u8; 8 + WORDS * 8]).unwrap();
        let (accepted, torn) = std::thread::scope(|s| {
            s.spawn(|| {
                for n in 1..=VERSIONS {
                    write_slot(&map, 0, n, || {
                        for w in 0..WORDS {
                            map.store_u64(8 + 8 * w, n, Ordering::Relaxed);
                        }
                    });
                }
            });
            let reader = s.spawn(|| {
                let mut buf = vec![0u8; WORDS * 8];
                let (mut accepted, mut torn, mut last) = (0u64, 0u64, 0u64);
                // Bounded: the reader stops once it saw the last version
                // (or after a generous number of attempts).
                for _ in 0..50_000_000u64 {
                    let seen = map.load_u64(0, Ordering::Acquire);
                    if seen == 0 || seen % 2 == 1 {
                        std::hint::spin_loop();
                        continue;
                    }
                    let n = seen / 2;
                    match read_slot(&map, 0, n, || map.read_bytes(8, &mut buf)) {
                        SlotRead::Read(()) => {
                            let mixed = buf
                                .chunks_exact(8)
                                .any(|w| u64::from_ne_bytes(w.try_into().unwrap()) != n);
                            assert!(!mixed, "an accepted copy of version {n} mixes versions");
                            assert!(n >= last, "versions went backwards: {n} after {last}");
                            accepted += 1;
                            last = n;
                            if n == VERSIONS {
                                break;
                            }
                        }
                        SlotRead::Torn | SlotRead::Seq(_) => torn += 1,
                    }
                }
                (accepted, torn)
            });
            reader.join().unwrap()
        });
        assert!(accepted > 0, "the reader never got a whole copy");
        eprintln!("{accepted} whole copies, {torn} torn ones discarded");
    }
}
