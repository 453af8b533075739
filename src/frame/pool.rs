//! The fixed pool of JPEG output memory.
//!
//! The pool is a set of `BytesMut` slots allocated at start-up. A JPEG is
//! encoded into the free space of a slot and split off as a frozen `Bytes`
//! that shares the slot's allocation by refcount, so the gRPC layer sends it
//! without a copy. When every `Bytes` split from a slot has been dropped
//! (sent, or the batch discarded), `BytesMut::try_reclaim` takes the whole
//! allocation back without allocating: that is how memory returns to the
//! pool. A slot whose images are still alive keeps serving smaller images
//! from its remaining space, so small JPEGs pack many to a slot.

use std::sync::Mutex;

use bytes::{Bytes, BytesMut};

use super::FrameError;

pub struct BufferPool {
    slot_len: usize,
    free: Mutex<Vec<BytesMut>>,
    slots: usize,
}

impl BufferPool {
    /// `slots` slots of `slot_len` bytes each, all allocated now.
    pub fn new(slots: usize, slot_len: usize) -> BufferPool {
        let mut free = Vec::with_capacity(slots);
        for _ in 0..slots {
            let mut slot = BytesMut::with_capacity(slot_len);
            // Splitting once turns the slot into its shared (refcounted)
            // form now, so the first real split does not allocate later.
            drop(slot.split_to(0));
            free.push(slot);
        }
        BufferPool {
            slot_len,
            free: Mutex::new(free),
            slots,
        }
    }

    /// Encodes with `write` into `need` bytes of pooled memory (an upper
    /// bound of the output) and returns the written prefix as `Bytes`.
    pub fn write_with<E>(
        &self,
        need: usize,
        write: impl FnOnce(&mut [u8]) -> Result<usize, E>,
    ) -> Result<Bytes, E>
    where
        E: From<FrameError>,
    {
        let mut slot = self.take(need)?;
        // The bytes past `len` are initialized already or zeroed once here;
        // `resize` allocates nothing since `try_reclaim` made the room.
        slot.resize(need, 0);
        let result = write(&mut slot[..]);
        let out = match result {
            Ok(len) => {
                let jpeg = slot.split_to(len.min(need)).freeze();
                Ok(jpeg)
            }
            Err(e) => Err(e),
        };
        slot.clear();
        self.put(slot);
        out
    }

    /// Slots that hold no live image right now (for tests and metrics).
    pub fn idle_slots(&self) -> usize {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        let slot_len = self.slot_len;
        free.iter_mut()
            .map(|s| s.try_reclaim(slot_len))
            .filter(|&idle| idle)
            .count()
    }

    pub fn slots(&self) -> usize {
        self.slots
    }

    fn take(&self, need: usize) -> Result<BytesMut, FrameError> {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        // Prefer the slot with the least room that still fits, so big free
        // slots stay available for big images.
        let mut best: Option<(usize, usize)> = None;
        for (i, slot) in free.iter_mut().enumerate() {
            if slot.try_reclaim(need) {
                let room = slot.capacity();
                if best.is_none_or(|(_, r)| room < r) {
                    best = Some((i, room));
                }
            }
        }
        match best {
            Some((i, _)) => Ok(free.swap_remove(i)),
            None => Err(FrameError::PoolExhausted {
                slots: self.slots,
                need,
            }),
        }
    }

    fn put(&self, slot: BytesMut) {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        free.push(slot);
    }
}
