//! Exponential backoff with full jitter and a cap, for reconnecting.
//!
//! Full jitter (a uniform delay in `[0, min(cap, initial * factor^n)]`)
//! spreads a fleet of agents that lost the same server, so they do not all
//! come back in the same instant. The parameters are validated once, when
//! the configuration is loaded.

use std::time::Duration;

/// Validated backoff parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BackoffConfig {
    pub initial: Duration,
    pub max: Duration,
    pub factor: f64,
}

#[derive(Debug, PartialEq, thiserror::Error)]
pub enum BackoffError {
    #[error("backoff initial delay is {0:?}; it must be at least 1 ms")]
    InitialTooSmall(Duration),
    #[error("backoff max delay {max:?} is shorter than its initial delay {initial:?}")]
    MaxBelowInitial { initial: Duration, max: Duration },
    #[error("backoff factor is {0}; it must be between 1 and 16")]
    Factor(f64),
}

impl BackoffConfig {
    pub fn new(initial: Duration, max: Duration, factor: f64) -> Result<Self, BackoffError> {
        if initial < Duration::from_millis(1) {
            return Err(BackoffError::InitialTooSmall(initial));
        }
        if max < initial {
            return Err(BackoffError::MaxBelowInitial { initial, max });
        }
        if !(1.0..=16.0).contains(&factor) {
            return Err(BackoffError::Factor(factor));
        }
        Ok(BackoffConfig {
            initial,
            max,
            factor,
        })
    }
}

impl Default for BackoffConfig {
    fn default() -> Self {
        BackoffConfig {
            initial: Duration::from_millis(200),
            max: Duration::from_secs(30),
            factor: 2.0,
        }
    }
}

/// The delays before successive attempts; [`reset`](Backoff::reset) after a
/// success.
#[derive(Debug)]
pub struct Backoff {
    config: BackoffConfig,
    attempt: u32,
    rng: fastrand::Rng,
}

impl Backoff {
    pub fn new(config: BackoffConfig) -> Self {
        Backoff {
            config,
            attempt: 0,
            rng: fastrand::Rng::new(),
        }
    }

    /// Same, with a seeded generator (for reproducible tests).
    pub fn with_seed(config: BackoffConfig, seed: u64) -> Self {
        Backoff {
            config,
            attempt: 0,
            rng: fastrand::Rng::with_seed(seed),
        }
    }

    /// The upper bound of the next delay (without jitter).
    pub fn ceiling(&self) -> Duration {
        let c = &self.config;
        let grown = c.initial.as_secs_f64() * c.factor.powi(self.attempt.min(64) as i32);
        Duration::from_secs_f64(grown.min(c.max.as_secs_f64()))
    }

    /// The delay before the next attempt, and counts the attempt.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        ceiling.mul_f64(self.rng.f64())
    }

    /// Attempts since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn delays_grow_to_the_cap_with_full_jitter() {
        let cfg = BackoffConfig::new(ms(100), ms(1000), 2.0).unwrap();
        let mut b = Backoff::with_seed(cfg, 7);
        let ceilings = [100, 200, 400, 800, 1000, 1000, 1000];
        let mut below_half = 0;
        for c in ceilings {
            assert_eq!(b.ceiling(), ms(c));
            let d = b.next_delay();
            assert!(d <= ms(c), "{d:?} > {c} ms");
            if d < ms(c / 2) {
                below_half += 1;
            }
        }
        // Full jitter, not "half jitter": some delays fall in the low half.
        assert!(below_half > 0);
        b.reset();
        assert_eq!((b.attempts(), b.ceiling()), (0, ms(100)));
    }

    #[test]
    fn many_attempts_never_overflow() {
        let mut b = Backoff::new(BackoffConfig::default());
        for _ in 0..10_000 {
            assert!(b.next_delay() <= Duration::from_secs(30));
        }
    }

    #[test]
    fn bad_parameters_are_named() {
        assert_eq!(
            BackoffConfig::new(ms(0), ms(10), 2.0),
            Err(BackoffError::InitialTooSmall(ms(0)))
        );
        assert!(BackoffConfig::new(ms(10), ms(5), 2.0)
            .unwrap_err()
            .to_string()
            .contains("shorter than its initial"));
        assert_eq!(
            BackoffConfig::new(ms(10), ms(50), 0.5),
            Err(BackoffError::Factor(0.5))
        );
    }
}
