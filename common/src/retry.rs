//! The one retry policy of a cbsweep process that waits for a peer (a worker for its
//! coordinator, mostly): the first wait is `FIRST`, each next one twice the last, at most `MAX`.
//! The coordinator counts on `MAX`: after an outage of its state, each lease keeps at least that
//! and a heartbeat interval, time for its worker to call again.

use std::time::Duration;

/// The first wait.
pub const FIRST: Duration = Duration::from_millis(200);
/// The longest wait between two tries.
pub const MAX: Duration = Duration::from_secs(5);

/// The waits between the tries of one call.
#[derive(Clone, Debug)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { next: FIRST }
    }
}

impl Backoff {
    /// The wait before the next try.
    pub fn wait(&mut self) -> Duration {
        let now = self.next;
        self.next = (now * 2).min(MAX);
        now
    }
}

#[cfg(test)]
mod tests {
    use super::{Backoff, FIRST, MAX};
    use std::time::Duration;

    #[test]
    fn waits_double_from_the_first_up_to_the_most() {
        let mut b = Backoff::default();
        let waits: Vec<Duration> = (0..8).map(|_| b.wait()).collect();
        assert_eq!(waits[0], FIRST);
        assert_eq!(waits[1], FIRST * 2);
        assert_eq!(waits[4], FIRST * 16);
        assert_eq!(waits[5], MAX, "3.2 s doubles past the most");
        assert_eq!(waits[7], MAX);
    }
}
