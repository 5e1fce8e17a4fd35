//! How far a stream is done, over its two ranges: the catch-up range
//! `[from, to)` read by the catch-up cursor, then the live range from `to`
//! read by the live cursor.
//!
//! Each cursor registers its batches (first and last offset) with its own
//! [`AckTracker`]; the engine settles them. The offset to store is the
//! contiguous done watermark over the catch-up range first, then the live
//! range.
//!
//! Invariants:
//! - the stored offset never passes an undone record: within a range it is
//!   the offset after the last batch below that range's tracker watermark;
//! - while the catch-up range is not wholly read and done, the stored
//!   offset stays inside it, however far the live range has got;
//! - it never moves back;
//! - every offset belongs to exactly one range: the live cursor submits
//!   only offsets at or after `to`, the catch-up cursor only offsets
//!   before it, so within a session no record is submitted twice.

use parking_lot::Mutex;

use crate::ack::{AckRef, AckTracker};
use crate::source::Positions;

/// Which cursor a batch was read by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Cursor {
    /// The catch-up cursor, reading `[from, to)`.
    CatchUp,
    /// The live cursor, reading from `to`.
    Live,
}

/// One range's batches and how far they are done.
struct Range {
    /// Each registered batch's offset after its last record.
    ends: Positions<u64>,
    /// Every offset below this is done (or was never the range's).
    done: u64,
}

impl Range {
    fn new(start: u64) -> Range {
        Range {
            ends: Positions::new(),
            done: start,
        }
    }

    fn register(&mut self, last: u64) -> AckRef {
        self.ends.register(last + 1)
    }

    fn settle(&mut self) {
        if let Some(end) = self.ends.take_last_done() {
            self.done = self.done.max(end);
        }
    }

    fn tracker(&self) -> &AckTracker {
        self.ends.tracker()
    }
}

struct State {
    /// The catch-up range's end (`to`), once the live cursor has started.
    to: u64,
    catch_up: Option<CatchUpRange>,
    live: Range,
}

struct CatchUpRange {
    range: Range,
    /// The catch-up cursor has read (and registered) all it will: the rest
    /// of the range is done once its batches are.
    read_all: bool,
}

/// The done offsets of one session's two cursors.
pub(super) struct StreamOffsets {
    state: Mutex<State>,
}

impl StreamOffsets {
    /// Offsets for a session whose stored offset is `from` and whose live
    /// cursor starts at `to` (`from >= to`: nothing to catch up; the live
    /// range then starts at `from`).
    pub fn new(from: u64, to: u64) -> StreamOffsets {
        let catch_up = (from < to).then(|| CatchUpRange {
            range: Range::new(from),
            read_all: false,
        });
        let to = to.max(from);
        StreamOffsets {
            state: Mutex::new(State {
                to,
                catch_up,
                live: Range::new(to),
            }),
        }
    }

    /// Where the live range starts: the live cursor skips offsets below it.
    pub fn live_start(&self) -> u64 {
        self.state.lock().to
    }

    /// Whether there is a catch-up range, and it is `[from, to)`.
    pub fn catch_up_range(&self) -> Option<(u64, u64)> {
        let state = self.state.lock();
        state.catch_up.as_ref().map(|c| (c.range.done, state.to))
    }

    /// Registers a batch read by `cursor`, from its first offset to `last`,
    /// and returns the reference the engine settles.
    pub fn register(&self, cursor: Cursor, last: u64) -> AckRef {
        let mut state = self.state.lock();
        match cursor {
            Cursor::Live => state.live.register(last),
            Cursor::CatchUp => match state.catch_up.as_mut() {
                Some(c) => c.range.register(last),
                // No range to catch up: a caller bug, never a silent ack.
                None => AckTracker::new().register(),
            },
        }
    }

    /// The catch-up cursor has read all of its range it will read (it
    /// reached `to`, or the stream had nothing more before it).
    pub fn catch_up_read_all(&self) {
        if let Some(c) = self.state.lock().catch_up.as_mut() {
            c.read_all = true;
        }
    }

    /// Whether the catch-up range is wholly read and done (or there is none).
    fn catch_up_done(state: &mut State, to: u64) -> bool {
        let Some(c) = state.catch_up.as_mut() else {
            return true;
        };
        c.range.settle();
        if c.read_all && c.range.tracker().outstanding() == 0 {
            c.range.done = to;
        }
        c.range.done >= to
    }

    /// The offset to store: every record below it is done.
    pub fn stored(&self) -> u64 {
        let mut state = self.state.lock();
        let to = state.to;
        if !Self::catch_up_done(&mut state, to) {
            return state.catch_up.as_ref().map_or(to, |c| c.range.done);
        }
        state.live.settle();
        state.live.done
    }

    /// Whether a batch was abandoned (its reference dropped unsettled), so
    /// the stored offset cannot move past it in this session.
    pub fn is_stuck(&self) -> bool {
        let state = self.state.lock();
        state.live.tracker().is_stuck()
            || state
                .catch_up
                .as_ref()
                .is_some_and(|c| c.range.tracker().is_stuck())
    }

    /// Batches registered and not yet done, over both cursors.
    pub fn outstanding(&self) -> usize {
        let state = self.state.lock();
        state.live.tracker().outstanding()
            + state
                .catch_up
                .as_ref()
                .map_or(0, |c| c.range.tracker().outstanding())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stored_offset_walks_catch_up_first_then_live() {
        let o = StreamOffsets::new(100, 1000);
        assert_eq!(o.catch_up_range(), Some((100, 1000)));
        assert_eq!(o.live_start(), 1000);
        let live = o.register(Cursor::Live, 1099);
        let a = o.register(Cursor::CatchUp, 499);
        let b = o.register(Cursor::CatchUp, 999);
        o.catch_up_read_all();
        live.complete();
        assert_eq!(o.stored(), 100, "live done, catch-up not: stays at from");
        b.complete();
        assert_eq!(o.stored(), 100, "b done but a is not");
        a.complete();
        assert_eq!(o.stored(), 1100, "catch-up done: the live range counts");
        assert_eq!(o.outstanding(), 0);
    }

    #[test]
    fn a_partly_done_catch_up_range_holds_the_offset_inside_it() {
        let o = StreamOffsets::new(0, 300);
        let a = o.register(Cursor::CatchUp, 99);
        let _b = o.register(Cursor::CatchUp, 199);
        o.register(Cursor::Live, 399).complete();
        a.complete();
        assert_eq!(o.stored(), 100);
    }

    #[test]
    fn a_catch_up_range_read_to_its_end_is_done_even_with_a_gap() {
        // Retention removed offsets 0..250: the catch-up cursor read
        // 250..=280 and found the range's end.
        let o = StreamOffsets::new(0, 300);
        o.register(Cursor::CatchUp, 280).complete();
        assert_eq!(o.stored(), 281);
        o.catch_up_read_all();
        assert_eq!(o.stored(), 300);
    }

    #[test]
    fn no_lag_means_no_catch_up_range_and_the_live_range_starts_at_from() {
        let o = StreamOffsets::new(500, 480);
        assert_eq!(o.catch_up_range(), None);
        assert_eq!(o.live_start(), 500);
        assert_eq!(o.stored(), 500);
        o.register(Cursor::Live, 520).complete();
        assert_eq!(o.stored(), 521);
    }

    #[test]
    fn an_abandoned_batch_is_stuck_and_never_passed() {
        let o = StreamOffsets::new(0, 10);
        let a = o.register(Cursor::CatchUp, 9);
        o.catch_up_read_all();
        drop(a);
        assert!(o.is_stuck());
        assert_eq!(o.stored(), 0);
    }
}
