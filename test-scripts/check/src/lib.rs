//! Test-only helpers for checking the scripts under `test-scripts/`.
//!
//! This crate has no runtime role. Its integration tests (`tests/scripts.rs`) parse every PowerShell
//! file under `test-scripts/` with tree-sitter-powershell and fail on any `ERROR` or `MISSING` node,
//! check comment-based help and strict mode, and run `shellcheck` on every `.sh` when it is installed.

use std::fmt;
use std::path::{Path, PathBuf};

/// One syntax problem found by tree-sitter in a PowerShell source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxProblem {
    /// `"ERROR"` (tokens the grammar could not place) or `"MISSING"` (a token the parser had to invent).
    pub kind: &'static str,
    /// 1-based line.
    pub line: usize,
    /// 1-based column (in bytes).
    pub column: usize,
    /// A short excerpt of the offending text, or the name of the missing token.
    pub detail: String,
}

impl fmt::Display for SyntaxProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}: {} {}",
            self.line, self.column, self.kind, self.detail
        )
    }
}

/// Parses a PowerShell tree with tree-sitter-powershell.
///
/// # Panics
/// If the grammar cannot be loaded (ABI mismatch between `tree-sitter` and the grammar crate).
pub fn parse_powershell(source: &str) -> tree_sitter::Tree {
    let mut parser = tree_sitter::Parser::new();
    parser
        .set_language(&tree_sitter_powershell::LANGUAGE.into())
        .expect("tree-sitter-powershell grammar is ABI-compatible with the tree-sitter crate");
    parser
        .parse(source, None)
        .expect("parser has a language and no timeout")
}

/// Every `ERROR` and `MISSING` node in `source`, in document order.
pub fn powershell_problems(source: &str) -> Vec<SyntaxProblem> {
    let tree = parse_powershell(source);
    let mut out = Vec::new();
    if !tree.root_node().has_error() {
        return out;
    }
    let mut stack = vec![tree.root_node()];
    while let Some(node) = stack.pop() {
        if node.is_error() || node.is_missing() {
            let pos = node.start_position();
            let detail = if node.is_missing() {
                format!("(expected `{}`)", node.kind())
            } else {
                let text = &source[node.start_byte()..node.end_byte()];
                let first: String = text.lines().next().unwrap_or("").chars().take(60).collect();
                format!("near `{}`", first.trim())
            };
            out.push(SyntaxProblem {
                kind: if node.is_missing() {
                    "MISSING"
                } else {
                    "ERROR"
                },
                line: pos.row + 1,
                column: pos.column + 1,
                detail,
            });
        }
        if node.has_error() {
            let mut cursor = node.walk();
            let children: Vec<_> = node.children(&mut cursor).collect();
            stack.extend(children.into_iter().rev());
        }
    }
    out.sort_by_key(|p| (p.line, p.column));
    out
}

/// Names of `function` statements in `source` that have no comment-based help (`.SYNOPSIS`) either
/// inside the function body or in the comment block directly above it.
pub fn functions_without_help(source: &str) -> Vec<String> {
    let tree = parse_powershell(source);
    let mut missing = Vec::new();
    let mut stack = vec![tree.root_node()];
    while let Some(node) = stack.pop() {
        if node.kind() == "function_statement" {
            let body = &source[node.start_byte()..node.end_byte()];
            let mut documented = body.contains(".SYNOPSIS");
            if !documented {
                // Help placed before the function: the nearest preceding comment sibling.
                let mut prev = node.prev_sibling();
                while let Some(p) = prev {
                    if p.kind() == "comment" {
                        documented = source[p.start_byte()..p.end_byte()].contains(".SYNOPSIS");
                        break;
                    }
                    if !p.is_extra() {
                        break;
                    }
                    prev = p.prev_sibling();
                }
            }
            if !documented {
                let name = node
                    .children(&mut node.walk())
                    .find(|c| c.kind() == "function_name")
                    .map(|c| source[c.start_byte()..c.end_byte()].to_string())
                    .unwrap_or_else(|| {
                        format!("<function at line {}>", node.start_position().row + 1)
                    });
                missing.push(name);
            }
        }
        let mut cursor = node.walk();
        stack.extend(node.children(&mut cursor));
    }
    missing.sort();
    missing
}

/// The `test-scripts/` directory (the parent of this crate).
pub fn scripts_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("test-scripts/check has a parent")
        .to_path_buf()
}

/// The fixtures directory, which holds deliberately broken files and is excluded from the walk.
pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// Every file under `root` whose extension (case-insensitive) is in `exts`, skipping `exclude`d
/// directories, `target/` directories and hidden directories. Sorted.
pub fn find_files(root: &Path, exts: &[&str], exclude: &[PathBuf]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let entries = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("cannot read directory {}: {e}", dir.display()));
        for entry in entries {
            let entry = entry.expect("directory entry");
            let path = entry.path();
            let file_type = entry.file_type().expect("file type");
            let name = entry.file_name().to_string_lossy().into_owned();
            if file_type.is_dir() {
                if name.starts_with('.') || name == "target" || exclude.iter().any(|x| x == &path) {
                    continue;
                }
                dirs.push(path);
            } else if file_type.is_file() {
                let ext = path
                    .extension()
                    .map(|e| e.to_string_lossy().to_ascii_lowercase())
                    .unwrap_or_default();
                if exts.iter().any(|x| x.eq_ignore_ascii_case(&ext)) {
                    out.push(path);
                }
            }
        }
    }
    out.sort();
    out
}

/// The PowerShell files (`.ps1`, `.psm1`, `.psd1`) under `test-scripts/`, fixtures excluded.
pub fn powershell_scripts() -> Vec<PathBuf> {
    find_files(&scripts_root(), &["ps1", "psm1", "psd1"], &[fixtures_dir()])
}

/// The shell scripts (`.sh`) under `test-scripts/` (fixtures excluded) and `c/` (the C API's build).
pub fn shell_scripts() -> Vec<PathBuf> {
    let mut scripts = find_files(&scripts_root(), &["sh"], &[fixtures_dir()]);
    scripts.extend(find_files(&scripts_root().join("../c"), &["sh"], &[]));
    scripts
}

/// Reads a script as text; PowerShell files may carry a UTF-8 BOM, which is stripped.
pub fn read_script(path: &Path) -> String {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {} as UTF-8: {e}", path.display()));
    text.strip_prefix('\u{feff}')
        .map(str::to_string)
        .unwrap_or(text)
}

/// Whether an executable named `program` is on `PATH`.
pub fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
        .unwrap_or(false)
}
