//! HTML to sections with a small forgiving tokenizer (no DOM): only the main content is read —
//! the first `<main>` or `role="main"` element, else the first `<article>`, else the whole
//! page — with `<script>`, `<style>`, `<nav>`, `<aside>`, `<noscript>`, `<template>`, `<svg>`,
//! `<head>`, page-level `<header>`/`<footer>`, navigation landmarks (`role="navigation"`, …),
//! the navigation bars and tables of contents of DocBook, Sphinx, AsciiDoc and SQLite's pages
//! ([`DROPPED_CLASSES`]) and Sphinx's `¶` permalinks dropped with everything inside; the
//! `<title>` heads the heading path, `<h1>`…`<h6>` make the rest of it (a trailing `¶`
//! removed, a first heading restating the title merged with it); block elements and `<br>`
//! break lines, `<pre>` keeps its lines; character references (`&amp;`, `&#8212;`, `&#x2014;`)
//! are decoded.

use super::{Section, SectionBuilder};

#[derive(Debug, PartialEq)]
enum Token<'a> {
    Text(&'a str),
    Start {
        name: String,
        attrs: &'a str,
        self_closing: bool,
    },
    End(String),
}

/// Dropped with their content wherever they are.
const DROPPED: &[&str] = &[
    "script", "style", "nav", "aside", "noscript", "template", "svg", "head", "title", "iframe",
    "object", "canvas", "button", "select", "textarea",
];
/// Dropped outside the main content (inside an `<article>`, its `<header>` holds its title).
const DROPPED_AT_PAGE_LEVEL: &[&str] = &["header", "footer"];
/// Classes (and ids) of navigation and tables of contents in the generators of real docs:
/// DocBook's `navheader`/`navfooter` and `toc`, Sphinx's sidebar and `¶` permalinks, SQLite's
/// `nosearch` menus and `fancy_toc`, AsciiDoc's `id="toc"`. A table of contents lists every
/// section's title, so left in it answers title questions instead of the sections.
const DROPPED_CLASSES: &[&str] = &[
    "headerlink",
    "navheader",
    "navfooter",
    "toc",
    "sphinxsidebar",
    "breadcrumb",
    "breadcrumbs",
    "nosearch",
    "fancy_toc",
];
const DROPPED_ROLES: &[&str] = &[
    "navigation",
    "banner",
    "contentinfo",
    "complementary",
    "search",
];
/// Elements whose content is not parsed as markup.
const RAW_TEXT: &[&str] = &["script", "style", "textarea", "title", "xmp"];
const BLOCK: &[&str] = &[
    "p",
    "div",
    "section",
    "li",
    "ul",
    "ol",
    "dl",
    "dt",
    "dd",
    "table",
    "tr",
    "td",
    "th",
    "thead",
    "tbody",
    "blockquote",
    "pre",
    "figure",
    "figcaption",
    "hr",
    "br",
    "main",
    "article",
    "header",
    "footer",
    "details",
    "summary",
    "caption",
    "address",
    "fieldset",
    "legend",
    "body",
    "html",
    "form",
];

pub fn sections(html: &str) -> Vec<Section> {
    let tokens = tokenize(html);
    let (start, end, inside_root) = match content_root(&tokens) {
        Some((start, end)) => (start + 1, end, true),
        None => (0, tokens.len(), false),
    };
    let mut reader = Reader {
        builder: SectionBuilder::with_root(&page_title(&tokens)),
        ..Reader::default()
    };
    let mut skip: Option<(String, usize)> = None;
    for token in &tokens[start..end] {
        if let Some((name, depth)) = &mut skip {
            match token {
                Token::Start {
                    name: n,
                    self_closing: false,
                    ..
                } if n == name => *depth += 1,
                Token::End(n) if n == name => *depth -= 1,
                _ => {}
            }
            if *depth == 0 {
                skip = None;
            }
            continue;
        }
        match token {
            Token::Start {
                name,
                attrs,
                self_closing,
            } => {
                let dropped = DROPPED.contains(&name.as_str())
                    || (!inside_root && DROPPED_AT_PAGE_LEVEL.contains(&name.as_str()))
                    || attr(attrs, "role").is_some_and(|r| DROPPED_ROLES.contains(&r.as_str()))
                    || attr(attrs, "class").is_some_and(|c| {
                        c.split_whitespace().any(|c| DROPPED_CLASSES.contains(&c))
                    })
                    || attr(attrs, "id").is_some_and(|id| DROPPED_CLASSES.contains(&id.as_str()))
                    || attr(attrs, "hidden").is_some()
                    || attr(attrs, "aria-hidden").is_some_and(|v| v == "true");
                if dropped {
                    // A dropped block still separated the text around it.
                    if BLOCK.contains(&name.as_str())
                        || ["nav", "aside", "noscript", "template", "head"].contains(&name.as_str())
                    {
                        reader.break_line();
                    }
                    if !self_closing && !is_void(name) {
                        skip = Some((name.clone(), 1));
                    }
                    continue;
                }
                reader.start(name);
            }
            Token::End(name) => reader.end(name),
            Token::Text(text) => reader.text(&decode_entities(text)),
        }
    }
    reader.finish()
}

