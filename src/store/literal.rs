//! SQL literals for the hot statements, which go out as plain text.
//!
//! sqlx sends every bound query as a prepared statement, and the claim,
//! read-back and finish statements differ in their id lists every time: each
//! was a fresh `PREPARE` (a round trip, a parse, and a statement the server
//! keeps until the cache evicts it) before its `EXECUTE`. Measured with
//! `herald bench ceiling`, the same statements sent as text (`COM_QUERY`)
//! cost the database markedly less per row. Only values that cannot carry
//! SQL are written here: integers, and bytes and strings as hex literals.

use std::fmt::Write;

/// `1,2,3`
pub(crate) fn ids(sql: &mut String, ids: &[u64]) {
    for (i, id) in ids.iter().enumerate() {
        if i > 0 {
            sql.push(',');
        }
        let _ = write!(sql, "{id}");
    }
}

/// Raw bytes: `X'…'`, for binary columns.
pub(crate) fn bytes(sql: &mut String, b: &[u8]) {
    sql.push_str("X'");
    for byte in b {
        let _ = write!(sql, "{byte:02x}");
    }
    sql.push('\'');
}

/// A string as `_utf8mb4 X'…'`: a hex literal with a character set
/// introducer is a text value that takes the column's collation in a
/// comparison, and no quote or backslash inside it can end it early.
pub(crate) fn text(sql: &mut String, s: &str) {
    sql.push_str("_utf8mb4 ");
    bytes(sql, s.as_bytes());
}

/// `'a','b'` as [`text`] literals, comma-separated.
pub(crate) fn texts<'a>(sql: &mut String, items: impl IntoIterator<Item = &'a str>) {
    for (i, s) in items.into_iter().enumerate() {
        if i > 0 {
            sql.push_str(", ");
        }
        text(sql, s);
    }
}

/// `s` cut to at most `max` bytes on a character boundary, for a
/// `VARCHAR(max)` column (whose limit counts characters, so this always fits).
pub(crate) fn fit(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_carry_no_sql() {
        let mut s = String::new();
        ids(&mut s, &[1, 22, 333]);
        s.push(' ');
        bytes(&mut s, &[0, 0xab, 0xff]);
        s.push(' ');
        texts(&mut s, ["eu", "o'; DROP TABLE x; --"]);
        assert_eq!(
            s,
            "1,22,333 X'00abff' _utf8mb4 X'6575', _utf8mb4 X'6f273b2044524f50205441424c4520783b202d2d'"
        );
    }

    #[test]
    fn fit_cuts_on_a_character_boundary() {
        assert_eq!(fit("abc", 3), "abc");
        assert_eq!(fit("aé", 2), "a");
        assert_eq!(fit("aé", 3), "aé");
    }
}
