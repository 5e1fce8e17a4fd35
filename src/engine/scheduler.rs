//! The live-first scheduler: for each free delivery slot, which lane the
//! next batch comes from.
//!
//! Invariants:
//! - live goes first: with the backlog empty (or rate-limited), every slot
//!   serves live;
//! - whenever both lanes have work, the backlog's share of delivered
//!   messages converges to `backlog_share` (deficit accounting over a
//!   bounded window, so a long quiet spell of one lane earns the other no
//!   burst afterwards, and the split does not flap batch to batch);
//! - with live idle the backlog takes every slot (work-conserving), never
//!   more than `backlog_rate` messages per second when a rate is set;
//! - while live traffic is flowing (seen within [`LIVE_QUIET`]), the backlog
//!   holds the last free slot only with a short batch (at most the
//!   `last_slot_batch` set by [`Scheduler::with_last_slot_batch`]): a fresh
//!   message always finds a slot free or about to be, after at most one
//!   short batch, so its wait does not grow with the backlog, and the slot
//!   does not idle while live is between messages (work-conserving: the
//!   drain beside light live traffic keeps every slot busy).
//!
//! The scheduler is plain state: no clocks of its own, no I/O, so its
//! promises are tested directly.

use std::time::{Duration, Instant};

use crate::sink::Lane;

/// What the next free slot should do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pick {
    /// Take a live batch.
    Live,
    /// Take up to `max` backlog records (the rate ceiling or the last-slot
    /// rule may cut a batch short).
    Backlog {
        /// The most records the rate ceiling and the last-slot rule allow now.
        max: usize,
        /// Whether this delivery takes the slot kept for live: the caller
        /// does not count it among `backlog_in_flight`, so the next free
        /// slot is again the last.
        last_slot: bool,
    },
    /// Nothing to do before this much time passes (or new work arrives).
    Wait(Duration),
}

/// How long an idle dispatcher sleeps before looking again, when nothing
/// wakes it sooner.
pub const IDLE_WAIT: Duration = Duration::from_millis(250);

/// Live traffic seen this recently keeps one slot out of the backlog's reach.
pub const LIVE_QUIET: Duration = Duration::from_millis(200);

/// One group's scheduling state.
#[derive(Debug, Clone)]
pub struct Scheduler {
    share: f64,
    /// Messages the backlog is owed (positive) or has had in advance (negative).
    credit: f64,
    /// The bound on `credit` either way: the window of the hysteresis.
    credit_limit: f64,
    bucket: Option<TokenBucket>,
    last_pick_competed: bool,
    slots: usize,
    live_seen_at: Option<Instant>,
    last_slot_batch: usize,
}

impl Scheduler {
    /// A scheduler for `slots` delivery slots guaranteeing the backlog
    /// `share` of deliveries, with an optional rate ceiling; `window` is the
    /// hysteresis in messages (a few batches' worth is right).
    pub fn new(share: f64, rate: Option<f64>, window: usize, slots: usize) -> Scheduler {
        Scheduler {
            share: share.clamp(0.0, 1.0),
            credit: 0.0,
            credit_limit: window.max(1) as f64,
            bucket: rate.map(TokenBucket::new),
            last_pick_competed: false,
            slots: slots.max(1),
            live_seen_at: None,
            last_slot_batch: 1,
        }
    }

    /// The most backlog records one delivery may take in the slot kept for
    /// live (default 1): it bounds what a fresh message may wait behind.
    pub fn with_last_slot_batch(mut self, records: usize) -> Scheduler {
        self.last_slot_batch = records.max(1);
        self
    }

    /// Sets the number of slots the last-slot rule counts against (an
    /// adaptive group's limit moves).
    pub fn set_slots(&mut self, slots: usize) {
        self.slots = slots.max(1);
    }