/// The text of the page's first `<title>`, entities decoded ("" without one).
fn page_title(tokens: &[Token]) -> String {
    let start = tokens
        .iter()
        .position(|t| matches!(t, Token::Start { name, .. } if name == "title"));
    match start.and_then(|i| tokens.get(i + 1)) {
        Some(Token::Text(text)) => decode_entities(text),
        _ => String::new(),
    }
}

/// The main content's start token and its end token (exclusive), if the page marks one.
fn content_root(tokens: &[Token]) -> Option<(usize, usize)> {
    let is_main = |t: &Token| match t {
        Token::Start { name, attrs, .. } => {
            name == "main" || attr(attrs, "role").is_some_and(|r| r == "main")
        }
        _ => false,
    };
    let is_article = |t: &Token| matches!(t, Token::Start { name, .. } if name == "article");
    let start = tokens
        .iter()
        .position(is_main)
        .or_else(|| tokens.iter().position(is_article))?;
    let Token::Start { name, .. } = &tokens[start] else {
        return None;
    };
    let mut depth = 0usize;
    for (i, token) in tokens.iter().enumerate().skip(start) {
        match token {
            Token::Start {
                name: n,
                self_closing: false,
                ..
            } if n == name => depth += 1,
            Token::End(n) if n == name => {
                depth -= 1;
                if depth == 0 {
                    return Some((start, i));
                }
            }
            _ => {}
        }
    }
    Some((start, tokens.len()))
}

/// Turns the kept tokens into lines and headings.
#[derive(Default)]
struct Reader {
    builder: SectionBuilder,
    line: String,
    heading: Option<(usize, String)>,
    pre: usize,
}

impl Reader {
    fn start(&mut self, name: &str) {
        if let Some(level) = heading_level(name) {
            self.break_line();
            self.heading = Some((level, String::new()));
        } else if name == "pre" {
            self.break_line();
            self.pre += 1;
        } else if BLOCK.contains(&name) {
            self.break_line();
        } else if name == "img" || name == "wbr" {
            self.text(" ");
        }
    }

    fn end(&mut self, name: &str) {
        if heading_level(name).is_some() {
            if let Some((level, text)) = self.heading.take() {
                let text = text
                    .trim()
                    .trim_end_matches(['¶', '#', '\u{f0c1}'])
                    .trim_end();
                self.builder.heading(level, text);
            }
        } else if name == "pre" {
            self.break_line();
            self.pre = self.pre.saturating_sub(1);
        } else if BLOCK.contains(&name) {
            self.break_line();
        }
    }

    fn text(&mut self, text: &str) {
        if let Some((_, heading)) = &mut self.heading {
            heading.push_str(text);
            return;
        }
        if self.pre > 0 {
            let mut lines = text.split('\n');
            if let Some(first) = lines.next() {
                self.line.push_str(first);
            }
            for line in lines {
                self.break_line();
                self.line.push_str(line);
            }
            return;
        }
        // Whitespace between inline elements still separates words.
        let mut words = text.split_whitespace().peekable();
        if text.starts_with(char::is_whitespace) {
            self.line.push(' ');
        }
        while let Some(word) = words.next() {
            self.line.push_str(word);
            if words.peek().is_some() {
                self.line.push(' ');
            }
        }
        if text.ends_with(char::is_whitespace) && !text.trim().is_empty() {
            self.line.push(' ');
        }
    }

