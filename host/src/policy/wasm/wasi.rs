//! The WASI surface a policy sees: enough for real toolchains to load, nothing that reaches the
//! outside world or blocks the calling thread.
//!
//! | Interface | What the guest gets |
//! |---|---|
//! | `wasi:io/{error,poll,streams}` | wasmtime-wasi's; every stream a guest can open is ready at once |
//! | `wasi:cli/stdout`, `stderr` | lines go to the binding's rate-limited policy log |
//! | `wasi:cli/stdin` | empty (end of stream) |
//! | `wasi:cli/{environment,exit,terminal-*}` | no variables, no arguments, not a terminal |
//! | `wasi:clocks/wall-clock` | frozen at 0 (1970-01-01) |
//! | `wasi:clocks/monotonic-clock` | `now` frozen at 0; `subscribe-*` **trap** (no sleeping, no timers) |
//! | `wasi:random/*` | real randomness (reveals nothing; Rust's `HashMap` needs it) |
//! | `wasi:filesystem/{types,preopens}` | no preopened directories, so no file can be opened |
//! | every other `wasi:*` import (`wasi:sockets/*`, `wasi:http/*`, other versions, ...) | a stub that **traps** when called |
//!
//! So a call never waits in the host: the only pollables a guest can obtain are streams that are
//! always ready, and anything that would sleep, connect or resolve stops the call with a trap that
//! names the import. Imports outside `wasi:` that Kapsule does not provide still refuse the module
//! at load time.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use wasmtime::component::types::ComponentItem;
use wasmtime::component::{Component, HasData, Linker, Resource, ResourceType};
use wasmtime::Engine;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::bindings::{cli, clocks, filesystem, random, sync as sync_bindings};
use wasmtime_wasi::p2::{DynPollable, OutputStream, Pollable, StreamResult};
use wasmtime_wasi::{ResourceTable, WasiCtx, WasiView};

use super::bindings::kapsule::policy::types::Level;
use super::host::{HostState, LogSink};

/// WASI interfaces (name without version) implemented by [`add_to_linker`], for version 0.2.x.
const PROVIDED: &[&str] = &[
    "wasi:io/error",
    "wasi:io/poll",
    "wasi:io/streams",
    "wasi:clocks/wall-clock",
    "wasi:clocks/monotonic-clock",
    "wasi:random/random",
    "wasi:random/insecure",
    "wasi:random/insecure-seed",
    "wasi:cli/exit",
    "wasi:cli/environment",
    "wasi:cli/stdin",
    "wasi:cli/stdout",
    "wasi:cli/stderr",
    "wasi:cli/terminal-input",
    "wasi:cli/terminal-output",
    "wasi:cli/terminal-stdin",
    "wasi:cli/terminal-stdout",
    "wasi:cli/terminal-stderr",
    "wasi:filesystem/types",
    "wasi:filesystem/preopens",
];

struct IoTable;

impl HasData for IoTable {
    type Data<'a> = &'a mut ResourceTable;
}

