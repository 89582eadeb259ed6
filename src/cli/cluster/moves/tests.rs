//! The stage of a move, from the history's counters and what the nodes answered.

use quorumkv_client::layout::{Change, LayoutHistory, Progress};
use quorumkv_client::wire::Member;

use super::{nodes_in_use, stage, Stage};

fn member(i: u16) -> Member {
    Member {
        id: format!("n{i}"),
        addr: format!("127.0.0.1:{}", 7000 + i).parse().unwrap(),
    }
}

/// Three nodes, n4 being added (layouts 1 and 2 in use).
fn adding_n4() -> LayoutHistory {
    let seeded = LayoutHistory::seed((1..=3).map(member).collect(), 256, 3).unwrap();
    let m = member(4);
    seeded.change(&Change::Add { id: m.id, addr: m.addr }).unwrap()
}

/// Every member of the newest layout publishes `progress`.
fn everyone(history: &mut LayoutHistory, progress: Progress) {
    for i in history.members() {
        let id = history.roster[i].id.clone();
        history.advance(&id, progress);
    }
}

#[test]
fn each_stage_follows_from_the_counters_and_the_answers() {
    let mut history = adding_n4();
    let ack = Progress {
        ack: 2,
        ..Progress::done(1)
    };
    let synced = Progress { sync: 2, ..ack };
    let cases: [(Option<Progress>, bool, bool, Stage); 6] = [
        (None, false, false, Stage::WaitingForAcks),
        (Some(ack), false, false, Stage::Pulling),
        (Some(synced), false, false, Stage::SwitchingReads),
        (Some(Progress::done(2)), true, false, Stage::RetiringOld),
        (Some(Progress::done(2)), false, true, Stage::Dropping),
        (Some(Progress::done(2)), false, false, Stage::Done),
    ];
    for (progress, node_moving, dropping, expected) in cases {
        if let Some(progress) = progress {
            everyone(&mut history, progress);
        }
        assert_eq!(
            stage(&history, node_moving, dropping),
            expected,
            "{:?}",
            history.progress
        );
    }
}

#[test]
fn the_nodes_in_use_are_those_of_every_layout_in_use() {
    let history = adding_n4();
    let ids: Vec<String> = nodes_in_use(&history).into_iter().map(|m| m.id).collect();
    assert_eq!(ids, ["n1", "n2", "n3", "n4"]);
    let removing = {
        let mut done = history.clone();
        everyone(&mut done, Progress::done(2));
        done.change(&Change::Remove {
            id: "n1".into(),
            gone: false,
        })
        .unwrap()
    };
    let ids: Vec<String> = nodes_in_use(&removing).into_iter().map(|m| m.id).collect();
    assert_eq!(ids, ["n1", "n2", "n3", "n4"], "n1 still holds data until the move ends");
}
