//! Rate limits on model calls.
//!
//! - [`SlidingWindow`]: the global request limiter behind `API_RATE_LIMIT_RPM`.
//!   No more than `limit` requests *start* in any window of length `window`
//!   (60 s in production), across every worker of every project, because all
//!   model calls go through the supervisor's one gateway. Requests that have
//!   to wait are served in arrival order.
//! - [`TokenWindow`]: an optional tokens-per-window limit of one provider:
//!   a request may start while the tokens recorded in the last window are
//!   below the limit.
//!
//! Written by hand, on purpose: the `governor` crate implements GCRA, a token
//! bucket in disguise. With a burst of N it lets N requests through at once
//! and then refills one every W/N, so some windows of length W see 2N−1
//! starts — the spec forbids more than N in *any* window. A sliding log of the
//! last N start times is exact, small (at most N instants) and simple.
//!
//! Windows are half-open: a start at `t` counts for the windows that contain
//! `t`, i.e. it frees its slot at exactly `t + window`.
//!
//! Both limiters use [`tokio::time::Instant`] and [`tokio::time::sleep_until`],
//! so their tests run on a paused clock.

use std::collections::VecDeque;
use std::sync::{Mutex as StdMutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::time::{sleep_until, Instant};

/// A limiter every model request passes before it is sent.
#[async_trait::async_trait]
pub trait RequestLimiter: Send + Sync {
    /// Waits until one more request may start now, records the start,
    /// returns how long it waited.
    ///
    /// Cancellation-safe: dropping the future before it completes records
    /// nothing and lets the next waiter in.
    async fn acquire(&self) -> Duration;
    /// The limiter's state, for the status display and the logs.
    fn snapshot(&self) -> LimiterSnapshot;
}

/// What a [`RequestLimiter`] reports about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct LimiterSnapshot {
    /// Requests per window; 0 = unlimited.
    pub limit: u32,
    pub window_ms: u64,
    /// Requests that started in the window ending now.
    pub started_in_window: u32,
    /// Requests waiting for a slot now.
    pub waiting: u32,
    /// Time spent waiting, summed over all requests since start-up.
    pub total_wait_ms: u64,
    /// Requests started since start-up.
    pub total_started: u64,
}

/// The sliding-log request limiter: at most `limit` starts in any window of
/// length `window`; waiters are served first come, first served.
///
/// FIFO order comes from a `tokio::sync::Mutex`, which is fair (its waiters
/// queue in lock order): the request at the head of the queue holds it while
/// it sleeps until the oldest start leaves the window, and everyone behind it
/// waits for the lock. Dropping a waiting future releases the lock (or leaves
/// the queue) without recording a start.
#[derive(Debug)]
pub struct SlidingWindow {
    limit: u32,
    window: Duration,
    /// Held by the request at the head of the queue while it waits.
    turn: tokio::sync::Mutex<()>,
    /// Never held across an `.await`.
    state: StdMutex<WindowState>,
}

#[derive(Debug, Default)]
struct WindowState {
    /// Start times still inside the window, oldest first. At most `limit`
    /// entries when limited; with `limit == 0` the log is kept only for
    /// [`LimiterSnapshot::started_in_window`] and is pruned on every start.
    starts: VecDeque<Instant>,
    waiting: u32,
    total_wait: Duration,
    total_started: u64,
}

impl WindowState {
    /// Forgets the starts that left the window ending at `now`.
    fn prune(&mut self, now: Instant, window: Duration) {
        while let Some(&oldest) = self.starts.front() {
            if now.saturating_duration_since(oldest) >= window {
                self.starts.pop_front();
            } else {
                break;
            }
        }
    }

    fn record_start(&mut self, now: Instant, waited: Duration) {
        self.starts.push_back(now);
        self.total_wait = self.total_wait.saturating_add(waited);
        self.total_started = self.total_started.saturating_add(1);
    }
}

