//! Deadline arithmetic that cannot panic: `now + duration` saturates at a far future instead
//! of overflowing the clock. Every duration that enters orchd is bounded where it enters
//! (`config::bounds`); this is the second line, for the arithmetic itself.

use std::time::{Duration, SystemTime};

/// Far enough to mean "never", near enough for every clock to represent.
pub const FAR: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// `self + d`, or `self + FAR` when that would overflow or `d` is longer.
pub trait Later: Sized + Copy {
    fn later(self, d: Duration) -> Self;
}

macro_rules! later {
    ($t:ty) => {
        impl Later for $t {
            fn later(self, d: Duration) -> Self {
                self.checked_add(d.min(FAR))
                    .or_else(|| self.checked_add(Duration::from_secs(3600)))
                    .unwrap_or(self)
            }
        }
    };
}

later!(tokio::time::Instant);
later!(std::time::Instant);
later!(SystemTime);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saturates() {
        let now = tokio::time::Instant::now();
        assert_eq!(
            now.later(Duration::from_secs(5)),
            now + Duration::from_secs(5)
        );
        assert_eq!(now.later(Duration::MAX), now + FAR);
        let t = SystemTime::UNIX_EPOCH;
        assert_eq!(t.later(Duration::MAX), t + FAR);
    }
}
