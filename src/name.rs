//! The one rule for names Herald stores, logs and uses in Redis keys and
//! SQL literals: regions, channels, channel routes and benchmark workload
//! names. Letters, digits, `_`, `-` and `.` only, so a name is safe in a
//! key, a metrics label and a literal without quoting.

/// The characters a name may use, for error messages.
pub const ALLOWED: &str = "letters, digits, '_', '-' or '.'";

/// True if `c` may appear in a name.
pub fn allowed_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')
}

/// The first character of `name` that a name may not contain.
pub fn first_bad_char(name: &str) -> Option<char> {
    name.chars().find(|&c| !allowed_char(c))
}

/// True for a non-empty name made only of allowed characters.
pub fn is_valid(name: &str) -> bool {
    !name.is_empty() && first_bad_char(name).is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rule() {
        assert!(is_valid("eu-west_1.a"));
        assert!(!is_valid(""));
        assert_eq!(first_bad_char("eu west"), Some(' '));
        assert_eq!(first_bad_char("a:b"), Some(':'));
    }
}
