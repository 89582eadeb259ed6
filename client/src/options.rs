//! Per-request options (n, w, r, timeout) and their validation.
//!
//! Options left unset take the cluster defaults from cluster.toml. Invalid combinations
//! are rejected before anything is sent.

use std::time::Duration;

use crate::error::ClientError;
use crate::wire::QuorumDefaults;

/// Options of a write (put or delete).
#[derive(Debug, Clone, Copy, Default)]
pub struct WriteOptions {
    /// Replicas to send the write to (1..=replication factor).
    pub n: Option<usize>,
    /// Durable acknowledgements to wait for (1..=n).
    pub w: Option<usize>,
    /// How long to wait for them.
    pub timeout: Option<Duration>,
    /// Count acknowledgements of hints held by fallback nodes toward `w` (a "sloppy
    /// quorum": more available, but a read of the `n` replicas may miss the write until
    /// the hints are delivered).
    pub sloppy: bool,
}

/// What a read does about replicas that answered with an older version or nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RepairMode {
    /// Write the newest record back to them after the read returned (default).
    #[default]
    Background,
    /// Repair the stale replicas among those that answered before returning: a later
    /// quorum read then never returns an older version (monotonic quorum reads).
    Blocking,
    /// Leave them to anti-entropy.
    Off,
}

/// Options of a read.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReadOptions {
    /// Replicas to ask (1..=replication factor).
    pub n: Option<usize>,
    /// Answers to wait for (1..=n); the newest of them is returned.
    pub r: Option<usize>,
    /// How long to wait for them.
    pub timeout: Option<Duration>,
    /// Read repair of the replicas that answered with an older version.
    pub repair: RepairMode,
}

/// A validated request shape: contact `n` replicas, wait for `needed` of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuorumPlan {
    /// Replicas contacted.
    pub n: usize,
    /// Answers needed.
    pub needed: usize,
    /// Deadline for the answers.
    pub timeout: Duration,
}

impl WriteOptions {
    /// Fills in defaults and checks the result against the replication factor.
    pub fn plan(&self, defaults: &QuorumDefaults, replication_factor: usize) -> Result<QuorumPlan, ClientError> {
        plan(
            ("w", self.w, defaults.w),
            self.n,
            self.timeout,
            defaults,
            replication_factor,
        )
    }
}

impl ReadOptions {
    /// Fills in defaults and checks the result against the replication factor.
    pub fn plan(&self, defaults: &QuorumDefaults, replication_factor: usize) -> Result<QuorumPlan, ClientError> {
        plan(
            ("r", self.r, defaults.r),
            self.n,
            self.timeout,
            defaults,
            replication_factor,
        )
    }
}

fn plan(
    (name, needed, default_needed): (&str, Option<usize>, usize),
    n: Option<usize>,
    timeout: Option<Duration>,
    defaults: &QuorumDefaults,
    replication_factor: usize,
) -> Result<QuorumPlan, ClientError> {
    let invalid = |msg: String| Err(ClientError::InvalidOptions(msg));
    let n_value = n.unwrap_or(defaults.n.min(replication_factor));
    // A smaller explicit n lowers the default w/r with it.
    let needed = needed.unwrap_or(default_needed.min(n_value));
    let timeout = timeout.unwrap_or(Duration::from_millis(defaults.timeout_ms));
    if n_value == 0 {
        return invalid("n must be at least 1".into());
    }
    if n_value > replication_factor {
        return invalid(format!(
            "n = {n_value} exceeds the replication factor {replication_factor}"
        ));
    }
    if needed == 0 {
        return invalid(format!("{name} must be at least 1"));
    }
    if needed > n_value {
        return invalid(format!("{name} = {needed} exceeds n = {n_value}"));
    }
    if timeout.is_zero() {
        return invalid("timeout must be greater than zero".into());
    }
    Ok(QuorumPlan {
        n: n_value,
        needed,
        timeout,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULTS: QuorumDefaults = QuorumDefaults {
        n: 3,
        w: 2,
        r: 2,
        timeout_ms: 1000,
    };

    fn write(n: Option<usize>, w: Option<usize>) -> Result<QuorumPlan, ClientError> {
        WriteOptions {
            n,
            w,
            ..Default::default()
        }
        .plan(&DEFAULTS, 3)
    }

    #[test]
    fn defaults_and_overrides() {
        let plan = write(None, None).unwrap();
        assert_eq!((plan.n, plan.needed), (3, 2));
        assert_eq!(plan.timeout, Duration::from_millis(1000));
        assert_eq!(write(Some(1), None).unwrap().needed, 1, "default w shrinks with n");
        assert_eq!(write(Some(3), Some(3)).unwrap().needed, 3);
        let read = ReadOptions {
            n: Some(2),
            r: Some(2),
            ..Default::default()
        }
        .plan(&DEFAULTS, 3)
        .unwrap();
        assert_eq!((read.n, read.needed), (2, 2));
    }

    #[test]
    fn invalid_combinations_name_the_problem() {
        let cases = [
            (Some(0), None, "n must be at least 1"),
            (Some(4), None, "n = 4 exceeds the replication factor 3"),
            (None, Some(0), "w must be at least 1"),
            (None, Some(4), "w = 4 exceeds n = 3"),
            (Some(2), Some(3), "w = 3 exceeds n = 2"),
        ];
        for (n, w, expected) in cases {
            let err = write(n, w).unwrap_err().to_string();
            assert!(err.contains(expected), "n={n:?} w={w:?}: {err}");
        }
        let zero = WriteOptions {
            timeout: Some(Duration::ZERO),
            ..Default::default()
        };
        assert!(zero.plan(&DEFAULTS, 3).is_err());
    }
}
