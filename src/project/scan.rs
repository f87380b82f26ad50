//! A linear pass over a KDL file before the `kdl` crate sees it.
//!
//! The crate recurses once per nested block or comment (deep nesting overflows the stack),
//! and reports a few common mistakes in its own terms, over many lines. This pass finds those
//! cases first and reports them in the user's words, pointing at the spot; only text it finds
//! nothing wrong with is handed to the crate.

use miette::SourceSpan;

use super::{Problem, SourceFile};

/// Deeper nesting of blocks or `/* */` comments is refused: declarations nest two or three
/// levels, and the parser's recursion must stay far from the stack's end.
pub(super) const MAX_NESTING: usize = 64;

/// Kept problems per file; the rest are counted (see [`Problem::omitted`]).
const MAX_PROBLEMS: usize = 100;

const KDL_2_HELP: &str =
    "viewkeeper files are KDL 2.0: booleans and null are written #true, #false and #null";

/// Problems the parser would report badly (or overflow on), in file order; empty when the
/// text can be handed to the parser.
pub(super) fn prescan(file: &SourceFile) -> Vec<Problem> {
    let mut scan = Scan {
        file,
        bytes: file.text.as_bytes(),
        at: 0,
        problems: Vec::new(),
        omitted: 0,
    };
    scan.run();
    if scan.omitted > 0 {
        scan.problems.push(Problem::omitted(scan.omitted));
    }
    scan.problems
}

struct Scan<'a> {
    file: &'a SourceFile,
    bytes: &'a [u8],
    at: usize,
    problems: Vec<Problem>,
    omitted: usize,
}

