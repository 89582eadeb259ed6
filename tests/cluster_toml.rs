//! The shipped cluster.toml is the reference of every setting: it lists each one at its
//! default, so a setting added to the code without it (or a default changed in one place
//! only) fails here.

use std::path::{Path, PathBuf};

use quorumkv::config::{ClusterConfig, TlsFiles};

/// The shipped file and its directory.
fn shipped() -> (String, PathBuf) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    (std::fs::read_to_string(dir.join("cluster.toml")).unwrap(), dir)
}

#[test]
fn the_shipped_cluster_toml_lists_every_setting_at_its_default() {
    let (text, dir) = shipped();
    let config = ClusterConfig::load(&dir.join("cluster.toml")).unwrap();
    let mut listed: toml::Table = text.parse().unwrap();
    // Only the members: everything else takes its default.
    let members = toml::Table::from_iter(listed.remove("nodes").map(|n| ("nodes".to_string(), n)));
    let defaults = ClusterConfig::parse(&toml::to_string(&members).unwrap(), PathBuf::new()).unwrap();
    assert_eq!(
        listed,
        toml::Table::try_from(&defaults).unwrap(),
        "cluster.toml must list every setting at its default"
    );
    assert_eq!(config.data_dir(), Path::new(&dir).join("data"));
}

/// `[tls]` has no default (without it nodes generate a development CA), so it is shown
/// commented out; its fields must still be the ones the code reads.
#[test]
fn the_shipped_cluster_toml_shows_every_tls_field() {
    let (text, _) = shipped();
    let start = text.find("# [tls]\n").expect("a commented-out [tls] section");
    let section: String = text[start..]
        .lines()
        .take_while(|l| l.starts_with("# "))
        .map(|l| format!("{}\n", &l[2..]))
        .collect();
    let shown: toml::Table = section.parse().unwrap();
    let shown = shown["tls"].as_table().expect("[tls] is a table").clone();
    let parsed: TlsFiles = shown.clone().try_into().expect("the shown [tls] parses");
    let fields = toml::Table::try_from(&parsed).unwrap();
    assert_eq!(shown.keys().collect::<Vec<_>>(), fields.keys().collect::<Vec<_>>());
}
