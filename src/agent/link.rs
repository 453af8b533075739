//! The rules of one session's conversation with the server, kept apart
//! from I/O so they can be tested with exact times: when a stream is dead,
//! which events to send next, and how fast frames may go.
//!
//! Liveness asks only what the peer has shown it answers. Our server
//! acknowledges heartbeats, so once one heartbeat ack has been seen a
//! heartbeat unanswered for `intervals` heartbeat periods means the stream
//! is dead. The seed's server acknowledges batches only; against it a batch
//! unanswered that long means dead, and while training is paused (no
//! batches) nothing is expected, so a silent but healthy peer never causes
//! a reconnect loop. A dead TCP peer is still found by TCP and HTTP/2
//! keepalive on the channel.

use std::time::{Duration, Instant};

/// Decides when a stream has stopped showing signs of life.
#[derive(Debug)]
pub struct Liveness {
    window: Duration,
    last_rx: Instant,
    heartbeat_acks_seen: bool,
    /// The oldest heartbeat sent since the last answer of any kind.
    unanswered_heartbeat: Option<Instant>,
    /// The oldest batch sent since the last answer of any kind.
    unanswered_batch: Option<Instant>,
}

impl Liveness {
    /// `window`: how long an expected answer may take (heartbeat interval
    /// times the configured number of intervals).
    pub fn new(window: Duration, now: Instant) -> Self {
        Liveness {
            window,
            last_rx: now,
            heartbeat_acks_seen: false,
            unanswered_heartbeat: None,
            unanswered_batch: None,
        }
    }

    pub fn window(&self) -> Duration {
        self.window
    }

    /// Any message from the server is a sign of life.
    pub fn on_response(&mut self, now: Instant, heartbeat_ack: bool) {
        self.last_rx = now;
        self.unanswered_heartbeat = None;
        self.unanswered_batch = None;
        self.heartbeat_acks_seen |= heartbeat_ack;
    }

    pub fn on_heartbeat_sent(&mut self, now: Instant) {
        self.unanswered_heartbeat.get_or_insert(now);
    }

    pub fn on_batch_sent(&mut self, now: Instant) {
        self.unanswered_batch.get_or_insert(now);
    }

    /// Whether the peer has ever acknowledged a heartbeat (our server does;
    /// the seed's does not).
    pub fn answers_heartbeats(&self) -> bool {
        self.heartbeat_acks_seen
    }

    /// `Some(silence)` when the stream should be torn down.
    pub fn dead(&self, now: Instant) -> Option<Silence> {
        let overdue = |since: Option<Instant>, what| {
            since.and_then(|t| {
                let waited = now.saturating_duration_since(t);
                (waited > self.window).then_some(Silence {
                    what,
                    waited,
                    window: self.window,
                })
            })
        };
        if self.heartbeat_acks_seen {
            if let Some(s) = overdue(self.unanswered_heartbeat, Unanswered::Heartbeats) {
                return Some(s);
            }
        }
        overdue(self.unanswered_batch, Unanswered::Batches)
    }
}

/// A stream that went quiet: what went unanswered, for how long.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("no answer to {what} for {} ms (window {} ms)", .waited.as_millis(), .window.as_millis())]
pub struct Silence {
    pub what: Unanswered,
    pub waited: Duration,
    pub window: Duration,
}

/// The kind of message a [`Silence`] is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unanswered {
    Heartbeats,
    Batches,
}

impl std::fmt::Display for Unanswered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Unanswered::Heartbeats => "heartbeats",
            Unanswered::Batches => "batches",
        })
    }
}

