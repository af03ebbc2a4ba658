//! Small helpers for PostgreSQL connection URLs.

/// Percent-encodes `segment` for use as a URL path segment (everything but
/// ASCII letters, digits and `-._~`).
pub(crate) fn encode_path_segment(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// `url` with its database (the path) replaced by `database`, keeping the
/// query string. A key/value connection string (no `://`) gets a `dbname`
/// appended, which overrides an earlier one.
pub(crate) fn with_database(url: &str, database: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        let quoted = database.replace('\\', "\\\\").replace('\'', "\\'");
        return format!("{url} dbname='{quoted}'");
    };
    let after_scheme = scheme_end + 3;
    let rest = &url[after_scheme..];
    let authority_end = rest.find(['/', '?', '#']).map_or(url.len(), |i| after_scheme + i);
    let suffix_start = url[authority_end..].find(['?', '#']).map_or(url.len(), |i| authority_end + i);
    format!("{}/{}{}", &url[..authority_end], encode_path_segment(database), &url[suffix_start..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_segments() {
        assert_eq!(encode_path_segment("app_test-1"), "app_test-1");
        assert_eq!(encode_path_segment("a b/c"), "a%20b%2Fc");
        assert_eq!(encode_path_segment("é"), "%C3%A9");
    }

    #[test]
    fn replaces_database() {
        assert_eq!(with_database("postgres://u:p@h:5432/db", "other"), "postgres://u:p@h:5432/other");
        assert_eq!(
            with_database("postgres://u@h/db?sslmode=disable", "x y"),
            "postgres://u@h/x%20y?sslmode=disable"
        );
        assert_eq!(with_database("postgres://h", "x"), "postgres://h/x");
        assert_eq!(with_database("postgresql://h?sslmode=require", "x"), "postgresql://h/x?sslmode=require");
        assert_eq!(with_database("host=h user=u", "it's"), r"host=h user=u dbname='it\'s'");
    }
}
