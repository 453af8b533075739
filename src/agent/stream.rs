//! One open stream's state between wake-ups, and how an attempt fails.
//!
//! [`StreamState`] holds what the session loop consults each round (the
//! event cursor, liveness, the frame pacer and clock, the heartbeat,
//! figures and writer-check timers) and says when to wake next; it takes
//! `now` and does no I/O, so it is tested with exact times. [`Failure`]
//! is how an attempt ended badly, and [`Failure::retry`] is the one place
//! that decides what happens next.

use std::time::{Duration, Instant};

use super::channel::ChannelError;
use super::link::{AckStall, FrameClock, FramePacer, Liveness, SeqCursor, Silence};
use crate::proto::negotiated::Negotiated;

/// Heartbeat periods without an ack, with messages in flight, before they
/// are sent again from the last ack.
pub const STALL_INTERVALS: u32 = 2;
/// Events sent ahead of the server's acknowledgements.
pub const EVENT_WINDOW: u64 = 64;
/// Scalar points sent ahead of the server's acknowledgements: a second of
/// a trainer logging 16,000 points/s, about 600 KB on the wire.
pub const POINT_WINDOW: u64 = 16_384;
/// Points per ScalarBatch (the server takes up to 4,096).
pub const POINTS_PER_BATCH: usize = 1024;
/// The shortest sleep of the loop, and the longest (events, a writer gone).
pub const POLL_ACTIVE: Duration = Duration::from_millis(1);
pub const POLL_IDLE: Duration = Duration::from_millis(10);
/// How often a finished-looking run whose trainer has not published within
/// this long (and has not closed the segment) asks whether the writer
/// died: a read of /proc, which on every loop was a quarter of the agent's
/// CPU. A batch published within it shows the writer alive.
pub const WRITER_CHECK: Duration = Duration::from_millis(100);

/// The rules and timers of one stream, from registration to its end.
#[derive(Debug)]
pub struct StreamState {
    pub cursor: SeqCursor,
    /// Scalar points; only used when the server accepts them.
    pub points: SeqCursor,
    events_stall: AckStall,
    points_stall: AckStall,
    pub liveness: Liveness,
    pub pacer: FramePacer,
    pub frames: FrameClock,
    heartbeat: Duration,
    figures_every: Duration,
    next_heartbeat: Instant,
    next_figures: Instant,
    next_writer_check: Instant,
    opened: Instant,
    /// When the server first acknowledged something on this stream (an
    /// error answer is not one).
    first_ack: Option<Instant>,
}

impl StreamState {
    /// A stream opened at `now` after the server said it has applied every
    /// event up to `server_last` and every point up to `points_last`. The first heartbeat is due at once; a
    /// stream is dead after `liveness_intervals` heartbeat periods without
    /// an expected answer.
    pub fn new(
        negotiated: &Negotiated,
        max_fps: f64,
        liveness_intervals: u32,
        figures_every: Duration,
        server_last: u64,
        points_last: u64,
        now: Instant,
    ) -> StreamState {
        let heartbeat = negotiated.heartbeat;
        StreamState {
            cursor: SeqCursor::resume(server_last, EVENT_WINDOW),
            points: SeqCursor::resume(points_last, POINT_WINDOW),
            events_stall: AckStall::new(now),
            points_stall: AckStall::new(now),
            liveness: Liveness::new(heartbeat * liveness_intervals, now),
            pacer: FramePacer::new(max_fps, now),
            frames: FrameClock::default(),
            heartbeat,
            figures_every,
            next_heartbeat: now,
            next_figures: now + figures_every,
            next_writer_check: now,
            opened: now,
            first_ack: None,
        }
    }

    /// Any message from the server.
    pub fn on_response(&mut self, now: Instant, heartbeat_ack: bool) {
        self.liveness.on_response(now, heartbeat_ack);
    }

    /// A successful acknowledgement or a command: the server takes what
    /// this stream sends.
    pub fn on_ack(&mut self, now: Instant) {
        self.first_ack.get_or_insert(now);
    }

    /// Whether the stream proved healthy by `now`: the server acknowledged
    /// something on it and it stayed up for a heartbeat period. Only such a
    /// stream starts the backoff again when it fails; one answered only
    /// with errors (a session evicted over and over) does not.
    pub fn healthy(&self, now: Instant) -> bool {
        self.first_ack.is_some() && now.saturating_duration_since(self.opened) >= self.heartbeat
    }

