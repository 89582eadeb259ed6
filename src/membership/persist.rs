//! The layout history on disk: one file, `layout` in the node's data directory, replaced
//! atomically (written beside, fsynced, renamed over, directory fsynced), so a crash
//! leaves the old history or the new one, never a mix.

use std::fs::{self, File};
use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context};
use quorumkv_client::layout::LayoutHistory;
use serde::{Deserialize, Serialize};

/// Format of the file; bumped if it ever changes.
const FORMAT: u32 = 1;

/// What the file holds.
#[derive(Serialize, Deserialize)]
struct Stored {
    format: u32,
    history: LayoutHistory,
}

/// The history stored at `path`, or `None` if there is no file yet.
pub fn load(path: &Path) -> anyhow::Result<Option<LayoutHistory>> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let stored: Stored = rmp_serde::from_slice(&bytes)
        .with_context(|| format!("{} is not a layout history (damaged?)", path.display()))?;
    if stored.format != FORMAT {
        bail!(
            "{} has format {}, this build reads {FORMAT}",
            path.display(),
            stored.format
        );
    }
    stored
        .history
        .validate()
        .with_context(|| format!("{} holds an invalid layout history", path.display()))?;
    Ok(Some(stored.history))
}

/// Replaces the history at `path` with `history`, durably.
pub fn store(path: &Path, history: &LayoutHistory) -> anyhow::Result<()> {
    let bytes = rmp_serde::to_vec(&Stored {
        format: FORMAT,
        history: history.clone(),
    })?;
    let beside = path.with_extension("new");
    let mut file = File::create(&beside).with_context(|| format!("creating {}", beside.display()))?;
    file.write_all(&bytes)?;
    file.sync_all()?;
    fs::rename(&beside, path).with_context(|| format!("renaming {} over {}", beside.display(), path.display()))?;
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{load, store};
    use quorumkv_client::layout::LayoutHistory;
    use quorumkv_client::wire::Member;

    #[test]
    fn a_stored_history_loads_and_a_damaged_one_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("layout");
        assert!(load(&path).unwrap().is_none());
        let members = (1..=3)
            .map(|i| Member {
                id: format!("n{i}"),
                addr: format!("127.0.0.1:{}", 7000 + i).parse().unwrap(),
            })
            .collect();
        let history = LayoutHistory::seed(members, 64, 3).unwrap();
        store(&path, &history).unwrap();
        assert_eq!(load(&path).unwrap(), Some(history));
        std::fs::write(&path, b"\x93garbage").unwrap();
        let err = load(&path).unwrap_err();
        assert!(format!("{err:#}").contains("not a layout history"), "{err:#}");
    }
}
