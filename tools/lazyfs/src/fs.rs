//! The FUSE face of lazyfs: kernel requests translated onto the [`Model`].
//!
//! One lock guards the model; a sync computes its [`Persist`] steps and applies them to the
//! backing directory under that lock before answering, so backing writes happen in sync
//! order and an answered fsync is on the backing directory. Inode and handle numbers are
//! the model's; file handles are not used (I/O is by inode). Not supported, with the errno
//! a program sees: symbolic and hard links (EPERM), device nodes and extended attributes
//! (ENOSYS), `RENAME_EXCHANGE` (EINVAL), `fallocate` (EOPNOTSUPP). Times are not kept:
//! every inode reports the mount time.

use std::ffi::OsStr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner, OpenFlags,
    RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs,
    ReplyWrite, Request, TimeOrNow, WriteFlags,
};

use crate::backing;
use crate::model::{Data, FsError, Ino, Model, Persist};

/// How long the kernel may cache names and attributes. Every change passes through this
/// filesystem, so the kernel's caches cannot go stale; a remount starts with empty ones.
const TTL: Duration = Duration::from_secs(1);

/// Block size reported by `stat` and `statfs`.
const BLOCK_SIZE: u32 = 4096;

/// Blocks reported free by `statfs`: 64 GiB of 4 KiB blocks, so programs that check for
/// space go ahead (the limit is the machine's memory, see `MAX_FILE_BYTES`).
const FREE_BLOCKS: u64 = 1 << 24;

/// The mounted filesystem.
pub struct LazyFs {
    /// Live and durable trees; shared with whoever may cut the power.
    model: Arc<Mutex<Model>>,
    /// Where syncs land.
    backing: PathBuf,
    /// Owner reported for every inode: the backing directory's.
    owner: (u32, u32),
    /// Reported as every inode's times.
    mounted_at: SystemTime,
}

impl LazyFs {
    /// A filesystem over `model`, persisting syncs under `backing`, owned by `owner`.
    pub fn new(model: Arc<Mutex<Model>>, backing: PathBuf, owner: (u32, u32)) -> LazyFs {
        LazyFs {
            model,
            backing,
            owner,
            mounted_at: SystemTime::now(),
        }
    }

    fn model(&self) -> MutexGuard<'_, Model> {
        // No model operation is meant to panic; should one, answering later requests beats
        // leaving the kernel (and the program under test) waiting on a dead lock.
        self.model.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn attr(&self, model: &Model, ino: Ino) -> Result<FileAttr, FsError> {
        let stat = model.stat(ino)?;
        Ok(FileAttr {
            ino: INodeNo(ino),
            size: stat.size,
            blocks: stat.size.div_ceil(512),
            atime: self.mounted_at,
            mtime: self.mounted_at,
            ctime: self.mounted_at,
            crtime: self.mounted_at,
            kind: if stat.is_dir {
                FileType::Directory
            } else {
                FileType::RegularFile
            },
            perm: stat.perm,
            nlink: stat.links.max(1),
            uid: self.owner.0,
            gid: self.owner.1,
            rdev: 0,
            blksize: BLOCK_SIZE,
            flags: 0,
        })
    }

    fn entry(&self, model: &Model, ino: Ino, reply: ReplyEntry) {
        match self.attr(model, ino) {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(errno(e)),
        }
    }

    /// Runs a sync and writes its steps to the backing directory.
    fn sync(&self, run: impl FnOnce(&mut Model) -> Result<Vec<Persist>, FsError>, reply: ReplyEmpty) {
        let mut model = self.model();
        let steps = match run(&mut model) {
            Ok(steps) => steps,
            Err(e) => return reply.error(errno(e)),
        };
        match backing::apply(&self.backing, &steps) {
            Ok(()) => reply.ok(),
            Err(e) => {
                eprintln!("lazyfs: writing the backing directory failed: {e}");
                reply.error(Errno::EIO)
            }
        }
    }
}

