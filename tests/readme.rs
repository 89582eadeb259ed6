//! The README cannot rot: its client example is `client/examples/quickstart.rs` verbatim,
//! that file runs against a real cluster, and every link in the README and `docs/` leads
//! to a file of the repository.

mod common;

// The example itself, compiled into this test: its `run` is what `main` calls.
#[allow(dead_code)]
#[path = "../client/examples/quickstart.rs"]
mod quickstart;

use std::path::{Path, PathBuf};

use common::{copies, Shape, TestCluster};

/// Opens the README's copy of the example (closed by the end of its code block).
const EXAMPLE_MARKER: &str = "<!-- client/examples/quickstart.rs, checked by tests/readme.rs -->";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The code block that follows `marker` in `text`.
fn block_after(text: &str, marker: &str) -> Option<String> {
    let after = &text[text.find(marker)? + marker.len()..];
    let body = &after[after.find("```rust\n")? + "```rust\n".len()..];
    Some(body[..body.find("\n```")? + 1].to_string())
}

#[test]
fn the_readme_shows_the_client_example_verbatim() {
    let readme = read(&repo().join("README.md"));
    let shown = block_after(&readme, EXAMPLE_MARKER).expect("README has the marked example block");
    let file = read(&repo().join("client/examples/quickstart.rs"));
    for (i, (a, b)) in shown.lines().zip(file.lines()).enumerate() {
        assert_eq!(a, b, "README and quickstart.rs differ at line {}", i + 1);
    }
    assert_eq!(shown, file, "README and quickstart.rs differ in length");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_example_runs_against_a_cluster() {
    let cluster = TestCluster::start(Shape::three()).await;
    cluster.client_identity(); // generates the client certificate, as the CLI does
    let seeds = cluster.config.nodes.iter().map(|n| n.addr).collect();
    quickstart::run(&cluster.config.tls_dir().0, seeds)
        .await
        .expect("the example runs");
    // It ends by deleting its key: with w = 2, at least two replicas hold the tombstone.
    let client = cluster.client().await;
    let held = copies(&client, &cluster.config.node_ids(), "user:42").await.unwrap();
    let tombstones = held.iter().flatten().filter(|r| r.value.is_none()).count();
    assert!(tombstones >= 2, "{held:?}");
    cluster.shutdown().await;
}

/// Relative links of the README and `docs/*.md` name existing files; none leaves the
/// repository (a clone has nothing beside it).
#[test]
fn documentation_links_stay_inside_the_repository() {
    let mut pages = vec![repo().join("README.md")];
    for entry in std::fs::read_dir(repo().join("docs")).unwrap() {
        pages.push(entry.unwrap().path());
    }
    for page in pages.iter().filter(|p| p.extension().is_some_and(|e| e == "md")) {
        let text = read(page);
        for bad in ["../shared", "/work/", "/home/", "/root/"] {
            assert!(!text.contains(bad), "{} mentions {bad}", page.display());
        }
        for link in text.split("](").skip(1).filter_map(|rest| rest.split(')').next()) {
            let target = link.split('#').next().unwrap_or_default();
            if target.is_empty() || target.starts_with("http") {
                continue;
            }
            let file = page.parent().unwrap().join(target);
            assert!(file.exists(), "{} links to missing {link}", page.display());
            let inside = file.canonicalize().unwrap().starts_with(repo().canonicalize().unwrap());
            assert!(inside, "{} links outside the repository: {link}", page.display());
        }
    }
}
