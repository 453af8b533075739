//! Feeds arbitrary bytes to the segment reader as a segment image: open,
//! newest frame, events, control, inspect reports. Nothing may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    trainwatch::shm::inspect::fuzz_exercise(data);
});
