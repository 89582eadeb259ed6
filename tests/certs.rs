//! `quorumkv certs` as an operator uses it: its output runs a cluster of `quorumkv node`
//! processes and the CLI; a second run adds a client under the same CA; and a
//! certificate from another CA, or expired, is refused with words that say which, by the
//! CLI and in the node's log. (A client certificate on the peer protocol: tests/peer_auth.rs.)

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::processes::{connect, node_log, Processes};
use common::{config_text, free_addrs, wait_until, Shape, TestCluster};
use quorumkv::certs::ca::ClusterCa;
use quorumkv::pki::{LeafSpec, Role};
use quorumkv_client::tls::layout;
use quorumkv_client::{ClientConfig, TlsIdentity};
use time::OffsetDateTime;

/// How long nodes may take to log a refused handshake.
const LOG_DEADLINE: Duration = Duration::from_secs(10);

fn quorumkv(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_quorumkv"))
        .args(args)
        .output()
        .expect("run quorumkv")
}

/// Runs the CLI off the test's runtime (the nodes may run on it).
async fn cli(args: &[&str]) -> Output {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || quorumkv(&args.iter().map(String::as_str).collect::<Vec<_>>()))
        .await
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A cluster.toml in `dir` (named `file`) for the nodes at `addrs`, whose `[tls] dir` is `tls`.
fn write_config(dir: &Path, file: &str, addrs: &[std::net::SocketAddr], tls: &str) -> PathBuf {
    let path = dir.join(file);
    let shape = Shape::three().with(&format!("[tls]\ndir = \"{tls}\""));
    std::fs::write(&path, config_text(&shape, addrs)).unwrap();
    path
}

