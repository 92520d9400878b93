//! Finds the documents to ingest: walks the files and folders given, keeps those the
//! `--include` globs admit and the `--exclude` globs do not, and reads each as UTF-8 text,
//! counting the files it skips (unreadable, binary, empty, not UTF-8) instead of failing.
//!
//! A document's *relative path* (its `source`, and the start of its chunk ids) is, with `/`
//! separators: for a file given, its name; for one folder given, the path inside it; with
//! several sources, a folder's files are prefixed by the folder's name (`docs/guide.md`
//! beside `README.md`). Hidden files and folders (names starting with `.`) are not walked, nor are
//! symbolic links to folders. Globs match the relative path, `*` crossing folders too (so
//! `*.md` is every Markdown file); `--exclude` also matches any folder above the file
//! (`--exclude node_modules`).

use std::fmt;
use std::path::{Path, PathBuf};

use super::super::BuildError;

/// A file to read: its relative path and where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub rel: String,
    pub path: PathBuf,
}

/// Why a file was not ingested.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    Unreadable,
    Binary,
    Empty,
    NotUtf8,
}

/// How many files were skipped, by reason.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Skipped {
    pub unreadable: usize,
    pub binary: usize,
    pub empty: usize,
    pub not_utf8: usize,
}

impl Skipped {
    pub fn count(&mut self, skip: Skip) {
        match skip {
            Skip::Unreadable => self.unreadable += 1,
            Skip::Binary => self.binary += 1,
            Skip::Empty => self.empty += 1,
            Skip::NotUtf8 => self.not_utf8 += 1,
        }
    }

    pub fn total(&self) -> usize {
        self.unreadable + self.binary + self.empty + self.not_utf8
    }
}

impl fmt::Display for Skipped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} unreadable, {} binary, {} empty, {} not UTF-8",
            self.unreadable, self.binary, self.empty, self.not_utf8
        )
    }
}

/// The `--include` and `--exclude` globs.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    include: Vec<glob::Pattern>,
    exclude: Vec<glob::Pattern>,
}

const MATCH: glob::MatchOptions = glob::MatchOptions {
    case_sensitive: true,
    require_literal_separator: false,
    require_literal_leading_dot: false,
};

impl Filter {
    pub fn new(include: &[String], exclude: &[String]) -> Result<Filter, BuildError> {
        let compile = |globs: &[String], flag: &str| {
            globs
                .iter()
                .map(|g| {
                    glob::Pattern::new(g)
                        .map_err(|e| BuildError::Invalid(format!("{flag} {g:?}: {e}")))
                })
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(Filter {
            include: compile(include, "--include")?,
            exclude: compile(exclude, "--exclude")?,
        })
    }

    /// Whether a folder (by relative path) is walked at all.
    fn walks(&self, rel_dir: &str) -> bool {
        !self.exclude.iter().any(|p| p.matches_with(rel_dir, MATCH))
    }

    /// Whether a file (by relative path) is ingested.
    pub fn admits(&self, rel: &str) -> bool {
        let mut ancestors = rel.match_indices('/').map(|(i, _)| &rel[..i]);
        let excluded = self.exclude.iter().any(|p| p.matches_with(rel, MATCH))
            || ancestors.any(|dir| !self.walks(dir));
        let included =
            self.include.is_empty() || self.include.iter().any(|p| p.matches_with(rel, MATCH));
        included && !excluded
    }
}

/// Every file under `sources` the filter admits, sorted by relative path. A source that does
/// not exist is an error; a folder that cannot be listed counts as unreadable.
pub fn walk(
    sources: &[PathBuf],
    filter: &Filter,
    skipped: &mut Skipped,
) -> Result<Vec<Candidate>, BuildError> {
    if sources.is_empty() {
        return Err(BuildError::Invalid(
            "no source files or folders given".into(),
        ));
    }
    let mut found = Vec::new();
    for source in sources {
        let meta = std::fs::metadata(source).map_err(BuildError::io(source))?;
        let prefix = if sources.len() > 1 {
            Some(source_name(source)?)
        } else {
            None
        };
        if meta.is_dir() {
            walk_dir(
                source,
                prefix.as_deref().unwrap_or(""),
                filter,
                skipped,
                &mut found,
            );
        } else {
            // A file given is known by its name, with one source or several.
            let rel = source_name(source)?;
            if filter.admits(&rel) {
                found.push(Candidate {
                    rel,
                    path: source.clone(),
                });
            }
        }
    }
    found.sort_by(|a, b| a.rel.cmp(&b.rel));
    if let Some(pair) = found.windows(2).find(|w| w[0].rel == w[1].rel) {
        return Err(BuildError::Invalid(format!(
            "{} and {} would both be {:?}: give sources with different names",
            pair[0].path.display(),
            pair[1].path.display(),
            pair[0].rel
        )));
    }
    Ok(found)
}

fn source_name(source: &Path) -> Result<String, BuildError> {
    let absolute = std::fs::canonicalize(source).map_err(BuildError::io(source))?;
    absolute
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| BuildError::Invalid(format!("{} has no name", source.display())))
}

