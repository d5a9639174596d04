//! Secrets read from files (`x_file:` keys, `POSTGRES_*_FILE` variables).
//!
//! Only reading and trimming; which keys are secrets is decided in `validate`.

use std::path::Path;

/// Reads a secret file. One trailing newline (`\n` or `\r\n`) is dropped because editors and
/// `echo` add one that is never part of the secret; anything else is kept byte for byte.
pub(crate) fn read_secret_file(path: &Path) -> Result<String, String> {
    let mut text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read secret file {}: {e}", path.display()))?;
    if text.ends_with("\r\n") {
        text.truncate(text.len() - 2);
    } else if text.ends_with('\n') {
        text.truncate(text.len() - 1);
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_exactly_one_newline() {
        let dir = tempfile::tempdir().expect("temp dir");
        let cases = [
            ("a\n", "a"),
            ("a\r\n", "a"),
            ("a\n\n", "a\n"),
            ("a", "a"),
            (" a \n", " a "),
        ];
        for (i, (content, want)) in cases.iter().enumerate() {
            let path = dir.path().join(i.to_string());
            std::fs::write(&path, content).expect("write");
            assert_eq!(read_secret_file(&path).as_deref(), Ok(*want));
        }
        let missing = dir.path().join("missing");
        let err = read_secret_file(&missing).unwrap_err();
        assert!(err.starts_with(&format!("cannot read secret file {}: ", missing.display())));
    }
}
