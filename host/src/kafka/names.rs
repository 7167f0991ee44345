//! Topic-name validation by Kafka's rules, applied before a client-chosen name creates any state
//! in the proxy (DEK slots, metric label sets, auto-created local KEKs).

/// Longest legal topic name (Kafka's `Topic.MAX_NAME_LENGTH`).
pub const MAX_TOPIC_NAME_LEN: usize = 249;

/// Why a topic name is not legal in Kafka.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicNameError {
    /// The name is empty.
    #[error("topic name is empty")]
    Empty,
    /// The name is `.` or `..`.
    #[error("topic name cannot be \".\" or \"..\"")]
    Dots,
    /// The name is longer than [`MAX_TOPIC_NAME_LEN`] characters.
    #[error("topic name is {0} characters long, more than the 249 Kafka allows")]
    TooLong(usize),
    /// The name has a character outside `[a-zA-Z0-9._-]`.
    #[error("topic name contains {0:?}; only ASCII letters, digits, '.', '_' and '-' are legal")]
    IllegalChar(char),
}

/// Checks `name` against Kafka's topic-name rules: 1 to 249 characters from `[a-zA-Z0-9._-]`,
/// and not `.` or `..`. Brokers refuse any other name, so the proxy may too.
pub fn validate_topic_name(name: &str) -> Result<(), TopicNameError> {
    if name.is_empty() {
        return Err(TopicNameError::Empty);
    }
    if name == "." || name == ".." {
        return Err(TopicNameError::Dots);
    }
    if name.len() > MAX_TOPIC_NAME_LEN {
        return Err(TopicNameError::TooLong(name.chars().count()));
    }
    match name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        Some(c) => Err(TopicNameError::IllegalChar(c)),
        None => Ok(()),
    }
}

/// True when `name` is a legal Kafka topic name (see [`validate_topic_name`]).
pub fn is_valid_topic_name(name: &str) -> bool {
    validate_topic_name(name).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kafka_rules() {
        for ok in [
            "orders",
            "a",
            "a.b_c-D9",
            "__consumer_offsets",
            "...",
            &"x".repeat(249),
        ] {
            assert_eq!(validate_topic_name(ok), Ok(()), "{ok}");
        }
        assert_eq!(validate_topic_name(""), Err(TopicNameError::Empty));
        assert_eq!(validate_topic_name("."), Err(TopicNameError::Dots));
        assert_eq!(validate_topic_name(".."), Err(TopicNameError::Dots));
        assert_eq!(
            validate_topic_name(&"x".repeat(250)),
            Err(TopicNameError::TooLong(250))
        );
        for (bad, c) in [
            ("a/b", '/'),
            ("a b", ' '),
            ("é", 'é'),
            ("a\nb", '\n'),
            ("a\"b", '"'),
        ] {
            assert_eq!(
                validate_topic_name(bad),
                Err(TopicNameError::IllegalChar(c))
            );
        }
        let msg = validate_topic_name("a\u{1b}[31m").unwrap_err().to_string();
        assert!(
            !msg.contains('\u{1b}'),
            "control characters are escaped: {msg}"
        );
    }
}