impl Scan<'_> {
    fn run(&mut self) {
        let mut depth = 0usize;
        while self.at < self.bytes.len() {
            let rest = &self.bytes[self.at..];
            match rest[0] {
                b'/' if rest.starts_with(b"//") => self.skip_line(),
                b'/' if rest.starts_with(b"/*") => {
                    if !self.skip_block_comment() {
                        return;
                    }
                }
                b'"' => {
                    if !self.skip_string(0) {
                        return;
                    }
                }
                b'#' => {
                    let hashes = rest.iter().take_while(|b| **b == b'#').count();
                    if rest.get(hashes) == Some(&b'"') {
                        self.at += hashes;
                        if !self.skip_string(hashes) {
                            return;
                        }
                    } else {
                        // `#true`, `#null`, `#inf`: a keyword, read as a word.
                        self.at += hashes;
                        self.skip_word();
                    }
                }
                b'{' => {
                    depth += 1;
                    if depth > MAX_NESTING {
                        self.report(
                            self.at,
                            1,
                            format!("blocks are nested more than {MAX_NESTING} deep"),
                            "too deep",
                            "declarations nest a few levels at most; is a `}` missing?",
                        );
                        return;
                    }
                    self.at += 1;
                }
                b'}' => {
                    // One report per line: a run of stray `}` is one mistake.
                    if depth == 0 && self.bytes.get(self.at.wrapping_sub(1)) != Some(&b'}') {
                        self.report(
                            self.at,
                            1,
                            "this `}` closes no block".to_owned(),
                            "unmatched",
                            "remove it, or add the `{` it should close",
                        );
                    }
                    depth = depth.saturating_sub(1);
                    self.at += 1;
                }
                byte if is_word_byte(byte) => self.check_word(),
                _ => self.at += 1,
            }
        }
    }

    fn skip_line(&mut self) {
        self.at = match self.bytes[self.at..].iter().position(|b| *b == b'\n') {
            Some(newline) => self.at + newline + 1,
            None => self.bytes.len(),
        };
    }

    /// Skips a (nested) `/* */` comment; false when it is never closed or nests too deep.
    fn skip_block_comment(&mut self) -> bool {
        let opened = self.at;
        let mut depth = 0usize;
        while self.at < self.bytes.len() {
            let rest = &self.bytes[self.at..];
            if rest.starts_with(b"/*") {
                depth += 1;
                if depth > MAX_NESTING {
                    self.report(
                        self.at,
                        2,
                        format!("comments are nested more than {MAX_NESTING} deep"),
                        "too deep",
                        "every `/*` opens a comment inside the one before; close each with `*/`",
                    );
                    return false;
                }
                self.at += 2;
            } else if rest.starts_with(b"*/") {
                depth -= 1;
                self.at += 2;
                if depth == 0 {
                    return true;
                }
            } else {
                self.at += 1;
            }
        }
        self.report(
            opened,
            2,
            "the comment opened here is never closed".to_owned(),
            "opened here",
            "close it with `*/`",
        );
        false
    }

    /// Skips a string whose opening quote is at `self.at`, after `hashes` `#` (a raw string).
    /// A one-line string cut by a newline is left for the parser to report; a multi-line
    /// string that is never closed is reported here, once, at its opening. False when the
    /// rest of the file is inside a string.
    fn skip_string(&mut self, hashes: usize) -> bool {
        let opened = self.at - hashes;
        // As in KDL 2.0, `"""` opens a multi-line string only when a newline follows it;
        // otherwise it is an empty string and a quote.
        let after = &self.bytes[self.at..];
        let multiline = after.starts_with(b"\"\"\"\n") || after.starts_with(b"\"\"\"\r\n");
        let quote: &[u8] = if multiline { b"\"\"\"" } else { b"\"" };
        self.at += quote.len();
        let raw = hashes > 0;
        while self.at < self.bytes.len() {
            let byte = self.bytes[self.at];
            if byte == b'\\' && !raw {
                self.at += 2;
            } else if byte == b'\n' && !multiline {
                self.at += 1;
                return true;
            } else if self.bytes[self.at..].starts_with(quote)
                && self.bytes[self.at + quote.len()..]
                    .iter()
                    .take(hashes)
                    .filter(|b| **b == b'#')
                    .count()
                    == hashes
            {
                self.at += quote.len() + hashes;
                return true;
            } else {
                self.at += 1;
            }
        }
        if multiline {
            let closing = format!("{}\"\"\"{}", "#".repeat(hashes), "#".repeat(hashes));
            self.report(
                opened,
                hashes + 3,
                "the string opened here is never closed".to_owned(),
                "opened here",
                &format!("close it with {closing} on a line of its own"),
            );
        } else {
            self.report(
                opened,
                hashes + 1,
                "the string opened here is never closed".to_owned(),
                "opened here",
                "close it with a `\"` on the same line",
            );
        }
        false
    }

    fn skip_word(&mut self) -> &str {
        let start = self.at;
        while self.at < self.bytes.len() && is_word_byte(self.bytes[self.at]) {
            self.at += 1;
        }
        self.file.text.get(start..self.at).unwrap_or("")
    }

    /// A bare word: `true`/`false`/`null` from KDL 1.0, or a value such as `15s` that starts
    /// like a number but is not one, both of which the parser reports in its own terms.
    fn check_word(&mut self) {
        let start = self.at;
        let word = self.skip_word().to_owned();
        if matches!(word.as_str(), "true" | "false" | "null") {
            self.report(
                start,
                word.len(),
                format!("`{word}` is written `#{word}` in KDL 2.0"),
                "write #{word}",
                KDL_2_HELP,
            );
            return;
        }
        let unsigned = word.trim_start_matches(['+', '-']);
        if !unsigned.starts_with(|c: char| c.is_ascii_digit()) || is_number(&word) {
            return;
        }
        let before = self.file.text[..start].trim_end();
        let key = before
            .strip_suffix('=')
            .map(|before| {
                let before = before.trim_end();
                let key_start = before
                    .rfind(|c: char| c.is_ascii() && !is_word_byte(c as u8))
                    .map_or(0, |at| at + 1);
                &before[key_start..]
            })
            .filter(|key| !key.is_empty());
        let (message, help) = match key {
            Some(key) => (
                format!("the value of `{key}` must be quoted: it is not a number"),
                format!("write {key}=\"{word}\""),
            ),
            None => (
                format!("`{word}` must be quoted: it is not a number"),
                format!("write \"{word}\""),
            ),
        };
        self.report(start, word.len(), message, "not a number", &help);
    }

    fn report(&mut self, offset: usize, len: usize, message: String, label: &str, help: &str) {
        if self.problems.len() >= MAX_PROBLEMS {
            self.omitted += 1;
            return;
        }
        let len = len.min(self.bytes.len().saturating_sub(offset));
        let label = label.replace(
            "{word}",
            self.file.text.get(offset..offset + len).unwrap_or(""),
        );
        self.problems.push(
            Problem::at(self.file, SourceSpan::from((offset, len)), message, label).with_help(help),
        );
    }
}

