use super::{Change, LayoutError, LayoutHistory, Progress};
use crate::wire::Member;

fn member(i: u16) -> Member {
    Member {
        id: format!("n{i}"),
        addr: format!("127.0.0.1:{}", 7000 + i).parse().unwrap(),
    }
}

fn seeded(count: u16) -> LayoutHistory {
    LayoutHistory::seed((1..=count).map(member).collect(), 256, 3).unwrap()
}

fn add(history: &LayoutHistory, i: u16) -> LayoutHistory {
    let m = member(i);
    history.change(&Change::Add { id: m.id, addr: m.addr }).unwrap()
}

/// Every member of the newest layout publishes `progress` for it.
fn everyone(history: &mut LayoutHistory, progress: fn(u64) -> Progress) {
    let version = history.newest().version;
    for i in history.members() {
        let id = history.roster[i].id.clone();
        history.advance(&id, progress(version));
    }
}

#[test]
fn a_move_reads_old_until_everyone_synced_and_retires_when_everyone_knows() {
    let start = seeded(3);
    let mut history = add(&start, 4);
    assert!(history.moving());
    assert!(history.epoch() > start.epoch());
    assert_eq!(history.read_version(), 1);
    assert!(!history.all_acked(), "the new node has not acked yet");
    everyone(&mut history, |v| Progress {
        ack: v,
        ..Progress::done(v - 1)
    });
    assert!(history.all_acked());
    assert_eq!(history.read_version(), 1);
    let acked = history.epoch();
    everyone(&mut history, |v| Progress {
        ack: v,
        sync: v,
        sync_ack: v - 1,
    });
    assert_eq!(history.read_version(), 2, "everyone synced: reads move");
    assert!(history.moving(), "but writes still reach both until everyone knows");
    assert!(history.epoch() > acked);
    let switched = history.epoch();
    everyone(&mut history, Progress::done);
    assert!(!history.moving(), "the old layout retired");
    assert!(history.epoch() > switched);
}

#[test]
fn merging_in_any_order_gives_the_same_history() {
    let start = seeded(3);
    let mut a = add(&start, 4);
    let mut b = start.clone();
    let mut c = start.clone();
    a.advance("n1", Progress::done(2));
    assert!(b.merge(&a).unwrap());
    c.advance(
        "n2",
        Progress {
            ack: 2,
            ..Progress::done(1)
        },
    );
    c.merge(&a).unwrap();
    b.merge(&c).unwrap();
    a.merge(&c).unwrap();
    assert_eq!(a, b);
    assert!(!a.merge(&b).unwrap(), "merging what it holds changes nothing");
    assert!(!b.merge(&start).unwrap(), "an older history changes nothing");
}

#[test]
fn a_new_member_pulls_what_it_gains_from_every_old_owner_but_the_gone() {
    let history = add(&seeded(3), 4);
    let pulls = history.pulls_for(3).unwrap();
    let gained = &history
        .moves()
        .unwrap()
        .into_iter()
        .find(|m| m.id == "n4")
        .unwrap()
        .gains;
    assert_eq!(
        pulls.len(),
        gained.len() * 3,
        "each gained partition from its three old owners"
    );
    assert!(history.pulls_for(0).unwrap().is_empty(), "n1 gains nothing");
    let replaced = seeded(4)
        .change(&Change::Replace {
            old: "n2".into(),
            new: "n5".into(),
            addr: member(5).addr,
        })
        .unwrap();
    let pulls = replaced.pulls_for(4).unwrap();
    assert!(!pulls.is_empty());
    assert!(
        pulls.iter().all(|&(_, source)| source != 1),
        "never from the replaced n2"
    );
    assert_eq!(
        pulls.len(),
        2 * pulls
            .iter()
            .map(|p| p.0)
            .collect::<std::collections::BTreeSet<_>>()
            .len()
    );
}

#[test]
fn changes_are_refused_with_the_reason() {
    let three = seeded(3);
    let remove = |id: &str| Change::Remove {
        id: id.into(),
        gone: false,
    };
    assert_eq!(
        three.change(&remove("n1")).unwrap_err(),
        LayoutError::BelowReplication {
            left: 2,
            replication_factor: 3
        }
    );
    assert_eq!(
        three.change(&remove("n9")).unwrap_err(),
        LayoutError::NotAMember("n9".into())
    );
    let m = member(1);
    assert_eq!(
        three
            .change(&Change::Add {
                id: "n1".into(),
                addr: m.addr
            })
            .unwrap_err(),
        LayoutError::AlreadyMember("n1".into())
    );
    assert!(matches!(
        three
            .change(&Change::Add {
                id: "n9".into(),
                addr: m.addr
            })
            .unwrap_err(),
        LayoutError::AddressInUse { .. }
    ));
    let moving = add(&three, 4);
    assert!(matches!(
        moving.change(&remove("n4")).unwrap_err(),
        LayoutError::MoveUnderWay { from: 1, to: 2 }
    ));
    let mut four = moving;
    everyone(&mut four, Progress::done);
    let mut three_again = four.change(&remove("n4")).unwrap();
    everyone(&mut three_again, Progress::done);
    assert_eq!(
        three_again
            .change(&Change::Add {
                id: "n4".into(),
                addr: member(4).addr
            })
            .unwrap_err(),
        LayoutError::WasRemoved("n4".into())
    );
}

#[test]
fn a_history_from_another_cluster_is_refused() {
    let mut ours = seeded(3);
    let theirs = LayoutHistory::seed((1..=3).map(member).collect(), 512, 3).unwrap();
    assert!(matches!(ours.merge(&theirs), Err(LayoutError::DifferentCluster { .. })));
    let mut bad = add(&ours, 4);
    bad.layouts[1].owners[0] = 99;
    assert!(bad.validate().is_err());
}

#[test]
fn a_skipped_node_is_gone_and_done_and_both_marks_survive_a_merge() {
    let three = seeded(3);
    let skip = |id: &str| Change::Skip { id: id.into() };
    assert_eq!(
        three.change(&skip("n2")).unwrap_err(),
        LayoutError::NothingToSkip("n2".into())
    );
    let moving = add(&three, 4);
    let skipped = moving.change(&skip("n2")).unwrap();
    assert_eq!(skipped.newest().gone, vec!["n2".to_string()]);
    assert_eq!(skipped.progress["n2"], Progress::done(2));
    assert_eq!(skipped.newest().version, 2, "no new layout");
    let other = moving.change(&skip("n3")).unwrap();
    let mut merged = skipped.clone();
    merged.merge(&other).unwrap();
    let mut reverse = other;
    reverse.merge(&skipped).unwrap();
    assert_eq!(merged, reverse);
    assert_eq!(merged.newest().gone, vec!["n2".to_string(), "n3".to_string()]);
}