    fn break_line(&mut self) {
        if !self.line.trim().is_empty() {
            self.builder.line(&self.line);
        }
        self.line.clear();
    }

    fn finish(mut self) -> Vec<Section> {
        self.break_line();
        self.builder.finish()
    }
}

fn heading_level(name: &str) -> Option<usize> {
    match name.as_bytes() {
        [b'h', d @ b'1'..=b'6'] => Some(usize::from(d - b'0')),
        _ => None,
    }
}

fn is_void(name: &str) -> bool {
    matches!(
        name,
        "area"
            | "base"
            | "br"
            | "col"
            | "embed"
            | "hr"
            | "img"
            | "input"
            | "link"
            | "meta"
            | "source"
            | "track"
            | "wbr"
    )
}

fn tokenize(html: &str) -> Vec<Token<'_>> {
    let mut tokens = Vec::new();
    let mut rest = html;
    while !rest.is_empty() {
        let Some(lt) = rest.find('<') else {
            tokens.push(Token::Text(rest));
            break;
        };
        if lt > 0 {
            tokens.push(Token::Text(&rest[..lt]));
            rest = &rest[lt..];
        }
        let after = &rest[1..];
        if let Some(comment) = after.strip_prefix("!--") {
            rest = comment.find("-->").map_or("", |end| &comment[end + 3..]);
            continue;
        }
        if after.starts_with(['!', '?']) {
            rest = after.find('>').map_or("", |end| &after[end + 1..]);
            continue;
        }
        if let Some(close) = after.strip_prefix('/') {
            let name_len = close
                .find(|c: char| !c.is_ascii_alphanumeric() && c != '-' && c != ':')
                .unwrap_or(close.len());
            if name_len > 0 {
                tokens.push(Token::End(close[..name_len].to_ascii_lowercase()));
                rest = close.find('>').map_or("", |end| &close[end + 1..]);
                continue;
            }
        }
        if after.starts_with(|c: char| c.is_ascii_alphabetic()) {
            let name_len = after
                .find(|c: char| !c.is_ascii_alphanumeric() && c != '-' && c != ':')
                .unwrap_or(after.len());
            let name = after[..name_len].to_ascii_lowercase();
            let tag_end = tag_end(&after[name_len..]).map(|e| e + name_len);
            let Some(tag_end) = tag_end else {
                // An unterminated tag: the rest is not content.
                break;
            };
            let inner = &after[name_len..tag_end];
            let self_closing = inner.trim_end().ends_with('/');
            rest = &after[tag_end + 1..];
            let raw = RAW_TEXT.contains(&name.as_str()) && !self_closing;
            tokens.push(Token::Start {
                name: name.clone(),
                attrs: inner,
                self_closing,
            });
            if raw {
                let closing = format!("</{name}");
                let end = find_ascii_case_insensitive(rest, &closing).unwrap_or(rest.len());
                if name == "textarea" || name == "title" {
                    tokens.push(Token::Text(&rest[..end]));
                }
                tokens.push(Token::End(name));
                rest = &rest[end..];
                rest = rest.find('>').map_or("", |e| &rest[e + 1..]);
            }
            continue;
        }
        // A `<` that starts no tag is text.
        tokens.push(Token::Text(&rest[..1]));
        rest = after;
    }
    tokens
}

/// The `>` that ends a tag, skipping quoted attribute values.
fn tag_end(attrs: &str) -> Option<usize> {
    let mut quote: Option<char> = None;
    for (i, c) in attrs.char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'') => quote = Some(c),
            (None, '>') => return Some(i),
            _ => {}
        }
    }
    None
}

fn find_ascii_case_insensitive(haystack: &str, needle: &str) -> Option<usize> {
    let (h, n) = (haystack.as_bytes(), needle.as_bytes());
    (0..h.len().saturating_sub(n.len() - 1)).find(|&i| h[i..i + n.len()].eq_ignore_ascii_case(n))
}

