//! Input checks shared by every service. Each returns an `INVALID_ARGUMENT`
//! whose message names the field (a dotted path such as `item.code`).

use crate::domain::error::{Error, Result};

/// A canonical UUID (any version), as text.
pub fn uuid(field: &str, value: &str) -> Result<()> {
    if is_uuid(value) {
        return Ok(());
    }
    Err(Error::invalid(
        field,
        format!("must be a UUID such as 2f1c7a4e-0000-4000-8000-000000000000, got {value:?}"),
    ))
}

/// Whether `value` is a canonical UUID: hyphenated, in either case. Checked
/// without allocating (it runs for every id of every record a site sends).
pub fn is_uuid(value: &str) -> bool {
    let Ok(parsed) = uuid::Uuid::parse_str(value) else {
        return false;
    };
    let mut canonical = [0u8; uuid::fmt::Hyphenated::LENGTH];
    parsed
        .hyphenated()
        .encode_lower(&mut canonical)
        .eq_ignore_ascii_case(value)
}

/// A new record id: a time-ordered UUID (version 7) as text.
///
/// Ids made one after another sort one after another, so new rows land at
/// the end of every primary-key index (PostgreSQL on the master, SQLite on
/// satellites) instead of on a random page each: with random (version 4) ids
/// a satellite's commit of 10,000 new records rewrote pages all over its key
/// indexes, and applying 100,000 changes ran at half the rate
/// (`storesync-bench downstream`). The time they carry is no more than the
/// records' own timestamps already say.
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// Text of 1 to `max` characters, not blank.
pub fn text(field: &str, value: &str, max: usize) -> Result<()> {
    if value.trim().is_empty() {
        return Err(Error::invalid(field, "must not be empty"));
    }
    optional_text(field, value, max)
}

/// Text of at most `max` characters, without control characters.
pub fn optional_text(field: &str, value: &str, max: usize) -> Result<()> {
    let len = value.chars().count();
    if len > max {
        return Err(Error::invalid(
            field,
            format!("is {len} characters long; at most {max} are allowed"),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(Error::invalid(field, "must not contain control characters"));
    }
    Ok(())
}

/// A code: 1 to 64 characters of letters, digits, `-`, `_`, `.` or `/`.
pub fn code(field: &str, value: &str) -> Result<()> {
    text(field, value, 64)?;
    if !value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
    {
        return Err(Error::invalid(
            field,
            format!("{value:?} may hold only letters, digits and - _ . /"),
        ));
    }
    Ok(())
}

/// An ISO calendar date between 1900-01-01 and 2199-12-31, or empty when `optional`.
pub fn date(field: &str, value: &str, optional: bool) -> Result<()> {
    if value.is_empty() && optional {
        return Ok(());
    }
    let parsed = chrono::NaiveDate::parse_from_str(value, "%Y-%m-%d").map_err(|_| {
        Error::invalid(
            field,
            format!("must be a date as YYYY-MM-DD, got {value:?}"),
        )
    })?;
    let year = chrono::Datelike::year(&parsed);
    // Written as it would be formatted back (`YYYY-MM-DD`, zero-padded; the
    // parse accepts `2027-6-3`), checked without formatting.
    let bytes = value.as_bytes();
    let canonical = bytes.len() == 10
        && bytes.iter().enumerate().all(|(index, byte)| match index {
            4 | 7 => *byte == b'-',
            _ => byte.is_ascii_digit(),
        });
    if !(1900..=2199).contains(&year) || !canonical {
        return Err(Error::invalid(
            field,
            format!("{value:?} is out of range (1900-01-01 to 2199-12-31)"),
        ));
    }
    Ok(())
}

/// Largest number of packs or price accepted anywhere; larger ones are typos.
pub const MAX_QUANTITY: f64 = 1e9;

/// A finite number in `min..=MAX_QUANTITY`.
pub fn quantity(field: &str, value: f64, min: f64) -> Result<()> {
    if !value.is_finite() || value < min || value > MAX_QUANTITY {
        return Err(Error::invalid(
            field,
            format!("{value} is out of range ({min} to {MAX_QUANTITY})"),
        ));
    }
    Ok(())
}

/// A pack size: 1 to 1,000,000 units.
pub fn pack_size(field: &str, value: i32) -> Result<()> {
    if !(1..=1_000_000).contains(&value) {
        return Err(Error::invalid(
            field,
            format!("{value} is out of range (1 to 1000000)"),
        ));
    }
    Ok(())
}

/// Page size: 0 means `default`; above `max` is an error.
pub fn page_size(field: &str, value: u32, default: u32, max: u32) -> Result<u64> {
    match value {
        0 => Ok(u64::from(default)),
        v if v > max => Err(Error::invalid(
            field,
            format!("{v} is too large; at most {max}"),
        )),
        v => Ok(u64::from(v)),
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_must_be_real_and_in_range() {
        assert!(date("d", "2027-02-28", false).is_ok());
        assert!(date("d", "", true).is_ok());
        assert!(date("d", "", false).is_err());
        assert!(date("d", "2027-02-30", false).is_err());
        assert!(date("d", "9999-01-01", false).is_err());
        assert!(date("d", "2027-2-3", false).is_err());
        assert!(date("d", "2027-02-3", false).is_err());
        assert!(date("d", " 2027-02-28", false).is_err());
        assert!(date("d", "2027/02/28", false).is_err());
        assert!(date("d", "1899-12-31", false).is_err());
        assert!(date("d", "2199-12-31", false).is_ok());
    }

    #[test]
    fn uuids_must_be_canonical_and_errors_name_the_field() {
        assert!(uuid("x", "2f1c7a4e-0000-4000-8000-000000000000").is_ok());
        assert!(uuid("x", "2F1C7A4E-0000-4000-8000-00000000000A").is_ok());
        // Other forms the parser accepts are not canonical.
        assert!(uuid("x", "2f1c7a4e000040008000000000000000").is_err());
        assert!(uuid("x", "{2f1c7a4e-0000-4000-8000-000000000000}").is_err());
        assert!(uuid("x", "urn:uuid:2f1c7a4e-0000-4000-8000-000000000000").is_err());
        assert!(uuid("x", "").is_err());
        let err = uuid("item.id", "nope").expect_err("rejects");
        assert!(err.to_string().starts_with("item.id:"), "{err}");
    }

    #[test]
    fn quantities_reject_nan_negative_and_absurd() {
        assert!(quantity("q", 1.0, 0.0).is_ok());
        assert!(quantity("q", f64::NAN, 0.0).is_err());
        assert!(quantity("q", -1.0, 0.0).is_err());
        assert!(quantity("q", 1e12, 0.0).is_err());
    }
}
