//! A secret the config names by an environment variable or a file (`<key>_env` / `<key>_file`):
//! the local KMS's master key, the Vault token, the AppRole role id and secret id.

use std::path::Path;

use anyhow::{bail, Context as _};
use zeroize::Zeroizing;

/// Where one secret comes from: the file when set, else the environment variable, else
/// `default_env`. Borrowed from the config section that names it.
#[derive(Debug, Clone, Copy)]
pub struct SecretSource<'a> {
    /// What the secret is, for messages (`master key`, `Vault token`, `AppRole secret id`).
    pub what: &'static str,
    /// The config keys' prefix: `master_key` for `master_key_env` / `master_key_file`.
    pub key: &'static str,
    /// The `<key>_env` setting.
    pub env: Option<&'a str>,
    /// The `<key>_file` setting.
    pub file: Option<&'a Path>,
    /// The variable read when neither is set; `None` makes one of them required.
    pub default_env: Option<&'static str>,
    /// Appended to the message when the variable is not set (how to make a good secret).
    pub hint: &'static str,
}

impl SecretSource<'_> {
    /// Appends one message per problem to `problems`: both settings given, neither given where
    /// one is required, a variable name the environment cannot hold.
    pub fn validate(&self, path: &str, problems: &mut Vec<String>) {
        let key = self.key;
        match (self.env, self.file) {
            (Some(_), Some(_)) => {
                problems.push(format!("{path}: set only one of {key}_env and {key}_file"))
            }
            (None, None) if self.default_env.is_none() => {
                problems.push(format!("{path}: {key}_file or {key}_env is required"))
            }
            _ => {}
        }
        if let Some(e) = self.env {
            if e.is_empty() || e.contains('=') || e.contains('\0') {
                problems.push(format!(
                    "{path}.{key}_env: '{e}' is not a valid environment variable name"
                ));
            }
        }
    }

    /// Reads the secret, trimmed of surrounding whitespace. Fails naming the file or variable
    /// when it cannot be read, and when the secret is empty.
    pub fn read(&self) -> anyhow::Result<Zeroizing<String>> {
        let what = self.what;
        let raw = match (self.file, self.env.or(self.default_env)) {
            (Some(f), _) => Zeroizing::new(
                std::fs::read_to_string(f)
                    .with_context(|| format!("reading the {what} file {}", f.display()))?,
            ),
            (None, Some(var)) => Zeroizing::new(std::env::var(var).with_context(|| {
                format!("{what} environment variable {var} is not set{}", self.hint)
            })?),
            (None, None) => bail!(
                "no source configured for the {what}: set {}_file or {}_env",
                self.key,
                self.key
            ),
        };
        let secret = Zeroizing::new(raw.trim().to_owned());
        if secret.is_empty() {
            bail!("the {what} is empty");
        }
        Ok(secret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source<'a>(env: Option<&'a str>, file: Option<&'a Path>) -> SecretSource<'a> {
        SecretSource {
            what: "test secret",
            key: "secret",
            env,
            file,
            default_env: None,
            hint: "",
        }
    }

    #[test]
    fn validation_names_both_keys_or_the_missing_one() {
        let mut problems = Vec::new();
        source(Some("A"), Some(Path::new("/f"))).validate("kms", &mut problems);
        source(None, None).validate("kms.auth", &mut problems);
        source(Some("A=B"), None).validate("kms", &mut problems);
        assert_eq!(
            problems,
            [
                "kms: set only one of secret_env and secret_file",
                "kms.auth: secret_file or secret_env is required",
                "kms.secret_env: 'A=B' is not a valid environment variable name",
            ]
        );
    }

    #[test]
    fn reads_the_file_trimmed_and_refuses_empty_or_missing_secrets() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("s");
        std::fs::write(&f, " s3cret\n").unwrap();
        assert_eq!(source(None, Some(&f)).read().unwrap().as_str(), "s3cret");
        std::fs::write(&f, "\n").unwrap();
        let e = source(None, Some(&f)).read().unwrap_err();
        assert_eq!(e.to_string(), "the test secret is empty");
        let e = source(Some("KAPSULE_TEST_SECRET_SOURCE_UNSET"), None)
            .read()
            .unwrap_err();
        assert!(
            e.to_string().contains(
                "test secret environment variable KAPSULE_TEST_SECRET_SOURCE_UNSET is not set"
            ),
            "{e}"
        );
    }
}