/// Bytes that continue a bare word (an identifier or a number); everything else separates.
fn is_word_byte(byte: u8) -> bool {
    !byte.is_ascii_whitespace()
        && !matches!(
            byte,
            b'\\' | b'/' | b'(' | b')' | b'{' | b'}' | b';' | b'[' | b']' | b'"' | b'#' | b'='
        )
}

/// KDL 2.0 numbers: decimal with optional fraction and exponent, or 0x / 0o / 0b.
fn is_number(word: &str) -> bool {
    let unsigned = word.strip_prefix(['+', '-']).unwrap_or(word);
    let digits = |text: &str, radix: u32| {
        text.starts_with(|c: char| c.is_digit(radix))
            && text.chars().all(|c| c == '_' || c.is_digit(radix))
    };
    if let Some(hex) = unsigned.strip_prefix("0x") {
        return digits(hex, 16);
    }
    if let Some(octal) = unsigned.strip_prefix("0o") {
        return digits(octal, 8);
    }
    if let Some(binary) = unsigned.strip_prefix("0b") {
        return digits(binary, 2);
    }
    let (mantissa, exponent) = match unsigned.find(['e', 'E']) {
        Some(at) => (&unsigned[..at], Some(&unsigned[at + 1..])),
        None => (unsigned, None),
    };
    let (integer, fraction) = match mantissa.split_once('.') {
        Some((integer, fraction)) => (integer, Some(fraction)),
        None => (mantissa, None),
    };
    digits(integer, 10)
        && fraction.is_none_or(|fraction| digits(fraction, 10))
        && exponent.is_none_or(|exponent| {
            digits(exponent.strip_prefix(['+', '-']).unwrap_or(exponent), 10)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn messages(text: &str) -> Vec<String> {
        let file = SourceFile::new("t.kdl".into(), text.to_owned());
        prescan(&file)
            .iter()
            .map(|problem| {
                format!(
                    "{} {}",
                    problem.location().unwrap_or_default(),
                    problem.message
                )
            })
            .collect()
    }

    #[test]
    fn valid_text_passes() {
        let text = "view \"a\" {\n  query #\"\"\"\n    SELECT '{' /* \"\n  \"\"\"# // }\n  x 1.5e3 0xff -2 #true\n  /* a /* b */ c */\n}\n";
        assert_eq!(messages(text), Vec::<String>::new());
    }

    #[test]
    fn finds_what_the_parser_reports_badly() {
        assert_eq!(
            messages("refresh every=15s\n"),
            ["t.kdl:1:15 the value of `every` must be quoted: it is not a number"]
        );
        assert_eq!(
            messages("a {\n  populate true\n}\n"),
            ["t.kdl:2:12 `true` is written `#true` in KDL 2.0"]
        );
        assert_eq!(
            messages("a \"\"\"\nb\n}\n"),
            ["t.kdl:1:3 the string opened here is never closed"]
        );
        assert_eq!(
            messages("}}}\n} }"),
            [
                "t.kdl:1:1 this `}` closes no block",
                "t.kdl:2:1 this `}` closes no block",
                "t.kdl:2:3 this `}` closes no block"
            ]
        );
        assert_eq!(
            messages(&"a {\n".repeat(2000)),
            ["t.kdl:65:3 blocks are nested more than 64 deep"]
        );
        assert_eq!(
            messages(&"/*\n".repeat(4000)),
            ["t.kdl:65:1 comments are nested more than 64 deep"]
        );
        // On a line too long to quote, the message itself says where.
        assert_eq!(
            messages(&"/*".repeat(4000)),
            ["t.kdl:1:129 t.kdl:1:129: comments are nested more than 64 deep"]
        );
    }

    #[test]
    fn triple_quotes_without_a_newline_open_no_multiline_string() {
        // Found by fuzzing: read as one long string, these braces overflowed the parser.
        let text = format!("\"\"\"\"\"\"\"\" {}", "a {".repeat(100));
        assert_eq!(
            messages(&text),
            ["t.kdl:1:204 blocks are nested more than 64 deep"]
        );
    }

    #[test]
    fn numbers() {
        for number in [
            "1",
            "-1",
            "+1_000",
            "1.5",
            "1e10",
            "1.5E-3",
            "0xdead_beef",
            "0o17",
            "0b101",
        ] {
            assert!(is_number(number), "{number}");
        }
        for word in ["15s", "1h30m", "1.", "0x", "1e", "2026-01-01"] {
            assert!(!is_number(word), "{word}");
        }
    }
}
