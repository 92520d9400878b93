//! Chooses how to read a document by its file name — Markdown (`.md`, `.markdown`),
//! reStructuredText (`.rst`, and `.txt` files with RST-underlined headings), HTML (`.html`,
//! `.htm`, `.xhtml`) or plain text (anything else) — and returns its [`Section`]s.

use std::path::Path;

use super::{html, markdown, rst, Section, SectionBuilder};

/// How a document is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Markdown,
    Rst,
    Html,
    Plain,
}

impl Format {
    /// The format of `path` by its extension; `.txt` with RST headings reads as RST.
    pub fn of(path: &Path, text: &str) -> Format {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or("")
            .to_ascii_lowercase();
        match ext.as_str() {
            "md" | "markdown" | "mdx" => Format::Markdown,
            "rst" | "rest" => Format::Rst,
            "html" | "htm" | "xhtml" => Format::Html,
            "txt" if rst::has_headings(text) => Format::Rst,
            _ => Format::Plain,
        }
    }
}

/// The sections of `text`, read as `format`.
pub fn sections(format: Format, text: &str) -> Vec<Section> {
    match format {
        Format::Markdown => markdown::sections(text),
        Format::Rst => rst::sections(text),
        Format::Html => html::sections(text),
        Format::Plain => plain_sections(text),
    }
}

/// Plain text: one section without headings.
fn plain_sections(text: &str) -> Vec<Section> {
    let mut builder = SectionBuilder::default();
    text.lines().for_each(|line| builder.line(line));
    builder.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_follow_the_extension_and_txt_with_rst_headings_reads_as_rst() {
        let of = |name: &str, text: &str| Format::of(Path::new(name), text);
        assert_eq!(of("a/B.MD", ""), Format::Markdown);
        assert_eq!(of("x.rst", ""), Format::Rst);
        assert_eq!(of("x.htm", ""), Format::Html);
        assert_eq!(of("notes.txt", "just words\nmore words\n"), Format::Plain);
        assert_eq!(of("notes.txt", "Title\n=====\n\nbody\n"), Format::Rst);
        assert_eq!(of("Makefile", "all:\n"), Format::Plain);
    }

    #[test]
    fn plain_text_is_one_section_without_headings_and_tidied_whitespace() {
        let got = sections(Format::Plain, "  first   line \n\n\n second\tline\n");
        assert_eq!(
            got,
            vec![Section {
                headings: vec![],
                body: "first line\nsecond line".into()
            }]
        );
        assert!(sections(Format::Plain, " \n\n").is_empty());
    }

    /// A real Sphinx page (Debian's `python3-doc`, when installed): the module's sections come
    /// out under its title, without the sidebar, the related-pages bar or permalink marks.
    #[test]
    fn sphinx_html_of_the_python_docs_reads_as_its_sections() {
        let path = Path::new("/usr/share/doc/python3-doc/html/library/os.html");
        let Ok(html) = std::fs::read_to_string(path) else {
            eprintln!(
                "SKIPPED: {} is absent (apt-get install python3-doc)",
                path.display()
            );
            return;
        };
        let got = sections(Format::of(path, &html), &html);
        assert!(got.len() > 10, "{} sections", got.len());
        let title = "os — Miscellaneous operating system interfaces";
        assert!(got
            .iter()
            .all(|s| s.headings.first().map(String::as_str) == Some(title)));
        assert!(got
            .iter()
            .any(|s| s.headings == [title, "File Descriptor Operations"]));
        let all: String = got.iter().map(|s| s.body.as_str()).collect();
        assert!(!all.contains('¶'));
        assert!(!all.contains("Previous topic"));
        assert!(all.contains("os.open(path, flags, mode=0o777"));
    }
}