/// Links the provided WASI interfaces (see the module docs) into `linker`.
pub(super) fn add_to_linker(linker: &mut Linker<HostState>) -> anyhow::Result<()> {
    let l = linker;
    sync_bindings::io::error::add_to_linker::<HostState, IoTable>(l, |t| t.ctx().table)?;
    sync_bindings::io::poll::add_to_linker::<HostState, IoTable>(l, |t| t.ctx().table)?;
    sync_bindings::io::streams::add_to_linker::<HostState, IoTable>(l, |t| t.ctx().table)?;
    use wasmtime_wasi::cli::{WasiCli, WasiCliView as _};
    use wasmtime_wasi::clocks::{WasiClocks, WasiClocksView as _};
    use wasmtime_wasi::filesystem::{WasiFilesystem, WasiFilesystemView as _};
    use wasmtime_wasi::random::WasiRandom;
    clocks::wall_clock::add_to_linker::<HostState, WasiClocks>(l, |t| t.clocks())?;
    clocks::monotonic_clock::add_to_linker::<HostState, NoWaiting>(l, |_| NoWaiting)?;
    random::random::add_to_linker::<HostState, WasiRandom>(l, |t| t.ctx().ctx.random())?;
    random::insecure::add_to_linker::<HostState, WasiRandom>(l, |t| t.ctx().ctx.random())?;
    random::insecure_seed::add_to_linker::<HostState, WasiRandom>(l, |t| t.ctx().ctx.random())?;
    cli::exit::add_to_linker::<HostState, WasiCli>(l, |t| t.cli())?;
    cli::environment::add_to_linker::<HostState, WasiCli>(l, |t| t.cli())?;
    cli::stdin::add_to_linker::<HostState, WasiCli>(l, |t| t.cli())?;
    cli::stdout::add_to_linker::<HostState, WasiCli>(l, |t| t.cli())?;
    cli::stderr::add_to_linker::<HostState, WasiCli>(l, |t| t.cli())?;
    cli::terminal_input::add_to_linker::<HostState, WasiCli>(l, |t| t.cli())?;
    cli::terminal_output::add_to_linker::<HostState, WasiCli>(l, |t| t.cli())?;
    cli::terminal_stdin::add_to_linker::<HostState, WasiCli>(l, |t| t.cli())?;
    cli::terminal_stdout::add_to_linker::<HostState, WasiCli>(l, |t| t.cli())?;
    cli::terminal_stderr::add_to_linker::<HostState, WasiCli>(l, |t| t.cli())?;
    filesystem::preopens::add_to_linker::<HostState, WasiFilesystem>(l, |t| t.filesystem())?;
    sync_bindings::filesystem::types::add_to_linker::<HostState, WasiFilesystem>(l, |t| {
        t.filesystem()
    })?;
    Ok(())
}

/// Whether `name` (`wasi:pkg/iface@version`) is implemented by [`add_to_linker`].
fn provided(name: &str) -> bool {
    let (iface, version) = name.split_once('@').unwrap_or((name, ""));
    PROVIDED.contains(&iface) && version.starts_with("0.2.")
}

/// A copy of `base` in which every `wasi:*` instance `component` imports but [`add_to_linker`]
/// does not provide is defined by stubs: each function traps when called, naming itself.
pub(super) fn with_denying_stubs(
    base: &Linker<HostState>,
    engine: &Engine,
    component: &Component,
) -> anyhow::Result<Linker<HostState>> {
    let ty = component.component_type();
    // Resources already defined by provided interfaces (or earlier stubs) are reused by
    // `use` in later interfaces; they must not be defined again.
    let mut known: Vec<ResourceType> = Vec::new();
    let mut missing = Vec::new();
    for (name, ext) in ty.imports(engine) {
        let ComponentItem::ComponentInstance(inst) = ext.ty else {
            continue;
        };
        if provided(name) {
            for (_, e) in inst.exports(engine) {
                if let ComponentItem::Resource(r) = e.ty {
                    known.push(r);
                }
            }
        } else if name.starts_with("wasi:") {
            missing.push((name.to_string(), inst));
        }
    }
    let mut linker = base.clone();
    for (name, inst) in missing {
        let mut li = linker.instance(&name)?;
        for (item, e) in inst.exports(engine) {
            match e.ty {
                ComponentItem::ComponentFunc(_) => {
                    let what = format!("{name}#{item}");
                    li.func_new(item, move |_, _, _, _| {
                        Err(wasmtime::Error::msg(format!(
                            "the policy called `{what}`, which the sandbox denies (policies \
                             get no network, files, clocks or other I/O); the call was stopped"
                        )))
                    })?;
                }
                ComponentItem::Resource(r) if !known.contains(&r) => {
                    known.push(r);
                    li.resource(item, ResourceType::host::<DeniedResource>(), |_, _| Ok(()))?;
                }
                _ => {}
            }
        }
    }
    Ok(linker)
}

