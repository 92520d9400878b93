//! The one tokenizer of passages and queries, the same in `shardc`, native search and wasm.
//!
//! Words are maximal runs of alphanumeric characters (Unicode's `Alphabetic` and `Numeric`,
//! lowercased by Unicode's rules), except that a CJK ideograph, kana or hangul syllable is a word
//! by itself, as Unicode's word-boundary rules (UAX #29) make it. Identifiers stay findable whole
//! and by parts: words joined by `.`, `_`, `-` or `::` with nothing else between them also give
//! the joined form, so `os.path.join` yields `os`, `path`, `join` and `os.path.join`, and
//! `--filter-fields` yields `filter`, `fields` and `filter-fields`. A connector at either end
//! (`join.` at a sentence's end, `__init__`) joins nothing.
//!
//! Terms longer than [`TERM_BYTES_MAX`] are dropped (base64 blobs and hashes would only bloat
//! the dictionary), as tantivy's default tokenizer does with long tokens.

/// Longest term kept, in UTF-8 bytes.
pub const TERM_BYTES_MAX: usize = 64;

/// Words joined by connectors, at most this many in one compound: a dotted path longer than
/// this is still found by its parts.
const COMPOUND_WORDS_MAX: usize = 8;

/// The terms of `text` in order of appearance; compounds come right after their last part.
pub fn tokenize(text: &str) -> Vec<String> {
    let mut terms = Vec::new();
    each_term(text, |term| terms.push(term.to_owned()));
    terms
}

/// Calls `emit` with each term of `text` (see [`tokenize`]), without collecting them.
pub fn each_term(text: &str, mut emit: impl FnMut(&str)) {
    let mut state = Words::default();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if is_ideograph(c) {
            state.flush_word(&mut emit);
            state.finish_compound(&mut emit);
            let mut single = String::new();
            single.extend(c.to_lowercase());
            emit(&single);
            continue;
        }
        if c.is_alphanumeric() {
            state.word.extend(c.to_lowercase());
            continue;
        }
        state.flush_word(&mut emit);
        let joins = match c {
            '.' | '_' | '-' => state.pending.is_empty(),
            ':' => state.pending.is_empty() && chars.peek() == Some(&':'),
            _ => false,
        };
        if joins && state.compound_words > 0 {
            state.pending.push(c);
            if c == ':' {
                chars.next();
                state.pending.push(':');
            }
        } else {
            state.finish_compound(&mut emit);
        }
    }
    state.flush_word(&mut emit);
    state.finish_compound(&mut emit);
}

/// The tokenizer's state between characters.
#[derive(Default)]
struct Words {
    /// The word being read.
    word: String,
    /// The compound being built: its words joined by the connectors seen, and how many words.
    compound: String,
    compound_words: usize,
    /// Connector characters seen since the last word (only `.`, `_`, `-`, `::` join).
    pending: String,
}

impl Words {
    /// Emits the finished word (if any) and extends the compound with it (after the pending
    /// connector).
    fn flush_word(&mut self, emit: &mut impl FnMut(&str)) {
        if self.word.is_empty() {
            return;
        }
        if self.word.len() <= TERM_BYTES_MAX {
            emit(&self.word);
        }
        if self.compound_words >= COMPOUND_WORDS_MAX {
            // Too long to be one identifier: start over from this word.
            self.finish_compound(emit);
        }
        self.compound.push_str(&self.pending);
        self.compound.push_str(&self.word);
        self.compound_words += 1;
        self.pending.clear();
        self.word.clear();
    }

    /// Emits the compound if it joins two words or more, and starts a new one.
    fn finish_compound(&mut self, emit: &mut impl FnMut(&str)) {
        if self.compound_words > 1 && self.compound.len() <= TERM_BYTES_MAX {
            emit(&self.compound);
        }
        self.compound.clear();
        self.compound_words = 0;
        self.pending.clear();
    }
}

/// Scripts written without spaces between words, where each character is a word (UAX #29).
fn is_ideograph(c: char) -> bool {
    matches!(c as u32,
        0x3040..=0x30FF     // hiragana, katakana
        | 0x3400..=0x4DBF   // CJK extension A
        | 0x4E00..=0x9FFF   // CJK unified ideographs
        | 0xAC00..=0xD7AF   // hangul syllables
        | 0xF900..=0xFAFF   // CJK compatibility ideographs
        | 0x20000..=0x2FA1F // CJK extensions B–F, compatibility supplement
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_found_whole_and_by_parts() {
        assert_eq!(
            tokenize("Use os.path.join(a, b)."),
            ["use", "os", "path", "join", "os.path.join", "a", "b"]
        );
    }

    #[test]
    fn compounds_are_emitted_once_after_their_last_part() {
        assert_eq!(
            tokenize("std::io::Read and --filter-fields, snake_case"),
            [
                "std",
                "io",
                "read",
                "std::io::read",
                "and",
                "filter",
                "fields",
                "filter-fields",
                "snake",
                "case",
                "snake_case"
            ]
        );
    }

    #[test]
    fn connectors_at_the_ends_join_nothing() {
        assert_eq!(tokenize("__init__ end. x"), ["init", "end", "x"]);
        assert_eq!(tokenize("a..b a - b"), ["a", "b", "a", "b"]);
        assert_eq!(tokenize("a:b"), ["a", "b"]);
    }

    #[test]
    fn lowercases_unicode_and_splits_ideographs() {
        assert_eq!(tokenize("Straße ÉCOLE"), ["straße", "école"]);
        assert_eq!(
            tokenize("東京タワー abc"),
            ["東", "京", "タ", "ワ", "ー", "abc"]
        );
        assert_eq!(tokenize("3.14 v2"), ["3", "14", "3.14", "v2"]);
    }

    #[test]
    fn overlong_terms_are_dropped() {
        let long = "x".repeat(TERM_BYTES_MAX + 1);
        assert_eq!(tokenize(&format!("a {long} b")), ["a", "b"]);
    }
}