    /// Decides the next batch's lane from which lanes have work and how many
    /// backlog deliveries are in flight already (not counting those that
    /// took the last slot).
    pub fn pick(
        &mut self,
        live_ready: bool,
        backlog_ready: bool,
        backlog_in_flight: usize,
        now: Instant,
    ) -> Pick {
        if live_ready {
            self.live_seen_at = Some(now);
        }
        let allowance = match &mut self.bucket {
            Some(bucket) => bucket.available(now),
            None => usize::MAX,
        };
        // The last free slot stays live's while live traffic is flowing.
        let live_recent = self
            .live_seen_at
            .map(|t| now.saturating_duration_since(t))
            .filter(|since| *since < LIVE_QUIET);
        let last_slot = self.slots > 1 && backlog_in_flight + 1 >= self.slots;
        let reserved = last_slot && live_recent.is_some();
        let backlog = Pick::Backlog {
            max: if reserved {
                allowance.min(self.last_slot_batch)
            } else {
                allowance
            },
            last_slot: reserved,
        };
        // Live waiting for the last slot takes it; the backlog takes it only
        // while live has nothing.
        let backlog_can = backlog_ready && allowance >= 1 && !(reserved && live_ready);
        self.last_pick_competed = live_ready && backlog_can;
        match (live_ready, backlog_can) {
            (false, false) => Pick::Wait(match (&self.bucket, backlog_ready) {
                (Some(bucket), true) => bucket.time_to_one(),
                _ => IDLE_WAIT,
            }),
            (true, false) => Pick::Live,
            (false, true) => backlog,
            (true, true) if self.credit > 0.0 || self.share >= 1.0 => backlog,
            (true, true) => Pick::Live,
        }
    }

    /// Records that `n` messages were taken from `lane` after the last pick.
    pub fn took(&mut self, lane: Lane, n: usize) {
        let n = n as f64;
        if let (Lane::Backlog, Some(bucket)) = (lane, &mut self.bucket) {
            bucket.spend(n);
        }
        if !self.last_pick_competed {
            return;
        }
        self.credit += match lane {
            Lane::Live => self.share * n,
            Lane::Backlog => -(1.0 - self.share) * n,
        };
        self.credit = self.credit.clamp(-self.credit_limit, self.credit_limit);
    }
}

/// A token bucket for the backlog's rate ceiling.
#[derive(Debug, Clone)]
struct TokenBucket {
    rate: f64,
    capacity: f64,
    tokens: f64,
    refilled_at: Option<Instant>,
}

impl TokenBucket {
    fn new(rate: f64) -> TokenBucket {
        // A tenth of a second's worth: small bursts, smooth over a second.
        let capacity = (rate / 10.0).max(1.0);
        TokenBucket {
            rate,
            capacity,
            tokens: capacity,
            refilled_at: None,
        }
    }

    fn available(&mut self, now: Instant) -> usize {
        if let Some(then) = self.refilled_at {
            let elapsed = now.saturating_duration_since(then).as_secs_f64();
            self.tokens = (self.tokens + elapsed * self.rate).min(self.capacity);
        }
        self.refilled_at = Some(now);
        self.tokens.max(0.0) as usize
    }

    fn spend(&mut self, n: f64) {
        self.tokens -= n;
    }

