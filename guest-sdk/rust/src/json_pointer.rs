//! RFC 6901 JSON pointer helpers: build pointers from field names, check and split them.
//!
//! Kapsule refuses a decision whose pointers are malformed, so build them with these helpers
//! rather than by string concatenation.

/// Escapes one reference token: `~` becomes `~0` and `/` becomes `~1`.
///
/// ```no_run
/// assert_eq!(kapsule_policy::json_pointer::escape("a/b~c"), "a~1b~0c");
/// ```
pub fn escape(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

/// Builds a pointer from unescaped tokens (field names or array indexes).
///
/// ```no_run
/// use kapsule_policy::json_pointer::from_tokens;
/// assert_eq!(from_tokens(["customer", "e/mail"]), "/customer/e~1mail");
/// ```
pub fn from_tokens<I, S>(tokens: I) -> String
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let mut out = String::new();
    for t in tokens {
        out.push('/');
        out.push_str(&escape(t.as_ref()));
    }
    out
}

/// Checks a pointer the way Kapsule does: non-empty, starts with `/`, every `~` followed by `0`
/// or `1`.
pub fn validate(pointer: &str) -> Result<(), String> {
    if pointer.is_empty() {
        return Err("empty JSON pointer; encrypt the whole value instead".into());
    }
    if !pointer.starts_with('/') {
        return Err(format!("JSON pointer `{pointer}` must start with `/`"));
    }
    let mut chars = pointer.chars();
    while let Some(c) = chars.next() {
        if c == '~' && !matches!(chars.next(), Some('0' | '1')) {
            return Err(format!(
                "JSON pointer `{pointer}` has `~` not followed by 0 or 1"
            ));
        }
    }
    Ok(())
}

/// Splits a valid pointer into unescaped tokens.
///
/// ```no_run
/// use kapsule_policy::json_pointer::tokens;
/// assert_eq!(tokens("/a~1b/0").unwrap(), vec!["a/b".to_string(), "0".to_string()]);
/// ```
pub fn tokens(pointer: &str) -> Result<Vec<String>, String> {
    validate(pointer)?;
    Ok(pointer[1..]
        .split('/')
        .map(|t| t.replace("~1", "/").replace("~0", "~"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let p = from_tokens(["a/b", "c~d", ""]);
        assert_eq!(p, "/a~1b/c~0d/");
        assert_eq!(tokens(&p).unwrap(), vec!["a/b", "c~d", ""]);
        assert!(validate("a").is_err());
        assert!(validate("/a~2").is_err());
        assert!(validate("").is_err());
    }
}
