//! `kapsule` binary: parses the command line and hands over to the library.

/// mimalloc: the record path allocates and frees many short-lived buffers per batch (decoded
/// records, ciphertexts, re-encoded batches); glibc malloc spent ~20 % of proxy CPU on them and
/// on page faults from returning memory to the OS.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    // Re-executed as a policy compile worker (cold compiles leave the proxy's memory)?
    if let Some(code) = kapsule::policy::PolicyRegistry::compile_worker_main() {
        return code;
    }
    kapsule::cli::main()
}
