//! The one rule for identifiers that come from outside (alarm ids, camera ids, box names): they
//! become MQTT topic levels, file names and link paths, so what one hostile id could break, none
//! may contain.
//!
//! An id is 1 to [`MAX_ID_BYTES`] bytes of printable characters: no control character (a broker
//! refuses a topic with one and closes the connection), no Unicode non-character, and none of the
//! MQTT topic separators and wildcards `/ + #`; and not `.` or `..`, which a browser or a file
//! path resolves as a step rather than a name.

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

/// What stays as it is when an id becomes a path segment: RFC 3986's unreserved characters. An
/// id may hold a space, `?`, `%` or `&`, which would otherwise end or change the path.
const PATH_SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');

/// `id` as one percent-encoded path segment of a link.
pub fn path_segment(id: &str) -> String {
    utf8_percent_encode(id, PATH_SEGMENT).to_string()
}

/// The longest id, in bytes (UTF-8). Far below MQTT's 65,535-byte topic limit, with room for the
/// prefix and the record suffix.
pub const MAX_ID_BYTES: usize = 128;

/// What is wrong with an id; the message says what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("expected a non-empty id")]
    Empty,
    #[error("expected an id of at most {MAX_ID_BYTES} bytes, got {0} bytes")]
    TooLong(usize),
    #[error("expected an id without '/', '+' or '#' (MQTT topic separators), got {0:?}")]
    TopicCharacter(String),
    #[error("expected a name, not the path step {0:?}")]
    PathStep(String),
    #[error("expected printable characters, got {what} U+{code:04X} at byte {at}")]
    Unprintable { what: &'static str, code: u32, at: usize },
}

/// Checks `id` against the rule.
pub fn check_id(id: &str) -> Result<(), IdError> {
    if id.trim().is_empty() {
        return Err(IdError::Empty);
    }
    if id.len() > MAX_ID_BYTES {
        return Err(IdError::TooLong(id.len()));
    }
    if let Some((at, c)) = id.char_indices().find(|(_, c)| unprintable(*c).is_some()) {
        return Err(IdError::Unprintable {
            what: unprintable(c).unwrap_or("a character"),
            code: c as u32,
            at,
        });
    }
    if id.contains(['/', '+', '#']) {
        return Err(IdError::TopicCharacter(id.to_owned()));
    }
    if id == "." || id == ".." {
        return Err(IdError::PathStep(id.to_owned()));
    }
    Ok(())
}

/// Why `c` is not printable, if it is not.
fn unprintable(c: char) -> Option<&'static str> {
    let code = c as u32;
    if c.is_control() {
        Some("the control character")
    } else if (0xFDD0..=0xFDEF).contains(&code) || code & 0xFFFE == 0xFFFE {
        Some("the non-character")
    } else if matches!(code, 0x2028 | 0x2029) {
        Some("the line separator")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_ids_pass() {
        for id in [
            "a1",
            "gate-2026-11-21T09:59:58Z",
            "Tor Süd 3",
            "dc09-4711-0001",
            "x".repeat(128).as_str(),
        ] {
            assert_eq!(check_id(id), Ok(()), "{id:?}");
        }
    }

    #[test]
    fn hostile_ids_are_refused_with_what_was_expected() {
        assert_eq!(check_id(""), Err(IdError::Empty));
        assert_eq!(check_id(".."), Err(IdError::PathStep("..".into())));
        assert_eq!(check_id("."), Err(IdError::PathStep(".".into())));
        assert_eq!(check_id("..."), Ok(()));
        assert_eq!(check_id("   "), Err(IdError::Empty));
        assert_eq!(check_id(&"x".repeat(129)), Err(IdError::TooLong(129)));
        assert_eq!(check_id(&"x".repeat(70_000)), Err(IdError::TooLong(70_000)));
        assert!(matches!(check_id("a/b"), Err(IdError::TopicCharacter(_))));
        assert!(matches!(check_id("a+"), Err(IdError::TopicCharacter(_))));
        assert!(matches!(check_id("#"), Err(IdError::TopicCharacter(_))));
        for (id, code) in [
            ("a\u{1}b", 1),
            ("a\nb", 10),
            ("\u{7f}", 0x7f),
            ("a\u{85}", 0x85),
            ("a\0", 0),
        ] {
            match check_id(id) {
                Err(IdError::Unprintable { code: c, .. }) => assert_eq!(c, code, "{id:?}"),
                other => panic!("{id:?}: {other:?}"),
            }
        }
        for id in ["a\u{FFFE}", "\u{FDD0}", "a\u{1FFFF}", "a\u{2028}b"] {
            assert!(matches!(check_id(id), Err(IdError::Unprintable { .. })), "{id:?}");
        }
        let message = check_id("a\u{1}b").unwrap_err().to_string();
        assert!(message.contains("U+0001") && message.contains("byte 1"), "{message}");
    }
}
