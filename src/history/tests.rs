//! Histories that break each promise, and ones that keep them.

use std::collections::BTreeMap;
use std::time::Duration;

use quorumkv_client::wire::{ErrorKind, ErrorReply};
use quorumkv_client::{ClientError, FailureReason, Record, ReplicaFailure, Version};

use super::recorder::classify_write_error;
use super::{check_convergence, check_final, check_history, Action, Op, Outcome, Quorum, Rule};

const MAJORITY: Quorum = Quorum { n: 3, needed: 2 };
const ONE: Quorum = Quorum { n: 3, needed: 1 };

fn v(micros: u64) -> Version {
    Version { micros, writer: 1 }
}

fn op(key: &str, action: Action, span: (u64, u64), outcome: Outcome) -> Op {
    Op {
        client: 0,
        key: key.to_string(),
        action,
        quorum: MAJORITY,
        invoke: span.0,
        complete: span.1,
        outcome,
    }
}

fn put(value: &str, span: (u64, u64), outcome: Outcome) -> Op {
    op("k", Action::Put { value: value.into() }, span, outcome)
}

fn delete(span: (u64, u64), outcome: Outcome) -> Op {
    op("k", Action::Delete, span, outcome)
}

fn get(span: (u64, u64), answer: Option<(&str, u64)>) -> Op {
    let answer = answer.map(|(value, at)| (value.to_string(), v(at)));
    op("k", Action::Get { blocking_repair: false }, span, Outcome::Read(answer))
}

fn blocking_get(span: (u64, u64), answer: Option<(&str, u64)>) -> Op {
    let mut read = get(span, answer);
    read.action = Action::Get { blocking_repair: true };
    read
}

fn ok(at: u64) -> Outcome {
    Outcome::Written(v(at))
}

fn unknown() -> Outcome {
    Outcome::Indeterminate("timed out".into())
}

fn rules(found: &[super::Violation]) -> Vec<Rule> {
    found.iter().map(|x| x.rule).collect()
}

#[test]
fn histories_that_keep_p1_p2_p4_pass() {
    let cases: Vec<(&str, Vec<Op>)> = vec![
        (
            "read after write",
            vec![put("a", (0, 10), ok(5)), get((20, 30), Some(("a", 5)))],
        ),
        (
            "a read concurrent with a write may miss it",
            vec![
                put("a", (0, 10), ok(5)),
                put("b", (20, 40), ok(25)),
                get((30, 50), Some(("a", 5))),
            ],
        ),
        (
            "an indeterminate put may be read, at the version it got",
            vec![
                put("a", (0, 10), unknown()),
                get((20, 30), Some(("a", 7))),
                get((40, 50), Some(("a", 7))),
            ],
        ),
        (
            "not found after an acknowledged delete",
            vec![put("a", (0, 10), ok(5)), delete((20, 30), ok(25)), get((40, 50), None)],
        ),
        (
            "not found explained by a delete of unknown outcome",
            vec![
                put("a", (0, 10), ok(5)),
                delete((20, 30), unknown()),
                get((40, 50), None),
            ],
        ),
        (
            "w + r <= n promises nothing",
            vec![
                Op {
                    quorum: ONE,
                    ..put("a", (0, 10), ok(5))
                },
                put("b", (20, 30), ok(25)),
                Op {
                    quorum: ONE,
                    ..get((40, 50), Some(("a", 5)))
                },
            ],
        ),
        (
            "a different n promises nothing",
            vec![
                put("a", (0, 10), ok(5)),
                put("b", (20, 30), ok(25)),
                Op {
                    quorum: Quorum { n: 2, needed: 1 },
                    ..get((40, 50), Some(("a", 5)))
                },
            ],
        ),
        (
            "monotonic after a blocking read",
            vec![
                put("a", (0, 10), unknown()),
                blocking_get((20, 30), Some(("a", 5))),
                get((40, 50), Some(("a", 5))),
            ],
        ),
        (
            "a read after a non-blocking read may go back",
            vec![
                put("a", (0, 10), unknown()),
                put("b", (0, 10), unknown()),
                get((20, 30), Some(("b", 6))),
                get((40, 50), Some(("a", 5))),
            ],
        ),
    ];
    for (name, history) in cases {
        let found = check_history(&history);
        assert!(found.is_empty(), "{name}: {found:#?}");
    }
}