fn walk_dir(
    dir: &Path,
    rel_dir: &str,
    filter: &Filter,
    skipped: &mut Skipped,
    found: &mut Vec<Candidate>,
) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        skipped.count(Skip::Unreadable);
        return;
    };
    for entry in entries {
        let Ok(entry) = entry else {
            skipped.count(Skip::Unreadable);
            continue;
        };
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let rel = if rel_dir.is_empty() {
            name
        } else {
            format!("{rel_dir}/{name}")
        };
        let Ok(kind) = entry.file_type() else {
            skipped.count(Skip::Unreadable);
            continue;
        };
        let path = entry.path();
        if kind.is_dir() {
            if filter.walks(&rel) {
                walk_dir(&path, &rel, filter, skipped, found);
            }
        } else if (kind.is_file() || (kind.is_symlink() && path.is_file())) && filter.admits(&rel) {
            found.push(Candidate { rel, path });
        }
    }
}

/// A file's text, or why it is skipped: unreadable, binary (has a NUL byte), empty (nothing
/// but whitespace) or not UTF-8. A leading byte-order mark is dropped.
pub fn read_text(path: &Path) -> Result<String, Skip> {
    let bytes = std::fs::read(path).map_err(|_| Skip::Unreadable)?;
    if bytes.contains(&0) {
        return Err(Skip::Binary);
    }
    let text = String::from_utf8(bytes).map_err(|_| Skip::NotUtf8)?;
    let text = text
        .strip_prefix('\u{feff}')
        .map(str::to_string)
        .unwrap_or(text);
    if text.trim().is_empty() {
        return Err(Skip::Empty);
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, rel: &str, bytes: &[u8]) {
        let path = dir.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }

    #[test]
    fn walk_applies_globs_skips_hidden_and_sorts_relative_paths() {
        let dir = tempfile::tempdir().unwrap();
        for rel in [
            "b.md",
            "a/x.md",
            "a/y.html",
            "node_modules/m.md",
            ".git/c.md",
            "a/.h.md",
        ] {
            write(dir.path(), rel, b"text");
        }
        let rels = |include: &[&str], exclude: &[&str]| {
            let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
            let filter = Filter::new(&s(include), &s(exclude)).unwrap();
            let mut skipped = Skipped::default();
            walk(&[dir.path().to_path_buf()], &filter, &mut skipped)
                .unwrap()
                .into_iter()
                .map(|c| c.rel)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            rels(&[], &[]),
            ["a/x.md", "a/y.html", "b.md", "node_modules/m.md"]
        );
        assert_eq!(rels(&["*.md"], &["node_modules"]), ["a/x.md", "b.md"]);
        assert_eq!(rels(&["a/**"], &["*.html"]), ["a/x.md"]);
        assert!(Filter::new(&["[".into()], &[]).is_err());
    }

    #[test]
    fn several_sources_are_prefixed_by_their_names_and_must_not_collide() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "docs/guide.md", b"g");
        write(dir.path(), "README.md", b"r");
        write(dir.path(), "other/README.md", b"r2");
        let mut skipped = Skipped::default();
        let filter = Filter::default();
        let found = walk(
            &[dir.path().join("docs"), dir.path().join("README.md")],
            &filter,
            &mut skipped,
        )
        .unwrap();
        let rels: Vec<&str> = found.iter().map(|c| c.rel.as_str()).collect();
        assert_eq!(rels, ["README.md", "docs/guide.md"]);
        let clash = walk(
            &[
                dir.path().join("README.md"),
                dir.path().join("other/README.md"),
            ],
            &filter,
            &mut skipped,
        );
        assert!(clash.err().unwrap().to_string().contains("both"));
        assert!(walk(&[dir.path().join("missing")], &filter, &mut skipped).is_err());
    }

    #[test]
    fn binary_empty_and_non_utf8_files_are_skipped_with_their_reason() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "bin", b"ab\0cd");
        write(dir.path(), "empty", b" \n\t");
        write(dir.path(), "latin1", b"caf\xe9");
        write(dir.path(), "bom", b"\xef\xbb\xbfhello");
        assert_eq!(read_text(&dir.path().join("bin")), Err(Skip::Binary));
        assert_eq!(read_text(&dir.path().join("empty")), Err(Skip::Empty));
        assert_eq!(read_text(&dir.path().join("latin1")), Err(Skip::NotUtf8));
        assert_eq!(
            read_text(&dir.path().join("missing")),
            Err(Skip::Unreadable)
        );
        assert_eq!(read_text(&dir.path().join("bom")).unwrap(), "hello");
        let mut skipped = Skipped::default();
        [
            Skip::Binary,
            Skip::Empty,
            Skip::NotUtf8,
            Skip::Unreadable,
            Skip::Binary,
        ]
        .into_iter()
        .for_each(|s| skipped.count(s));
        assert_eq!(skipped.total(), 5);
        assert_eq!(
            skipped.to_string(),
            "1 unreadable, 2 binary, 1 empty, 1 not UTF-8"
        );
    }
}
