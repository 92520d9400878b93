//! reStructuredText to sections: a title underlined (and optionally overlined) by a line of one
//! punctuation character is a heading, its level set by the order in which each style first
//! appears; comments and targets (`.. _x:`) are dropped, a directive keeps its indented content,
//! and roles and literals (``:func:`open` ``, ``` ``x`` ```) keep their text.

use super::{Section, SectionBuilder};

const ADORNMENT: &str = "=-~^\"'`#*+:._<>!$%&,/;?@\\|";

pub fn sections(text: &str) -> Vec<Section> {
    let mut builder = SectionBuilder::default();
    let lines: Vec<&str> = text.lines().collect();
    // Heading styles in order of first appearance: (character, overlined).
    let mut styles: Vec<(char, bool)> = Vec::new();
    let mut in_comment = false;
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        if let Some((style, title, consumed)) = heading_at(&lines, i) {
            let level = match styles.iter().position(|s| *s == style) {
                Some(p) => p + 1,
                None => {
                    styles.push(style);
                    styles.len()
                }
            };
            builder.heading(level, &inline_text(title));
            in_comment = false;
            i += consumed;
            continue;
        }
        i += 1;
        let trimmed = line.trim_start();
        if in_comment {
            if trimmed.is_empty() || line.starts_with([' ', '\t']) {
                continue;
            }
            in_comment = false;
        }
        if let Some(markup) = trimmed.strip_prefix(".. ") {
            // `.. name:: argument` keeps its content (indented below); targets, substitutions
            // and comments are dropped with their indented continuation.
            match markup.find("::") {
                Some(at) if !markup.starts_with('_') && !markup.starts_with('|') => {
                    let argument = markup[at + 2..].trim();
                    if !argument.is_empty() && !is_option_like(argument) {
                        builder.line(&inline_text(argument));
                    }
                }
                _ => in_comment = true,
            }
            continue;
        }
        if trimmed == ".." {
            in_comment = true;
            continue;
        }
        // Directive options (`:maxdepth: 2`) under a directive.
        if line.starts_with([' ', '\t']) && is_option_like(trimmed) {
            continue;
        }
        let text = inline_text(line);
        // A paragraph ending in `::` introduces a literal block: the marker itself goes.
        let text = text.strip_suffix("::").map_or(text.clone(), |t| {
            if t.trim().is_empty() {
                String::new()
            } else {
                format!("{t}:")
            }
        });
        builder.line(&text);
    }
    builder.finish()
}

/// Whether `text` has at least one RST heading (used to read `.txt` files as RST).
pub fn has_headings(text: &str) -> bool {
    let lines: Vec<&str> = text.lines().collect();
    (0..lines.len()).any(|i| heading_at(&lines, i).is_some())
}

/// A heading starting at line `i`: its style, title and the number of lines it spans.
fn heading_at<'a>(lines: &[&'a str], i: usize) -> Option<((char, bool), &'a str, usize)> {
    let line = lines[i];
    // Overline, title, underline.
    if let (Some(c), Some(title), Some(under)) =
        (adornment(line, 3), lines.get(i + 1), lines.get(i + 2))
    {
        let title_trimmed = title.trim();
        if adornment(under, 3) == Some(c)
            && !title_trimmed.is_empty()
            && adornment(title, 2).is_none()
            && line.trim().chars().count() >= title_trimmed.chars().count()
        {
            return Some(((c, true), title_trimmed, 3));
        }
    }
    // Title, underline: the title starts at column 0 and the underline is at least as long.
    let under = lines.get(i + 1)?;
    let c = adornment(under, 2)?;
    let title = line.trim_end();
    if title.is_empty() || line.starts_with([' ', '\t']) || adornment(line, 2).is_some() {
        return None;
    }
    if under.trim_end().chars().count() < title.chars().count() {
        return None;
    }
    Some(((c, false), title, 2))
}

/// A line of `min` or more of one punctuation character (and nothing else).
fn adornment(line: &str, min: usize) -> Option<char> {
    let trimmed = line.trim_end();
    let c = trimmed.chars().next()?;
    (ADORNMENT.contains(c) && trimmed.chars().count() >= min && trimmed.chars().all(|x| x == c))
        .then_some(c)
}

fn is_option_like(text: &str) -> bool {
    text.starts_with(':') && text[1..].find(':').is_some_and(|end| end > 0)
}

/// ``:role:`text` `` → `text`, ``` ``literal`` ``` → `literal`, `` `text <url>`_ `` → `text`.
fn inline_text(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(start) = rest.find('`') {
        let mut before = &rest[..start];
        // Drop a `:role:` just before the backquote.
        if before.ends_with(':') {
            if let Some(colon) = before[..before.len() - 1].rfind(':') {
                let role = &before[colon + 1..before.len() - 1];
                if !role.is_empty()
                    && role
                        .chars()
                        .all(|c| c.is_alphanumeric() || ":-_".contains(c))
                {
                    before = &before[..colon];
                }
            }
        }
        out.push_str(before);
        let double = rest[start..].starts_with("``");
        let open = if double { 2 } else { 1 };
        let after = &rest[start + open..];
        let close = if double {
            after.find("``")
        } else {
            after.find('`')
        };
        let Some(close) = close else {
            out.push_str(&rest[start..]);
            return out;
        };
        let mut inner = &after[..close];
        // `text <target>`_: the text only.
        if let (Some(lt), true) = (inner.rfind(" <"), inner.ends_with('>')) {
            inner = &inner[..lt];
        }
        // `~os.path.join` shows as `join`.
        let inner = inner
            .strip_prefix('~')
            .map_or(inner, |s| s.rsplit('.').next().unwrap_or(s));
        out.push_str(inner);
        rest = &after[close + open..];
        rest = rest
            .strip_prefix("__")
            .or_else(|| rest.strip_prefix('_'))
            .unwrap_or(rest);
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rst_underlines_and_overlines_make_heading_levels_by_first_appearance() {
        let text = "=======\nLibrary\n=======\n\nIntro.\n\nos\n==\n\nThe :mod:`os` module, see ``os.open`` and `docs <https://x>`_.\n\nFiles\n-----\n\n.. note:: Be careful.\n\n   Really careful.\n\n.. _target:\n\n.. a comment\n   spanning lines\n\nExample::\n\n   open(path)\n\nsys\n===\nSystem.\n";
        let got: Vec<(Vec<String>, String)> = sections(text)
            .into_iter()
            .map(|s| (s.headings, s.body))
            .collect();
        let path = |p: &[&str]| p.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            got,
            vec![
                (path(&["Library"]), "Intro.".into()),
                (
                    path(&["Library", "os"]),
                    "The os module, see os.open and docs.".into()
                ),
                (
                    path(&["Library", "os", "Files"]),
                    "Be careful.\nReally careful.\nExample:\nopen(path)".into()
                ),
                (path(&["Library", "sys"]), "System.".into()),
            ]
        );
    }

    #[test]
    fn rst_heading_detection_needs_a_long_enough_underline() {
        assert!(has_headings("Title\n=====\n"));
        assert!(!has_headings("Title here\n===\n"));
        assert!(!has_headings("a line\nanother line\n"));
    }
}