    /// BUFFER_FULL: frames slow down, and events and points from the first
    /// one not acknowledged go again (the server dropped what it could not
    /// take, and drops what follows it until that comes).
    pub fn on_buffer_full(&mut self, now: Instant) {
        self.pacer.on_buffer_full(now);
        self.cursor = self.cursor.rewound();
        self.points = self.points.rewound();
    }

    /// Acks that stopped for [`STALL_INTERVALS`] heartbeat periods with
    /// messages in flight: those cursors go back to their acknowledged
    /// position (the caller moves the segment's reads with them). Events
    /// only against a peer that acknowledges heartbeats (ours: a seed
    /// server acknowledges no events and would get them over and over);
    /// points only when `scalars` (the peer takes them). Returns (events,
    /// points) rewound.
    pub fn rewind_stalled(&mut self, now: Instant, scalars: bool) -> (bool, bool) {
        let limit = self.heartbeat * STALL_INTERVALS;
        let events = self.liveness.answers_heartbeats()
            && self.events_stall.stalled(&self.cursor, now, limit);
        if events {
            self.cursor = self.cursor.rewound();
        }
        let points = scalars && self.points_stall.stalled(&self.points, now, limit);
        if points {
            self.points = self.points.rewound();
        }
        (events, points)
    }

    /// Whether a heartbeat is due at `now`; if so the next one is due a
    /// period later.
    pub fn heartbeat_due(&mut self, now: Instant) -> bool {
        due(&mut self.next_heartbeat, now, self.heartbeat)
    }

    /// Whether performance figures are due at `now` (then the next are due
    /// an interval later).
    pub fn figures_due(&mut self, now: Instant) -> bool {
        due(&mut self.next_figures, now, self.figures_every)
    }

    /// Whether to ask if the writer is gone, for a run with every event sent
    /// and acknowledged: at once when it `closed` the segment, else at most
    /// every [`WRITER_CHECK`] and only once it has not published for as long.
    /// `closed` is asked first, each time.
    pub fn writer_check_due(
        &mut self,
        now: Instant,
        last_publish: Option<Instant>,
        closed: impl FnOnce() -> bool,
    ) -> bool {
        let due = closed()
            || (now >= self.next_writer_check
                && last_publish.is_none_or(|t| now - t >= WRITER_CHECK));
        if due {
            self.next_writer_check = now + WRITER_CHECK;
        }
        due
    }

    /// When to wake after the round at `now`: the next frame (the trainer's
    /// usual gap after the last, and not before the pacer takes one
    /// published then), a heartbeat, figures, or a look at events; a
    /// server message ends the wait at once (the caller races it). Right
    /// after a frame went (`sent_frame`), a trainer faster than a
    /// millisecond a batch may have the next one ready: no minimum sleep
    /// then, else at least [`POLL_ACTIVE`].
    pub fn next_wake(&self, now: Instant, sent_frame: bool) -> Instant {
        let mut wake = (now + POLL_IDLE)
            .min(self.next_heartbeat)
            .min(self.next_figures);
        if let Some(look) = self.frames.next_look(now) {
            wake = wake.min(look.max(self.pacer.next_due(now)));
        }
        let earliest = if sent_frame { now } else { now + POLL_ACTIVE };
        wake.max(earliest)
    }
}

/// Whether the timer at `next` is due at `now`; if so it is set a period on.
fn due(next: &mut Instant, now: Instant, period: Duration) -> bool {
    let due = now >= *next;
    if due {
        *next = now + period;
    }
    due
}

/// What ended an attempt that did not finish the run.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error(transparent)]
    Channel(#[from] ChannelError),
    #[error("registration timed out after {} ms", .0.as_millis())]
    RegistrationTimeout(Duration),
    #[error("registration failed: {0}")]
    Registration(tonic::Status),
    #[error("registration refused: {0}")]
    Refused(String),
    #[error("opening the stream failed: {0}")]
    Open(tonic::Status),
    #[error("the server ended the stream")]
    ServerEnded,
    #[error("stream error: {0}")]
    Stream(tonic::Status),
    #[error("server lost the session: {0}")]
    SessionLost(String),
    #[error("the stream's send queue closed")]
    SendQueueClosed,
    #[error(transparent)]
    Silent(#[from] Silence),
}

/// A failed attempt: the error, and whether the stream had proved healthy
/// before it ([`StreamState::healthy`]).
#[derive(Debug)]
pub struct Failure {
    pub error: StreamError,
    pub healthy: bool,
}

/// What follows a failed attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retry {
    /// Start the backoff again from its shortest delay.
    pub reset_backoff: bool,
}

