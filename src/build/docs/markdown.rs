//! Markdown to sections: ATX (`# …`) and setext (`===`/`---` underlined) headings make the
//! heading path; fenced code is kept as text (a `#` inside it is no heading); YAML front
//! matter and HTML comments are dropped; links and images keep their text, not their URLs.

use super::{Section, SectionBuilder};

pub fn sections(text: &str) -> Vec<Section> {
    let mut builder = SectionBuilder::default();
    let lines: Vec<&str> = strip_front_matter(text).lines().collect();
    let mut fence: Option<(char, usize)> = None;
    let mut in_comment = false;
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        i += 1;
        if let Some((mark, len)) = fence {
            if is_fence(line).is_some_and(|(m, l)| m == mark && l >= len) {
                fence = None;
            } else {
                builder.line(line);
            }
            continue;
        }
        if in_comment {
            in_comment = !line.contains("-->");
            continue;
        }
        if let Some(opened) = is_fence(line) {
            fence = Some(opened);
            continue;
        }
        let trimmed = line.trim();
        if trimmed.starts_with("<!--") {
            in_comment = !trimmed.contains("-->");
            continue;
        }
        if let Some((level, heading)) = atx_heading(line) {
            builder.heading(level, &inline_text(heading));
            continue;
        }
        // Setext: a paragraph line underlined by `===` (level 1) or `---` (level 2).
        if let Some(next) = lines.get(i) {
            if let Some(level) = setext_level(next) {
                if !trimmed.is_empty() && !line.starts_with("    ") {
                    builder.heading(level, &inline_text(trimmed));
                    i += 1;
                    continue;
                }
            }
        }
        builder.line(&inline_text(line));
    }
    builder.finish()
}

/// Front matter: a first line `---`, then everything up to the next `---` or `...` line.
fn strip_front_matter(text: &str) -> &str {
    let Some(rest) = text
        .strip_prefix("---\n")
        .or_else(|| text.strip_prefix("---\r\n"))
    else {
        return text;
    };
    let mut offset = 0;
    for line in rest.split_inclusive('\n') {
        offset += line.len();
        if matches!(line.trim_end(), "---" | "...") {
            return &rest[offset..];
        }
    }
    text
}

/// A code fence: up to 3 spaces, then 3 or more backticks or tildes.
fn is_fence(line: &str) -> Option<(char, usize)> {
    let indent = line.len() - line.trim_start_matches(' ').len();
    if indent > 3 {
        return None;
    }
    let rest = &line[indent..];
    let mark = rest.chars().next().filter(|c| *c == '`' || *c == '~')?;
    let len = rest.chars().take_while(|c| *c == mark).count();
    (len >= 3).then_some((mark, len))
}

fn atx_heading(line: &str) -> Option<(usize, &str)> {
    let indent = line.len() - line.trim_start_matches(' ').len();
    if indent > 3 {
        return None;
    }
    let rest = &line[indent..];
    let level = rest.chars().take_while(|c| *c == '#').count();
    if !(1..=6).contains(&level) {
        return None;
    }
    let after = &rest[level..];
    if !after.is_empty() && !after.starts_with([' ', '\t']) {
        return None;
    }
    // A closing sequence of `#`s (preceded by a space) is not part of the heading.
    let text = after.trim();
    let without_closing = text.trim_end_matches('#');
    let text = if without_closing.is_empty() || without_closing.ends_with([' ', '\t']) {
        without_closing.trim_end()
    } else {
        text
    };
    Some((level, text))
}

fn setext_level(line: &str) -> Option<usize> {
    let trimmed = line.trim();
    if line.len() - line.trim_start_matches(' ').len() > 3 || trimmed.is_empty() {
        return None;
    }
    if trimmed.chars().all(|c| c == '=') {
        Some(1)
    } else if trimmed.chars().all(|c| c == '-') {
        Some(2)
    } else {
        None
    }
}

/// Inline markup reduced to its text: `![alt](src)` → `alt`, `[text](url)` → `text`,
/// `<https://…>` kept as the URL; emphasis and code marks are left as written.
fn inline_text(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(open) = rest.find('[') {
        let image = open > 0 && rest.as_bytes()[open - 1] == b'!';
        out.push_str(&rest[..if image { open - 1 } else { open }]);
        let after = &rest[open + 1..];
        let link = after.find("](").and_then(|close| {
            let target = &after[close + 2..];
            target
                .find(')')
                .map(|end| (&after[..close], close + 2 + end + 1))
        });
        match link {
            Some((text, consumed)) if !text.contains('[') => {
                out.push_str(text);
                rest = &after[consumed..];
            }
            _ => {
                out.push_str(if image { "![" } else { "[" });
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heads_and_bodies(text: &str) -> Vec<(Vec<String>, String)> {
        sections(text)
            .into_iter()
            .map(|s| (s.headings, s.body))
            .collect()
    }

    fn path(parts: &[&str]) -> Vec<String> {
        parts.iter().map(|p| p.to_string()).collect()
    }

    #[test]
    fn markdown_headings_become_heading_paths() {
        let text = "---\ntitle: x\n---\nIntro text.\n\n# Library\n\n## os\n\nMiscellaneous interfaces.\n\n### Files ###\n\nOpen them with [open](https://x/open) and ![a diagram](d.png).\n\n## sys\nSystem things.\n\nSetext\n======\nTop again.\n";
        assert_eq!(
            heads_and_bodies(text),
            vec![
                (path(&[]), "Intro text.".into()),
                (path(&["Library", "os"]), "Miscellaneous interfaces.".into()),
                (
                    path(&["Library", "os", "Files"]),
                    "Open them with open and a diagram.".into()
                ),
                (path(&["Library", "sys"]), "System things.".into()),
                (path(&["Setext"]), "Top again.".into()),
            ]
        );
    }

    #[test]
    fn markdown_code_fences_keep_hash_lines_as_text_and_comments_are_dropped() {
        let text = "# Shell\n\n```sh\n# not a heading\nls -la\n```\n<!-- hidden\nstill hidden -->\nAfter.\n#hashtag is text\n";
        assert_eq!(
            heads_and_bodies(text),
            vec![(
                path(&["Shell"]),
                "# not a heading\nls -la\nAfter.\n#hashtag is text".into()
            )]
        );
    }
}
