//! lazyfs: a FUSE filesystem that forgets every write not fsynced when the power is cut,
//! in the spirit of LazyFS, for testing that a program's acknowledged writes survive power
//! loss (a SIGKILL cannot show that: the page cache survives it).
//!
//! While mounted, reads see every write. The backing directory holds only what was made
//! durable, by these rules (see [`model`]):
//! - `fsync`/`fdatasync` of a file makes its bytes and size durable;
//! - `fsync` of a directory makes its entries durable: names created, renamed into or out
//!   of it, unlinked from it, subdirectories made or removed;
//! - nothing else does: not `write`, `close`, `rename`, `truncate`/`set_len` or `mkdir`.
//!
//! A file created and fsynced whose directory was never fsynced is gone after a cut, as
//! strict POSIX allows (ext4 would usually keep it). [`Mounted::cut_power`] (the binary:
//! SIGINT or SIGTERM) stops serving, unmounts and drops everything unsynced; mounting
//! the same backing directory again serves exactly the durable state.
//!
//! Limits: only regular files and directories; every file is held in memory twice (its
//! live and its durable bytes), so it suits a test's data directory, not a disk.

pub mod backing;
pub mod fs;
pub mod model;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use fuser::{BackgroundSession, Config, MountOption};
use thiserror::Error;

use crate::backing::BackingError;
use crate::fs::LazyFs;
use crate::model::{Model, Unsynced};

/// Mounting failed.
#[derive(Debug, Error)]
pub enum MountError {
    /// The backing directory could not be read.
    #[error("loading the backing directory: {0}")]
    Backing(#[from] BackingError),
    /// The kernel or fusermount3 refused the mount.
    #[error("mounting at {mountpoint}: {source}")]
    Mount {
        /// Where the mount was asked for.
        mountpoint: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
}

/// A mounted lazyfs; dropping it cuts the power too.
pub struct Mounted {
    /// The FUSE session; dropping it unmounts.
    session: Option<BackgroundSession>,
    /// The trees, to cut the power before unmounting.
    model: Arc<Mutex<Model>>,
    /// Where it is mounted, to detach it at the cut.
    mountpoint: PathBuf,
}

/// Mounts lazyfs at `mountpoint`, serving the tree under `backing`.
pub fn mount(backing: &Path, mountpoint: &Path) -> Result<Mounted, MountError> {
    let mount_error = |source| MountError::Mount {
        mountpoint: mountpoint.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(backing).map_err(|source| BackingError::Io {
        path: backing.to_path_buf(),
        source,
    })?;
    let model = Arc::new(Mutex::new(backing::load(backing)?));
    let fs = LazyFs::new(model.clone(), backing.to_path_buf(), (meta.uid(), meta.gid()));
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName("lazyfs".into()),
        MountOption::Subtype("lazyfs".into()),
    ];
    let session = fuser::spawn_mount(fs, mountpoint, &config).map_err(mount_error)?;
    Ok(Mounted {
        session: Some(session),
        model,
        mountpoint: mountpoint.to_path_buf(),
    })
}

impl Mounted {
    /// Simulates a power cut: every later request fails, unsynced changes are dropped and
    /// the filesystem is unmounted. Returns what was dropped.
    pub fn cut_power(mut self) -> Unsynced {
        self.cut()
    }

    /// True once the filesystem was unmounted from outside (`umount`, `fusermount3 -u`),
    /// which drops unsynced changes just as a cut does.
    pub fn is_unmounted(&self) -> bool {
        self.session.as_ref().is_none_or(|s| s.guard.is_finished())
    }

    fn cut(&mut self) -> Unsynced {
        let dropped = self.model.lock().unwrap_or_else(|p| p.into_inner()).cut_power();
        if let Err(e) = detach(&self.mountpoint) {
            eprintln!("lazyfs: unmounting {}: {e}", self.mountpoint.display());
        }
        drop(self.session.take());
        dropped
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if self.session.is_some() {
            self.cut();
        }
    }
}

/// Why lazyfs cannot be mounted here, if it cannot: FUSE needs `/dev/fuse` open for
/// reading and writing, and a non-root user needs `fusermount3` (Debian package fuse3).
/// Tests skip with this reason rather than fail.
pub fn unavailable() -> Option<String> {
    if let Err(e) = std::fs::OpenOptions::new().read(true).write(true).open("/dev/fuse") {
        return Some(format!("/dev/fuse cannot be opened for reading and writing: {e}"));
    }
    let root = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
    let fusermount = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join("fusermount3").exists()));
    match root || fusermount {
        true => None,
        false => Some("not root and no fusermount3 to mount with (Debian: apt-get install fuse3)".into()),
    }
}

/// Unmounts lazily (`MNT_DETACH`): a plain unmount fails with EBUSY while the kernel still
/// releases files a killed process held, and fuser's own unmount is a plain one. Root
/// unmounts directly, anyone else through `fusermount3 -u -z`.
fn detach(mountpoint: &Path) -> std::io::Result<()> {
    match nix::mount::umount2(mountpoint, nix::mount::MntFlags::MNT_DETACH) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EPERM) => {
            let status = std::process::Command::new("fusermount3")
                .arg("-u")
                .arg("-z")
                .arg(mountpoint)
                .status()?;
            match status.success() {
                true => Ok(()),
                false => Err(std::io::Error::other(format!("fusermount3 -u -z: {status}"))),
            }
        }
        Err(e) => Err(e.into()),
    }
}