/// Which lossless messages to send, for events and for scalar points alike
/// (each has its own cursor): everything after what the server has
/// applied, at most `max_in_flight` numbers ahead of its acknowledgements.
///
/// Numbers the segment lost (a lapped ring, or an unreadable slot skipped) (its ring lapped before they were read) are
/// never acknowledged by the server as such: the next event sent says how
/// many went just before it (`events_missed_before`), and the server's
/// cumulative ack of that event covers them. Until then they count neither
/// towards the window nor as acknowledged, so a BUFFER_FULL that rewinds
/// to `acked` re-reads the gap and announces it again. All arithmetic
/// saturates: a hostile `last_event_seq` or ack cannot overflow it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeqCursor {
    /// Next event number to send.
    pub next: u64,
    /// Every event up to this number is applied by the server.
    pub acked: u64,
    pub max_in_flight: u64,
    /// The newest lost run, as (first event after it, how many): the
    /// event `.0` carries `.1` as its `events_missed_before`.
    pub lost: Option<(u64, u64)>,
}

impl SeqCursor {
    /// After a (re)registration: the server has applied up to
    /// `server_last`; resend from the one after it.
    pub fn resume(server_last: u64, max_in_flight: u64) -> Self {
        SeqCursor {
            next: server_last.saturating_add(1),
            acked: server_last,
            max_in_flight: max_in_flight.max(1),
            lost: None,
        }
    }

    /// The same cursor from its acknowledged position again (after
    /// BUFFER_FULL: whatever followed the ack is sent again).
    pub fn rewound(&self) -> Self {
        SeqCursor {
            lost: self.lost,
            ..Self::resume(self.acked, self.max_in_flight)
        }
    }

    /// Whether another event may be sent now.
    pub fn may_send(&self) -> bool {
        self.in_flight() < self.max_in_flight
    }

    pub fn sent(&mut self, seq: u64) {
        self.next = self.next.max(seq.saturating_add(1));
    }

    /// Events `first..first + count` are lost for good; the next to send
    /// is the one after them.
    /// A run lost right after another one not yet announced (nothing was
    /// sent between) joins it, so one `missed_before` covers both.
    pub fn skip(&mut self, first: u64, count: u64) {
        let after = first.saturating_add(count);
        self.next = self.next.max(after);
        let count = match self.lost {
            Some((prev_after, prev)) if prev_after == first => prev.saturating_add(count),
            _ => count,
        };
        self.lost = Some((after, count));
    }

    /// The `events_missed_before` that event `seq` carries.
    pub fn missed_before(&self, seq: u64) -> u64 {
        match self.lost {
            Some((after, count)) if after == seq => count,
            _ => 0,
        }
    }

    /// A cumulative acknowledgement; returns whether it advanced.
    pub fn on_ack(&mut self, seq: u64) -> bool {
        let before = self.acked;
        self.acknowledge(seq);
        self.acked > before
    }

    /// A cumulative acknowledgement; returns how many events it newly
    /// acknowledges, the lost run not counted.
    pub fn acknowledge(&mut self, seq: u64) -> u64 {
        if seq <= self.acked {
            return 0;
        }
        let lost = match self.lost {
            Some((after, count)) => {
                let from = after
                    .saturating_sub(count)
                    .max(self.acked.saturating_add(1));
                after.min(seq.saturating_add(1)).saturating_sub(from)
            }
            None => 0,
        };
        let advanced = seq - self.acked;
        self.acked = seq;
        self.next = self.next.max(seq.saturating_add(1));
        advanced - lost.min(advanced)
    }

    /// Events sent and not yet acknowledged (a lost run not counted).
    pub fn in_flight(&self) -> u64 {
        let span = self.next.saturating_sub(self.acked).saturating_sub(1);
        match self.lost {
            Some((after, count)) if after > self.acked => {
                // Lost events between the ack and `next` were never sent.
                let lost_from = after
                    .saturating_sub(count)
                    .max(self.acked.saturating_add(1));
                span.saturating_sub(after.min(self.next).saturating_sub(lost_from))
            }
            _ => span,
        }
    }
}

/// Notices acknowledgements that stopped while messages are in flight: a
/// server that refused a message without BUFFER_FULL (a store write that
/// failed, say) drops everything after it, and only a resend from the last
/// ack gets the stream going again (go-back-N's timeout).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AckStall {
    acked: u64,
    since: Instant,
}

