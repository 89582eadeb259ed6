//! The pure core of lazyfs: one file tree seen two ways, with no FUSE, clock or disk.
//!
//! Every inode holds its `live` data (what reads see: every write, as a page cache would
//! show it) and its `durable` data (what a power cut leaves). A file's durable bytes are
//! its live bytes as of its last fsync; a directory's durable entries are its live entries
//! as of its last fsync of that directory. Nothing else makes anything durable: creating,
//! renaming or unlinking a name, `mkdir`, `rmdir` and truncation change only the live
//! tree until the directory (for names) or the file (for size) is fsynced. This is the
//! strict POSIX reading, stricter than ext4's (which commits a new file's entry with the
//! file); fjall fsyncs directories after creating or renaming files in them, so it must
//! survive it.
//!
//! This module keeps the tree and its live operations; `sync` makes things durable.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::ops::Range;

use thiserror::Error;

mod sync;

pub use sync::{Persist, Unsynced};

/// An inode number; the kernel's root is 1.
pub type Ino = u64;

/// The root directory's inode number (FUSE's `FUSE_ROOT_ID`).
pub const ROOT: Ino = 1;

/// Why an operation was refused; each maps to the errno a local filesystem returns.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum FsError {
    /// ENOENT.
    #[error("no such file or directory")]
    NotFound,
    /// EEXIST.
    #[error("file exists")]
    Exists,
    /// ENOTDIR.
    #[error("not a directory")]
    NotDir,
    /// EISDIR.
    #[error("is a directory")]
    IsDir,
    /// ENOTEMPTY.
    #[error("directory not empty")]
    NotEmpty,
    /// EFBIG: a file would outgrow [`MAX_FILE_BYTES`].
    #[error("file too large")]
    TooBig,
    /// EIO: the power is cut, nothing is served any more.
    #[error("the power is cut")]
    PoweredOff,
}

/// File contents or directory entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Data {
    /// A regular file's bytes.
    File(Vec<u8>),
    /// A directory's entries.
    Dir(BTreeMap<OsString, Ino>),
}

/// One inode.
#[derive(Debug)]
struct Node {
    /// What reads see.
    live: Data,
    /// What survives a power cut.
    durable: Data,
    /// Permission bits (`chmod` is not made durable: the backing files keep default modes).
    perm: u16,
    /// Live directory entries naming this inode; it is freed when this, `durable_links`
    /// and `open` are all zero.
    live_links: u32,
    /// Durable directory entries naming this inode.
    durable_links: u32,
    /// Open file handles: an unlinked file stays readable while open.
    open: u32,
    /// For a file, the byte range changed since its last fsync (`None`: live and durable
    /// bytes are equal), so a sync copies only what changed.
    changed: Option<Range<usize>>,
}

/// What `stat` reports about an inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    /// True for directories.
    pub is_dir: bool,
    /// Live size in bytes (entries for a directory).
    pub size: u64,
    /// Permission bits.
    pub perm: u16,
    /// Live directory entries naming it.
    pub links: u32,
}

/// The whole tree, live and durable.
#[derive(Debug)]
pub struct Model {
    /// Every inode still named (live or durably) or open.
    nodes: BTreeMap<Ino, Node>,
    /// The next inode number handed out.
    next_ino: Ino,
    /// False after [`Model::cut_power`]: every operation then fails.
    powered: bool,
}

impl Default for Model {
    fn default() -> Self {
        Model::new()
    }
}

impl Model {
    /// An empty root directory, durable as it is.
    pub fn new() -> Model {
        let root = Node::new(Data::Dir(BTreeMap::new()), DIR_PERM);
        let mut nodes = BTreeMap::new();
        nodes.insert(
            ROOT,
            Node {
                live_links: 1,
                durable_links: 1,
                ..root
            },
        );
        Model {
            nodes,
            next_ino: ROOT + 1,
            powered: true,
        }
    }

    /// Adds a name found in the backing directory at mount: durable and live alike.
    pub fn insert_loaded(&mut self, parent: Ino, name: &OsStr, data: Data) -> Result<Ino, FsError> {
        let ino = self.create(parent, name, data, DEFAULT_PERM)?;
        let node = self.node_mut(ino)?;
        node.durable = node.live.clone();
        node.durable_links = 1;
        let parent = self.node_mut(parent)?;
        parent.durable = parent.live.clone();
        Ok(ino)
    }

    /// The inode `name` in directory `parent`.
    pub fn lookup(&self, parent: Ino, name: &OsStr) -> Result<Ino, FsError> {
        self.entries_of(parent)?.get(name).copied().ok_or(FsError::NotFound)
    }

    /// `stat` of `ino`.
    pub fn stat(&self, ino: Ino) -> Result<Stat, FsError> {
        let node = self.node(ino)?;
        let (is_dir, size) = match &node.live {
            Data::File(bytes) => (false, bytes.len() as u64),
            Data::Dir(entries) => (true, entries.len() as u64),
        };
        Ok(Stat {
            is_dir,
            size,
            perm: node.perm,
            links: node.live_links,
        })
    }

