//! `lazyfs --check`: prints `available` (exit 0) or why FUSE cannot be used here (exit 2).
//!
//! `lazyfs BACKING MOUNTPOINT`: mounts lazyfs (see the library docs for what is durable)
//! and prints `mounted` on stdout once it serves. SIGINT or SIGTERM cuts the power:
//! unsynced changes are dropped, the filesystem is unmounted and the process exits 0,
//! printing what was dropped. Mount it again on the same BACKING to see what survived.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use nix::sys::signal::{SigSet, Signal};

/// Exit status of `--check` when FUSE cannot be used here.
const UNAVAILABLE: i32 = 2;

/// How often the main thread checks whether someone unmounted the filesystem.
const UNMOUNT_POLL: Duration = Duration::from_millis(200);

fn main() {
    if let Err(e) = run() {
        eprintln!("lazyfs: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    if args.len() == 1 && args[0] == Path::new("--check") {
        match lazyfs::unavailable() {
            None => println!("available"),
            Some(reason) => {
                println!("{reason}");
                std::process::exit(UNAVAILABLE);
            }
        }
        return Ok(());
    }
    let [backing, mountpoint] = args.as_slice() else {
        return Err("usage: lazyfs BACKING MOUNTPOINT | lazyfs --check".into());
    };
    // Blocked before any thread starts, so every thread inherits the mask and only the
    // waiter below receives the signals.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGTERM);
    signals.thread_block().map_err(|e| format!("blocking signals: {e}"))?;
    let mounted = lazyfs::mount(backing, mountpoint).map_err(|e| e.to_string())?;
    println!("mounted {} on {}", backing.display(), mountpoint.display());

    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(signals.wait());
    });
    loop {
        match rx.recv_timeout(UNMOUNT_POLL) {
            Ok(signal) => {
                let dropped = mounted.cut_power();
                println!(
                    "power cut ({}): dropped {} unsynced bytes of {} files and unsynced entries of {} directories: {:?}",
                    signal.map_or_else(|e| e.to_string(), |s| s.as_str().to_string()),
                    dropped.bytes,
                    dropped.files,
                    dropped.dirs,
                    dropped.paths
                );
                return Ok(());
            }
            Err(mpsc::RecvTimeoutError::Timeout) if mounted.is_unmounted() => {
                println!("unmounted from outside: unsynced changes dropped");
                return Ok(());
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return Err("the signal waiter stopped".into()),
        }
    }
}
