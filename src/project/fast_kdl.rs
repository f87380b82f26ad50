//! A fast reader for the plain subset of KDL 2.0 that declaration files are written in:
//! nodes with bare names, quoted single-line strings, `#true`, `#false` and `#null` as
//! arguments and properties, children blocks, `;` and `//` comments.
//!
//! The `kdl` crate's parser spends about 0.1 ms per declaration, which is most of a no-op
//! `viewkeeper plan` on a large project. This one reads the subset in one pass and builds
//! the same [`KdlDocument`] (same values, same spans). Anything outside the subset (numbers,
//! raw or multi-line strings, type annotations, block comments, slashdash, unusual
//! whitespace, any syntax error) makes it give up and return `None`: the caller then uses
//! the `kdl` crate, which parses everything and reports errors in full.

use kdl::{KdlDocument, KdlEntry, KdlIdentifier, KdlNode, KdlValue};

/// The document, or `None` when `text` is not in the subset.
pub(super) fn parse(text: &str) -> Option<KdlDocument> {
    let mut document = KdlDocument::new();
    let span = each_node(text, |node| document.nodes_mut().push(node))?;
    document.set_span(span);
    Some(document)
}

/// Hands each top-level node to `visit` as soon as it is read, so a large file is never held
/// as one tree; the document's span, or `None` when `text` is not in the subset (then
/// `visit` may have seen some of the nodes, which the caller discards).
pub(super) fn each_node(text: &str, mut visit: impl FnMut(KdlNode)) -> Option<(usize, usize)> {
    if !text.chars().all(plain_char) {
        return None;
    }
    let mut reader = Reader {
        text: text.as_bytes(),
        source: text,
        at: 0,
    };
    let span = reader.nodes_into(false, &mut visit)?;
    (reader.at == reader.text.len()).then_some(span)
}

/// Characters the subset allows anywhere: no control characters but tab, LF and CR (CR only
/// before LF, checked where read), and none of the code points KDL treats specially
/// (other newlines and spaces, direction marks, the byte-order mark).
fn plain_char(c: char) -> bool {
    match c {
        '\t' | '\n' | '\r' => true,
        c if c.is_control() => false,
        c if c.is_ascii() => true,
        '\u{A0}' | '\u{1680}' | '\u{2000}'..='\u{200F}' | '\u{2028}'..='\u{202F}' => false,
        '\u{205F}' | '\u{2066}'..='\u{2069}' | '\u{3000}' | '\u{FEFF}' => false,
        _ => true,
    }
}

struct Reader<'t> {
    text: &'t [u8],
    source: &'t str,
    at: usize,
}

