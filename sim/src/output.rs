//! Output files (`--json`, `--svg`) opened before a command does its work, so that a path that cannot
//! be written (a missing or unwritable directory, a device such as `/dev/full`, a directory) or one
//! path given for two outputs is a bad argument at once, not an error after minutes of simulation.

use std::fs::File;
use std::io::{Seek, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// An output file, open for writing; its old content stays until [`OutputFile::write`].
pub struct OutputFile {
    flag: &'static str,
    path: PathBuf,
    file: File,
    /// The command created it (so it is removed if the command ends without writing it).
    created: bool,
}

/// What a path that is not a regular file is.
fn kind(meta: &std::fs::Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_dir() {
        "a directory"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}

impl OutputFile {
    /// Opens (creating it if needed) the regular file at `path` for the output of `flag`.
    fn open(flag: &'static str, path: &Path) -> Result<OutputFile, String> {
        let name = path.display();
        let existed = match std::fs::metadata(path) {
            Ok(meta) if !meta.is_file() => {
                return Err(format!(
                    "{flag} {name}: {}, not a regular file; give the path of a file to write",
                    kind(&meta)
                ))
            }
            Ok(_) => true,
            Err(_) => false,
        };
        let file = File::options()
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| format!("{flag} {name}: cannot write: {e}"))?;
        Ok(OutputFile {
            flag,
            path: path.to_path_buf(),
            file,
            created: !existed,
        })
    }

    /// The path, for messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Replaces the file's content with `text`.
    pub fn write(mut self, text: &str) -> Result<(), String> {
        let result = self
            .file
            .set_len(0)
            .and_then(|()| self.file.rewind())
            .and_then(|()| self.file.write_all(text.as_bytes()))
            .and_then(|()| self.file.sync_all());
        self.created = false;
        result.map_err(|e| format!("{} {}: cannot write: {e}", self.flag, self.path.display()))
    }

    fn identity(&self) -> Option<(u64, u64)> {
        self.file.metadata().ok().map(|m| (m.dev(), m.ino()))
    }
}

impl Drop for OutputFile {
    fn drop(&mut self) {
        // An output the command created and never wrote (it failed first) does not stay behind empty.
        if self.created {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Opens every given output (`(flag, path)`), refusing paths that cannot be written and two outputs
/// that name the same file (also through a link). The result has one entry per request.
pub fn open_outputs<const N: usize>(
    requests: [(&'static str, Option<&PathBuf>); N],
) -> Result<[Option<OutputFile>; N], String> {
    let mut opened: [Option<OutputFile>; N] = std::array::from_fn(|_| None);
    for (k, (flag, path)) in requests.into_iter().enumerate() {
        let Some(path) = path else {
            continue;
        };
        let output = OutputFile::open(flag, path)?;
        if let Some(other) = opened
            .iter()
            .flatten()
            .find(|o| o.identity().is_some() && o.identity() == output.identity())
        {
            return Err(format!(
                "{} {} and {flag} {} are the same file; give each output its own path",
                other.flag,
                other.path.display(),
                path.display()
            ));
        }
        opened[k] = Some(output);
    }
    Ok(opened)
}