fn errno(e: FsError) -> Errno {
    match e {
        FsError::NotFound => Errno::ENOENT,
        FsError::Exists => Errno::EEXIST,
        FsError::NotDir => Errno::ENOTDIR,
        FsError::IsDir => Errno::EISDIR,
        FsError::NotEmpty => Errno::ENOTEMPTY,
        FsError::TooBig => Errno::EFBIG,
        FsError::PoweredOff => Errno::EIO,
    }
}

fn empty(reply: ReplyEmpty, result: Result<(), FsError>) {
    match result {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(errno(e)),
    }
}

/// Permission bits of a `mode` after `umask`.
fn perm(mode: u32, umask: u32) -> u16 {
    (mode & !umask & 0o7777) as u16
}

impl Filesystem for LazyFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let model = self.model();
        match model.lookup(parent.0, name) {
            Ok(ino) => self.entry(&model, ino, reply),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.attr(&self.model(), ino.0) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mut model = self.model();
        let changed = size
            .map_or(Ok(()), |size| model.truncate(ino.0, size))
            .and_then(|()| mode.map_or(Ok(()), |mode| model.set_perm(ino.0, perm(mode, 0))))
            .and_then(|()| self.attr(&model, ino.0));
        match changed {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn mkdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        let mut model = self.model();
        match model.create(parent.0, name, Data::Dir(Default::default()), perm(mode, umask)) {
            Ok(ino) => self.entry(&model, ino, reply),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        empty(reply, self.model().unlink(parent.0, name));
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        empty(reply, self.model().rmdir(parent.0, name));
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        if flags.contains(RenameFlags::RENAME_EXCHANGE) || flags.contains(RenameFlags::RENAME_WHITEOUT) {
            return reply.error(Errno::EINVAL);
        }
        let no_replace = flags.contains(RenameFlags::RENAME_NOREPLACE);
        empty(
            reply,
            self.model()
                .rename((parent.0, name), (newparent.0, newname), no_replace),
        );
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        // O_TRUNC never arrives here: without FUSE_ATOMIC_O_TRUNC (fuser does not ask for
        // it) the kernel truncates through `setattr` first.
        match self.model().open(ino.0) {
            Ok(()) => reply.opened(FileHandle(0), FopenFlags::empty()),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let mut model = self.model();
        let created = model
            .create(parent.0, name, Data::File(Vec::new()), perm(mode, umask))
            .and_then(|ino| model.open(ino).map(|()| ino))
            .and_then(|ino| self.attr(&model, ino));
        match created {
            Ok(attr) => reply.created(&TTL, &attr, Generation(0), FileHandle(0), FopenFlags::empty()),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.model().read(ino.0, offset, size as usize) {
            Ok(bytes) => reply.data(bytes),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.model().write(ino.0, offset, data) {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        // close() makes nothing durable.
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.model().release(ino.0);
        reply.ok();
    }

    fn fsync(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        // fdatasync makes the size durable too (it is the metadata needed to read the data).
        self.sync(|model| model.sync_file(ino.0), reply);
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let listed = match self.model().list(ino.0) {
            Ok(listed) => listed,
            Err(e) => return reply.error(errno(e)),
        };
        let dots = [(".".into(), ino.0, true), ("..".into(), ino.0, true)];
        let all = dots.into_iter().chain(listed).enumerate().skip(offset as usize);
        for (i, (name, child, is_dir)) in all {
            let kind = if is_dir {
                FileType::Directory
            } else {
                FileType::RegularFile
            };
            if reply.add(INodeNo(child), i as u64 + 1, kind, &name) {
                break;
            }
        }
        reply.ok();
    }

    fn fsyncdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        self.sync(|model| model.sync_dir(ino.0), reply);
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        reply.statfs(
            FREE_BLOCKS,
            FREE_BLOCKS,
            FREE_BLOCKS,
            1 << 20,
            1 << 20,
            BLOCK_SIZE,
            255,
            BLOCK_SIZE,
        );
    }

    fn access(&self, _req: &Request, ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        empty(reply, self.model().stat(ino.0).map(|_| ()));
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _length: u64,
        _mode: i32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EOPNOTSUPP);
    }
}