#[test]
fn p2_stale_reads_are_reported_with_their_operations() {
    let cases: Vec<(&str, Vec<Op>)> = vec![
        (
            "older value after an acknowledged put",
            vec![
                put("a", (0, 10), ok(5)),
                put("b", (20, 30), ok(25)),
                get((40, 50), Some(("a", 5))),
            ],
        ),
        (
            "not found after an acknowledged put",
            vec![put("a", (0, 10), ok(5)), get((40, 50), None)],
        ),
        (
            "not found, only an older delete",
            vec![delete((0, 2), ok(1)), put("a", (5, 10), ok(5)), get((40, 50), None)],
        ),
        (
            "a deleted value comes back",
            vec![
                put("a", (0, 10), ok(5)),
                delete((20, 30), ok(25)),
                get((40, 50), Some(("a", 5))),
            ],
        ),
    ];
    for (name, history) in cases {
        let found = check_history(&history);
        assert_eq!(rules(&found), vec![Rule::P2StaleRead], "{name}: {found:#?}");
        let read = history.len() - 1;
        assert_eq!(found[0].ops.last(), Some(&read), "{name}: names the read");
        assert_eq!(found[0].key, "k");
        assert!(found[0].detail.contains("acknowledged at"), "{name}: {}", found[0]);
    }
}

#[test]
fn p4_a_read_older_than_a_finished_blocking_read_is_reported() {
    let history = vec![
        put("a", (0, 10), unknown()),
        put("b", (0, 10), unknown()),
        blocking_get((20, 30), Some(("b", 6))),
        get((40, 50), Some(("a", 5))),
    ];
    let found = check_history(&history);
    assert_eq!(rules(&found), vec![Rule::P4NonMonotonic], "{found:#?}");
    assert_eq!(found[0].ops, vec![2, 3]);
    assert!(found[0].detail.contains(&v(6).to_string()), "{}", found[0]);

    let overlapping = vec![
        history[0].clone(),
        history[1].clone(),
        history[2].clone(),
        get((25, 50), Some(("a", 5))),
    ];
    assert!(
        check_history(&overlapping).is_empty(),
        "a read that started before it may go back"
    );
}

#[test]
fn p1_values_from_nowhere_are_reported() {
    let cases: Vec<(&str, Vec<Op>)> = vec![
        ("no put wrote it", vec![get((0, 10), Some(("ghost", 3)))]),
        (
            "its put failed",
            vec![
                put("a", (0, 10), Outcome::Failed("refused".into())),
                get((20, 30), Some(("a", 5))),
            ],
        ),
        (
            "another version",
            vec![put("a", (0, 10), ok(5)), get((20, 30), Some(("a", 6)))],
        ),
        (
            "from the future",
            vec![get((0, 10), Some(("a", 15))), put("a", (12, 20), unknown())],
        ),
        (
            "one indeterminate put read at two versions",
            vec![
                put("a", (0, 10), unknown()),
                get((20, 30), Some(("a", 5))),
                get((40, 50), Some(("a", 6))),
            ],
        ),
    ];
    for (name, history) in cases {
        let found = check_history(&history);
        assert!(rules(&found).contains(&Rule::P1ValueFromNowhere), "{name}: {found:#?}");
    }
}

#[test]
fn p1_final_records_older_than_an_acknowledged_write_are_lost_writes() {
    let history = vec![
        put("a", (0, 10), ok(5)),
        put("b", (20, 30), ok(25)),
        delete((40, 50), unknown()),
    ];
    let at = |version: u64, value: Option<&str>| {
        let record = Record {
            version: v(version),
            value: value.map(|s| bytes::Bytes::copy_from_slice(s.as_bytes())),
        };
        BTreeMap::from([("k".to_string(), Some(record))])
    };
    assert!(check_final(&history, &at(25, Some("b"))).is_empty());
    assert!(check_final(&history, &at(45, None)).is_empty(), "a newer tombstone");
    let lost = check_final(&history, &at(5, Some("a")));
    assert_eq!(rules(&lost), vec![Rule::P1LostWrite]);
    assert_eq!(lost[0].ops, vec![1]);
    assert!(lost[0].detail.contains(&v(25).to_string()), "{}", lost[0]);
    let nowhere = check_final(&history, &at(30, Some("zzz")));
    assert_eq!(rules(&nowhere), vec![Rule::P1ValueFromNowhere]);

    let absent = BTreeMap::from([("k".to_string(), None)]);
    assert!(
        check_final(&history, &absent).is_empty(),
        "the unknown delete may have won and been purged"
    );
    let no_delete = &history[..2];
    assert_eq!(rules(&check_final(no_delete, &absent)), vec![Rule::P1LostWrite]);
    assert_eq!(
        rules(&check_final(no_delete, &BTreeMap::new())),
        vec![Rule::P1LostWrite],
        "missing = absent"
    );
    let deleted = vec![put("a", (0, 10), ok(5)), delete((20, 30), ok(25))];
    assert!(check_final(&deleted, &absent).is_empty(), "a purged tombstone");
}

