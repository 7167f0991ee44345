//! Seals and checksums buffers of record and batch sizes in a loop and prints each
//! implementation's time per call and throughput; each pair runs back to back on the same
//! buffer, so compare within a line pair, not across runs.

use std::hint::black_box;
use std::time::Instant;

/// Runs `f` until about `budget_bytes` have gone through it; nanoseconds per call and GB/s.
fn rate(size: usize, budget_bytes: usize, mut f: impl FnMut(u64)) -> (f64, f64) {
    let iters = (budget_bytes / size).max(1000);
    for i in 0..iters / 10 {
        f(i as u64);
    }
    let start = Instant::now();
    for i in 0..iters {
        f(i as u64);
    }
    let elapsed = start.elapsed().as_secs_f64();
    (
        elapsed * 1e9 / iters as f64,
        (size * iters) as f64 / elapsed / 1e9,
    )
}

fn nonce(i: u64) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[..8].copy_from_slice(&i.to_le_bytes());
    n
}

fn main() {
    let key = [7u8; 32];
    let ring_key = ring::aead::LessSafeKey::new(
        ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, &key).expect("32-byte key"),
    );
    let lc_key = aws_lc_rs::aead::LessSafeKey::new(
        aws_lc_rs::aead::UnboundKey::new(&aws_lc_rs::aead::AES_256_GCM, &key).expect("32-byte key"),
    );
    println!("AES-256-GCM seal in place, 13-byte AAD");
    for size in [1024usize, 16 * 1024, 64 * 1024] {
        let mut buf = vec![1u8; size];
        let (ns, gbs) = rate(size, 400_000_000, |i| {
            let n = ring::aead::Nonce::assume_unique_for_key(nonce(i));
            let tag = ring_key
                .seal_in_place_separate_tag(n, ring::aead::Aad::from(&[0u8; 13]), &mut buf)
                .expect("seal");
            let _ = black_box(tag);
        });
        println!("  ring       {size:>7} B: {ns:>9.1} ns  {gbs:>6.2} GB/s");
        let (ns, gbs) = rate(size, 400_000_000, |i| {
            let n = aws_lc_rs::aead::Nonce::assume_unique_for_key(nonce(i));
            let tag = lc_key
                .seal_in_place_separate_tag(n, aws_lc_rs::aead::Aad::from(&[0u8; 13]), &mut buf)
                .expect("seal");
            let _ = black_box(tag);
        });
        println!("  aws-lc-rs  {size:>7} B: {ns:>9.1} ns  {gbs:>6.2} GB/s");
    }
    println!("CRC-32C");
    for size in [1200usize, 16 * 1024, 256 * 1024, 1024 * 1024] {
        let buf: Vec<u8> = (0..size).map(|i| (i * 31 + 7) as u8).collect();
        assert_eq!(
            crc32c::crc32c(&buf),
            crc_fast::crc32_iscsi(&buf),
            "the two agree"
        );
        let (ns, gbs) = rate(size, 4_000_000_000, |_| {
            black_box(crc32c::crc32c(black_box(&buf)));
        });
        println!("  crc32c     {size:>7} B: {ns:>9.1} ns  {gbs:>6.2} GB/s");
        let (ns, gbs) = rate(size, 4_000_000_000, |_| {
            black_box(crc_fast::crc32_iscsi(black_box(&buf)));
        });
        println!("  crc-fast   {size:>7} B: {ns:>9.1} ns  {gbs:>6.2} GB/s");
    }
}
