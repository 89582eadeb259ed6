//! The lazyfs binary through a real FUSE mount: programs see every write, a power cut
//! (SIGTERM) keeps only what they fsynced, and a remount serves exactly that.
//!
//! Needs FUSE (see `lazyfs::unavailable`); without it each test says why and passes
//! without running.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// Longest wait for lazyfs to mount or to exit after a cut.
const DEADLINE: Duration = Duration::from_secs(10);

/// Polling step while waiting for lazyfs.
const POLL: Duration = Duration::from_millis(10);

/// A running `lazyfs BACKING MOUNTPOINT`; dropping it cuts the power.
struct Mount {
    /// The lazyfs process.
    child: Child,
    /// Its stdout.
    out: PathBuf,
}

impl Mount {
    fn new(dir: &Path) -> Mount {
        let out = dir.join("lazyfs.out");
        let mut child = Command::new(env!("CARGO_BIN_EXE_lazyfs"))
            .args([dir.join("backing"), dir.join("mnt")])
            .stdout(File::create(&out).unwrap())
            .spawn()
            .unwrap();
        wait_for("lazyfs to mount", || {
            assert!(child.try_wait().unwrap().is_none(), "lazyfs exited before mounting");
            std::fs::read_to_string(&out).unwrap().contains("mounted")
        });
        Mount { child, out }
    }

    /// Cuts the power; returns lazyfs's account of what it dropped.
    fn cut(mut self) -> String {
        self.stop();
        std::fs::read_to_string(&self.out).unwrap()
    }

    fn stop(&mut self) {
        if self.child.try_wait().unwrap().is_none() {
            let pid = self.child.id().to_string();
            assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
            wait_for("lazyfs to exit", || self.child.try_wait().unwrap().is_some());
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.stop()));
    }
}

/// Polls `done` until it holds, panicking after [`DEADLINE`].
fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < DEADLINE, "waited {DEADLINE:?} for {what}");
        std::thread::sleep(POLL);
    }
}

/// A temporary directory with `backing/` and `mnt/`, or `None` (after saying why) when
/// FUSE cannot be mounted here.
fn setup() -> Option<tempfile::TempDir> {
    if let Some(reason) = lazyfs::unavailable() {
        // Straight to stderr: the test harness would swallow println! of a passing test.
        let _ = writeln!(std::io::stderr(), "lazyfs mount test skipped: {reason}");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("backing")).unwrap();
    std::fs::create_dir(dir.path().join("mnt")).unwrap();
    Some(dir)
}

fn fsync_dir(path: &Path) {
    File::open(path).unwrap().sync_all().unwrap();
}

fn append(path: &Path, text: &str) -> File {
    let mut file = OpenOptions::new().append(true).create(true).open(path).unwrap();
    file.write_all(text.as_bytes()).unwrap();
    file
}

fn read(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

#[test]
fn a_power_cut_forgets_what_was_not_fsynced() {
    let Some(dir) = setup() else { return };
    let mnt = dir.path().join("mnt");
    let mount = Mount::new(dir.path());
    append(&mnt.join("kept"), "durable").sync_all().unwrap();
    append(&mnt.join("named-not-synced"), "data");
    std::fs::create_dir(mnt.join("sub")).unwrap();
    append(&mnt.join("sub/orphan"), "synced; its directory never was")
        .sync_data()
        .unwrap();
    fsync_dir(&mnt);
    append(&mnt.join("kept"), "+lost");
    append(&mnt.join("late"), "created after the directory fsync");
    assert_eq!(
        read(&mnt.join("kept")).as_deref(),
        Some("durable+lost"),
        "reads see every write"
    );

    let report = mount.cut();
    assert!(report.contains("power cut"), "{report}");
    let _mount = Mount::new(dir.path());
    assert_eq!(read(&mnt.join("kept")).as_deref(), Some("durable"));
    assert_eq!(
        read(&mnt.join("named-not-synced")).as_deref(),
        Some(""),
        "name synced, data not"
    );
    assert_eq!(read(&mnt.join("sub/orphan")), None, "its directory was never synced");
    assert_eq!(read(&mnt.join("late")), None);
}

#[test]
fn a_rename_and_a_truncate_last_only_once_synced() {
    let Some(dir) = setup() else { return };
    let mnt = dir.path().join("mnt");
    let mount = Mount::new(dir.path());
    append(&mnt.join("current"), "old").sync_all().unwrap();
    append(&mnt.join("tmp"), "new").sync_all().unwrap();
    append(&mnt.join("long"), "0123456789").sync_all().unwrap();
    fsync_dir(&mnt);
    std::fs::rename(mnt.join("tmp"), mnt.join("current")).unwrap();
    OpenOptions::new()
        .write(true)
        .open(mnt.join("long"))
        .unwrap()
        .set_len(4)
        .unwrap();
    mount.cut();

    let mount = Mount::new(dir.path());
    assert_eq!(read(&mnt.join("current")).as_deref(), Some("old"));
    assert_eq!(read(&mnt.join("tmp")).as_deref(), Some("new"));
    assert_eq!(read(&mnt.join("long")).as_deref(), Some("0123456789"));
    std::fs::rename(mnt.join("tmp"), mnt.join("current")).unwrap();
    fsync_dir(&mnt);
    let long = OpenOptions::new().write(true).open(mnt.join("long")).unwrap();
    long.set_len(4).unwrap();
    long.sync_all().unwrap();
    mount.cut();

    let _mount = Mount::new(dir.path());
    assert_eq!(read(&mnt.join("current")).as_deref(), Some("new"));
    assert_eq!(read(&mnt.join("tmp")), None);
    assert_eq!(read(&mnt.join("long")).as_deref(), Some("0123"));
}
