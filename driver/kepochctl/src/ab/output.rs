//! The output directory: checked writable before the first round, and files written whole (a
//! temporary name in the same directory, then a rename), so a failure or Ctrl-C never leaves a
//! half-written report file.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The name of round `round`'s file for `strategy`: `round-01-lazy.json`.
pub fn file_name(round: u32, strategy: &str) -> String {
    format!("round-{round:02}-{strategy}.json")
}

/// Creates `dir` when missing and proves it writable by writing and removing a probe file. `Err`
/// names the directory and the cause; nothing is left in it either way.
pub fn prepare(dir: &Path) -> Result<(), String> {
    let shown = dir.display();
    if dir.exists() && !dir.is_dir() {
        return Err(format!("--out {shown}: not a directory"));
    }
    fs::create_dir_all(dir).map_err(|e| format!("--out {shown}: cannot create it: {e}"))?;
    let probe = dir.join(format!(".kepochctl-probe-{}.tmp", std::process::id()));
    let written = fs::File::create(&probe).and_then(|mut f| f.write_all(b"probe"));
    let _ = fs::remove_file(&probe);
    written.map_err(|e| format!("--out {shown}: not writable: {e}"))
}

/// Writes `text` to `dir/name` through a temporary file renamed into place; returns the path.
pub fn write_whole(dir: &Path, name: &str, text: &str) -> Result<PathBuf, String> {
    let path = dir.join(name);
    let temp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = fs::File::create(&temp)
        .and_then(|mut f| {
            f.write_all(text.as_bytes())?;
            f.sync_all()
        })
        .and_then(|()| fs::rename(&temp, &path));
    if let Err(e) = result {
        let _ = fs::remove_file(&temp);
        return Err(format!("writing {}: {e}", path.display()));
    }
    Ok(path)
}

#[cfg(test)]
pub mod tests {
    use super::*;

    /// A fresh empty directory under the system's temporary directory.
    pub fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("kepochctl-test-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("scratch dir");
        dir
    }

    /// The names in `dir`, sorted.
    pub fn listing(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .map(|it| {
                it.filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    #[test]
    fn files_are_written_whole_and_the_probe_leaves_nothing() {
        let dir = scratch("output");
        let out = dir.join("new/sub");
        prepare(&out).unwrap();
        assert!(listing(&out).is_empty());
        let path = write_whole(&out, &file_name(3, "lazy"), "{}\n").unwrap();
        assert_eq!(path, out.join("round-03-lazy.json"));
        assert_eq!(fs::read_to_string(&path).unwrap(), "{}\n");
        assert_eq!(listing(&out), vec!["round-03-lazy.json"]);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_file_in_place_of_the_directory_is_refused() {
        let dir = scratch("not-a-dir");
        let file = dir.join("file");
        fs::write(&file, "x").unwrap();
        let e = prepare(&file).unwrap_err();
        assert!(e.contains("not a directory"), "{e}");
        let e = prepare(&file.join("below")).unwrap_err();
        assert!(e.contains("cannot create it"), "{e}");
        let e = write_whole(&file.join("below"), "x.json", "{}").unwrap_err();
        assert!(e.contains("x.json"), "{e}");
        assert_eq!(listing(&dir), vec!["file"]);
        let _ = fs::remove_dir_all(&dir);
    }
}
