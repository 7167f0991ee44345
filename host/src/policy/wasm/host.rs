//! Per-instance host state: the empty WASI context, the memory limiter, the `log` and
//! `describe-schema` imports.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use wasmtime::component::ResourceTable;
use wasmtime::ResourceLimiter;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::kapsule::policy::types::Level;
use super::bindings::PolicyImports;

/// Store data of one policy instance.
pub(crate) struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) limiter: MemoryLimiter,
    /// The time budget of the call running now.
    pub(crate) clock: super::deadline::CallClock,
    log: Arc<LogSink>,
    /// What `describe-schema` answers during the `decide` call running now (empty otherwise).
    pub(crate) schemas: super::schemas::BatchSchemas,
}

impl HostState {
    /// State of one call's store: `wasi` is the guest's WASI context
    /// ([`super::wasi::deny_all_wasi`]), `log` where its log lines and output go.
    pub(crate) fn new(max_memory_bytes: usize, wasi: WasiCtx, log: Arc<LogSink>) -> Self {
        Self {
            wasi,
            table: ResourceTable::new(),
            limiter: MemoryLimiter::new(max_memory_bytes),
            clock: Default::default(),
            log,
            schemas: Default::default(),
        }
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Bytes a table element is charged against the memory cap (a function reference on the host).
const TABLE_ELEMENT_BYTES: usize = 16;

/// Caps the memory of one instance: all its linear memories and tables together (a component
/// instantiates several core modules, each with its own memory and tables). Remembers whether
/// the cap refused a growth during the current call, so a trap that follows is reported as
/// memory exhaustion rather than a generic trap; [`MemoryLimiter::start_call`] resets that.
pub(crate) struct MemoryLimiter {
    max_bytes: usize,
    /// Bytes currently granted to all memories and tables of the instance.
    used: usize,
    pub(crate) hit: bool,
}

impl MemoryLimiter {
    pub(crate) fn new(max_bytes: usize) -> Self {
        Self {
            max_bytes,
            used: 0,
            hit: false,
        }
    }

    /// Forgets a refusal of an earlier call (the guest handled it and the call succeeded).
    pub(crate) fn start_call(&mut self) {
        self.hit = false;
    }

    /// Bytes currently granted to the instance's memories and tables.
    #[cfg(test)]
    pub(crate) fn used(&self) -> usize {
        self.used
    }

    fn grow(&mut self, current: usize, desired: usize) -> bool {
        let total = self.used.saturating_sub(current).saturating_add(desired);
        if total > self.max_bytes {
            self.hit = true;
            return false;
        }
        self.used = total;
        true
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(self.grow(current, desired))
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(self.grow(
            current.saturating_mul(TABLE_ELEMENT_BYTES),
            desired.saturating_mul(TABLE_ELEMENT_BYTES),
        ))
    }

    fn instances(&self) -> usize {
        // A component instantiates a handful of core modules (the adapter, shims, the policy).
        64
    }

    fn tables(&self) -> usize {
        64
    }

    fn memories(&self) -> usize {
        16
    }
}

/// Rate- and size-limited sink for the `log` import of one binding (shared by its instances).
pub(crate) struct LogSink {
    label: Arc<str>,
    per_second: f64,
    max_bytes: usize,
    bucket: Mutex<(f64, Instant)>,
    /// Messages emitted.
    pub(crate) emitted: AtomicU64,
    /// Messages dropped by the rate limit.
    pub(crate) dropped: AtomicU64,
    /// Whether a "messages dropped" notice is due once the bucket refills.
    dropped_since_notice: AtomicU64,
    /// Trace-level messages kept for `policy check` (`None`: not capturing, the default).
    captured: Mutex<Option<Vec<String>>>,
}

/// Most trace messages [`LogSink::capture`] keeps.
const MAX_CAPTURED: usize = 64;
/// Longest trace message [`LogSink::capture`] keeps, bytes (a traceback fits).
const CAPTURED_MAX_BYTES: usize = 16 * 1024;

impl LogSink {
    pub(crate) fn new(label: Arc<str>, per_second: u32, max_bytes: usize) -> Self {
        let per_second = f64::from(per_second.max(1));
        Self {
            label,
            per_second,
            max_bytes,
            // Burst: one second's worth of messages.
            bucket: Mutex::new((per_second, Instant::now())),
            emitted: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            dropped_since_notice: AtomicU64::new(0),
            captured: Mutex::new(None),
        }
    }

    /// Starts keeping trace-level messages (at most [`MAX_CAPTURED`], each cut at
    /// [`CAPTURED_MAX_BYTES`], control characters other than newlines escaped), whatever the
    /// rate limit and the tracing level: `policy check` shows them to the policy's author. The
    /// SDKs send an exception's message and traceback there; they may quote record contents,
    /// so production never captures.
    pub(crate) fn capture(&self) {
        self.captured.lock().get_or_insert_with(Vec::new);
    }

    /// The trace messages kept since the last call (see [`LogSink::capture`]).
    pub(crate) fn take_captured(&self) -> Vec<String> {
        self.captured
            .lock()
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    fn take_token(&self) -> bool {
        let mut b = self.bucket.lock();
        let now = Instant::now();
        let refill = now.duration_since(b.1).as_secs_f64() * self.per_second;
        b.0 = (b.0 + refill).min(self.per_second);
        b.1 = now;
        if b.0 >= 1.0 {
            b.0 -= 1.0;
            true
        } else {
            false
        }
    }

    /// Emits one guest message through `tracing`, or drops it when over the rate.
    pub(crate) fn log(&self, level: Level, message: &str) {
        if level == Level::Trace {
            if let Some(kept) = self.captured.lock().as_mut() {
                if kept.len() < MAX_CAPTURED {
                    let mut cut = message.len().min(CAPTURED_MAX_BYTES);
                    while !message.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    let lines: Vec<String> = message[..cut]
                        .lines()
                        .map(|l| sanitize(l, CAPTURED_MAX_BYTES))
                        .collect();
                    kept.push(lines.join("\n"));
                }
            }
        }
        if !self.take_token() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            self.dropped_since_notice.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let dropped = self.dropped_since_notice.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            tracing::warn!(
                target: "kapsule::policy::guest",
                policy = %self.label,
                dropped,
                "policy log messages dropped by the rate limit"
            );
        }
        self.emitted.fetch_add(1, Ordering::Relaxed);
        let msg = sanitize(message, self.max_bytes);
        let label = &*self.label;
        match level {
            Level::Trace => {
                tracing::trace!(target: "kapsule::policy::guest", policy = %label, "{msg}")
            }
            Level::Debug => {
                tracing::debug!(target: "kapsule::policy::guest", policy = %label, "{msg}")
            }
            Level::Info => {
                tracing::info!(target: "kapsule::policy::guest", policy = %label, "{msg}")
            }
            Level::Warn => {
                tracing::warn!(target: "kapsule::policy::guest", policy = %label, "{msg}")
            }
            Level::Error => {
                tracing::error!(target: "kapsule::policy::guest", policy = %label, "{msg}")
            }
        }
    }
}

/// Truncates to `max_bytes` (on a char boundary, marking the cut) and escapes control characters
/// so a policy cannot forge log lines.
fn sanitize(message: &str, max_bytes: usize) -> String {
    let mut cut = message.len().min(max_bytes);
    while !message.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut out = String::with_capacity(cut + 16);
    for c in message[..cut].chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    if cut < message.len() {
        out.push_str(&format!("… [{} bytes truncated]", message.len() - cut));
    }
    out
}

impl super::bindings::kapsule::policy::types::Host for HostState {}

impl PolicyImports for HostState {
    fn log(&mut self, level: Level, message: String) {
        self.log.log(level, &message);
    }

    fn describe_schema(
        &mut self,
        id: u32,
    ) -> Result<super::bindings::kapsule::policy::types::SchemaInfo, String> {
        self.schemas.describe(id)
    }
}

impl super::bindings_v0_2::kapsule::policy::types::Host for HostState {}

impl super::bindings_v0_2::PolicyImports for HostState {
    fn log(&mut self, level: super::bindings_v0_2::kapsule::policy::types::Level, message: String) {
        use super::bindings_v0_2::kapsule::policy::types::Level as L2;
        let level = match level {
            L2::Trace => Level::Trace,
            L2::Debug => Level::Debug,
            L2::Info => Level::Info,
            L2::Warn => Level::Warn,
            L2::Error => Level::Error,
        };
        self.log.log(level, &message);
    }
}

impl super::bindings_v0_1::kapsule::policy::types::Host for HostState {}

impl super::bindings_v0_1::PolicyImports for HostState {
    fn log(&mut self, level: super::bindings_v0_1::kapsule::policy::types::Level, message: String) {
        use super::bindings_v0_1::kapsule::policy::types::Level as L1;
        let level = match level {
            L1::Trace => Level::Trace,
            L1::Debug => Level::Debug,
            L1::Info => Level::Info,
            L1::Warn => Level::Warn,
            L1::Error => Level::Error,
        };
        self.log.log(level, &message);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitize_truncates_on_char_boundaries_and_escapes_controls() {
        assert_eq!(sanitize("a\nb", 10), "a\\nb");
        let s = sanitize("ééé", 3);
        assert!(s.starts_with('é') && s.contains("4 bytes truncated"), "{s}");
    }

    #[test]
    fn memory_limiter_caps_all_memories_and_tables_together() {
        let mut l = MemoryLimiter::new(10 << 20);
        // Two memories of 4 MiB each fit; a third does not, although each alone would.
        assert!(l.memory_growing(0, 4 << 20, None).unwrap());
        assert!(l.memory_growing(0, 4 << 20, None).unwrap());
        assert!(!l.memory_growing(0, 4 << 20, None).unwrap());
        assert!(l.hit);
        // Growing one memory counts only the difference.
        assert!(l.memory_growing(4 << 20, 5 << 20, None).unwrap());
        assert_eq!(l.used(), 9 << 20);
        // Tables count against the same budget.
        assert!(!l.table_growing(0, 1 << 20, None).unwrap());
        assert!(l.table_growing(0, 1024, None).unwrap());
        l.start_call();
        assert!(!l.hit);
    }

    #[test]
    fn log_sink_drops_over_the_rate() {
        let sink = LogSink::new("t".into(), 5, 100);
        for _ in 0..100 {
            sink.log(Level::Info, "x");
        }
        assert!(sink.emitted.load(Ordering::Relaxed) <= 6);
        assert!(sink.dropped.load(Ordering::Relaxed) >= 94);
    }
}