impl AckStall {
    pub fn new(now: Instant) -> Self {
        AckStall {
            acked: 0,
            since: now,
        }
    }

    /// Whether `cursor` has had messages in flight and no ack for `limit`
    /// at `now`; if so the timer starts again (so a resend gets as long).
    pub fn stalled(&mut self, cursor: &SeqCursor, now: Instant, limit: Duration) -> bool {
        if cursor.in_flight() == 0 || cursor.acked != self.acked {
            self.acked = cursor.acked;
            self.since = now;
            return false;
        }
        let stalled = now.duration_since(self.since) >= limit;
        if stalled {
            self.since = now;
        }
        stalled
    }
}

/// Paces frames at most `max_fps` on average, as a token bucket holding up
/// to [`BURST`] frames, on the clock of the frames' *publish* times: a
/// frame goes if the trainer published it late enough after the ones sent
/// before, so one read a little late or early (the agent polls) never holds
/// back the next, and a trainer at exactly `max_fps` has every frame sent
/// the moment it is read. (Paced on send times, a trainer at the rate locks
/// into whatever delay the first late read caused: the bucket never refills.)
/// A frame may come [`SLACK`] of a period early, for the trainer's own
/// jitter; the average stays capped. A frame the pacer refuses is not sent
/// later: a newer one replaces it. After BUFFER_FULL the rate halves (down
/// to `min_fps`) and climbs back by a tenth per second without one.
#[derive(Debug)]
pub struct FramePacer {
    max_fps: f64,
    min_fps: f64,
    fps: f64,
    /// Frames that may go (fractional), as of publish time `credit_at`.
    credit: f64,
    credit_at: Instant,
    last_adjust: Instant,
}

/// Frames the bucket holds: enough to absorb a trainer's jitter, too few
/// to matter to the average rate.
pub const BURST: f64 = 2.0;
/// How early (in periods) a frame may be published and still go.
pub const SLACK: f64 = 0.25;

impl FramePacer {
    pub fn new(max_fps: f64, now: Instant) -> Self {
        FramePacer {
            max_fps,
            min_fps: max_fps.min(1.0),
            fps: max_fps,
            credit: 1.0,
            credit_at: now,
            last_adjust: now,
        }
    }

    /// The rate in force now.
    pub fn fps(&self) -> f64 {
        self.fps
    }

    fn credit(&self, at: Instant) -> f64 {
        let secs = at.saturating_duration_since(self.credit_at).as_secs_f64();
        (self.credit + secs * self.fps).min(BURST)
    }

    fn settle(&mut self, at: Instant) {
        self.credit = self.credit(at);
        self.credit_at = self.credit_at.max(at);
    }

    /// The earliest publish time of a frame that may go.
    pub fn next_due(&self, at: Instant) -> Instant {
        let missing = 1.0 - SLACK - self.credit(at);
        if missing <= 0.0 {
            at
        } else {
            at + Duration::from_secs_f64(missing / self.fps)
        }
    }

    /// Whether a frame published at `published` may go.
    pub fn ready(&self, published: Instant) -> bool {
        self.credit(published) >= 1.0 - SLACK - 1e-9
    }

    /// A frame published at `published` went.
    pub fn sent(&mut self, published: Instant) {
        self.settle(published);
        self.credit = (self.credit - 1.0).max(-SLACK);
        self.recover(published);
    }

    pub fn on_buffer_full(&mut self, now: Instant) {
        self.settle(now);
        self.fps = (self.fps / 2.0).max(self.min_fps);
        // Start the slower rate from an empty bucket.
        self.credit = self.credit.min(0.0);
        self.last_adjust = now;
    }

