//! Unit tests of `quorumkv certs`: what it writes, reuses, keeps and refuses.

use super::*;
use crate::peer::auth::{member_of, PeerAuthError};
use quorumkv_client::TlsIdentity;
use rustls::pki_types::ServerName;

const CONFIG: &str = "replication_factor = 2\n[defaults]\nn = 2\nw = 1\nr = 1\n\n[[nodes]]\nid = \"n1\"\naddr = \"10.0.0.1:7001\"\n\n[[nodes]]\nid = \"n2\"\naddr = \"10.0.0.2:7001\"\n";

fn config() -> ClusterConfig {
    ClusterConfig::parse(CONFIG, PathBuf::new()).unwrap()
}

fn names(identity: &TlsIdentity, name: &str) -> bool {
    let cert = webpki::EndEntityCert::try_from(&identity.chain[0]).unwrap();
    let name = ServerName::try_from(name.to_string()).unwrap();
    cert.verify_is_valid_for_subject_name(&name).is_ok()
}

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

#[test]
fn nodes_and_clients_get_their_names_and_roles() {
    let dir = tempfile::tempdir().unwrap();
    let issued = issue(&config(), dir.path(), &[], DEFAULT_LEAF_DAYS, now()).unwrap();
    assert_eq!(issued.ca, CaOutcome::Created);
    let made: Vec<&str> = issued.leaves.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(made, ["n1", "n2", "client"], "every node, and the CLI's client");

    let members = vec!["n1".to_string(), "n2".to_string()];
    let n2 = TlsIdentity::load(dir.path(), "n2").unwrap();
    assert_eq!(member_of(&n2.chain, &members), Ok(1), "a node certificate of member n2");
    assert!(names(&n2, "10.0.0.2"), "with its address");
    let client = TlsIdentity::load(dir.path(), "client").unwrap();
    assert_eq!(member_of(&client.chain, &members), Err(PeerAuthError::NotANode));
    assert!(n2.server_config().is_ok() && client.client_config().is_ok());
}

#[cfg(unix)]
#[test]
fn private_keys_are_readable_by_their_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    issue(&config(), dir.path(), &[], DEFAULT_LEAF_DAYS, now()).unwrap();
    for key in ["ca.key", "n1/key.pem", "client/key.pem"] {
        let mode = std::fs::metadata(dir.path().join(key)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{key}");
    }
}

#[test]
fn a_second_run_reuses_the_ca_and_keeps_what_is_there() {
    let dir = tempfile::tempdir().unwrap();
    issue(&config(), dir.path(), &[], DEFAULT_LEAF_DAYS, now()).unwrap();
    let ca_key = std::fs::read(dir.path().join("ca.key")).unwrap();
    let n1 = TlsIdentity::load(dir.path(), "n1").unwrap();

    let again = issue(&config(), dir.path(), &["app".into()], DEFAULT_LEAF_DAYS, now()).unwrap();
    assert_eq!(again.ca, CaOutcome::Reused);
    assert_eq!(
        std::fs::read(dir.path().join("ca.key")).unwrap(),
        ca_key,
        "CA key untouched"
    );
    let outcomes: Vec<(&str, &LeafOutcome)> = again.leaves.iter().map(|l| (l.name.as_str(), &l.outcome)).collect();
    let kept = LeafOutcome::Kept { refused: None };
    assert_eq!(outcomes, [("n1", &kept), ("n2", &kept), ("app", &LeafOutcome::Created)]);
    assert_eq!(TlsIdentity::load(dir.path(), "n1").unwrap().chain, n1.chain);
    let app = TlsIdentity::load(dir.path(), "app").unwrap();
    assert_eq!(app.ca, n1.ca, "signed by the same CA");
}

