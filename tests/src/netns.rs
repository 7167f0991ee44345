//! [`Netns`]: a network namespace with its own `/etc/hosts`, linked to the host by a veth pair, so
//! clients can use real host names (`kafka.example`) without touching the machine's resolver.
//!
//! Processes started with `ip netns exec NAME ...` see `/etc/netns/NAME/hosts` as `/etc/hosts`;
//! the services (tansu, Kapsule) stay on the host and listen on the host end of the veth pair,
//! which the test process reaches directly. Needs root (`CAP_NET_ADMIN` and `CAP_SYS_ADMIN`).

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{ensure, Context, Result};

/// A network namespace, its veth link and its hosts file; all removed on drop.
#[derive(Debug)]
pub struct Netns {
    /// Namespace name (unique per process and call).
    pub name: String,
    /// Address of the host end of the veth pair (services listen here).
    pub host_ip: String,
    /// Address of the namespace end.
    pub ns_ip: String,
    etc_dir: PathBuf,
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running `ip` (iproute2)")?;
    ensure!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

impl Netns {
    /// Creates a namespace whose `/etc/hosts` maps every name in `names` to the host end of a new
    /// veth pair (a /30 in 10.213.0.0/16 picked from the process id and a counter).
    pub fn create(names: &[&str]) -> Result<Self> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let name = format!("kapsule-{pid}-{n}");
        // Interface names are at most 15 bytes.
        let tag = format!("{:x}", (pid << 4 | n) & 0xff_ffff);
        let (host_if, ns_if) = (format!("kh{tag}"), format!("kn{tag}"));
        let slot = (pid.wrapping_mul(7).wrapping_add(n)) % (256 * 64);
        let (a, b) = (slot / 64, (slot % 64) * 4);
        let host_ip = format!("10.213.{a}.{}", b + 1);
        let ns_ip = format!("10.213.{a}.{}", b + 2);
        let etc_dir = PathBuf::from("/etc/netns").join(&name);
        let ns = Self {
            name: name.clone(),
            host_ip: host_ip.clone(),
            ns_ip: ns_ip.clone(),
            etc_dir: etc_dir.clone(),
        };
        // From here on, drop cleans up whatever part was created.
        ip(&["netns", "add", &name]).context(
            "creating a network namespace (needs root; `ip netns add` must be permitted)",
        )?;
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if,
        ])?;
        ip(&["link", "set", &ns_if, "netns", &name])?;
        ip(&["addr", "add", &format!("{host_ip}/30"), "dev", &host_if])?;
        ip(&["link", "set", &host_if, "up"])?;
        ip(&["netns", "exec", &name, "ip", "link", "set", "lo", "up"])?;
        ip(&[
            "netns",
            "exec",
            &name,
            "ip",
            "addr",
            "add",
            &format!("{ns_ip}/30"),
            "dev",
            &ns_if,
        ])?;
        ip(&["netns", "exec", &name, "ip", "link", "set", &ns_if, "up"])?;
        std::fs::create_dir_all(&etc_dir)?;
        std::fs::write(
            etc_dir.join("hosts"),
            format!(
                "127.0.0.1 localhost\n::1 localhost\n{host_ip} {}\n",
                names.join(" ")
            ),
        )?;
        Ok(ns)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace deletes the veth pair (both ends) with it.
        let _ = ip(&["netns", "del", &self.name]);
        let _ = std::fs::remove_dir_all(&self.etc_dir);
        // Only succeeds when no other namespace has a directory there.
        let _ = std::fs::remove_dir("/etc/netns");
    }
}