    fn recover(&mut self, now: Instant) {
        let secs = now
            .saturating_duration_since(self.last_adjust)
            .as_secs_f64();
        if secs >= 1.0 && self.fps < self.max_fps {
            self.fps = (self.fps * 1.1f64.powf(secs.floor())).min(self.max_fps);
            self.last_adjust = now;
        }
    }
}

/// When to look for the next frame. The trainer publishes at a steady gap
/// (its batch period, or the agent's own rate, which the writer follows),
/// and each frame carries its publish time, so the next one is due at the
/// last publish time plus that gap. Looking then, and every millisecond
/// after, wakes about once a frame instead of every millisecond (looking at
/// 15/16 of the gap cost a tenth more CPU for no latency: the timer fires
/// up to a millisecond late anyway). The gap follows a faster trainer at
/// once and a slower one gently, so jitter errs towards looking early.
#[derive(Debug, Default)]
pub struct FrameClock {
    /// Publish time of the newest frame, and when it was seen.
    last: Option<(Instant, Instant)>,
    gap: Option<Duration>,
}

/// Without a frame for this long, frames are not flowing: no early look.
pub const FRAMES_FLOW_FOR: Duration = Duration::from_secs(1);

impl FrameClock {
    /// A frame published at `published`, seen at `now`.
    pub fn on_frame(&mut self, published: Instant, now: Instant) {
        if let Some((last, _)) = self.last {
            let g = published.saturating_duration_since(last);
            self.gap = Some(match self.gap {
                Some(avg) if g >= avg => (avg * 7 + g) / 8,
                _ => g,
            });
        }
        self.last = Some((published, now));
    }

