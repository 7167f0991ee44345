//! TEST ONLY: a policy that misbehaves in the way its config names, to prove the sandbox
//! contains it. Never bind it to real topics.
//!
//! Config: one of `loop-plan`, `loop-decide`, `oom-decide`, `trap-decide`, `trap-init`,
//! `init-error`, `log-spam`, `wrong-count`, `bad-pointer`, `bad-key`, `snoop`, `stack-overflow`,
//! `sleep-decide` (sleeps 5 s), `sleep-forever-decide` (sleeps `Duration::MAX`: a huge
//! `subscribe-duration` then `pollable.block`), `sleep-init`, `print-init` (`println!` and
//! `eprintln!` in `init`, `plan` and `decide`), `net` (opens a TCP connection), `big-plan` and
//! `big-answer` (answers of several MiB), `grow-then-trap` (a refused allocation handled in the
//! first `decide`, a panic in the second), `echo-client` (decides `kek-<principal>`, or
//! `kek-anonymous`, from the client `decide` is given), `lying-memo` (declares its decision
//! depends only on the `tenant` header but decides `kek-<value>` from the record value),
//! `lying-two-header-memo` (the same lie with the memo on the `tenant` and `classification`
//! headers together),
//! `loop-reveal` (`reveal` never returns), `huge-headers` (plans to encrypt the whole value
//! under `kek-ok` plus 875 header names of 4000 bytes each, and reveals the value and the same
//! 3.5 MB of header names: answers under the default answer limit that a cache must not keep
//! per topic), or `ok` (behaves: per-record, encrypts the whole
//! value under `kek-ok`). Every mode but `loop-reveal` and `huge-headers` reveals all.

use std::cell::Cell;
use std::time::Duration;

use kapsule_policy::{
    export_policy, log, Client, Decision, Encrypt, MemoKey, Needs, Policy, RecordView, Reveal,
    RevealParts, TopicPlan,
};

struct Misbehave {
    mode: String,
    calls: Cell<u32>,
}

fn spin() -> ! {
    let mut i: u64 = 0;
    loop {
        i = std::hint::black_box(i.wrapping_add(1));
    }
}

/// Deep, non-tail recursion with small frames: exhausts the wasm call stack (not the shadow
/// stack in linear memory). Terminates only after ~10^9 levels, so never in practice.
fn recurse(n: u64) -> u64 {
    if n % 1_000_000_007 == 1_000_000_006 {
        return n;
    }
    recurse(n + 1).wrapping_mul(3).wrapping_add(n)
}

impl Policy for Misbehave {
    fn init(config: &str) -> Result<Self, String> {
        match config {
            "trap-init" => panic!("hostile policy panics in init"),
            "init-error" => Err("hostile policy refuses its config".into()),
            "sleep-init" => {
                std::thread::sleep(Duration::from_secs(5));
                Err("slept through init".into())
            }
            _ => {
                if config == "print-init" {
                    println!("hello from init on stdout");
                    eprintln!("hello from init on stderr");
                }
                Ok(Self {
                    mode: config.to_string(),
                    calls: Cell::new(0),
                })
            }
        }
    }

    fn plan(&self, _topic: &str, _client: &Client) -> TopicPlan {
        match self.mode.as_str() {
            "loop-plan" => spin(),
            "snoop" => TopicPlan::RejectAll(snoop()),
            "net" => TopicPlan::RejectAll(net()),
            "big-plan" => TopicPlan::RejectAll("p".repeat(8 << 20)),
            "huge-headers" => {
                let mut e = Encrypt::new("kek-ok").whole_value();
                for name in huge_header_names() {
                    e = e.with_header(name);
                }
                TopicPlan::EncryptAll(e)
            }
            "lying-memo" => {
                TopicPlan::per_record(Needs::none().with_value()).memo(MemoKey::header("tenant"))
            }
            "lying-two-header-memo" => TopicPlan::per_record(Needs::none().with_value())
                .memo(MemoKey::headers(["tenant", "classification"])),
            // The cookbook's tenant policy with a `classification: public` exception added, but
            // the memo left on `tenant` alone: the memo decides for records it must not.
            "tenant-memo-public-passes" => {
                TopicPlan::per_record(Needs::none().with_headers()).memo(MemoKey::header("tenant"))
            }
            "print-init" => {
                println!("planning a topic");
                TopicPlan::per_record(Needs::none().with_value())
            }
            _ => TopicPlan::per_record(Needs::none().with_value()),
        }
    }