/// Runs `quorumkv certs` and returns its standard output.
fn certs(config: &Path, out: &Path, extra: &[&str]) -> String {
    let mut args = vec![
        "certs",
        "--config",
        config.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend(extra);
    let output = quorumkv(&args);
    assert!(output.status.success(), "certs failed: {}", text(&output.stderr));
    text(&output.stdout)
}

/// Runs `get colour` with the cluster.toml `config`, which must fail (exit code 1);
/// returns what the CLI printed.
async fn refused_get(config: &Path) -> String {
    let get = cli(&["get", "colour", "--config", config.to_str().unwrap()]).await;
    let err = text(&get.stderr);
    assert_eq!(get.status.code(), Some(1), "{err}");
    err
}

/// The lines of the nodes' logs that contain every one of `needles`, once there are some.
async fn node_lines(config: &Path, needles: &[&str]) -> String {
    wait_until("the node logs the refusal", LOG_DEADLINE, || async {
        let logs: String = ["n1", "n2", "n3"]
            .iter()
            .map(|id| std::fs::read_to_string(node_log(config, id)).unwrap_or_default())
            .collect();
        let found: Vec<&str> = logs.lines().filter(|l| needles.iter().all(|n| l.contains(n))).collect();
        if found.is_empty() {
            Err(logs.clone())
        } else {
            Ok(found.join("\n"))
        }
    })
    .await
}

/// A TLS directory with the cluster's `ca.pem` and a client certificate `cert`/`key`.
fn client_dir(dir: &Path, ca_pem: &Path, cert: &str, key: &str) {
    std::fs::create_dir_all(dir.join(layout::CLIENT)).unwrap();
    std::fs::copy(ca_pem, dir.join(layout::CA_CERT)).unwrap();
    std::fs::write(dir.join(layout::CLIENT).join(layout::CERT), cert).unwrap();
    std::fs::write(dir.join(layout::CLIENT).join(layout::KEY), key).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_certificates_run_a_cluster_and_refuse_strangers_saying_why() {
    let dir = tempfile::tempdir().unwrap();
    let addrs = free_addrs(3);
    let config = write_config(dir.path(), "cluster.toml", &addrs, "certs");
    let out = dir.path().join("certs");
    let report = certs(&config, &out, &[]);
    assert!(report.contains("[tls]\ndir = \"certs\"\n"), "{report}");

    let ids: Vec<String> = (1..=3).map(|i| format!("n{i}")).collect();
    let _nodes = Processes::start(&config, &ids);
    let identity = TlsIdentity::load(&out, layout::CLIENT).unwrap();
    connect(&ClientConfig::new(addrs.clone(), identity)).await;
    let config_arg = config.to_str().unwrap();
    let put = cli(&["put", "colour", "blue", "--w", "3", "--config", config_arg]).await;
    assert!(put.status.success(), "{}", text(&put.stderr));
    let get = cli(&["get", "colour", "--config", config_arg]).await;
    assert_eq!(text(&get.stdout), "blue", "{}", text(&get.stderr));

    // A second run adds a client under the same CA; the running nodes accept it.
    let again = certs(&config, &out, &["--client", "app"]);
    assert!(again.contains("Reused the cluster CA"), "{again}");
    let app = TlsIdentity::load(&out, "app").unwrap();
    let client = connect(&ClientConfig::new(addrs.clone(), app)).await;
    assert_eq!(client.get("colour").await.unwrap().unwrap().value, "blue");

    // A node cluster.toml does not list, to join later with `quorumkv cluster add`.
    let joining = certs(&config, &out, &["--node", "n4=127.0.0.1:7999"]);
    assert!(out.join("n4").join("cert.pem").exists(), "{joining}");
    assert!(joining.contains("n4") && joining.contains("127.0.0.1"), "{joining}");
    let n4 = quorumkv::pki::identity(&out, "n4", false).expect("n4's node identity");
    drop(n4);

    // Another run's CLI certificate: its ca.pem does not know the nodes, and the nodes'
    // does not know its certificate. The CLI says so, either way round.
    let foreign = dir.path().join("foreign");
    certs(&config, &foreign, &[]);
    let config_foreign = write_config(dir.path(), "foreign.toml", &addrs, "foreign");
    let err = refused_get(&config_foreign).await;
    assert!(
        err.contains("presented a certificate that is not signed by the CA in our ca.pem"),
        "{err}"
    );
    assert!(err.contains("another `quorumkv certs` run"), "{err}");
    let refused = node_lines(
        &config,
        &[
            "WARN",
            "TLS handshake with 127.0.0.1:",
            "refused this node's certificate",
        ],
    )
    .await;
    assert!(refused.contains("not signed by the CA"), "{refused}");

    let stranger = dir.path().join("stranger");
    let foreign_client = foreign.join(layout::CLIENT);
    client_dir(
        &stranger,
        &out.join(layout::CA_CERT),
        &std::fs::read_to_string(foreign_client.join(layout::CERT)).unwrap(),
        &std::fs::read_to_string(foreign_client.join(layout::KEY)).unwrap(),
    );
    let config_stranger = write_config(dir.path(), "stranger.toml", &addrs, "stranger");
    let err = refused_get(&config_stranger).await;
    assert!(
        err.contains("refused our certificate: it is not signed by the CA in the node's ca.pem"),
        "{err}"
    );
    let lines = node_lines(
        &config,
        &[
            "WARN",
            "presented a certificate that is not signed by the CA in this node's ca.pem",
        ],
    )
    .await;
    assert!(lines.contains("127.0.0.1:"), "names the address: {lines}");

    // A certificate of the right CA that has expired.
    let now = OffsetDateTime::now_utc();
    let spec = LeafSpec {
        name: "late",
        role: Role::Client,
        extra_names: Vec::new(),
        validity: Some((now - time::Duration::days(3), now - time::Duration::days(1))),
    };
    let (cert, key) = ClusterCa::open(&out).unwrap().sign(&spec).unwrap();
    client_dir(&dir.path().join("expired"), &out.join(layout::CA_CERT), &cert, &key);
    let config_expired = write_config(dir.path(), "expired.toml", &addrs, "expired");
    let err = refused_get(&config_expired).await;
    assert!(err.contains("refused our certificate: it has expired"), "{err}");
    node_lines(&config, &["WARN", "presented a certificate that has expired"]).await;
}

/// The report: cluster.toml copied elsewhere makes the CLI generate a second
/// development CA, and every request failed with only `BadSignature`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cli_with_a_second_development_ca_says_so() {
    let cluster = TestCluster::start(Shape::three()).await;
    let elsewhere = tempfile::tempdir().unwrap();
    let copy = elsewhere.path().join("cluster.toml");
    std::fs::copy(&cluster.config_path, &copy).unwrap();

    let err = refused_get(&copy).await;
    assert!(
        err.contains("generated a development CA"),
        "the new CA is announced: {err}"
    );
    assert!(err.contains("is not signed by the CA in our ca.pem"), "{err}");
    assert!(err.contains("a different development CA?"), "{err}");
    // Every seed is named as refusing, none as silent: the cluster does run.
    assert_eq!(err.matches("TLS handshake refused").count(), 3, "{err}");
    assert!(
        !err.contains("timed out") && !err.contains("is the cluster running"),
        "{err}"
    );
    cluster.shutdown().await;
}

/// A TLS identity signed by `ca` for `names`, usable as server and client.
fn identity(ca: &(rcgen::Certificate, rcgen::KeyPair), names: &[&str]) -> TlsIdentity {
    let key = rcgen::KeyPair::generate().unwrap();
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let mut params = rcgen::CertificateParams::new(names).unwrap();
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let cert = params.signed_by(&key, &ca.0, &ca.1).unwrap();
    TlsIdentity {
        ca: ca.0.der().clone(),
        chain: vec![cert.der().clone()],
        key: rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
    }
}

/// With a CA of one's own, a certificate that names a member but lacks the node role name
/// (`quorumkv.node`) is not taken for that member by whoever dials it.
#[tokio::test]
async fn a_server_without_the_node_role_name_is_refused() {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = (params.self_signed(&ca_key).unwrap(), ca_key);
    let loopback = "127.0.0.1:0".parse().unwrap();
    let accept = |impostor: TlsIdentity| {
        let server = quinn::Endpoint::server(impostor.server_config().unwrap(), loopback).unwrap();
        let addr = server.local_addr().unwrap();
        tokio::spawn(async move {
            while let Some(incoming) = server.accept().await {
                let _ = incoming.await;
            }
        });
        addr
    };
    let dialler = quinn::Endpoint::client(loopback).unwrap();
    let tls = identity(&ca, &["app"]).client_config().unwrap();

    let impostor = accept(identity(&ca, &["n1"]));
    let err = dialler
        .connect_with(tls.clone(), impostor, "n1")
        .unwrap()
        .await
        .unwrap_err();
    let words = quorumkv_client::refusal::dial_error(&err, impostor);
    assert!(words.contains("is not a node certificate"), "{words}");

    let node = accept(identity(&ca, &["n1", "quorumkv.node"]));
    let conn = dialler.connect_with(tls, node, "n1").unwrap().await;
    assert!(conn.is_ok(), "a node certificate passes: {conn:?}");
}
