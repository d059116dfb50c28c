//! Text that goes into logs: a file name may hold any byte but NUL and `/`,
//! so names are escaped (and every log line is, as a second guard) before
//! they can split a line, forge one, or drive a terminal.
#![forbid(unsafe_code)]

use std::borrow::Cow;
use std::ffi::OsStr;
use std::fmt::{self, Write};
use std::os::unix::ffi::OsStrExt;

/// A name or path for a log line: control characters, line and paragraph
/// separators, bidirectional overrides and bytes that are not UTF-8 appear as
/// escapes (`\n`, `\x1b`, `\u{202e}`); a backslash appears doubled, so the
/// escaped text names exactly one original.
#[derive(Clone, Copy)]
pub struct Escaped<'a>(&'a [u8]);

/// `name` (a path or a file name) escaped for a log line.
pub fn escaped<S: AsRef<OsStr> + ?Sized>(name: &S) -> Escaped<'_> {
    Escaped(name.as_ref().as_bytes())
}

/// True for characters that must not reach a log line as themselves.
fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
        )
}

fn write_char_escaped(f: &mut impl Write, c: char) -> fmt::Result {
    match c {
        '\n' => f.write_str("\\n"),
        '\r' => f.write_str("\\r"),
        '\t' => f.write_str("\\t"),
        c if (c as u32) < 0x80 => write!(f, "\\x{:02x}", c as u32),
        c => write!(f, "\\u{{{:x}}}", c as u32),
    }
}

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for chunk in self.0.utf8_chunks() {
            for c in chunk.valid().chars() {
                if c == '\\' {
                    f.write_str("\\\\")?;
                } else if needs_escape(c) {
                    write_char_escaped(f, c)?;
                } else {
                    f.write_char(c)?;
                }
            }
            for b in chunk.invalid() {
                write!(f, "\\x{b:02x}")?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

/// A whole log message with its control characters escaped (backslashes are
/// left alone: names in it are already `Escaped`). Keeps every record on one
/// line whatever reached the message.
pub fn one_line(msg: &str) -> Cow<'_, str> {
    if !msg.chars().any(needs_escape) {
        return Cow::Borrowed(msg);
    }
    let mut out = String::with_capacity(msg.len() + 8);
    for c in msg.chars() {
        if needs_escape(c) {
            // Writing into a String cannot fail.
            let _ = write_char_escaped(&mut out, c);
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn names_are_escaped_unambiguously() {
        let cases: [(&[u8], &str); 7] = [
            (b"plain/name.txt", "plain/name.txt"),
            (b"a\nb", "a\\nb"),
            (b"a\\nb", "a\\\\nb"),
            (b"tab\there\r", "tab\\there\\r"),
            (b"\x1b[31mred", "\\x1b[31mred"),
            (b"caf\xc3\xa9 \xff", "caf\u{e9} \\xff"),
            (
                "rtl\u{202e}txt\u{2028}".as_bytes(),
                "rtl\\u{202e}txt\\u{2028}",
            ),
        ];
        for (raw, want) in cases {
            let p = Path::new(OsStr::from_bytes(raw));
            assert_eq!(escaped(p).to_string(), want, "{raw:?}");
            assert!(!escaped(p).to_string().contains('\n'));
        }
    }

    #[test]
    fn whole_lines_keep_to_one_line() {
        assert!(matches!(one_line("nothing odd \\n"), Cow::Borrowed(_)));
        assert_eq!(
            one_line("x: a\n[ERROR kmsfs] forged\u{85}"),
            "x: a\\n[ERROR kmsfs] forged\\u{85}"
        );
    }
}
