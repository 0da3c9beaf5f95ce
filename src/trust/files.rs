//! Writing files, in one place: atomically (a temporary file in the same directory, renamed
//! over the target) and with their final mode from the start, so a key is never readable by
//! others, not even briefly; directories meshup creates are 0700.

use std::fs;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

/// A file operation that failed, with what was being done and to which path.
#[derive(Debug, thiserror::Error)]
#[error("could not {action} `{}`: {source}; check the path and its permissions", path.display())]
pub struct FileError {
    /// What was being done, e.g. "read".
    pub action: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

impl FileError {
    /// A closure turning an `io::Error` into a `FileError` about `path`.
    pub fn about(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> FileError {
        let path = path.to_path_buf();
        move |source| FileError {
            action,
            path,
            source,
        }
    }
}

/// A file's text, or `None` when it does not exist.
pub fn read_optional(path: &Path) -> Result<Option<String>, FileError> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(FileError::about("read", path)(e)),
    }
}

/// Creates `dir` (and missing parents) with `mode` unless it exists.
pub fn ensure_dir(dir: &Path, mode: u32) -> Result<(), FileError> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, mode);
    #[cfg(not(unix))]
    let _ = mode;
    builder
        .create(dir)
        .map_err(FileError::about("create directory", dir))
}

/// Whether [`write`] may replace a file that exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Existing {
    Replace,
    /// Fail instead: a root key is never overwritten, not even by a second meshup creating
    /// one at the same moment.
    Keep,
}

/// Writes `contents` to `path` atomically, created with `mode`.
pub fn write(path: &Path, contents: &[u8], mode: u32, existing: Existing) -> Result<(), FileError> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let mut builder = tempfile::Builder::new();
    builder.prefix(".meshup-");
    #[cfg(unix)]
    builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(mode));
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = builder
        .tempfile_in(dir)
        .map_err(FileError::about("create a file in", dir))?;
    file.write_all(contents)
        .and_then(|()| file.as_file().sync_all())
        .map_err(FileError::about("write", path))?;
    let persisted = match existing {
        Existing::Replace => file.persist(path),
        Existing::Keep => file.persist_noclobber(path),
    };
    persisted.map_err(|e| FileError::about("write", path)(e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_creates_the_file_with_its_mode_and_replaces_it() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.pem");
        write(&path, b"one", 0o600, Existing::Replace).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"one");
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        write(&path, b"two", 0o600, Existing::Replace).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
    }

    #[test]
    fn keep_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("root-key.pem");
        write(&path, b"first", 0o600, Existing::Keep).unwrap();
        let err = write(&path, b"second", 0o600, Existing::Keep).unwrap_err();
        assert!(err.to_string().contains("root-key.pem"), "{err}");
        assert_eq!(fs::read(&path).unwrap(), b"first");
    }

    #[test]
    fn read_optional_tells_absent_from_unreadable() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_optional(&dir.path().join("none")).unwrap(), None);
        // A directory cannot be read as a file: an error, not "absent".
        assert!(read_optional(dir.path()).is_err());
    }
}
