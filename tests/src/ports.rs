//! Free TCP port allocation for services started by the rig.

use std::collections::HashSet;
use std::net::TcpListener;
use std::sync::{Mutex, OnceLock};

/// Returns a TCP port on 127.0.0.1 that was free a moment ago and that this process has not handed
/// out before.
///
/// The port is found by binding port 0 and reading the kernel's choice, then released so a child
/// process can bind it. The in-process registry prevents two parallel tests from getting the same
/// port; another process could still grab it in the gap, which services detect as a bind failure.
pub fn free_port() -> u16 {
    static HANDED_OUT: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    let handed_out = HANDED_OUT.get_or_init(|| Mutex::new(HashSet::new()));
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0 must work");
        let port = listener
            .local_addr()
            .expect("a bound listener has an address")
            .port();
        drop(listener);
        let mut set = handed_out.lock().unwrap_or_else(|e| e.into_inner());
        if set.insert(port) {
            return port;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_distinct_and_bindable() {
        let a = free_port();
        let b = free_port();
        assert_ne!(a, b);
        TcpListener::bind(("127.0.0.1", a)).unwrap();
        TcpListener::bind(("127.0.0.1", b)).unwrap();
    }
}