    /// The live entries of directory `ino`, with whether each is a directory.
    pub fn list(&self, ino: Ino) -> Result<Vec<(OsString, Ino, bool)>, FsError> {
        let entries = self.entries_of(ino)?;
        Ok(entries
            .iter()
            .map(|(name, &child)| (name.clone(), child, matches!(self.nodes[&child].live, Data::Dir(_))))
            .collect())
    }

    /// Creates `name` in `parent` (a new empty file or directory, by `data`).
    pub fn create(&mut self, parent: Ino, name: &OsStr, data: Data, perm: u16) -> Result<Ino, FsError> {
        if self.entries_of(parent)?.contains_key(name) {
            return Err(FsError::Exists);
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        let durable = match &data {
            Data::File(_) => Data::File(Vec::new()),
            Data::Dir(_) => Data::Dir(BTreeMap::new()),
        };
        let node = Node {
            live_links: 1,
            durable,
            ..Node::new(data, perm)
        };
        self.nodes.insert(ino, node);
        self.entries_mut(parent)?.insert(name.to_owned(), ino);
        Ok(ino)
    }

    /// Removes the file `name` from `parent` (`unlink`).
    pub fn unlink(&mut self, parent: Ino, name: &OsStr) -> Result<(), FsError> {
        let ino = self.lookup(parent, name)?;
        if self.stat(ino)?.is_dir {
            return Err(FsError::IsDir);
        }
        self.entries_mut(parent)?.remove(name);
        self.drop_live_link(ino);
        Ok(())
    }

    /// Removes the empty directory `name` from `parent` (`rmdir`).
    pub fn rmdir(&mut self, parent: Ino, name: &OsStr) -> Result<(), FsError> {
        let ino = self.lookup(parent, name)?;
        if !self.entries_of(ino)?.is_empty() {
            return Err(FsError::NotEmpty);
        }
        self.entries_mut(parent)?.remove(name);
        self.drop_live_link(ino);
        Ok(())
    }

    /// Moves `parent/name` to `new_parent/new_name`, replacing what is there unless
    /// `no_replace`. (The kernel refuses moving a directory into itself before asking.)
    pub fn rename(
        &mut self,
        (parent, name): (Ino, &OsStr),
        (new_parent, new_name): (Ino, &OsStr),
        no_replace: bool,
    ) -> Result<(), FsError> {
        let ino = self.lookup(parent, name)?;
        self.entries_of(new_parent)?;
        if let Ok(target) = self.lookup(new_parent, new_name) {
            if target == ino {
                return Ok(());
            }
            let (moving, replaced) = (self.stat(ino)?, self.stat(target)?);
            match (moving.is_dir, replaced.is_dir) {
                _ if no_replace => return Err(FsError::Exists),
                (false, true) => return Err(FsError::IsDir),
                (true, false) => return Err(FsError::NotDir),
                (true, true) if replaced.size > 0 => return Err(FsError::NotEmpty),
                _ => {}
            }
        }
        self.entries_mut(parent)?.remove(name);
        if let Some(replaced) = self.entries_mut(new_parent)?.insert(new_name.to_owned(), ino) {
            self.drop_live_link(replaced);
        }
        Ok(())
    }

    /// Up to `size` live bytes of file `ino` from `offset`.
    pub fn read(&self, ino: Ino, offset: u64, size: usize) -> Result<&[u8], FsError> {
        let bytes = self.bytes_of(ino)?;
        let start = usize::try_from(offset).unwrap_or(usize::MAX).min(bytes.len());
        let end = start.saturating_add(size).min(bytes.len());
        Ok(&bytes[start..end])
    }

    /// Writes `data` at `offset` of file `ino`, zero-filling any gap.
    pub fn write(&mut self, ino: Ino, offset: u64, data: &[u8]) -> Result<(), FsError> {
        let end = offset.checked_add(data.len() as u64).ok_or(FsError::TooBig)?;
        let (offset, end) = (within_limit(offset)?, within_limit(end)?);
        let bytes = self.bytes_mut(ino)?;
        // A write past the end also changes the zeros between the old end and `offset`.
        let changed = offset.min(bytes.len())..end;
        if bytes.len() < end {
            bytes.resize(end, 0);
        }
        bytes[offset..end].copy_from_slice(data);
        self.mark_changed(ino, changed);
        Ok(())
    }

    /// Sets the live size of file `ino` (`truncate`, `set_len`).
    pub fn truncate(&mut self, ino: Ino, size: u64) -> Result<(), FsError> {
        let size = within_limit(size)?;
        let bytes = self.bytes_mut(ino)?;
        let changed = size.min(bytes.len())..size.max(bytes.len());
        bytes.resize(size, 0);
        self.mark_changed(ino, changed);
        Ok(())
    }

    /// Sets the permission bits of `ino`.
    pub fn set_perm(&mut self, ino: Ino, perm: u16) -> Result<(), FsError> {
        self.node_mut(ino)?.perm = perm;
        Ok(())
    }

    /// Counts an open handle of `ino`.
    pub fn open(&mut self, ino: Ino) -> Result<(), FsError> {
        self.node_mut(ino)?.open += 1;
        Ok(())
    }

    /// Releases an open handle of `ino`, freeing it if nothing names it any more.
    pub fn release(&mut self, ino: Ino) {
        if let Some(node) = self.nodes.get_mut(&ino) {
            node.open = node.open.saturating_sub(1);
            self.free_if_unused(ino);
        }
    }

    fn mark_changed(&mut self, ino: Ino, range: Range<usize>) {
        if let Some(node) = self.nodes.get_mut(&ino) {
            node.changed = Some(match node.changed.take() {
                Some(was) => was.start.min(range.start)..was.end.max(range.end),
                None => range,
            });
        }
    }

    fn drop_live_link(&mut self, ino: Ino) {
        if let Some(node) = self.nodes.get_mut(&ino) {
            node.live_links = node.live_links.saturating_sub(1);
        }
        self.free_if_unused(ino);
    }

    /// Forgets `ino` once nothing names it (live or durably) and nothing has it open;
    /// a freed directory's durable entries stop naming their inodes.
    fn free_if_unused(&mut self, ino: Ino) {
        let unused = self
            .nodes
            .get(&ino)
            .is_some_and(|n| n.live_links == 0 && n.durable_links == 0 && n.open == 0 && ino != ROOT);
        if !unused {
            return;
        }
        if let Some(Node {
            durable: Data::Dir(entries),
            ..
        }) = self.nodes.remove(&ino)
        {
            for child in entries.into_values() {
                if let Some(node) = self.nodes.get_mut(&child) {
                    node.durable_links = node.durable_links.saturating_sub(1);
                }
                self.free_if_unused(child);
            }
        }
    }

    fn node(&self, ino: Ino) -> Result<&Node, FsError> {
        if !self.powered {
            return Err(FsError::PoweredOff);
        }
        self.nodes.get(&ino).ok_or(FsError::NotFound)
    }

    fn node_mut(&mut self, ino: Ino) -> Result<&mut Node, FsError> {
        if !self.powered {
            return Err(FsError::PoweredOff);
        }
        self.nodes.get_mut(&ino).ok_or(FsError::NotFound)
    }

    fn entries_of(&self, ino: Ino) -> Result<&BTreeMap<OsString, Ino>, FsError> {
        match &self.node(ino)?.live {
            Data::Dir(entries) => Ok(entries),
            Data::File(_) => Err(FsError::NotDir),
        }
    }

    fn entries_mut(&mut self, ino: Ino) -> Result<&mut BTreeMap<OsString, Ino>, FsError> {
        match &mut self.node_mut(ino)?.live {
            Data::Dir(entries) => Ok(entries),
            Data::File(_) => Err(FsError::NotDir),
        }
    }

    fn bytes_of(&self, ino: Ino) -> Result<&Vec<u8>, FsError> {
        match &self.node(ino)?.live {
            Data::File(bytes) => Ok(bytes),
            Data::Dir(_) => Err(FsError::IsDir),
        }
    }

    fn bytes_mut(&mut self, ino: Ino) -> Result<&mut Vec<u8>, FsError> {
        match &mut self.node_mut(ino)?.live {
            Data::File(bytes) => Ok(bytes),
            Data::Dir(_) => Err(FsError::IsDir),
        }
    }
}

/// Largest file: every file lives in memory twice (live and durable bytes). Far
/// above what a test's data directory holds; a write past it gets EFBIG.
pub const MAX_FILE_BYTES: u64 = 1 << 30;

fn within_limit(size: u64) -> Result<usize, FsError> {
    match usize::try_from(size) {
        Ok(size) if size as u64 <= MAX_FILE_BYTES => Ok(size),
        _ => Err(FsError::TooBig),
    }
}

/// Permission bits of directories found at mount (the backing modes are not kept).
pub const DIR_PERM: u16 = 0o755;

/// Permission bits of files found at mount.
pub const DEFAULT_PERM: u16 = 0o644;

impl Node {
    fn new(live: Data, perm: u16) -> Node {
        Node {
            durable: live.clone(),
            live,
            perm,
            live_links: 0,
            durable_links: 0,
            open: 0,
            changed: None,
        }
    }

    /// Whether a power cut now would lose something of this inode.
    fn unsynced(&self) -> bool {
        match self.live {
            Data::File(_) => self.changed.is_some(),
            Data::Dir(_) => self.live != self.durable,
        }
    }
}