/// Host type behind every resource of a stubbed interface (none is ever created).
struct DeniedResource;

/// `wasi:clocks/monotonic-clock` without waiting: time is frozen and subscribing traps.
struct NoWaiting;

impl HasData for NoWaiting {
    type Data<'a> = NoWaiting;
}

impl clocks::monotonic_clock::Host for NoWaiting {
    fn now(&mut self) -> wasmtime::Result<u64> {
        Ok(0)
    }

    fn resolution(&mut self) -> wasmtime::Result<u64> {
        Ok(1_000_000_000)
    }

    fn subscribe_instant(&mut self, _when: u64) -> wasmtime::Result<Resource<DynPollable>> {
        Err(no_waiting("subscribe-instant"))
    }

    fn subscribe_duration(&mut self, _d: u64) -> wasmtime::Result<Resource<DynPollable>> {
        Err(no_waiting("subscribe-duration"))
    }
}

fn no_waiting(what: &str) -> wasmtime::Error {
    wasmtime::Error::msg(format!(
        "the policy called `wasi:clocks/monotonic-clock#{what}` (sleep, timer or timeout): \
         policies may not wait; the call was stopped"
    ))
}

/// A WASI context that grants nothing: no preopened directories, no environment variables, no
/// arguments, no network, empty stdin, stdout/stderr to the policy log, and clocks frozen at
/// zero. Which interfaces are linked at all is decided in this module.
///
/// Randomness stays available (Rust's `HashMap` seeds itself from it); it reveals nothing.
pub(super) fn deny_all_wasi(log: &Arc<LogSink>) -> WasiCtx {
    let mut b = WasiCtx::builder();
    b.stdout(GuestOutput::stdout(log.clone()))
        .stderr(GuestOutput::stderr(log.clone()))
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .wall_clock(FrozenClock)
        .monotonic_clock(FrozenClock);
    b.build()
}

/// A clock that always reads zero, so policies cannot measure time.
struct FrozenClock;

impl wasmtime_wasi::HostWallClock for FrozenClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

impl wasmtime_wasi::HostMonotonicClock for FrozenClock {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }
    fn now(&self) -> u64 {
        0
    }
}

/// Longest line kept in the line buffer of a guest stdout/stderr stream before it is flushed.
const MAX_LINE: usize = 4096;

/// Guest stdout or stderr: complete lines go to the binding's [`LogSink`] (info for stdout,
/// warn for stderr), subject to its rate and size limits. Never blocks.
#[derive(Clone)]
pub(crate) struct GuestOutput {
    sink: Arc<LogSink>,
    level: Level,
}

impl GuestOutput {
    pub(crate) fn stdout(sink: Arc<LogSink>) -> Self {
        Self {
            sink,
            level: Level::Info,
        }
    }

    pub(crate) fn stderr(sink: Arc<LogSink>) -> Self {
        Self {
            sink,
            level: Level::Warn,
        }
    }
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        // Only WASIp3 uses this; Kapsule links WASIp2. Discard rather than write anywhere.
        Box::new(tokio::io::sink())
    }

    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(LineStream {
            out: self.clone(),
            buf: Vec::new(),
        })
    }
}

struct LineStream {
    out: GuestOutput,
    buf: Vec<u8>,
}

impl LineStream {
    fn emit(&mut self, upto: usize) {
        let line: Vec<u8> = self.buf.drain(..upto).collect();
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end_matches(['\n', '\r']);
        if !text.is_empty() {
            self.out.sink.log(self.out.level, text);
        }
    }
}

impl OutputStream for LineStream {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.buf.extend_from_slice(&bytes);
        while let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
            self.emit(pos + 1);
        }
        if self.buf.len() >= MAX_LINE {
            self.emit(self.buf.len());
        }
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(MAX_LINE)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for LineStream {
    async fn ready(&mut self) {}
}

impl Drop for LineStream {
    fn drop(&mut self) {
        if !self.buf.is_empty() {
            self.emit(self.buf.len());
        }
    }
}
