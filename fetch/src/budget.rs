//! A job's allowance for fetching: bytes placed and wall-clock time, across all its requests.

use std::time::{Duration, Instant};

use crate::FetchError;

#[derive(Debug, Clone)]
pub struct Budget {
    max_bytes: u64,
    used: u64,
    max_time: Duration,
    deadline: Instant,
}

impl Budget {
    /// Starts now.
    pub fn new(max_bytes: u64, max_time: Duration) -> Self {
        Self {
            max_bytes,
            used: 0,
            max_time,
            deadline: Instant::now() + max_time,
        }
    }

    /// Time left, or the error once it is spent.
    pub fn time_left(&self) -> Result<Duration, FetchError> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(FetchError::OutOfTime {
                limit: self.max_time,
            });
        }
        Ok(left)
    }

    /// Counts `n` more bytes; an error once the total passes the limit.
    pub fn take(&mut self, n: u64) -> Result<(), FetchError> {
        self.used = self.used.saturating_add(n);
        if self.used > self.max_bytes {
            return Err(FetchError::OverBudget {
                limit: self.max_bytes,
            });
        }
        Ok(())
    }

    /// Whether `n` more bytes would still fit (checked before a download starts).
    pub fn fits(&self, n: u64) -> Result<(), FetchError> {
        if self.used.saturating_add(n) > self.max_bytes {
            return Err(FetchError::OverBudget {
                limit: self.max_bytes,
            });
        }
        Ok(())
    }

    pub fn used(&self) -> u64 {
        self.used
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_and_time_run_out() {
        let mut b = Budget::new(10, Duration::from_secs(60));
        assert!(b.take(6).is_ok() && b.fits(4).is_ok());
        assert!(matches!(
            b.fits(5),
            Err(FetchError::OverBudget { limit: 10 })
        ));
        assert!(b.take(5).is_err());
        let b = Budget::new(10, Duration::ZERO);
        assert!(matches!(b.time_left(), Err(FetchError::OutOfTime { .. })));
    }
}