impl Reader<'_> {
    fn peek(&self) -> Option<u8> {
        self.text.get(self.at).copied()
    }

    fn peek_at(&self, offset: usize) -> Option<u8> {
        self.text.get(self.at + offset).copied()
    }

    /// Skips spaces and tabs; true when any were skipped.
    fn spaces(&mut self) -> bool {
        let start = self.at;
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.at += 1;
        }
        self.at > start
    }

    /// Skips a `//` comment up to (not including) its newline.
    fn line_comment(&mut self) -> Option<()> {
        if self.peek() == Some(b'/') && self.peek_at(1) == Some(b'/') {
            while !matches!(self.peek(), None | Some(b'\n' | b'\r')) {
                self.at += 1;
            }
            Some(())
        } else {
            None
        }
    }

    /// Skips one newline (LF or CRLF); `None` when there is none, or a lone CR.
    fn newline(&mut self) -> Option<()> {
        match self.peek() {
            Some(b'\n') => {
                self.at += 1;
                Some(())
            }
            Some(b'\r') if self.peek_at(1) == Some(b'\n') => {
                self.at += 2;
                Some(())
            }
            _ => None,
        }
    }

    /// Nodes up to the end of the text, or (`in_block`) up to a `}` left unread. `None`
    /// outside the subset, and for a document or block without nodes (whose span this
    /// reader does not reproduce).
    fn nodes(&mut self, in_block: bool) -> Option<KdlDocument> {
        let mut document = KdlDocument::new();
        let span = self.nodes_into(in_block, &mut |node| document.nodes_mut().push(node))?;
        document.set_span(span);
        Some(document)
    }

    /// [`Self::nodes`], handing each node to `sink`; the span they take.
    fn nodes_into(
        &mut self,
        in_block: bool,
        sink: &mut dyn FnMut(KdlNode),
    ) -> Option<(usize, usize)> {
        let mut span: Option<(usize, usize)> = None;
        // A `;` ends the node just read; anywhere else the crate rejects it.
        let mut after_node = false;
        loop {
            // Blank lines, comments and a node's `;` between nodes.
            self.spaces();
            match self.peek() {
                None if !in_block => break,
                None => return None,
                Some(b'}') if in_block => break,
                Some(b'}') => return None,
                Some(b'\n' | b'\r') => {
                    self.newline()?;
                    after_node = false;
                }
                Some(b';') if after_node => {
                    self.at += 1;
                    after_node = false;
                }
                Some(b';') => return None,
                Some(b'/') => {
                    self.line_comment()?;
                    after_node = false;
                }
                Some(_) => {
                    after_node = true;
                    let node = self.node()?;
                    let (start, end) = (
                        node.span().offset(),
                        node.span().offset() + node.span().len(),
                    );
                    span = Some((span.map_or(start, |(first, _)| first), end));
                    sink(node);
                    // What ends a node: a newline, `;`, a comment, the end, or the block's `}`.
                    match self.peek() {
                        None | Some(b'\n' | b'\r' | b';' | b'/') => {}
                        Some(b'}') if in_block => {}
                        Some(_) => return None,
                    }
                }
            }
        }
        let (start, end) = span?;
        Some((start, end - start))
    }

    /// One node, its span running to the end of its last entry or block and the spaces after
    /// it.
    fn node(&mut self) -> Option<KdlNode> {
        let start = self.at;
        let mut node = KdlNode::new(self.bare_identifier()?);
        loop {
            let spaced = self.spaces();
            match self.peek() {
                None | Some(b'\n' | b'\r' | b';' | b'}') => break,
                Some(b'/') if self.peek_at(1) == Some(b'/') => break,
                Some(b'{') if spaced => {
                    self.at += 1;
                    let children = self.nodes(true)?;
                    // The closing brace.
                    self.at += 1;
                    node.set_children(children);
                    self.spaces();
                    break;
                }
                Some(_) if spaced => node.push(self.entry()?),
                Some(_) => return None,
            }
        }
        node.set_span((start, self.at - start));
        Some(node)
    }

    /// An argument (a value) or a property (`key=value`).
    fn entry(&mut self) -> Option<KdlEntry> {
        let start = self.at;
        let mut entry = if matches!(self.peek(), Some(b'"' | b'#' | b'0'..=b'9' | b'-')) {
            KdlEntry::new(self.value()?)
        } else {
            let key = self.bare_identifier()?;
            if self.peek() != Some(b'=') {
                return None;
            }
            self.at += 1;
            KdlEntry::new_prop(key, self.value()?)
        };
        // A value ends at a space, a newline, `;`, `}` or the end.
        if !matches!(
            self.peek(),
            None | Some(b' ' | b'\t' | b'\n' | b'\r' | b';' | b'}')
        ) {
            return None;
        }
        entry.set_span((start, self.at - start));
        Some(entry)
    }

    fn value(&mut self) -> Option<KdlValue> {
        match self.peek()? {
            b'"' => self.quoted_string().map(KdlValue::String),
            b'#' => {
                for (keyword, value) in [
                    ("#true", KdlValue::Bool(true)),
                    ("#false", KdlValue::Bool(false)),
                    ("#null", KdlValue::Null),
                ] {
                    if self.text[self.at..].starts_with(keyword.as_bytes()) {
                        self.at += keyword.len();
                        return Some(value);
                    }
                }
                None
            }
            b'0'..=b'9' | b'-' => self.integer(),
            _ => None,
        }
    }

    /// A plain decimal integer (`70`, `-3`); any other number gives up.
    fn integer(&mut self) -> Option<KdlValue> {
        let start = self.at;
        if self.peek() == Some(b'-') {
            self.at += 1;
        }
        let digits = self.at;
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.at += 1;
        }
        if self.at == digits {
            return None;
        }
        self.source[start..self.at]
            .parse()
            .ok()
            .map(KdlValue::Integer)
    }

    /// A quoted string: single-line with the common escapes, or multi-line.
    fn quoted_string(&mut self) -> Option<String> {
        if self.text[self.at..].starts_with(b"\"\"\"") {
            return self.multi_line_string();
        }
        self.at += 1;
        let mut value = String::new();
        let mut run = self.at;
        loop {
            match self.peek()? {
                b'"' => {
                    value.push_str(&self.source[run..self.at]);
                    self.at += 1;
                    return Some(value);
                }
                b'\\' => {
                    value.push_str(&self.source[run..self.at]);
                    let escaped = match self.peek_at(1)? {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'n' => '\n',
                        b't' => '\t',
                        b'r' => '\r',
                        b'b' => '\u{8}',
                        b'f' => '\u{C}',
                        b's' => ' ',
                        _ => return None,
                    };
                    value.push(escaped);
                    self.at += 2;
                    run = self.at;
                }
                b'\n' | b'\r' => return None,
                _ => self.at += 1,
            }
        }
    }

    /// A multi-line string (`"""`, a newline, lines, then a line of only spaces and the
    /// closing `"""`), without escapes or CR: each line loses the closing line's
    /// indentation, which it must start with unless it is blank (then it reads as empty).
    fn multi_line_string(&mut self) -> Option<String> {
        self.at += 3;
        if self.peek() != Some(b'\n') {
            return None;
        }
        let body_start = self.at + 1;
        let close = body_start + self.source[body_start..].find("\"\"\"")?;
        let body = &self.source[body_start..close];
        if body.contains(['\\', '\r']) {
            return None;
        }
        // The closing line: its indentation, after the body's last newline.
        let (lines, indent) = match body.rfind('\n') {
            Some(last) => (&body[..last], &body[last + 1..]),
            None => ("", body),
        };
        if !indent.bytes().all(|b| b == b' ' || b == b'\t') {
            return None;
        }
        let mut value = String::new();
        if body.contains('\n') {
            for (index, line) in lines.split('\n').enumerate() {
                if index > 0 {
                    value.push('\n');
                }
                if line.bytes().all(|b| b == b' ' || b == b'\t') {
                    continue;
                }
                value.push_str(line.strip_prefix(indent)?);
            }
        }
        self.at = close + 3;
        Some(value)
    }

    /// A bare identifier of ASCII letters, digits, `-`, `_`, `.` and `:`, starting with a
    /// letter or `_`, that is not a keyword KDL 2.0 forbids bare.
    fn bare_identifier(&mut self) -> Option<KdlIdentifier> {
        let start = self.at;
        if !matches!(self.peek(), Some(b'a'..=b'z' | b'A'..=b'Z' | b'_')) {
            return None;
        }
        while matches!(
            self.peek(),
            Some(b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b':')
        ) {
            self.at += 1;
        }
        let name = &self.source[start..self.at];
        if matches!(name, "true" | "false" | "null" | "inf" | "nan") {
            return None;
        }
        let mut identifier = KdlIdentifier::from(name);
        identifier.set_span((start, self.at - start));
        Some(identifier)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fails unless `fast` holds the same nodes, values and spans as `full`.
    fn assert_same(fast: &KdlDocument, full: &KdlDocument, text: &str) {
        assert_eq!(fast.span(), full.span(), "document span in {text:?}");
        assert_eq!(fast.nodes().len(), full.nodes().len(), "{text:?}");
        for (a, b) in fast.nodes().iter().zip(full.nodes()) {
            assert_eq!(a.name().value(), b.name().value(), "{text:?}");
            assert_eq!(a.name().span(), b.name().span(), "name span in {text:?}");
            assert_eq!(a.span(), b.span(), "span of {} in {text:?}", b.name());
            assert_eq!(a.entries().len(), b.entries().len(), "{text:?}");
            for (x, y) in a.entries().iter().zip(b.entries()) {
                assert_eq!(x.value(), y.value(), "{text:?}");
                assert_eq!(x.span(), y.span(), "entry span in {text:?}");
                assert_eq!(
                    x.name().map(|k| (k.value(), k.span())),
                    y.name().map(|k| (k.value(), k.span())),
                    "{text:?}"
                );
            }
            match (a.children(), b.children()) {
                (Some(x), Some(y)) => assert_same(x, y, text),
                (None, None) => {}
                _ => panic!("children differ in {text:?}"),
            }
        }
    }

    /// Either the fast reader gives up, or it reads what the `kdl` crate reads; it never
    /// accepts what the crate rejects.
    fn check(text: &str) -> bool {
        let full = KdlDocument::parse_v2(text);
        match (parse(text), full) {
            (Some(fast), Ok(full)) => {
                assert_same(&fast, &full, text);
                true
            }
            (Some(_), Err(error)) => panic!("accepted what kdl rejects: {text:?}: {error:?}"),
            (None, _) => false,
        }
    }

    #[test]
    fn reads_the_plain_subset_as_the_kdl_crate_does() {
        for text in [
            "view \"public.v\" {\n    query \"SELECT 1\"\n}\n",
            "// comment\nview \"public.v\" {\n    depends-on \"public.items\" \"x\"  // trailing\n    query \"SELECT 1\"\n    index \"a\" unique=#true name=\"b\\\"q\"\n\n    grant \"SELECT\" to=\"r\";  x\n}\nmaterialized-view \"m\" { query \"q\" }\n  \n",
            "a\r\nb \"x\\n\\t\\\\\" \r\n",
            "a;b;c",
            "a #false #null x=#true\n",
            "node \"é ü 漢字\" k=\"\"\n",
            "  lead\n\n\ntrail   ",
            "a {\n  b {\n    c \"d\"\n  }  \n}   // end\n",
            "lock-timeout \"300ms\"\nsearch-path \"app\" \"public\"\n",
            "q \"\"\"\n    SELECT 1\n      FROM t\n\n   \n    WHERE x\n    \"\"\"\n",
            "q \"\"\"\n  a\n  \"\"\" k=#true\n",
            "q \"\"\"\n\"\"\"\n",
            "q \"\"\"\n  \"\"\"\n",
            "q \"\"\"\n\ta\n\t\"\"\"\n",
            "with fillfactor=70 n=-3 7\n",
        ] {
            assert!(check(text), "gave up on {text:?}");
        }
    }

    #[test]
    fn gives_up_on_anything_else() {
        for text in [
            "",
            "// only a comment\n",
            "a 1.5\n",
            "a 1_000\n",
            "a 0x10\n",
            "a 1e3\n",
            "a -\n",
            "a +1\n",
            "a r#\"raw\"#\n",
            "a #\"raw\"#\n",
            "a \"\"\"multi\"\"\"\n",
            "a \"\"\"\n  a\n b\n  \"\"\"\n",
            "a \"\"\"\n  a\\n\n  \"\"\"\n",
            "a \"\"\"\n  a\n  x\"\"\"\n",
            "(t)a \"x\"\n",
            "a (t)\"x\"\n",
            "/* block */ a\n",
            "/-a\nb\n",
            "a \"x\"\"y\"\n",
            "a \"unterminated\n",
            "a {\n",
            "a }\n",
            "a {}\n",
            "a{ b }\n",
            "a \"\\u{41}\"\n",
            "a bare\n",
            "true\n",
            "a\u{A0}\"x\"\n",
            "\u{FEFF}a\n",
            "a\rb\n",
            "a \\\n  \"x\"\n",
            "a k = \"x\"\n",
            "a \"x\" {b}c\n",
        ] {
            assert!(!check(text), "read {text:?}");
        }
    }

    /// Declarations mutated at random (seeded): wherever the fast reader reads a mutant, the
    /// crate reads the same; it never accepts one the crate rejects.
    #[test]
    fn agrees_with_the_kdl_crate_on_mutated_declarations() {
        let seeds = [
            "view \"public.v\" {\n    depends-on \"public.t\"\n    query \"SELECT a, b FROM t\"\n    grant \"SELECT\" to=\"r\"\n}\n",
            "materialized-view \"m\" {\n    query \"\"\"\n        SELECT 1\n        \"\"\"\n    index \"a\" unique=#true\n    refresh every=\"15m\" concurrently=#true\n}\n",
            "view \"v\" { query \"SELECT 'a\\\"b'\"; comment \"x\\ty\" } // end\r\nview \"w\" {\r\n  with security_barrier=#false n=-3\r\n}\r\n",
        ];
        // Characters that mean something to KDL, and some that do not.
        let alphabet: Vec<char> = "\"\\{};=#/ \n\r\tx1-.()*\u{A0}é".chars().collect();
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = |bound: usize| {
            // xorshift64*: deterministic, good enough to pick positions and characters.
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            usize::try_from(state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33).unwrap_or(0) % bound
        };
        let mut read = 0;
        for case in 0..3000 {
            let mut text: Vec<char> = seeds[case % seeds.len()].chars().collect();
            for _ in 0..1 + next(3) {
                let at = next(text.len() + 1);
                let c = alphabet[next(alphabet.len())];
                match next(3) {
                    0 if at < text.len() => {
                        text.remove(at);
                    }
                    1 if at < text.len() => text[at] = c,
                    _ => text.insert(at, c),
                }
            }
            if check(&text.into_iter().collect::<String>()) {
                read += 1;
            }
        }
        assert!(
            read > 300,
            "the fast reader read only {read} of 3000 mutants"
        );
    }

    /// Every KDL file in the repository: the fast reader agrees with the crate wherever it
    /// reads one.
    #[test]
    fn agrees_with_the_kdl_crate_on_every_file_in_the_repository() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut files = Vec::new();
        let mut folders = vec![
            root.join("views"),
            root.join("tests"),
            root.join("examples"),
        ];
        while let Some(folder) = folders.pop() {
            let Ok(entries) = std::fs::read_dir(&folder) else {
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                if path.is_dir() {
                    folders.push(path);
                } else if path.extension().is_some_and(|ext| ext == "kdl") {
                    files.push(path);
                }
            }
        }
        assert!(files.len() > 10, "found only {files:?}");
        let mut read = 0;
        for file in &files {
            let text = std::fs::read_to_string(file).expect("a KDL file reads");
            if check(&text) {
                read += 1;
            }
        }
        // The others: configuration files holding only comments, and files written to fail.
        assert!(
            read * 2 > files.len(),
            "read only {read} of {}",
            files.len()
        );
    }
}