    /// How long until a token is there; at most [`IDLE_WAIT`], so a rate
    /// too small to wait for (a token a century) is looked at again, never
    /// turned into a duration past what the clock can hold.
    fn time_to_one(&self) -> Duration {
        let missing = (1.0 - self.tokens).max(0.0);
        Duration::try_from_secs_f64(missing / self.rate)
            .unwrap_or(IDLE_WAIT)
            .clamp(Duration::from_millis(1), IDLE_WAIT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `picks` decisions with both lanes always ready and batches of
    /// `batch`, returning the backlog's share of messages taken.
    fn saturated_share(share: f64, batch: usize, picks: usize) -> f64 {
        let mut s = Scheduler::new(share, None, batch * 8, 4);
        let now = Instant::now();
        let (mut live, mut backlog) = (0usize, 0usize);
        for _ in 0..picks {
            match s.pick(true, true, 0, now) {
                Pick::Live => {
                    s.took(Lane::Live, batch);
                    live += batch;
                }
                Pick::Backlog { .. } => {
                    s.took(Lane::Backlog, batch);
                    backlog += batch;
                }
                Pick::Wait(_) => panic!("both lanes are ready"),
            }
        }
        backlog as f64 / (live + backlog) as f64
    }

    #[test]
    fn both_lanes_saturated_converges_to_the_share() {
        for share in [0.05, 0.2, 0.5, 0.8] {
            for batch in [1, 64, 256] {
                let got = saturated_share(share, batch, 10_000);
                assert!(
                    (got - share).abs() < 0.01,
                    "share {share} batch {batch}: got {got}"
                );
            }
        }
    }

    #[test]
    fn extreme_shares_are_honoured() {
        assert_eq!(saturated_share(0.0, 16, 1000), 0.0);
        assert_eq!(saturated_share(1.0, 16, 1000), 1.0);
    }

    #[test]
    fn live_idle_gives_the_backlog_every_slot() {
        let mut s = Scheduler::new(0.2, None, 1024, 4);
        let now = Instant::now();
        for in_flight in 0..4 {
            assert_eq!(s.pick(false, true, in_flight, now), FULL);
            s.took(Lane::Backlog, 256);
        }
    }

    #[test]
    fn a_long_backlog_only_spell_earns_no_starvation_of_live_after() {
        let mut s = Scheduler::new(0.2, None, 512, 4);
        let now = Instant::now();
        for _ in 0..10_000 {
            let _ = s.pick(false, true, 0, now);
            s.took(Lane::Backlog, 256);
        }
        // Live returns: the backlog still gets its share within a few batches.
        let mut backlog_turns = 0;
        for _ in 0..20 {
            match s.pick(true, true, 0, now) {
                Pick::Backlog { .. } => {
                    backlog_turns += 1;
                    s.took(Lane::Backlog, 64);
                }
                _ => s.took(Lane::Live, 64),
            }
        }
        assert!((3..=5).contains(&backlog_turns), "{backlog_turns}");
    }

    #[test]
    fn the_rate_ceiling_caps_backlog_throughput() {
        let mut s = Scheduler::new(0.2, Some(1000.0), 1024, 4);
        let start = Instant::now();
        let mut taken = 0usize;
        // One simulated second in 1 ms steps, live idle, backlog always ready.
        for ms in 0..=1000u64 {
            let now = start + Duration::from_millis(ms);
            loop {
                match s.pick(false, true, 0, now) {
                    Pick::Backlog { max, .. } => {
                        let n = max.min(256);
                        s.took(Lane::Backlog, n);
                        taken += n;
                    }
                    Pick::Wait(d) => {
                        assert!(d <= Duration::from_millis(2), "{d:?}");
                        break;
                    }
                    Pick::Live => panic!("live is idle"),
                }
            }
        }
        // The bucket starts full (a tenth of a second) and refills at 1000/s.
        assert!((1000..=1101).contains(&taken), "{taken}");
    }

    #[test]
    fn a_rate_too_small_to_wait_for_waits_a_bounded_time_and_never_panics() {
        for rate in [1e-20, f64::MIN_POSITIVE] {
            let mut s = Scheduler::new(0.2, Some(rate), 64, 4);
            let now = Instant::now();
            assert!(matches!(s.pick(false, true, 0, now), Pick::Backlog { .. }));
            s.took(Lane::Backlog, 1);
            match s.pick(false, true, 0, now) {
                Pick::Wait(d) => assert!(d <= IDLE_WAIT, "{d:?}"),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn nothing_ready_waits() {
        let mut s = Scheduler::new(0.2, None, 64, 4);
        assert_eq!(
            s.pick(false, false, 0, Instant::now()),
            Pick::Wait(IDLE_WAIT)
        );
        assert_eq!(s.pick(true, false, 0, Instant::now()), Pick::Live);
    }

    const FULL: Pick = Pick::Backlog {
        max: usize::MAX,
        last_slot: false,
    };

    #[test]
    fn flowing_live_traffic_lets_the_backlog_have_the_last_slot_only_in_short_batches() {
        let mut s = Scheduler::new(0.2, None, 64, 4).with_last_slot_batch(8);
        let t0 = Instant::now();
        assert_eq!(s.pick(true, true, 0, t0), Pick::Live);
        s.took(Lane::Live, 1);
        // Live just went empty; three backlog deliveries are in flight.
        let t1 = t0 + Duration::from_millis(10);
        assert_eq!(s.pick(false, true, 2, t1), FULL);
        let short = Pick::Backlog {
            max: 8,
            last_slot: true,
        };
        assert_eq!(s.pick(false, true, 3, t1), short);
        // Live waiting takes the last slot whatever the backlog's credit.
        s.credit = s.credit_limit;
        assert_eq!(s.pick(true, true, 3, t1), Pick::Live);
        // Once live has been quiet for a while, the backlog takes it whole.
        let t2 = t1 + LIVE_QUIET + Duration::from_millis(1);
        assert_eq!(s.pick(false, true, 3, t2), FULL);
        // A single-slot group cannot reserve anything.
        let mut one = Scheduler::new(0.2, None, 64, 1);
        let _ = one.pick(true, false, 0, t0);
        assert_eq!(one.pick(false, true, 0, t1), FULL);
    }
}