    /// The earliest time worth looking for a frame; `None` when frames
    /// are not flowing (the caller's idle rate applies).
    pub fn next_look(&self, now: Instant) -> Option<Instant> {
        let (published, seen) = self.last?;
        if now.saturating_duration_since(seen) > FRAMES_FLOW_FOR {
            return None;
        }
        Some(published + self.gap.unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_peer_that_acks_heartbeats_is_dead_when_it_stops() {
        let t0 = Instant::now();
        let mut l = Liveness::new(ms(6000), t0);
        l.on_heartbeat_sent(t0);
        l.on_response(t0 + ms(5), true);
        assert!(l.answers_heartbeats());
        l.on_heartbeat_sent(t0 + ms(2000));
        l.on_heartbeat_sent(t0 + ms(4000));
        assert_eq!(
            l.dead(t0 + ms(8000)),
            None,
            "6 s since the first unanswered"
        );
        let why = l.dead(t0 + ms(8001)).expect("dead").to_string();
        assert_eq!(why, "no answer to heartbeats for 6001 ms (window 6000 ms)");
    }

    #[test]
    fn a_seed_peer_that_never_acks_heartbeats_is_not_dead_while_paused() {
        let t0 = Instant::now();
        let mut l = Liveness::new(ms(6000), t0);
        // Paused: only heartbeats, never answered, for a long time.
        for i in 0..100 {
            l.on_heartbeat_sent(t0 + ms(2000 * i));
        }
        assert_eq!(l.dead(t0 + ms(300_000)), None);
        // A batch it does not acknowledge within the window: dead.
        l.on_batch_sent(t0 + ms(300_000));
        assert_eq!(l.dead(t0 + ms(306_000)), None);
        assert_eq!(
            l.dead(t0 + ms(306_001)).map(|s| s.what),
            Some(Unanswered::Batches)
        );
        // An ack in time keeps it alive.
        l.on_response(t0 + ms(306_001), false);
        assert_eq!(l.dead(t0 + ms(400_000)), None);
    }

    #[test]
    fn the_event_cursor_resumes_after_what_the_server_applied() {
        let mut c = SeqCursor::resume(0, 2);
        assert!(c.may_send());
        c.sent(1);
        c.sent(2);
        assert!(!c.may_send(), "two in flight");
        assert!(c.on_ack(1));
        assert!(c.may_send());
        assert!(!c.on_ack(1), "a repeated ack does not advance");
        // Reconnect: the server says it applied 1, so 2 goes again.
        let c = SeqCursor::resume(1, 2);
        assert_eq!((c.next, c.acked, c.in_flight()), (2, 1, 0));
        // A restarted server knows nothing: everything is resent.
        assert_eq!(SeqCursor::resume(0, 8).next, 1);
    }

    #[test]
    fn a_lost_run_is_announced_with_the_event_after_it_and_never_counts_as_acked() {
        // Acked 5, sent 6 and 7; the ring lost 8..=10.
        let mut c = SeqCursor::resume(5, 4);
        c.sent(6);
        c.sent(7);
        c.skip(8, 3);
        assert_eq!((c.next, c.acked, c.in_flight()), (11, 5, 2));
        assert!(c.may_send(), "the lost run takes no room in the window");
        assert_eq!(c.missed_before(11), 3);
        assert_eq!(c.missed_before(12), 0);
        c.sent(11);
        assert_eq!(c.in_flight(), 3);
        // BUFFER_FULL on 6: back to the ack; re-reading finds 6..=10 lost.
        let mut r = c.rewound();
        assert_eq!((r.next, r.acked, r.in_flight()), (6, 5, 0));
        r.skip(6, 5);
        assert_eq!((r.next, r.missed_before(11), r.in_flight()), (11, 5, 0));
        // The server's ack of 11 covers the lost run: one event acked.
        r.sent(11);
        assert_eq!(r.clone().acknowledge(11), 1);
        assert!(r.on_ack(11));
        assert_eq!(r.in_flight(), 0);
        // Two runs lost back to back are announced as one.
        let mut c = SeqCursor::resume(0, 8);
        c.skip(1, 100);
        c.skip(101, 1);
        assert_eq!((c.next, c.missed_before(102)), (102, 101));
        // Without a lost run every event acked counts.
        let mut c = SeqCursor::resume(0, 8);
        (1..=3).for_each(|n| c.sent(n));
        assert_eq!(c.acknowledge(3), 3);
    }

    #[test]
    fn acks_that_stop_with_messages_in_flight_are_a_stall_after_the_limit() {
        let t0 = Instant::now();
        let limit = ms(4000);
        let mut stall = AckStall::new(t0);
        let mut c = SeqCursor::resume(0, 8);
        // Nothing in flight: never stalled, however long.
        assert!(!stall.stalled(&c, t0 + ms(10_000), limit));
        c.sent(1);
        c.sent(2);
        assert!(
            !stall.stalled(&c, t0 + ms(10_000), limit),
            "the timer starts now"
        );
        assert!(!stall.stalled(&c, t0 + ms(13_999), limit));
        // An ack that advances restarts the timer.
        c.acknowledge(1);
        assert!(!stall.stalled(&c, t0 + ms(14_000), limit));
        assert!(!stall.stalled(&c, t0 + ms(17_999), limit));
        assert!(stall.stalled(&c, t0 + ms(18_000), limit));
        // After a stall the resend gets the whole limit again.
        assert!(!stall.stalled(&c, t0 + ms(21_999), limit));
        assert!(stall.stalled(&c, t0 + ms(22_000), limit));
    }

    #[test]
    fn a_hostile_last_event_seq_cannot_overflow_the_cursor() {
        let mut c = SeqCursor::resume(u64::MAX, 8);
        assert_eq!((c.next, c.in_flight()), (u64::MAX, 0));
        c.sent(u64::MAX);
        c.skip(u64::MAX - 1, 5);
        assert!(!c.on_ack(u64::MAX));
        let _ = (c.may_send(), c.rewound(), c.missed_before(u64::MAX));
    }

    #[test]
    fn frames_are_paced_and_slow_down_after_buffer_full() {
        let t0 = Instant::now();
        let mut p = FramePacer::new(50.0, t0);
        assert!(p.ready(t0));
        p.sent(t0);
        // A frame may be published a quarter period early.
        assert!(!p.ready(t0 + ms(14)));
        assert!(p.ready(t0 + ms(15)));
        p.on_buffer_full(t0 + ms(20));
        p.on_buffer_full(t0 + ms(20));
        assert_eq!(p.fps(), 12.5);
        assert!(!p.ready(t0 + ms(79)), "an empty bucket at the slower rate");
        assert!(p.ready(t0 + ms(80)));
        p.sent(t0 + ms(100));
        assert_eq!(p.next_due(t0 + ms(100)), t0 + ms(160));
        // Climbs back by a tenth per second, never above the maximum.
        p.sent(t0 + ms(3020));
        assert!(
            (p.fps() - 12.5 * 1.1f64.powi(3)).abs() < 1e-9,
            "{}",
            p.fps()
        );
        p.sent(t0 + ms(100_000));
        assert_eq!(p.fps(), 50.0);
        let mut slow = FramePacer::new(0.5, t0);
        for _ in 0..10 {
            slow.on_buffer_full(t0);
        }
        assert_eq!(slow.fps(), 0.5, "never below min(max_fps, 1)");
    }

    #[test]
    fn a_frame_read_late_does_not_delay_the_ones_after_it() {
        let t0 = Instant::now();
        let mut p = FramePacer::new(60.0, t0);
        let period = Duration::from_micros(16_667);
        // Frame 0 is read 8 ms after it was published; pacing on read
        // times would now hold every later frame 8 ms. On publish times
        // each goes as soon as it is read.
        p.sent(t0);
        for k in 1..600u32 {
            let published = t0 + period * k;
            assert!(p.ready(published), "frame {k} held back");
            p.sent(published);
        }
    }

    #[test]
    fn a_jittery_trainer_at_the_rate_is_never_held_back_and_the_average_is_capped() {
        let t0 = Instant::now();
        let mut p = FramePacer::new(60.0, t0);
        // Frames every 16.7 ms ± 3 ms: each can go the moment it is read.
        let mut t = t0;
        for i in 0..600u64 {
            t += Duration::from_micros(16_667)
                + Duration::from_micros(if i % 2 == 0 { 3000 } else { 0 })
                - Duration::from_micros(if i % 2 == 0 { 0 } else { 3000 });
            assert!(p.ready(t), "frame {i} held back");
            p.sent(t);
        }
        // A trainer far faster than the rate: at most max_fps plus the burst.
        let mut q = FramePacer::new(60.0, t0);
        let mut sent = 0;
        for i in 0..10_000u64 {
            let t = t0 + ms(i); // 1000 frames/s for 10 s
            if q.ready(t) {
                q.sent(t);
                sent += 1;
            }
        }
        assert!((598..=603).contains(&sent), "{sent} in 10 s at 60/s");
    }

    #[test]
    fn the_frame_clock_looks_when_the_next_frame_is_due() {
        let t0 = Instant::now();
        let mut c = FrameClock::default();
        assert_eq!(c.next_look(t0), None, "no frame yet");
        // Seen 2 ms after it was published.
        c.on_frame(t0, t0 + ms(2));
        assert_eq!(c.next_look(t0 + ms(2)), Some(t0), "no gap known: look now");
        c.on_frame(t0 + ms(16), t0 + ms(17));
        assert_eq!(c.next_look(t0 + ms(17)), Some(t0 + ms(32)));
        // A late frame raises the gap gently (16 → 18), an early one
        // lowers it at once.
        c.on_frame(t0 + ms(48), t0 + ms(49));
        assert_eq!(c.next_look(t0 + ms(49)), Some(t0 + ms(48) + ms(18)));
        c.on_frame(t0 + ms(56), t0 + ms(56));
        assert_eq!(c.next_look(t0 + ms(56)), Some(t0 + ms(64)));
        // Frames stopped: the idle rate applies.
        assert_eq!(c.next_look(t0 + ms(56) + FRAMES_FLOW_FOR + ms(1)), None);
    }
}
