//! How many bytes a store takes on disk: the blocks its files have allocated, as `du`
//! counts them. fjall's own `disk_space` adds up file lengths, which counts the whole
//! preallocated journal (64 MiB for a store holding a few keys).

use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Size of the unit `st_blocks` counts in, by POSIX.
const BLOCK_BYTES: u64 = 512;

/// Bytes allocated by the files under `dir`, subdirectories included.
pub fn allocated_bytes(dir: &Path) -> std::io::Result<u64> {
    let mut total = 0;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            // A file removed while walking (a compaction finishing) is simply not counted.
            let Ok(metadata) = entry.metadata() else { continue };
            if metadata.is_dir() {
                pending.push(entry.path());
            } else {
                total += metadata.blocks() * BLOCK_BYTES;
            }
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_allocated_blocks_of_nested_files_not_their_length() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/data"), vec![7u8; 64 * 1024]).unwrap();
        let sparse = std::fs::File::create(dir.path().join("sparse")).unwrap();
        sparse.set_len(64 << 20).unwrap();
        let bytes = allocated_bytes(dir.path()).unwrap();
        assert!(
            (64 * 1024..1 << 20).contains(&bytes),
            "the written file, not the sparse one: {bytes}"
        );
    }
}
