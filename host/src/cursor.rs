//! The durable cursor: the highest seq S such that every event with a seq up to S has been
//! acknowledged by Kafka (or deliberately dropped). The relay is asked for `?cursor=S` and sends
//! the frames after S.
//!
//! Guarantees: the file is replaced atomically (written to a temporary file beside it, synced,
//! renamed, and the directory synced), so a crash leaves either the old or the new value, never a
//! torn one. A cursor file that exists but cannot be read or parsed is an error, never treated as
//! "no cursor", because that would silently skip to the live position.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Why the cursor file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum CursorError {
    #[error("cannot read the cursor file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("the cursor file {path} does not hold a seq (found `{content}`); fix or delete it, or pass --cursor")]
    Invalid { path: PathBuf, content: String },
    #[error("cannot write the cursor file {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

/// Reads the cursor file: `Ok(None)` when it does not exist.
pub fn load(path: &Path) -> Result<Option<i64>, CursorError> {
    let content = match fs::read_to_string(path) {
        Ok(content) => content,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(CursorError::Read { path: path.to_owned(), source }),
    };
    let trimmed = content.trim();
    match trimmed.parse::<i64>() {
        Ok(seq) if seq >= 0 => Ok(Some(seq)),
        _ => Err(CursorError::Invalid { path: path.to_owned(), content: trimmed.chars().take(64).collect() }),
    }
}

/// Replaces the cursor file with `seq`, atomically and durably.
pub fn store(path: &Path, seq: i64) -> Result<(), CursorError> {
    let write_error = |source| CursorError::Write { path: path.to_owned(), source };
    let directory = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_owned(),
        _ => PathBuf::from("."),
    };
    let file_name = path.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default();
    let temporary = directory.join(format!(".{file_name}.tmp"));

    let mut file = File::create(&temporary).map_err(write_error)?;
    writeln!(file, "{seq}").map_err(write_error)?;
    file.sync_all().map_err(write_error)?;
    drop(file);
    fs::rename(&temporary, path).map_err(write_error)?;
    File::open(&directory).and_then(|directory| directory.sync_all()).map_err(write_error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temporary_path(name: &str) -> PathBuf {
        let directory = std::env::temp_dir().join(format!("atkafka-cursor-test-{}-{name}", std::process::id()));
        fs::create_dir_all(&directory).unwrap();
        directory.join("cursor")
    }

    #[test]
    fn stored_cursor_loads_back() {
        let path = temporary_path("roundtrip");
        assert_eq!(load(&path).unwrap(), None);
        store(&path, 31527015471).unwrap();
        assert_eq!(load(&path).unwrap(), Some(31527015471));
        store(&path, 31527015480).unwrap();
        assert_eq!(load(&path).unwrap(), Some(31527015480));
        fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[test]
    fn garbage_cursor_file_is_an_error_not_a_fresh_start() {
        let path = temporary_path("garbage");
        fs::write(&path, "not a number").unwrap();
        let error = load(&path).unwrap_err();
        assert!(error.to_string().contains("does not hold a seq"), "{error}");
        fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }
}

/// Writes the acknowledged seq to `path` every `interval` while it changes, until `cancel` fires;
/// the caller writes the final value after the last delivery report. A write failure is fatal.
pub async fn write_periodically(
    path: PathBuf,
    mut acknowledged: tokio::sync::watch::Receiver<Option<i64>>,
    interval: std::time::Duration,
    fatal: crate::fatal::FatalSender,
    cancel: tokio_util::sync::CancellationToken,
) {
    let mut written = *acknowledged.borrow_and_update();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let current = *acknowledged.borrow_and_update();
        let Some(seq) = current.filter(|_| current != written) else { continue };
        let target = path.clone();
        let result = tokio::task::spawn_blocking(move || store(&target, seq)).await;
        match result {
            Ok(Ok(())) => written = current,
            Ok(Err(error)) => {
                let _ = fatal.send(crate::fatal::Fatal::Cursor(error.to_string()));
                return;
            }
            Err(join_error) => {
                let _ = fatal.send(crate::fatal::Fatal::Cursor(format!("the cursor writer failed: {join_error}")));
                return;
            }
        }
    }
}