impl Failure {
    /// The one decision after a failure. Every failure is retried (a
    /// refused registration too: a server being reconfigured or restarted
    /// may take the session next time); a fatal kind would be decided here.
    /// The backoff starts again only after a stream that proved healthy,
    /// unless it then went silent: a stream that stops answering may be a
    /// peer that accepts and hangs, and one answered only with errors (an
    /// INVALID_SESSION after each registration) must not be hammered either.
    pub fn retry(&self) -> Retry {
        let reset_backoff = match &self.error {
            StreamError::Channel(_)
            | StreamError::RegistrationTimeout(_)
            | StreamError::Registration(_)
            | StreamError::Refused(_)
            | StreamError::Open(_)
            | StreamError::Silent(_) => false,
            StreamError::SessionLost(_)
            | StreamError::ServerEnded
            | StreamError::Stream(_)
            | StreamError::SendQueueClosed => self.healthy,
        };
        Retry { reset_backoff }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::link::Unanswered;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn state(heartbeat_ms: u64, figures_ms: u64, t0: Instant) -> StreamState {
        let n = Negotiated {
            heartbeat: ms(heartbeat_ms),
            max_images: 16,
            max_dim: 512,
        };
        StreamState::new(&n, 50.0, 3, ms(figures_ms), 0, 0, t0)
    }

    #[test]
    fn stalled_acks_rewind_events_only_for_an_acking_peer_and_points_only_when_taken() {
        let t0 = Instant::now();
        let mut s = state(1000, 1000, t0);
        s.cursor.sent(1);
        s.points.sent(100);
        assert_eq!(s.rewind_stalled(t0, true), (false, false));
        // A seed peer (no heartbeat acks): events are never resent; points
        // only because this test says the peer takes them.
        assert_eq!(s.rewind_stalled(t0 + ms(2000), true), (false, true));
        assert_eq!((s.points.next, s.points.acked), (1, 0), "back to the ack");
        // Our server acknowledges heartbeats: stalled events go again.
        s.on_response(t0 + ms(2100), true);
        assert_eq!(s.rewind_stalled(t0 + ms(4100), false), (true, false));
        assert_eq!((s.cursor.next, s.cursor.acked), (1, 0));
    }

    #[test]
    fn the_first_round_sends_a_heartbeat_and_then_idles_at_the_poll_rate() {
        let t0 = Instant::now();
        let mut s = state(2000, 1000, t0);
        // A heartbeat is due at once: wake no earlier than the minimum sleep.
        assert_eq!(s.next_wake(t0, false), t0 + POLL_ACTIVE);
        assert_eq!(s.next_wake(t0, true), t0, "right after a frame");
        assert!(s.heartbeat_due(t0));
        assert!(!s.heartbeat_due(t0 + ms(1999)));
        // Nothing else due: the idle poll.
        assert_eq!(s.next_wake(t0, false), t0 + POLL_IDLE);
        assert_eq!(s.liveness.window(), ms(6000));
    }

    #[test]
    fn the_next_wake_is_the_earliest_timer() {
        let t0 = Instant::now();
        let mut s = state(5, 8, t0);
        assert!(s.heartbeat_due(t0));
        assert_eq!(s.next_wake(t0, false), t0 + ms(5), "the heartbeat");
        assert!(!s.figures_due(t0 + ms(7)));
        assert!(s.heartbeat_due(t0 + ms(7)));
        assert_eq!(s.next_wake(t0 + ms(7), false), t0 + ms(8), "figures");
        assert!(s.figures_due(t0 + ms(8)));
        assert!(!s.figures_due(t0 + ms(15)));
        assert!(s.figures_due(t0 + ms(16)));
    }

    #[test]
    fn flowing_frames_wake_the_loop_when_the_next_is_due_and_the_pacer_allows() {
        let t0 = Instant::now();
        let mut s = state(2000, 60_000, t0);
        assert!(s.heartbeat_due(t0));
        // Frames published every 4 ms and sent: the next is due 4 ms after
        // the last, but the pacer (50/s) wants a 20 ms gap, less the slack.
        s.frames.on_frame(t0, t0);
        s.pacer.sent(t0);
        s.frames.on_frame(t0 + ms(4), t0 + ms(4));
        let now = t0 + ms(4);
        assert_eq!(s.next_wake(now, false), now + POLL_IDLE, "pacer's 15 ms");
        let mut fast = state(2000, 60_000, t0);
        assert!(fast.heartbeat_due(t0));
        fast.frames.on_frame(t0, t0);
        fast.frames.on_frame(t0 + ms(4), t0 + ms(4));
        // The pacer's bucket is full: the frame clock decides (4 ms on).
        assert_eq!(fast.next_wake(now, false), t0 + ms(8));
        // Frames that stopped flowing a second ago: back to the idle poll.
        let later = t0 + ms(1100);
        assert_eq!(fast.next_wake(later, false), later + POLL_IDLE);
    }

    #[test]
    fn the_writer_is_checked_at_once_when_closed_else_at_most_every_writer_check() {
        let t0 = Instant::now();
        let mut s = state(2000, 1000, t0);
        assert!(s.writer_check_due(t0, None, || false));
        assert!(!s.writer_check_due(t0 + ms(50), None, || false));
        assert!(s.writer_check_due(t0 + ms(50), None, || true), "closed");
        let t = t0 + ms(150);
        assert!(s.writer_check_due(t, None, || false));
        // A batch published recently shows the writer alive.
        let t = t + WRITER_CHECK;
        assert!(!s.writer_check_due(t, Some(t - ms(99)), || false));
        assert!(s.writer_check_due(t, Some(t - ms(100)), || false));
    }

    #[test]
    fn buffer_full_resends_from_the_first_unacknowledged_event() {
        let t0 = Instant::now();
        let mut s = state(2000, 1000, t0);
        s.cursor.sent(1);
        s.cursor.sent(2);
        s.cursor.sent(3);
        assert!(s.cursor.on_ack(1));
        s.on_buffer_full(t0);
        assert_eq!((s.cursor.next, s.cursor.acked), (2, 1));
        assert_eq!(s.pacer.fps(), 25.0);
        // An answer alone proves nothing; an ack after a heartbeat
        // period of being up does.
        s.on_response(t0, false);
        assert!(!s.healthy(t0 + ms(5000)));
        s.on_ack(t0 + ms(10));
        assert!(!s.healthy(t0 + ms(1999)));
        assert!(s.healthy(t0 + ms(2000)));
    }

    #[test]
    fn only_a_stream_that_proved_healthy_resets_the_backoff() {
        let failure = |error, healthy| Failure { error, healthy }.retry().reset_backoff;
        let status = || tonic::Status::unavailable("down");
        assert!(!failure(
            StreamError::RegistrationTimeout(ms(20_000)),
            false
        ));
        assert!(!failure(StreamError::Registration(status()), false));
        assert!(!failure(StreamError::Refused("no".into()), false));
        assert!(!failure(StreamError::Open(status()), false));
        for healthy in [false, true] {
            assert_eq!(failure(StreamError::ServerEnded, healthy), healthy);
            assert_eq!(failure(StreamError::Stream(status()), healthy), healthy);
            assert_eq!(failure(StreamError::SendQueueClosed, healthy), healthy);
            // Issue 15 item 13: INVALID_SESSION right after registering
            // (eviction churn) used to reset the backoff every time.
            assert_eq!(
                failure(StreamError::SessionLost("evicted".into()), healthy),
                healthy
            );
        }
        let silence = Silence {
            what: Unanswered::Heartbeats,
            waited: ms(6001),
            window: ms(6000),
        };
        assert!(
            !failure(StreamError::Silent(silence), true),
            "a stream that went quiet proves nothing"
        );
        assert_eq!(
            StreamError::Silent(silence).to_string(),
            "no answer to heartbeats for 6001 ms (window 6000 ms)"
        );
    }
}
