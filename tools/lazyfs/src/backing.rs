//! The backing directory: the durable state on a real disk.
//!
//! At mount the whole backing tree is read into a [`Model`] (regular files and directories
//! only); while mounted, every sync's [`Persist`] steps are applied here before the sync
//! is answered, so the backing directory always holds exactly what was fsynced through the
//! mount. It is written, not fsynced: lazyfs simulates a power cut, it is not meant to
//! survive a real one.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::model::{Data, FsError, Ino, Model, Persist, ROOT};

/// A backing directory that cannot be loaded or written.
#[derive(Debug, Error)]
pub enum BackingError {
    /// A filesystem call on the backing directory failed.
    #[error("{path}: {source}")]
    Io {
        /// The backing path involved.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// Something other than a regular file or a directory (lazyfs models only those two).
    #[error("{path}: only regular files and directories are supported")]
    Unsupported {
        /// The backing path involved.
        path: PathBuf,
    },
    /// The model refused a loaded name (cannot happen for a tree read from disk).
    #[error("{path}: {source}")]
    Model {
        /// The backing path involved.
        path: PathBuf,
        /// The model's refusal.
        source: FsError,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BackingError + '_ {
    move |source| BackingError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Reads the tree under `root` into a model in which all of it is durable.
pub fn load(root: &Path) -> Result<Model, BackingError> {
    let mut model = Model::new();
    load_dir(&mut model, ROOT, root)?;
    Ok(model)
}

fn load_dir(model: &mut Model, ino: Ino, dir: &Path) -> Result<(), BackingError> {
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let entry = entry.map_err(io(dir))?;
        let path = entry.path();
        let kind = entry.file_type().map_err(io(&path))?;
        let data = if kind.is_file() {
            Data::File(std::fs::read(&path).map_err(io(&path))?)
        } else if kind.is_dir() {
            Data::Dir(Default::default())
        } else {
            return Err(BackingError::Unsupported { path });
        };
        let child = model
            .insert_loaded(ino, &entry.file_name(), data)
            .map_err(|source| BackingError::Model {
                path: path.clone(),
                source,
            })?;
        if kind.is_dir() {
            load_dir(model, child, &path)?;
        }
    }
    Ok(())
}

/// Applies sync steps under `root`, in order.
pub fn apply(root: &Path, steps: &[Persist]) -> Result<(), BackingError> {
    for step in steps {
        match step {
            Persist::File {
                path,
                offset,
                bytes,
                len,
            } => write_file(&root.join(path), *offset, bytes, *len)?,
            Persist::Dir { path } => {
                let path = root.join(path);
                remove(&path)?;
                std::fs::create_dir(&path).map_err(io(&path))?;
            }
            Persist::Remove { path } => remove(&root.join(path))?,
        }
    }
    Ok(())
}

/// Writes `bytes` at `offset` of the file at `path` and sets its length to `len` (a
/// journal that grew by a record costs one small write, not a rewrite).
fn write_file(path: &Path, offset: usize, bytes: &[u8], len: usize) -> Result<(), BackingError> {
    let mut file: File = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(io(path))?;
    file.set_len(len as u64).map_err(io(path))?;
    file.seek(SeekFrom::Start(offset as u64)).map_err(io(path))?;
    file.write_all(bytes).map_err(io(path))
}

fn remove(path: &Path) -> Result<(), BackingError> {
    let result = match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    };
    result.map_err(io(path))
}
