//! From a folder of documents to passages: walk the sources ([`walk`]), extract each file's
//! sections by its type ([`extract`]: Markdown, reStructuredText, HTML, plain text), and cut
//! the sections into token windows with stable ids ([`chunk`]).

pub mod chunk;
pub mod extract;
mod html;
mod markdown;
mod rst;
pub mod walk;

/// A part of a document under one heading: the headings above it, outermost first (e.g.
/// `["Library", "os", "Files"]`; empty before the first heading), and its text, paragraphs
/// separated by newlines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    pub headings: Vec<String>,
    pub body: String,
}

/// The heading path as sections are found: a heading of level `n` replaces every heading of
/// level `n` or deeper.
#[derive(Debug, Default)]
struct HeadingStack {
    levels: Vec<(usize, String)>,
}

impl HeadingStack {
    fn push(&mut self, level: usize, text: String) {
        while self.levels.last().is_some_and(|(l, _)| *l >= level) {
            self.levels.pop();
        }
        self.levels.push((level, text));
    }

    fn path(&self) -> Vec<String> {
        self.levels.iter().map(|(_, t)| t.clone()).collect()
    }
}

/// Collects sections: text goes to the current one, a heading closes it (if it has any text)
/// and opens the next.
#[derive(Debug, Default)]
struct SectionBuilder {
    /// The document's own title (an HTML `<title>`), above every heading: many pages start
    /// their headings below it ("1. Overview", "Synopsis"), which alone name no page.
    root: Option<String>,
    stack: HeadingStack,
    seen_heading: bool,
    body: String,
    sections: Vec<Section>,
}

impl SectionBuilder {
    fn with_root(root: &str) -> SectionBuilder {
        let root = collapse_whitespace(root);
        SectionBuilder {
            root: (!root.is_empty()).then_some(root),
            ..SectionBuilder::default()
        }
    }

    fn heading(&mut self, level: usize, text: &str) {
        self.flush();
        let text = collapse_whitespace(text);
        let first = !std::mem::replace(&mut self.seen_heading, true);
        if text.is_empty() {
            return;
        }
        if let Some(root) = &mut self.root {
            if text.eq_ignore_ascii_case(root) {
                return;
            }
            // The first heading usually restates the title, shorter ("os — …" for "os — … —
            // Python 3.11 documentation") or longer ("git-add(1) Manual Page" for "git-add(1)"):
            // it names the page better and is not repeated under it.
            if first && (starts_with_words(root, &text) || starts_with_words(&text, root)) {
                *root = text;
                return;
            }
        }
        self.stack.push(level, text);
    }

    fn line(&mut self, line: &str) {
        self.body.push_str(line);
        self.body.push('\n');
    }

    fn flush(&mut self) {
        let body = tidy_body(&self.body);
        self.body.clear();
        if !body.is_empty() {
            self.sections.push(Section {
                headings: self.root.iter().cloned().chain(self.stack.path()).collect(),
                body,
            });
        }
    }

    fn finish(mut self) -> Vec<Section> {
        self.flush();
        self.sections
    }
}

/// Whether `text` starts with the words of `prefix` (ASCII case ignored), ending at a word
/// boundary: "os — x — Python docs" starts with "os — x", "SELECT" does not start "SELECTs".
fn starts_with_words(text: &str, prefix: &str) -> bool {
    text.len() >= prefix.len()
        && text.is_char_boundary(prefix.len())
        && text[..prefix.len()].eq_ignore_ascii_case(prefix)
        && !text[prefix.len()..].starts_with(char::is_alphanumeric)
}

/// Runs of whitespace become one space; the ends are trimmed.
fn collapse_whitespace(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Each line's whitespace collapsed, blank lines dropped: paragraphs separated by one newline.
fn tidy_body(body: &str) -> String {
    body.lines()
        .map(collapse_whitespace)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join("\n")
}
