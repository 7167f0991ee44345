//! The one constant-time comparison for secrets and authentication tags (bearer tokens, MACs,
//! cache entry tags). A leaf: every room that compares a secret uses it without importing another.

/// Whether `a` and `b` are equal, in a time that depends only on their lengths.
pub fn eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len()
        && std::hint::black_box(a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y))) == 0
}

#[cfg(test)]
mod tests {
    #[test]
    fn equal_only_for_the_same_bytes_and_length() {
        assert!(super::eq(b"secret", b"secret"));
        assert!(!super::eq(b"secret", b"secreT"));
        assert!(!super::eq(b"secret", b"secret!"));
        assert!(super::eq(b"", b""));
    }
}
