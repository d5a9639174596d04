//! Byte sizes such as `64KiB` or `16MB`.
//!
//! Units follow PostgreSQL's memory units (`kB`, `MB`, `GB`, `TB`), which are 1024-based, so a
//! size means the same here as in `postgresql.conf`. The IEC spellings (`KiB`, `MiB`, `GiB`,
//! `TiB`), `KB`, and `B` are accepted too, with the same 1024-based meaning. A plain integer is
//! a number of bytes.

const UNITS: &[(&str, u64)] = &[
    ("B", 1),
    ("kB", 1 << 10),
    ("KB", 1 << 10),
    ("KiB", 1 << 10),
    ("MB", 1 << 20),
    ("MiB", 1 << 20),
    ("GB", 1 << 30),
    ("GiB", 1 << 30),
    ("TB", 1 << 40),
    ("TiB", 1 << 40),
];

/// Parses `text` into bytes. Errors are one-line reasons that quote the value.
pub(crate) fn parse_size(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (digits, unit) = trimmed.split_at(split);
    let unit = unit.trim_start();
    if digits.is_empty() {
        return Err(format!(
            "invalid size {text:?}: expected a number of bytes with an optional unit, e.g. 64KiB"
        ));
    }
    let number: u64 = digits
        .parse()
        .map_err(|_| format!("invalid size {text:?}: number too large"))?;
    let factor = if unit.is_empty() {
        1
    } else {
        UNITS
            .iter()
            .find(|(name, _)| *name == unit)
            .map(|(_, factor)| *factor)
            .ok_or_else(|| {
                format!(
                    "invalid size {text:?}: unknown unit {unit:?} (use B, kB, MB, GB, TB or \
                     KiB, MiB, GiB, TiB; all 1024-based)"
                )
            })?
    };
    number
        .checked_mul(factor)
        .ok_or_else(|| format!("invalid size {text:?}: too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!(parse_size("65536"), Ok(65536));
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("64kB"), Ok(65536));
        assert_eq!(parse_size("64 KB"), Ok(65536));
        assert_eq!(parse_size("1MB"), Ok(1 << 20));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("1TB"), Ok(1 << 40));
        assert_eq!(parse_size("10B"), Ok(10));
    }

    #[test]
    fn rejects_bad_sizes() {
        assert_eq!(
            parse_size("12 zettabytes"),
            Err(
                "invalid size \"12 zettabytes\": unknown unit \"zettabytes\" (use B, kB, MB, \
                 GB, TB or KiB, MiB, GiB, TiB; all 1024-based)"
                    .to_string()
            )
        );
        assert!(parse_size("KiB").is_err());
        assert!(parse_size("-1").is_err());
        assert!(parse_size("1.5MB").is_err());
        assert_eq!(
            parse_size("99999999999TB"),
            Err("invalid size \"99999999999TB\": too large".to_string())
        );
    }
}
