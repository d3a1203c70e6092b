//! The clock leases run on. Monotonic: a step of the wall clock (NTP, an operator, a VM resumed)
//! moves no lease's deadline. Stopped while the coordinator cannot write its state (a full or
//! failing disk): a worker cannot renew a lease then, so that time counts against none. And
//! started afresh at every start, where each held lease gets a whole term again: the time the
//! coordinator was down counts against none either. Leases' expiries are stored on this clock
//! (`trials.lease_expires_ms`); only the scheduler thread reads it.

use std::time::{Duration, Instant};

pub(super) struct LeaseClock {
    origin: Instant,
    /// The time stopped before the current stop, in all.
    stopped: Duration,
    /// Since when it stands still, while the state cannot be written.
    stopped_since: Option<Instant>,
}

impl LeaseClock {
    /// A clock at 0 now.
    pub(super) fn start() -> LeaseClock {
        LeaseClock { origin: Instant::now(), stopped: Duration::ZERO, stopped_since: None }
    }

    /// Milliseconds since the start, less the time it stood still.
    pub(super) fn now_ms(&self) -> i64 {
        self.at(Instant::now())
    }

    fn at(&self, now: Instant) -> i64 {
        let to = self.stopped_since.unwrap_or(now);
        let run = to.saturating_duration_since(self.origin).saturating_sub(self.stopped);
        i64::try_from(run.as_millis()).unwrap_or(i64::MAX)
    }

    /// Stands still from now (nothing when it already does): a write of the state failed.
    pub(super) fn stop(&mut self) {
        if self.stopped_since.is_none() {
            self.stopped_since = Some(Instant::now());
        }
    }

    /// Runs again (nothing when it runs): a write of the state went through. How long it stood
    /// still, if it did.
    pub(super) fn resume(&mut self) -> Option<Duration> {
        let since = self.stopped_since.take()?;
        let d = since.elapsed();
        self.stopped += d;
        Some(d)
    }

    /// Whether it stands still.
    pub(super) fn stopped(&self) -> bool {
        self.stopped_since.is_some()
    }

    /// Milliseconds since the start by the monotonic clock, stops included: for rates.
    pub(super) fn elapsed_ms(&self) -> i64 {
        i64::try_from(self.origin.elapsed().as_millis()).unwrap_or(i64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::LeaseClock;
    use std::time::{Duration, Instant};

    #[test]
    fn it_stands_still_while_stopped_and_runs_on_from_where_it_stood() {
        let t0 = Instant::now();
        let mut c = LeaseClock { origin: t0, stopped: Duration::ZERO, stopped_since: None };
        assert_eq!(c.at(t0 + Duration::from_secs(5)), 5_000);
        c.stopped_since = Some(t0 + Duration::from_secs(5));
        assert_eq!(c.at(t0 + Duration::from_secs(65)), 5_000, "a minute without writes counts for nothing");
        // resumed 60 s later: the clock goes on from 5 s
        c.stopped_since = None;
        c.stopped = Duration::from_secs(60);
        assert_eq!(c.at(t0 + Duration::from_secs(66)), 6_000);
        let mut live = LeaseClock::start();
        assert!(live.resume().is_none(), "a running clock has nothing to resume");
        live.stop();
        assert!(live.stopped());
        let a = live.now_ms();
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(live.now_ms(), a, "a stopped clock stands still");
        assert!(live.resume().is_some_and(|d| d >= Duration::from_millis(30)));
        assert!(!live.stopped());
        assert!(live.elapsed_ms() >= 30 && live.now_ms() < live.elapsed_ms());
    }
}
