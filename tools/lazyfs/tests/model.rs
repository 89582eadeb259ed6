//! The durability rules on the model and a real backing directory, without FUSE: what a
//! power cut keeps is what `backing::load` reads back after the syncs were applied.

use std::ffi::OsStr;
use std::path::Path;

use lazyfs::backing;
use lazyfs::model::{Data, Ino, Model, ROOT};

fn file(model: &mut Model, parent: Ino, name: &str, text: &str) -> Ino {
    let ino = model
        .create(parent, OsStr::new(name), Data::File(Vec::new()), 0o644)
        .unwrap();
    model.write(ino, 0, text.as_bytes()).unwrap();
    ino
}

fn sync_file(model: &mut Model, backing_dir: &Path, ino: Ino) {
    backing::apply(backing_dir, &model.sync_file(ino).unwrap()).unwrap();
}

fn sync_dir(model: &mut Model, backing_dir: &Path, ino: Ino) {
    backing::apply(backing_dir, &model.sync_dir(ino).unwrap()).unwrap();
}

/// The text of `path` in a model, or `None` when absent.
fn read(model: &Model, path: &str) -> Option<String> {
    let mut ino = ROOT;
    for name in path.split('/') {
        ino = model.lookup(ino, OsStr::new(name)).ok()?;
    }
    let bytes = model.read(ino, 0, usize::MAX).ok()?;
    Some(String::from_utf8(bytes.to_vec()).unwrap())
}

#[test]
fn a_power_cut_keeps_synced_data_and_synced_names_only() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = Model::new();
    let kept = file(&mut m, ROOT, "kept", "durable");
    sync_file(&mut m, dir.path(), kept);
    let unsynced = file(&mut m, ROOT, "named-not-synced", "data");
    let sub = m
        .create(ROOT, OsStr::new("sub"), Data::Dir(Default::default()), 0o755)
        .unwrap();
    let orphan = file(&mut m, sub, "orphan", "synced, but its directory never was");
    sync_file(&mut m, dir.path(), orphan);
    sync_dir(&mut m, dir.path(), ROOT);
    m.write(kept, 7, b"+lost").unwrap();
    m.truncate(unsynced, 2).unwrap();
    file(&mut m, ROOT, "late", "after the directory fsync");
    assert_eq!(
        read(&m, "kept").as_deref(),
        Some("durable+lost"),
        "reads see every write"
    );

    let lost = m.cut_power();
    assert!(
        m.lookup(ROOT, OsStr::new("kept")).is_err(),
        "nothing is served after the cut"
    );
    assert_eq!(
        (lost.files, lost.dirs),
        (3, 2),
        "kept, named-not-synced, late; / and /sub: {lost:?}"
    );

    let after = backing::load(dir.path()).unwrap();
    assert_eq!(read(&after, "kept").as_deref(), Some("durable"));
    assert_eq!(
        read(&after, "named-not-synced").as_deref(),
        Some(""),
        "its name was synced, not its data"
    );
    assert_eq!(read(&after, "sub/orphan"), None, "its directory was never synced");
    assert!(after.lookup(ROOT, OsStr::new("sub")).is_ok());
    assert_eq!(read(&after, "late"), None);
}

#[test]
fn a_rename_is_durable_once_its_directory_is_synced() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = Model::new();
    let old = file(&mut m, ROOT, "current", "old");
    sync_file(&mut m, dir.path(), old);
    let new = file(&mut m, ROOT, "tmp", "new");
    sync_file(&mut m, dir.path(), new);
    sync_dir(&mut m, dir.path(), ROOT);
    m.rename((ROOT, OsStr::new("tmp")), (ROOT, OsStr::new("current")), false)
        .unwrap();
    assert_eq!(read(&m, "current").as_deref(), Some("new"));

    let before_sync = backing::load(dir.path()).unwrap();
    assert_eq!(read(&before_sync, "current").as_deref(), Some("old"));
    assert_eq!(read(&before_sync, "tmp").as_deref(), Some("new"));

    sync_dir(&mut m, dir.path(), ROOT);
    let after_sync = backing::load(dir.path()).unwrap();
    assert_eq!(read(&after_sync, "current").as_deref(), Some("new"));
    assert_eq!(read(&after_sync, "tmp"), None);
}

#[test]
fn a_sync_writes_only_the_changed_range_and_the_length() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = Model::new();
    let journal = file(&mut m, ROOT, "journal", "");
    m.truncate(journal, 1 << 20).unwrap();
    sync_file(&mut m, dir.path(), journal);
    sync_dir(&mut m, dir.path(), ROOT);
    m.write(journal, 4096, b"record").unwrap();
    let steps = m.sync_file(journal).unwrap();
    assert!(
        matches!(&steps[..], [lazyfs::model::Persist::File { offset: 4096, bytes, len, .. }] if bytes == b"record" && *len == 1 << 20),
        "{steps:?}"
    );
    backing::apply(dir.path(), &steps).unwrap();
    let on_disk = std::fs::read(dir.path().join("journal")).unwrap();
    assert_eq!((on_disk.len(), &on_disk[4096..4102]), (1 << 20, &b"record"[..]));
    assert!(
        m.sync_file(journal).unwrap().is_empty(),
        "nothing changed since the last sync"
    );
}