#[test]
fn the_development_ca_can_sign_too() {
    let dir = tempfile::tempdir().unwrap();
    let dev = crate::pki::identity(dir.path(), "n1", true).unwrap();
    let issued = issue(&config(), dir.path(), &["app".into()], DEFAULT_LEAF_DAYS, now()).unwrap();
    assert_eq!(issued.ca, CaOutcome::Reused);
    let app = TlsIdentity::load(dir.path(), "app").unwrap();
    assert_eq!(app.ca, dev.ca);
    let verifier = ca::ClusterCa::open(dir.path()).unwrap();
    let check = verifier
        .check(&dir.path().join("app/cert.pem"), unix_time(now()))
        .unwrap();
    assert_eq!(check, None, "verifies against the development ca.pem");
}

#[test]
fn half_a_ca_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.key"), "a key kept by the operator").unwrap();
    let err = issue(&config(), dir.path(), &[], DEFAULT_LEAF_DAYS, now()).unwrap_err();
    assert!(matches!(err, CertsError::CaCertMissing { .. }), "{err}");
    let key = std::fs::read_to_string(dir.path().join("ca.key")).unwrap();
    assert_eq!(key, "a key kept by the operator");

    let other = tempfile::tempdir().unwrap();
    issue(&config(), other.path(), &[], DEFAULT_LEAF_DAYS, now()).unwrap();
    std::fs::remove_file(other.path().join("ca.key")).unwrap();
    let err = issue(&config(), other.path(), &[], DEFAULT_LEAF_DAYS, now()).unwrap_err();
    assert!(err.to_string().contains("ca.key is not"), "{err}");
}

#[test]
fn a_key_of_another_ca_is_refused() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    issue(&config(), a.path(), &[], DEFAULT_LEAF_DAYS, now()).unwrap();
    issue(&config(), b.path(), &[], DEFAULT_LEAF_DAYS, now()).unwrap();
    std::fs::copy(b.path().join("ca.key"), a.path().join("ca.key")).unwrap();
    let err = issue(&config(), a.path(), &["app".into()], DEFAULT_LEAF_DAYS, now()).unwrap_err();
    assert!(matches!(err, CertsError::CaMismatch { .. }), "{err}");
}

#[test]
fn client_names_that_could_pass_for_a_node_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    for (name, expected) in [
        ("n2", "id of member n2"),
        ("quorumkv.node", "node role name"),
        ("Alice", "lowercase"),
    ] {
        let err = issue(&config(), dir.path(), &[name.into()], DEFAULT_LEAF_DAYS, now()).unwrap_err();
        assert!(err.to_string().contains(expected), "{name}: {err}");
    }
    assert!(!dir.path().join("ca.pem").exists(), "nothing written");
}

#[test]
fn a_kept_certificate_that_expired_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let two_days_ago = now() - Duration::days(2);
    issue(&config(), dir.path(), &[], 1, two_days_ago).unwrap();
    let again = issue(&config(), dir.path(), &[], DEFAULT_LEAF_DAYS, now()).unwrap();
    let LeafOutcome::Kept { refused: Some(why) } = &again.leaves[0].outcome else {
        panic!("expired, not reported: {:?}", again.leaves[0]);
    };
    assert!(why.contains("expired"), "{why}");
    let report = report::render(&again, &config());
    assert!(report.contains("REFUSE"), "{report}");
}

#[test]
fn the_report_gives_the_tls_lines_and_the_files_per_machine() {
    let base = tempfile::tempdir().unwrap();
    let config = ClusterConfig::parse(CONFIG, base.path().to_path_buf()).unwrap();
    let out = base.path().join("certs");
    let issued = issue(&config, &out, &[], DEFAULT_LEAF_DAYS, now()).unwrap();
    let report = report::render(&issued, &config);
    assert!(report.contains("[tls]\ndir = \"certs\"\n"), "{report}");
    assert!(
        report.contains("node n1 (10.0.0.1:7001): ca.pem, n1/cert.pem, n1/key.pem"),
        "{report}"
    );
    assert!(report.contains("keep it offline"), "{report}");
}
