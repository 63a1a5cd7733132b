//! Exponential backoff with jitter for retryable errors.

use std::time::Duration;

use connector_api::Error;
use rand::Rng;

/// Retry settings (from `[errors]`).
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Retries before giving up.
    pub max_retries: u32,
    /// First delay.
    pub initial: Duration,
    /// Longest delay.
    pub max: Duration,
}

impl RetryPolicy {
    /// The policy of `pipeline`'s `[errors]` section.
    pub fn of(pipeline: &crate::config::Pipeline) -> Self {
        RetryPolicy {
            max_retries: pipeline.errors.max_retries,
            initial: pipeline.errors.retry_backoff,
            max: pipeline.errors.retry_backoff_max,
        }
    }
}

/// The retry state of one operation.
pub struct Backoff<'a> {
    policy: &'a RetryPolicy,
    attempt: u32,
}

impl<'a> Backoff<'a> {
    /// A fresh state.
    pub fn new(policy: &'a RetryPolicy) -> Self {
        Backoff { policy, attempt: 0 }
    }

    /// The delay before the next attempt, or None when the retries are used up.
    pub fn next_delay(&mut self) -> Option<Duration> {
        if self.attempt >= self.policy.max_retries {
            return None;
        }
        self.attempt += 1;
        let exp = self
            .policy
            .initial
            .saturating_mul(1u32 << self.attempt.min(16).saturating_sub(1));
        let cap = exp.min(self.policy.max);
        // full jitter over the upper half: spreads retries without collapsing to zero
        let millis = cap.as_millis() as u64;
        Some(Duration::from_millis(
            millis / 2 + rand::thread_rng().gen_range(0..=millis / 2),
        ))
    }

    /// Attempts made so far.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// After a failure of `what`: waits and returns true when it should be retried;
    /// false when the error is not retryable or the retries are used up.
    pub async fn wait(&mut self, err: &Error, what: &str) -> bool {
        if !err.is_retryable() {
            return false;
        }
        let Some(delay) = self.next_delay() else {
            return false;
        };
        crate::telemetry::count_retry(err);
        tracing::warn!(
            error = %err,
            kind = %err.kind(),
            attempt = self.attempt,
            max_retries = self.policy.max_retries,
            delay_ms = delay.as_millis() as u64,
            "{what} failed, retrying"
        );
        tokio::time::sleep(delay).await;
        true
    }
}

/// Runs `$op` until it succeeds, retrying retryable errors per `$policy`.
#[macro_export]
macro_rules! retrying {
    ($policy:expr, $what:expr, $op:expr) => {{
        let mut backoff = $crate::retry::Backoff::new($policy);
        loop {
            match $op.await {
                Ok(v) => break Ok(v),
                Err(e) => {
                    if !backoff.wait(&e, $what).await {
                        break Err(e);
                    }
                }
            }
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn gives_up_after_max_retries_and_never_retries_config_errors() {
        let p = RetryPolicy {
            max_retries: 2,
            initial: Duration::from_millis(10),
            max: Duration::from_millis(100),
        };
        let mut b = Backoff::new(&p);
        let e = Error::transient("x");
        assert!(b.wait(&e, "op").await);
        assert!(b.wait(&e, "op").await);
        assert!(!b.wait(&e, "op").await);
        assert!(!Backoff::new(&p).wait(&Error::config("bad"), "op").await);
    }
}
