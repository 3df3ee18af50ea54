//! Time as the driver passes it in. The engine never reads a clock: every
//! `handle_*` call carries `now`, so a simulator can run on a virtual clock
//! and replay a run exactly.

use std::ops::{Add, Sub};
use std::time::Duration;

/// Nanoseconds on the driver's monotonic clock (virtual in the simulator).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Time(pub u64);

impl Time {
    pub const ZERO: Time = Time(0);

    pub fn from_nanos(nanos: u64) -> Time {
        Time(nanos)
    }

    pub fn as_nanos(self) -> u64 {
        self.0
    }

    /// The time left until `later`, zero when `later` has passed.
    pub fn until(self, later: Time) -> Duration {
        Duration::from_nanos(later.0.saturating_sub(self.0))
    }
}

impl Add<Duration> for Time {
    type Output = Time;
    fn add(self, rhs: Duration) -> Time {
        // Saturate: a configured timeout of "forever" must not wrap into the past.
        Time(self.0.saturating_add(u64::try_from(rhs.as_nanos()).unwrap_or(u64::MAX)))
    }
}

impl Sub<Time> for Time {
    type Output = Duration;
    fn sub(self, rhs: Time) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(rhs.0))
    }
}
