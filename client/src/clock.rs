//! Time, as the only place that reads it.
//!
//! Everything that needs the wall clock (version timestamps, the node's clock-skew check)
//! takes a [`Clock`] instead of calling `SystemTime::now()`, so a simulation can run a
//! whole cluster on a clock it controls. Timeouts use tokio's clock, which a paused
//! runtime also controls.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// A source of wall-clock time in microseconds since the Unix epoch.
pub trait Clock: Send + Sync + 'static {
    /// Microseconds since the Unix epoch.
    fn now_micros(&self) -> u64;
}

/// The operating system's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_micros(&self) -> u64 {
        // A clock before 1970 is a broken machine; 0 still yields increasing HLC values.
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0)
    }
}

/// The clock a node or client uses when none is given.
pub fn system_clock() -> Arc<dyn Clock> {
    Arc::new(SystemClock)
}