impl SlidingWindow {
    /// At most `limit` request starts in any window of length `window`;
    /// `limit == 0` means unlimited (`acquire` never waits).
    pub fn new(limit: u32, window: Duration) -> Self {
        Self {
            limit,
            window,
            turn: tokio::sync::Mutex::new(()),
            state: StdMutex::new(WindowState::default()),
        }
    }

    fn state(&self) -> MutexGuard<'_, WindowState> {
        // The state stays consistent even if a holder panicked: every update
        // is a few plain assignments.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Counts a request as waiting for as long as it lives (also when its
/// future is dropped).
struct Waiting<'a>(&'a SlidingWindow);

impl<'a> Waiting<'a> {
    fn enter(limiter: &'a SlidingWindow) -> Self {
        let mut s = limiter.state();
        s.waiting = s.waiting.saturating_add(1);
        Waiting(limiter)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut s = self.0.state();
        s.waiting = s.waiting.saturating_sub(1);
    }
}

#[async_trait::async_trait]
impl RequestLimiter for SlidingWindow {
    async fn acquire(&self) -> Duration {
        let arrived = Instant::now();
        if self.limit == 0 {
            let mut s = self.state();
            s.prune(arrived, self.window);
            s.record_start(arrived, Duration::ZERO);
            return Duration::ZERO;
        }
        let _waiting = Waiting::enter(self);
        // FIFO: whoever got here first gets the next free slot.
        let _turn = self.turn.lock().await;
        loop {
            let now = Instant::now();
            let free_at = {
                let mut s = self.state();
                s.prune(now, self.window);
                let full = s.starts.len() >= self.limit as usize;
                match s.starts.front() {
                    Some(&oldest) if full => oldest.checked_add(self.window),
                    _ => {
                        // Checked and recorded under one lock, with no
                        // `.await` in between: the start is atomic.
                        let waited = now.saturating_duration_since(arrived);
                        s.record_start(now, waited);
                        return waited;
                    }
                }
            };
            match free_at {
                Some(at) => sleep_until(at).await,
                // A window too long to represent: no slot frees in this
                // process's lifetime. Sleep in long steps rather than spin.
                None => tokio::time::sleep(Duration::from_secs(3600)).await,
            }
        }
    }

