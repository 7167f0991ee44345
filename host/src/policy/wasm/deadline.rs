//! Call deadlines counted in CPU time.
//!
//! A guest cannot wait: it has no clocks, no I/O and no sleep (see [`super::wasi`]), so the only
//! time a call spends is the work it does and the time the thread waits for a CPU. Counting
//! wall-clock time would fail calls that did their work within budget whenever a loaded machine
//! kept the thread off the CPU (a 2-core machine at load average 15 delays a thread by tens of
//! milliseconds). So the epoch deadline is only a checkpoint: when it is reached, [`CallClock`]
//! compares the CPU time the calling thread has used with the budget and either extends the
//! deadline by what is left or stops the call. An infinite loop uses CPU and is stopped once it has
//! used the budget; a wall-clock backstop (a multiple of the budget) bounds how long a starved
//! call may hold its request.

use std::time::{Duration, Instant};

use wasmtime::UpdateDeadline;

use super::TICK;

/// The wall-clock backstop is this many times the CPU budget ...
const BACKSTOP_FACTOR: u32 = 8;
/// ... plus this.
const BACKSTOP_SLACK: Duration = Duration::from_millis(100);

/// The budget of the call running on one store, started when the call starts.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CallClock {
    budget: Duration,
    backstop: Duration,
    cpu_start: Duration,
    wall_start: Instant,
}

impl Default for CallClock {
    fn default() -> Self {
        Self::start(Duration::ZERO)
    }
}

impl CallClock {
    /// A call on this thread may use `budget` of CPU time from now (and at most the backstop of
    /// wall-clock time).
    pub(crate) fn start(budget: Duration) -> Self {
        Self {
            budget,
            backstop: budget
                .saturating_mul(BACKSTOP_FACTOR)
                .saturating_add(BACKSTOP_SLACK),
            cpu_start: thread_cpu_time(),
            wall_start: Instant::now(),
        }
    }

    /// The epoch deadline of a call with this budget (set when the call starts).
    pub(crate) fn first_deadline(&self) -> u64 {
        ticks(self.budget)
    }

    /// What to do when the epoch deadline is reached (called on the guest's thread): stop the
    /// call once it has used its CPU budget or the wall-clock backstop, else check again when
    /// the rest of the budget could have been used.
    pub(crate) fn on_deadline(&self) -> UpdateDeadline {
        self.verdict(thread_cpu_time(), Instant::now())
    }

    fn verdict(&self, cpu_now: Duration, wall_now: Instant) -> UpdateDeadline {
        let used = cpu_now.saturating_sub(self.cpu_start);
        let waited = wall_now.saturating_duration_since(self.wall_start);
        if used >= self.budget || waited >= self.backstop {
            return UpdateDeadline::Interrupt;
        }
        UpdateDeadline::Continue(ticks(self.budget - used))
    }
}

/// Epoch ticks for a deadline, rounded up, plus one so a call that starts just before a tick
/// still gets at least its full time.
pub(crate) fn ticks(d: Duration) -> u64 {
    let t = d.as_micros().div_ceil(TICK.as_micros());
    u64::try_from(t).unwrap_or(u64::MAX / 2).saturating_add(1)
}

/// CPU time the calling thread has used so far.
#[allow(unsafe_code)]
pub(crate) fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through the valid pointer it is given.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        // Not expected on Linux; without a CPU clock the backstop still bounds the call.
        return Duration::ZERO;
    }
    Duration::new(
        u64::try_from(ts.tv_sec).unwrap_or(0),
        u32::try_from(ts.tv_nsec).unwrap_or(0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clock(budget_ms: u64) -> CallClock {
        CallClock {
            budget: Duration::from_millis(budget_ms),
            backstop: Duration::from_millis(budget_ms)
                .saturating_mul(BACKSTOP_FACTOR)
                .saturating_add(BACKSTOP_SLACK),
            cpu_start: Duration::from_secs(100),
            wall_start: Instant::now(),
        }
    }

    fn continues(u: UpdateDeadline) -> Option<u64> {
        match u {
            UpdateDeadline::Continue(t) => Some(t),
            _ => None,
        }
    }

    #[test]
    fn a_call_kept_off_the_cpu_gets_the_rest_of_its_budget() {
        let c = clock(10);
        // 10 ms of wall time passed, but the thread ran for 3 ms only.
        let later = c.wall_start + Duration::from_millis(10);
        let t = continues(c.verdict(Duration::from_millis(100_003), later));
        assert_eq!(t, Some(ticks(Duration::from_millis(7))));
    }

    #[test]
    fn a_call_that_used_its_cpu_budget_is_stopped() {
        let c = clock(10);
        let later = c.wall_start + Duration::from_millis(10);
        assert!(matches!(
            c.verdict(Duration::from_millis(100_010), later),
            UpdateDeadline::Interrupt
        ));
    }

    #[test]
    fn a_starved_call_is_stopped_at_the_wall_clock_backstop() {
        let c = clock(10);
        // 180 ms = 8 × 10 ms + 100 ms of wall time, 1 ms of CPU.
        let later = c.wall_start + Duration::from_millis(180);
        assert!(matches!(
            c.verdict(Duration::from_millis(100_001), later),
            UpdateDeadline::Interrupt
        ));
        let earlier = c.wall_start + Duration::from_millis(179);
        assert!(continues(c.verdict(Duration::from_millis(100_001), earlier)).is_some());
    }

    #[test]
    fn thread_cpu_time_counts_work_not_sleep() {
        let start = thread_cpu_time();
        std::thread::sleep(Duration::from_millis(30));
        let slept = thread_cpu_time() - start;
        assert!(
            slept < Duration::from_millis(15),
            "sleeping used {slept:?} of CPU"
        );
        // Busy work advances it (however long a loaded machine takes to give 20 ms of CPU).
        let give_up = Instant::now() + Duration::from_secs(20);
        let mut x = 0u64;
        while thread_cpu_time() - start < Duration::from_millis(20) {
            assert!(
                Instant::now() < give_up,
                "20 s of spinning used under 20 ms of CPU"
            );
            for _ in 0..10_000 {
                x = std::hint::black_box(x.wrapping_add(1));
            }
        }
    }
}
