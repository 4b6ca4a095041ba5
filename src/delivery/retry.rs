//! When a failed delivery is tried again.
//!
//! The schedule is a pure function of the attempt number (plus the jitter drawn by the
//! caller), so it can be recomputed after a restart from what the database holds.
//!
//! [`RetryPolicy`] is `[retry]`'s settings, plain data in `config`; the rule that reads
//! them is an `impl` block here, so `policy.delay_after(..)` reads as the domain while
//! the configuration knows nothing of the schedule.

use std::time::Duration;

use crate::config::RetryPolicy;

/// Jitter adds up to this fraction of the delay; it never subtracts, so no retry comes
/// earlier than the schedule a partner was told about.
pub const MAX_JITTER: f64 = 0.2;

impl RetryPolicy {
    /// The delay after failed attempt number `attempt` (1-based): `base_delay * 2^(attempt-1)`,
    /// capped at `max_delay`, then stretched by `jitter` (clamped to `0..=MAX_JITTER`).
    pub fn delay_after(&self, attempt: u32, jitter: f64) -> Duration {
        let doublings = attempt.saturating_sub(1).min(32);
        let nominal = self
            .base_delay
            .saturating_mul(1u32 << doublings.min(31))
            .min(self.max_delay);
        nominal.mul_f64(1.0 + jitter.clamp(0.0, MAX_JITTER))
    }

    /// Whether a delivery that has failed `attempts_used` times since its last resend is spent.
    pub fn is_exhausted(&self, attempts_used: u32) -> bool {
        attempts_used >= self.max_attempts
    }
}

/// A random jitter fraction for [`RetryPolicy::delay_after`].
pub fn draw_jitter() -> f64 {
    rand::random::<f64>() * MAX_JITTER
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 5,
            base_delay: Duration::from_secs(10),
            max_delay: Duration::from_secs(3600),
        }
    }

    #[test]
    fn delays_double_from_the_base_and_stop_at_the_cap() {
        let policy = policy();
        assert_eq!(policy.delay_after(1, 0.0), Duration::from_secs(10));
        assert_eq!(policy.delay_after(2, 0.0), Duration::from_secs(20));
        assert_eq!(policy.delay_after(3, 0.0), Duration::from_secs(40));
        assert_eq!(policy.delay_after(9, 0.0), Duration::from_secs(2560));
        assert_eq!(policy.delay_after(10, 0.0), Duration::from_secs(3600));
        assert_eq!(policy.delay_after(500, 0.0), Duration::from_secs(3600));
    }

    #[test]
    fn jitter_only_ever_delays_and_is_bounded() {
        let policy = policy();
        for attempt in 1..20 {
            let nominal = policy.delay_after(attempt, 0.0);
            for _ in 0..100 {
                let delay = policy.delay_after(attempt, draw_jitter());
                assert!(delay >= nominal);
                assert!(delay <= nominal.mul_f64(1.0 + MAX_JITTER));
            }
            assert_eq!(policy.delay_after(attempt, 5.0), nominal.mul_f64(1.2));
            assert_eq!(policy.delay_after(attempt, -1.0), nominal);
        }
    }

    #[test]
    fn a_delivery_is_spent_after_max_attempts() {
        let policy = policy();
        assert!(!policy.is_exhausted(4));
        assert!(policy.is_exhausted(5));
    }
}