    fn snapshot(&self) -> LimiterSnapshot {
        let now = Instant::now();
        let s = self.state();
        let in_window = s
            .starts
            .iter()
            .filter(|&&t| now.saturating_duration_since(t) < self.window)
            .count();
        LimiterSnapshot {
            limit: self.limit,
            window_ms: millis(self.window),
            started_in_window: u32::try_from(in_window).unwrap_or(u32::MAX),
            waiting: s.waiting,
            total_wait_ms: millis(s.total_wait),
            total_started: s.total_started,
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A provider's tokens-per-window limit: [`TokenWindow::acquire`] waits while
/// the tokens recorded in the last window reach the limit; the caller
/// records each answer's tokens with [`TokenWindow::record`] once it knows
/// them. Tokens are only known after a request, so one request may overshoot
/// the limit; the next ones then wait until enough tokens leave the window.
/// Waiters are served in arrival order, like [`SlidingWindow`].
#[derive(Debug)]
pub struct TokenWindow {
    limit: u64,
    window: Duration,
    turn: tokio::sync::Mutex<()>,
    /// Never held across an `.await`.
    log: StdMutex<TokenLog>,
}

#[derive(Debug, Default)]
struct TokenLog {
    /// (when, tokens), oldest first, all inside the window.
    entries: VecDeque<(Instant, u64)>,
    /// The sum of `entries`' tokens.
    in_window: u64,
}

impl TokenLog {
    fn prune(&mut self, now: Instant, window: Duration) {
        while let Some(&(at, tokens)) = self.entries.front() {
            if now.saturating_duration_since(at) >= window {
                self.entries.pop_front();
                self.in_window = self.in_window.saturating_sub(tokens);
            } else {
                break;
            }
        }
    }
}

impl TokenWindow {
    /// At most about `tokens_per_window` tokens in any window of length
    /// `window`; 0 means unlimited.
    pub fn new(tokens_per_window: u64, window: Duration) -> Self {
        Self {
            limit: tokens_per_window,
            window,
            turn: tokio::sync::Mutex::new(()),
            log: StdMutex::new(TokenLog::default()),
        }
    }

    fn log(&self) -> MutexGuard<'_, TokenLog> {
        self.log.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits while the tokens recorded in the last window are at or above
    /// the limit; returns how long it waited. Records nothing, so dropping
    /// the future is always safe.
    pub async fn acquire(&self) -> Duration {
        let arrived = Instant::now();
        if self.limit == 0 {
            return Duration::ZERO;
        }
        let _turn = self.turn.lock().await;
        loop {
            let now = Instant::now();
            let free_at = {
                let mut log = self.log();
                log.prune(now, self.window);
                let full = log.in_window >= self.limit;
                match log.entries.front() {
                    Some(&(oldest, _)) if full => oldest.checked_add(self.window),
                    _ => return now.saturating_duration_since(arrived),
                }
            };
            match free_at {
                Some(at) => sleep_until(at).await,
                None => tokio::time::sleep(Duration::from_secs(3600)).await,
            }
        }
    }

    /// Records `tokens` used now (prompt plus completion of one answer).
    pub fn record(&self, tokens: u64) {
        if tokens == 0 || self.limit == 0 {
            return;
        }
        let now = Instant::now();
        let mut log = self.log();
        log.prune(now, self.window);
        log.entries.push_back((now, tokens));
        log.in_window = log.in_window.saturating_add(tokens);
    }

    /// Tokens recorded in the window ending now.
    pub fn tokens_in_window(&self) -> u64 {
        let mut log = self.log();
        log.prune(Instant::now(), self.window);
        log.in_window
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    const MIN: Duration = Duration::from_secs(60);

    /// Yields until `cond` holds; the paused clock does not move meanwhile
    /// (yielding keeps the runtime busy, so it never auto-advances).
    async fn until(cond: impl Fn() -> bool) {
        for _ in 0..10_000 {
            if cond() {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("condition not reached");
    }

    /// The largest number of starts in any half-open window of length `w`.
    /// Checking the windows that begin at a start is enough: any window can
    /// slide right to its first start without losing one.
    fn max_in_any_window(starts: &[Duration], w: Duration) -> usize {
        starts
            .iter()
            .map(|&a| starts.iter().filter(|&&b| b >= a && b < a + w).count())
            .max()
            .unwrap_or(0)
    }

    #[tokio::test(start_paused = true)]
    async fn never_more_than_n_in_any_window_and_full_use() {
        let lim = Arc::new(SlidingWindow::new(3, MIN));
        let t0 = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..10 {
            let lim = lim.clone();
            tasks.push(tokio::spawn(async move {
                let waited = lim.acquire().await;
                (Instant::now() - t0, waited)
            }));
        }
        let mut starts = Vec::new();
        for t in tasks {
            let (at, waited) = t.await.unwrap();
            assert_eq!(at, waited, "everyone arrived at t0");
            starts.push(at);
        }
        starts.sort();
        assert_eq!(max_in_any_window(&starts, MIN), 3, "{starts:?}");
        let s = |secs| Duration::from_secs(secs);
        // Exactly N per window while work waits: full utilisation.
        assert_eq!(
            starts,
            [0, 0, 0, 60, 60, 60, 120, 120, 120, 180].map(s).to_vec()
        );
        assert_eq!(starts[3], MIN, "the 4th starts exactly one window later");
        let snap = lim.snapshot();
        assert_eq!(snap.total_started, 10);
        assert_eq!(snap.waiting, 0);
        assert_eq!(snap.started_in_window, 1);
        assert_eq!(snap.total_wait_ms, (3 * 60 + 3 * 120 + 180) * 1000);
        assert_eq!(snap.limit, 3);
        assert_eq!(snap.window_ms, 60_000);
    }

    #[tokio::test(start_paused = true)]
    async fn staggered_starts_respect_every_window() {
        // Starts spread over time must still hold the bound in windows that
        // do not begin at t0.
        let lim = Arc::new(SlidingWindow::new(2, MIN));
        let t0 = Instant::now();
        let mut starts = Vec::new();
        for gap in [0, 10, 20, 5, 40, 1, 1, 30] {
            tokio::time::sleep(Duration::from_secs(gap)).await;
            lim.acquire().await;
            starts.push(Instant::now() - t0);
        }
        assert!(max_in_any_window(&starts, MIN) <= 2, "{starts:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn waiters_are_served_in_arrival_order() {
        let lim = Arc::new(SlidingWindow::new(2, MIN));
        lim.acquire().await;
        lim.acquire().await;
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for i in 0..5u32 {
            let (lim2, order) = (lim.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                lim2.acquire().await;
                order.lock().unwrap().push(i);
            }));
            // Make sure task i queued before task i+1 is spawned.
            until(|| lim.snapshot().waiting == i + 1).await;
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), vec![0, 1, 2, 3, 4]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_waiter_takes_no_slot_and_blocks_no_one() {
        let lim = Arc::new(SlidingWindow::new(1, MIN));
        let t0 = Instant::now();
        lim.acquire().await;

        // A times out while at the head of the queue (it holds the turn).
        let timed_out = tokio::time::timeout(Duration::from_secs(10), lim.acquire()).await;
        assert!(timed_out.is_err());
        assert_eq!(lim.snapshot().waiting, 0);

        // B queues behind C, and C is aborted while it holds the turn.
        let c = tokio::spawn({
            let lim = lim.clone();
            async move { lim.acquire().await }
        });
        until(|| lim.snapshot().waiting == 1).await;
        let b = tokio::spawn({
            let lim = lim.clone();
            async move {
                lim.acquire().await;
                Instant::now() - t0
            }
        });
        until(|| lim.snapshot().waiting == 2).await;
        c.abort();
        assert!(c.await.unwrap_err().is_cancelled());

        assert_eq!(b.await.unwrap(), MIN, "B gets the slot freed at t0+60s");
        let snap = lim.snapshot();
        assert_eq!(snap.total_started, 2, "neither A nor C recorded a start");
        assert_eq!(snap.waiting, 0);
        // The next one waits for B's window, not for A's or C's.
        lim.acquire().await;
        assert_eq!(Instant::now() - t0, 2 * MIN);
    }

    #[tokio::test(start_paused = true)]
    async fn limit_zero_never_waits() {
        let lim = SlidingWindow::new(0, MIN);
        let t0 = Instant::now();
        for _ in 0..1000 {
            assert_eq!(lim.acquire().await, Duration::ZERO);
        }
        assert_eq!(Instant::now(), t0);
        let snap = lim.snapshot();
        assert_eq!(snap.limit, 0);
        assert_eq!(snap.total_started, 1000);
        assert_eq!(snap.started_in_window, 1000);
        assert_eq!(snap.total_wait_ms, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn token_window_blocks_after_the_limit_and_frees_after_the_window() {
        let tw = TokenWindow::new(1000, MIN);
        let t0 = Instant::now();
        assert_eq!(tw.acquire().await, Duration::ZERO);
        tw.record(600);
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(tw.acquire().await, Duration::ZERO, "600 < 1000");
        tw.record(500);
        assert_eq!(tw.tokens_in_window(), 1100);
        // Blocked until the 600 recorded at t0 leave the window.
        let waited = tw.acquire().await;
        assert_eq!(waited, Duration::from_secs(50));
        assert_eq!(Instant::now() - t0, MIN);
        assert_eq!(tw.tokens_in_window(), 500);
        // Unlimited never waits and keeps no log.
        let free = TokenWindow::new(0, MIN);
        free.record(1_000_000);
        assert_eq!(free.acquire().await, Duration::ZERO);
        assert_eq!(free.tokens_in_window(), 0);
    }
}