    fn decide(&self, _topic: &str, client: &Client, records: &[RecordView]) -> Vec<Decision> {
        let ok = || Decision::Encrypt(Encrypt::new("kek-ok").whole_value());
        match self.mode.as_str() {
            "echo-client" => {
                let who = client.principal_name().unwrap_or("anonymous");
                let d = Decision::Encrypt(Encrypt::new(format!("kek-{who}")).whole_value());
                vec![d; records.len()]
            }
            "lying-memo" | "lying-two-header-memo" => records
                .iter()
                .map(|r| {
                    let v = r.value_str().unwrap_or("null");
                    Decision::Encrypt(Encrypt::new(format!("kek-{v}")).whole_value())
                })
                .collect(),
            "tenant-memo-public-passes" => records
                .iter()
                .map(
                    |r| match (r.header_str("tenant"), r.header_str("classification")) {
                        (_, Some("public")) => Decision::Pass,
                        (Some(t), _) => {
                            Decision::Encrypt(Encrypt::new(format!("kek-{t}")).whole_value())
                        }
                        (None, _) => Decision::Reject("record has no `tenant` header".into()),
                    },
                )
                .collect(),
            "loop-decide" => spin(),
            "sleep-decide" => {
                std::thread::sleep(Duration::from_secs(5));
                records.iter().map(|_| ok()).collect()
            }
            "sleep-forever-decide" => {
                std::thread::sleep(Duration::MAX);
                records.iter().map(|_| ok()).collect()
            }
            "print-init" => {
                println!("deciding {} records", records.len());
                records.iter().map(|_| ok()).collect()
            }
            "big-answer" => records
                .iter()
                .enumerate()
                .map(|(i, _)| Decision::Reject(format!("{i}{}", "r".repeat(1 << 20))))
                .collect(),
            "grow-then-trap" => {
                let n = self.calls.get();
                self.calls.set(n + 1);
                if n > 0 {
                    panic!("hostile policy panics after a refused allocation");
                }
                let mut v: Vec<u8> = Vec::new();
                // Far over any memory cap: memory.grow is refused and try_reserve reports it.
                assert!(v.try_reserve(1 << 30).is_err());
                records.iter().map(|_| ok()).collect()
            }
            "oom-decide" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    let mut chunk = vec![0u8; 1 << 20];
                    chunk[0] = 1;
                    hoard.push(std::hint::black_box(chunk));
                }
            }
            "trap-decide" => panic!("hostile policy panics in decide"),
            "stack-overflow" => {
                let n = recurse(std::hint::black_box(records.len() as u64));
                vec![Decision::Reject(n.to_string()); records.len()]
            }
            "log-spam" => {
                let big = "x".repeat(64 * 1024);
                for _ in 0..2000 {
                    log::error(&big);
                }
                records.iter().map(|_| ok()).collect()
            }
            "wrong-count" => records.iter().skip(1).map(|_| ok()).collect(),
            "bad-pointer" => records
                .iter()
                .map(|_| Decision::Encrypt(Encrypt::new("kek-ok").json_fields(["email~"])))
                .collect(),
            "bad-key" => records
                .iter()
                .map(|_| Decision::Encrypt(Encrypt::new("kek-someone-else").whole_value()))
                .collect(),
            _ => records.iter().map(|_| ok()).collect(),
        }
    }

    fn reveal(&self, _topic: &str, _client: &Client) -> Reveal {
        match self.mode.as_str() {
            "loop-reveal" => spin(),
            "huge-headers" => Reveal::Parts(RevealParts {
                value: true,
                headers: huge_header_names(),
                ..RevealParts::none()
            }),
            _ => Reveal::All,
        }
    }
}

/// 875 distinct header names of 4000 bytes each (3.5 MB).
fn huge_header_names() -> Vec<String> {
    (0..875)
        .map(|i| format!("{i:04}{}", "h".repeat(3996)))
        .collect()
}

/// Tries to reach the outside world through WASI and reports what it saw.
fn snoop() -> String {
    let file = match std::fs::read("/etc/passwd") {
        Ok(b) => format!("read {} bytes", b.len()),
        Err(_) => "denied".to_string(),
    };
    let cwd_listing = match std::fs::read_dir(".") {
        Ok(d) => format!("{} entries", d.count()),
        Err(_) => "denied".to_string(),
    };
    let env = std::env::vars().count();
    let home = std::env::var("HOME").unwrap_or_else(|_| "unset".into());
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(u64::MAX);
    let mono = std::time::Instant::now();
    let frozen = mono.elapsed().as_nanos();
    format!("file={file} dir={cwd_listing} env={env} home={home} time={secs} elapsed={frozen}")
}

/// Tries to open a TCP connection (the sandbox stops the call).
fn net() -> String {
    match std::net::TcpStream::connect("127.0.0.1:9") {
        Ok(_) => "connected".to_string(),
        Err(_) => "denied".to_string(),
    }
}

export_policy!(Misbehave);