#[test]
fn p3_replicas_that_differ_or_converge_late_are_reported() {
    let record = |at: u64, value: Option<&str>| {
        Some(Record {
            version: v(at),
            value: value.map(|s| bytes::Bytes::copy_from_slice(s.as_bytes())),
        })
    };
    let copies = |third: Option<Record>| {
        let same = record(5, Some("a"));
        BTreeMap::from([(
            "k".to_string(),
            vec![
                ("n1".to_string(), same.clone()),
                ("n2".to_string(), same),
                ("n3".to_string(), third),
            ],
        )])
    };
    let bound = Duration::from_secs(10);
    let took = Duration::from_secs(2);
    assert!(check_convergence(&copies(record(5, Some("a"))), took, bound).is_empty());
    for (third, shown) in [
        (None, "n3: absent"),
        (record(3, Some("x")), "n3: 3@"),
        (record(9, None), "n3: tombstone 9@"),
    ] {
        let found = check_convergence(&copies(third), took, bound);
        assert_eq!(rules(&found), vec![Rule::P3NotConverged]);
        assert!(found[0].detail.contains(shown), "{}", found[0]);
        assert!(found[0].detail.contains("n1: 5@"), "{}", found[0]);
    }
    let late = check_convergence(&copies(record(5, Some("a"))), Duration::from_secs(11), bound);
    assert_eq!(rules(&late), vec![Rule::P3NotConverged]);
}

#[test]
fn a_value_written_twice_is_reported() {
    let history = vec![put("a", (0, 10), ok(5)), put("a", (20, 30), ok(25))];
    assert_eq!(rules(&check_history(&history)), vec![Rule::DuplicateValue]);
}

#[test]
fn writes_refused_by_every_replica_failed_and_timeouts_are_indeterminate() {
    let failure = |node: &str, reason: FailureReason| ReplicaFailure {
        node: node.into(),
        reason,
    };
    let refused = |kind| {
        FailureReason::Refused(ErrorReply {
            kind,
            message: "no".into(),
        })
    };
    let unavailable = |acked, failures: Vec<ReplicaFailure>| ClientError::Unavailable {
        needed: 2,
        acked,
        contacted: 3,
        failures,
    };
    let skew = || {
        (1..=3)
            .map(|i| failure(&format!("n{i}"), refused(ErrorKind::ClockSkew)))
            .collect::<Vec<_>>()
    };
    let cases = [
        (unavailable(0, skew()), true),
        (ClientError::InvalidOptions("w = 4 exceeds n = 3".into()), true),
        (unavailable(0, skew()[..2].to_vec()), false),
        (unavailable(1, skew()[..2].to_vec()), false),
        (
            unavailable(
                0,
                vec![
                    failure("n1", FailureReason::Timeout),
                    skew()[1].clone(),
                    skew()[2].clone(),
                ],
            ),
            false,
        ),
        (
            unavailable(
                0,
                (1..=3)
                    .map(|i| failure(&format!("n{i}"), refused(ErrorKind::Storage)))
                    .collect(),
            ),
            false,
        ),
    ];
    for (error, failed) in cases {
        let outcome = classify_write_error(&error);
        assert_eq!(matches!(outcome, Outcome::Failed(_)), failed, "{error}: {outcome:?}");
        assert_eq!(matches!(outcome, Outcome::Indeterminate(_)), !failed, "{error}");
    }
}
