//! Text from a peer (its name, the reasons it gives, the names in its status), made safe to
//! print on a terminal or in a log.
//!
//! A peer could put control characters in those strings: an escape sequence that clears the
//! screen, retitles the terminal or hides a line, or Unicode direction overrides that make a
//! name read as another. [`escape`] writes each such character as `\u{..}` and leaves every
//! other character, Unicode names included, as it is. The transport applies it once to every
//! free-text field of every message it receives ([`crate::protocol::Message::escape_text`]),
//! so nothing behind it (logs, `rainmaker remote status`, `rainmaker status`, the tray) ever
//! holds a raw one. Escaping twice changes nothing: the escaped form has no control character.
//! Paths are never escaped: [`crate::path`] refuses a control character in them instead.

use std::borrow::Cow;

/// Whether `c` changes how the text around it is shown: a C0 or C1 control, DEL, or a
/// Unicode direction mark, embedding, override or isolate.
fn hides(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{61c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
        )
}

/// `text` with every control character written as `\u{..}`.
pub fn escape(text: &str) -> Cow<'_, str> {
    if !text.chars().any(hides) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if hides(c) {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Escapes `text` where it is.
pub fn escape_in_place(text: &mut String) {
    if let Cow::Owned(escaped) = escape(text) {
        *text = escaped;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn control_characters_are_shown_not_obeyed() {
        assert_eq!(
            escape("cloud\u{1b}]0;pwned\u{7}\u{1b}[2J"),
            "cloud\\u{1b}]0;pwned\\u{7}\\u{1b}[2J"
        );
        assert_eq!(
            escape("a\r\nb\u{9b}c\u{7f}"),
            "a\\u{d}\\u{a}b\\u{9b}c\\u{7f}"
        );
        assert_eq!(escape("admin\u{202e}txt.exe"), "admin\\u{202e}txt.exe");
    }

    #[test]
    fn plain_names_are_left_as_they_are() {
        for name in ["backup-1", "Büro PC", "東京 VPS", "a\\u{1b}", ""] {
            assert!(
                matches!(escape(name), Cow::Borrowed(n) if n == name),
                "{name}"
            );
        }
    }

    proptest! {
        #[test]
        fn escaped_text_holds_no_control_character_and_escapes_to_itself(text in any::<String>()) {
            let once = escape(&text).into_owned();
            prop_assert!(!once.chars().any(hides), "{once:?}");
            prop_assert_eq!(escape(&once), once.as_str());
        }
    }
}
