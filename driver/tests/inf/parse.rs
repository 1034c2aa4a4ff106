//! A small INF reader: sections (case-insensitive names, in order of appearance) and their entries,
//! with `;` comments outside quotes removed.

use std::collections::BTreeMap;

/// Parsed INF: section name (lower-cased) -> entries in order, comments stripped.
pub struct Inf {
    sections: BTreeMap<String, Vec<Entry>>,
    /// Section names as written, in order of appearance (for messages and duplicate checks).
    order: Vec<String>,
}

/// One line of a section: `key = value` or a bare value list.
#[derive(Clone, Debug)]
pub struct Entry {
    /// The key, when the line has an `=` outside quotes.
    pub key: Option<String>,
    /// The value (or the whole line), whitespace-normalised.
    pub value: String,
}

/// `line` without its comment (a `;` outside quotes and what follows).
pub fn strip_comment(line: &str) -> &str {
    let mut in_quotes = false;
    for (i, c) in line.char_indices() {
        match c {
            '"' => in_quotes = !in_quotes,
            ';' if !in_quotes => return &line[..i],
            _ => {}
        }
    }
    line
}

impl Inf {
    /// Parses INF text (already decoded).
    pub fn parse(text: &str) -> Inf {
        let mut sections: BTreeMap<String, Vec<Entry>> = BTreeMap::new();
        let mut order = Vec::new();
        let mut current = String::new();
        for raw in text.lines() {
            let line = strip_comment(raw).trim();
            if line.is_empty() {
                continue;
            }
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                current = name.trim().to_ascii_lowercase();
                order.push(name.trim().to_string());
                sections.entry(current.clone()).or_default();
                continue;
            }
            let normalise = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
            let entry = match line.split_once('=') {
                Some((k, v)) if !k.contains('"') => Entry {
                    key: Some(k.trim().to_string()),
                    value: normalise(v.trim()),
                },
                _ => Entry {
                    key: None,
                    value: normalise(line),
                },
            };
            sections.entry(current.clone()).or_default().push(entry);
        }
        Inf { sections, order }
    }

    /// The entries of `section` (case-insensitive), if it exists.
    pub fn section(&self, section: &str) -> Option<&[Entry]> {
        self.sections
            .get(&section.to_ascii_lowercase())
            .map(Vec::as_slice)
    }

    /// The value of `key` in `section` (both case-insensitive).
    pub fn value(&self, section: &str, key: &str) -> Option<&str> {
        self.section(section)?.iter().find_map(|e| {
            e.key
                .as_deref()
                .filter(|k| k.eq_ignore_ascii_case(key))
                .map(|_| e.value.as_str())
        })
    }

    /// Every value of `key` in `section`.
    pub fn values<'a>(&'a self, section: &str, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.section(section)
            .into_iter()
            .flatten()
            .filter_map(move |e| {
                e.key
                    .as_deref()
                    .filter(|k| k.eq_ignore_ascii_case(key))
                    .map(|_| e.value.as_str())
            })
    }

    /// Section names as written, in order.
    pub fn section_names(&self) -> impl Iterator<Item = &str> {
        self.order.iter().map(String::as_str)
    }

    /// `%token%` -> its [Strings] value (unquoted); numeric DIRIDs like `%13%` are not tokens.
    pub fn string(&self, token: &str) -> Option<String> {
        self.value("Strings", token)
            .map(|v| v.trim_matches('"').to_string())
    }
}