/// The value of attribute `name` (lower-cased), `Some("")` if present without a value.
fn attr(attrs: &str, name: &str) -> Option<String> {
    let mut rest = attrs;
    loop {
        rest = rest.trim_start_matches(|c: char| c.is_whitespace() || c == '/');
        if rest.is_empty() {
            return None;
        }
        let key_len = rest
            .find(|c: char| c.is_whitespace() || c == '=' || c == '/')
            .unwrap_or(rest.len());
        let key = &rest[..key_len];
        rest = rest[key_len..].trim_start();
        let mut value = String::new();
        if let Some(after) = rest.strip_prefix('=') {
            let after = after.trim_start();
            let (v, remaining) = match after.chars().next() {
                Some(q @ ('"' | '\'')) => {
                    let body = &after[1..];
                    let end = body.find(q).unwrap_or(body.len());
                    (&body[..end], body.get(end + 1..).unwrap_or(""))
                }
                _ => {
                    let end = after.find(char::is_whitespace).unwrap_or(after.len());
                    (&after[..end], &after[end..])
                }
            };
            value = v.to_ascii_lowercase();
            rest = remaining;
        }
        if key.eq_ignore_ascii_case(name) {
            return Some(value);
        }
    }
}

/// Decodes character references; an unknown or malformed one is left as written.
pub fn decode_entities(text: &str) -> String {
    if !text.contains('&') {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        rest = &rest[amp..];
        let end = rest[1..]
            .find(|c: char| !c.is_ascii_alphanumeric() && c != '#')
            .map_or(rest.len(), |e| e + 1);
        let name = &rest[1..end];
        let decoded = if let Some(number) = name.strip_prefix('#') {
            let code = match number.strip_prefix(['x', 'X']) {
                Some(hex) => u32::from_str_radix(hex, 16).ok(),
                None => number.parse().ok(),
            };
            code.and_then(char::from_u32).map(|c| c.to_string())
        } else {
            named_entity(name).map(str::to_string)
        };
        match decoded {
            Some(decoded) => {
                out.push_str(&decoded);
                rest = &rest[end..];
                rest = rest.strip_prefix(';').unwrap_or(rest);
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

fn named_entity(name: &str) -> Option<&'static str> {
    Some(match name {
        "amp" | "AMP" => "&",
        "lt" | "LT" => "<",
        "gt" | "GT" => ">",
        "quot" | "QUOT" => "\"",
        "apos" => "'",
        "nbsp" => "\u{a0}",
        "ensp" | "emsp" | "thinsp" => " ",
        "shy" | "zwnj" | "zwj" => "",
        "copy" => "©",
        "reg" => "®",
        "trade" => "™",
        "mdash" => "—",
        "ndash" => "–",
        "hellip" => "…",
        "lsquo" => "‘",
        "rsquo" => "’",
        "sbquo" => "‚",
        "ldquo" => "“",
        "rdquo" => "”",
        "bdquo" => "„",
        "laquo" => "«",
        "raquo" => "»",
        "lsaquo" => "‹",
        "rsaquo" => "›",
        "para" => "¶",
        "sect" => "§",
        "middot" => "·",
        "bull" => "•",
        "times" => "×",
        "divide" => "÷",
        "deg" => "°",
        "plusmn" => "±",
        "micro" => "µ",
        "euro" => "€",
        "pound" => "£",
        "yen" => "¥",
        "cent" => "¢",
        "larr" => "←",
        "rarr" => "→",
        "uarr" => "↑",
        "darr" => "↓",
        "harr" => "↔",
        "rArr" => "⇒",
        "lArr" => "⇐",
        "le" => "≤",
        "ge" => "≥",
        "ne" => "≠",
        "minus" => "−",
        "infin" => "∞",
        "prime" => "′",
        "Prime" => "″",
        "dagger" => "†",
        "Dagger" => "‡",
        "iexcl" => "¡",
        "iquest" => "¿",
        "auml" => "ä",
        "ouml" => "ö",
        "uuml" => "ü",
        "Auml" => "Ä",
        "Ouml" => "Ö",
        "Uuml" => "Ü",
        "szlig" => "ß",
        "eacute" => "é",
        "egrave" => "è",
        "aacute" => "á",
        "agrave" => "à",
        "ccedil" => "ç",
        "ntilde" => "ñ",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heads_and_bodies(html: &str) -> Vec<(Vec<String>, String)> {
        sections(html)
            .into_iter()
            .map(|s| (s.headings, s.body))
            .collect()
    }

    fn path(parts: &[&str]) -> Vec<String> {
        parts.iter().map(|p| p.to_string()).collect()
    }

    #[test]
    fn html_reads_main_content_drops_nav_script_and_keeps_headings() {
        let html = r##"<!DOCTYPE html><html><head><title>Library &#8212; Docs 3.1</title><style>p{color:red}</style></head>
<body><header><h1>Site name</h1><nav><a href="/">Home</a></nav></header>
<div class="sidebar" role="navigation"><h3>Related</h3>links</div>
<main><h1>Library<a class="headerlink" href="#lib">¶</a></h1>
<p>The <b>os</b> module&nbsp;&mdash; portable &amp; &lt;fast&gt; &#8220;really&#x201D;.</p>
<script>var x = "<h2>not a heading</h2>";</script>
<h2 id="files">Files</h2><aside>Ad text</aside><p>Open them.<br>Close <code>them</code><a class="reference headerlink" href="#x">¶</a>.</p>
<pre>line one
  line two</pre>
<!-- a comment <h2>no</h2> -->
</main><footer>Copyright</footer></body></html>"##;
        assert_eq!(
            heads_and_bodies(html),
            vec![
                (
                    path(&["Library"]),
                    "The os module — portable & <fast> “really”.".into()
                ),
                (
                    path(&["Library", "Files"]),
                    "Open them.\nClose them.\nline one\nline two".into()
                ),
            ]
        );
    }

    /// DocBook (PostgreSQL's docs) and SQLite's pages: navigation bars and tables of contents
    /// are dropped, and the `<title>` heads headings that do not name the page themselves.
    #[test]
    fn html_title_heads_the_path_and_docbook_and_sqlite_navigation_and_tocs_are_dropped() {
        let docbook = r#"<html><head><title>pg_dump</title></head><body>
<div class="navheader"><table><tr><th>pg_dump</th></tr><tr><td><a>Prev</a></td></tr></table></div>
<div class="refentry"><div class="refnamediv"><h2><span>pg_dump</span></h2><p>extract a database</p></div>
<div class="toc"><dl><dt>Synopsis</dt></dl></div>
<h2>Synopsis</h2><p>pg_dump [option...]</p></div>
<div class="navfooter"><a>Next</a></div></body></html>"#;
        assert_eq!(
            heads_and_bodies(docbook),
            vec![
                (path(&["pg_dump"]), "extract a database".into()),
                (path(&["pg_dump", "Synopsis"]), "pg_dump [option...]".into()),
            ]
        );
        let sqlite = r#"<html><head><title>SELECT</title></head><body>
<div class=nosearch><a>Small. Fast. Reliable.</a> Menu</div>
<div class="fancy_toc"><a>1. Overview</a></div><div id="toc">AsciiDoc toc</div>
<h1><span>1. </span>Overview</h1><p>Queries.</p></body></html>"#;
        assert_eq!(
            heads_and_bodies(sqlite),
            vec![(path(&["SELECT", "1. Overview"]), "Queries.".into())]
        );
        let untitled_start =
            "<title>Guide</title><p>Before any heading.</p><h1>Guide Book</h1><p>x</p>";
        assert_eq!(
            heads_and_bodies(untitled_start),
            vec![
                (path(&["Guide"]), "Before any heading.".into()),
                (path(&["Guide Book"]), "x".into()),
            ]
        );
    }

    #[test]
    fn html_without_main_reads_the_body_and_drops_page_header_and_footer() {
        let html = "<body><header>Menu</header><h2>Intro</h2>Some <i>inline</i>\ntext<footer>f</footer><nav/>After nav.</body>";
        assert_eq!(
            heads_and_bodies(html),
            vec![(path(&["Intro"]), "Some inline text\nAfter nav.".into())]
        );
    }

    #[test]
    fn html_article_keeps_its_header_title_and_survives_broken_markup() {
        let html = "<p>outside</p><article><header><h1>Post</h1></header><p>Body &unknown; &amp text</p><p>unclosed <b>bold";
        assert_eq!(
            heads_and_bodies(html),
            vec![(
                path(&["Post"]),
                "Body &unknown; & text\nunclosed bold".into()
            )]
        );
        assert!(sections("<div><a href='x' title=\"a>b\">link</a> < 3").len() == 1);
        assert!(sections("<div attr='unterminated").is_empty());
    }
}
