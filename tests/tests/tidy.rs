//! The house rules hold for the workspace (every .rs file opens with `//!`, crates depend only
//! downwards and the coordinator never reaches libtorch, no files of a crate import each other
//! around a loop, ARCHITECTURE.md names only paths that exist, the tree is rustfmt-clean), and
//! each check fails on a planted violation.

use cbsweep_tests::root;
use cbsweep_tests::tidy::{
    OUTSIDE_SPEC, cargo_metadata, import_circles, layering_violations, missing_openings, missing_paths, outside_citations, rust_files,
    unformatted,
};

fn assert_none(what: &str, wrong: Vec<String>) {
    assert!(wrong.is_empty(), "{what}:\n{}", wrong.join("\n"));
}

#[test]
fn every_rust_file_opens_with_what_it_owns() {
    let files = rust_files(&root());
    assert!(files.len() > 40, "the walk finds the workspace's files: {}", files.len());
    assert_none("files without a //! opening", missing_openings(&files));
}

#[test]
fn crates_depend_only_downwards_and_the_coordinator_never_reaches_libtorch() {
    assert_none("dependencies against the layering", layering_violations(&cargo_metadata(&root())));
}

#[test]
fn no_files_of_a_crate_import_each_other() {
    let circles: Vec<String> = import_circles(&root()).iter().map(ToString::to_string).collect();
    assert_none("import circles (break each: move what both sides need below both)", circles);
}

#[test]
fn every_path_architecture_names_exists() {
    let text = std::fs::read_to_string(root().join("ARCHITECTURE.md")).unwrap();
    assert_none("paths in ARCHITECTURE.md", missing_paths(&root(), &text));
}

#[test]
fn the_tree_is_rustfmt_clean() {
    assert_none("rustfmt", unformatted(&rust_files(&root()), &root().join("rustfmt.toml")));
}

#[test]
fn the_science_is_cited_from_the_repository() {
    assert_none("citations of a file outside the repository", outside_citations(&root()));
}

#[test]
fn a_citation_of_the_outside_spec_is_named() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.rs"), format!("//! The model ({OUTSIDE_SPEC}, \"Models\").\n")).unwrap();
    std::fs::write(dir.path().join("b.rs"), "//! The model (docs/science.md#core).\n").unwrap();
    let wrong = outside_citations(dir.path());
    assert!(wrong.len() == 1 && wrong[0].contains("a.rs"), "{wrong:?}");
}

#[test]
fn a_file_without_its_opening_is_named() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("x/src")).unwrap();
    std::fs::write(dir.path().join("x/src/good.rs"), "\n//! Owns good things.\nfn f() {}\n").unwrap();
    std::fs::write(dir.path().join("x/src/bad.rs"), "// an ordinary comment\nfn f() {}\n").unwrap();
    std::fs::create_dir_all(dir.path().join("target/release")).unwrap();
    std::fs::write(dir.path().join("target/release/gen.rs"), "fn generated() {}\n").unwrap();
    let files = rust_files(dir.path());
    assert_eq!(files.len(), 2, "build output is skipped: {files:?}");
    let wrong = missing_openings(&files);
    assert_eq!(wrong.len(), 1, "{wrong:?}");
    assert!(wrong[0].contains("bad.rs"), "{wrong:?}");
}

/// The workspace's metadata with one more dependency planted in `krate`.
fn planted(krate: &str, dep: &str) -> serde_json::Value {
    let mut meta = cargo_metadata(&root());
    let pkg = meta["packages"].as_array_mut().unwrap().iter_mut().find(|p| p["name"] == krate).unwrap();
    pkg["dependencies"].as_array_mut().unwrap().push(serde_json::json!({ "name": dep, "kind": null }));
    meta
}

#[test]
fn a_dependency_against_the_layering_is_named() {
    let wrong = layering_violations(&planted("cbsweep-common", "cbsweep-proto"));
    assert!(wrong.iter().any(|w| w.contains("cbsweep-common depends on cbsweep-proto")), "{wrong:?}");
    let wrong = layering_violations(&planted("cbsweep-proto", "cbsweep-coordinator"));
    assert!(wrong.iter().any(|w| w.contains("cbsweep-proto depends on cbsweep-coordinator")), "{wrong:?}");
    let wrong = layering_violations(&planted("cbsweep-common", "tokio"));
    assert!(wrong.iter().any(|w| w.contains("cbsweep-common depends on tokio")), "{wrong:?}");
    let wrong = layering_violations(&planted("cbsweep-coordinator", "tch"));
    assert!(wrong.iter().any(|w| w.contains("cbsweep-coordinator depends on tch")), "{wrong:?}");
}

#[test]
fn the_coordinator_reaching_libtorch_through_another_crate_is_named() {
    let mut meta = cargo_metadata(&root());
    let id_of = |meta: &serde_json::Value, name: &str| {
        meta["packages"].as_array().unwrap().iter().find(|p| p["name"] == name).unwrap()["id"].as_str().unwrap().to_string()
    };
    let (coordinator, worker) = (id_of(&meta, "cbsweep-coordinator"), id_of(&meta, "cbsweep-worker"));
    let node = meta["resolve"]["nodes"].as_array_mut().unwrap().iter_mut().find(|n| n["id"] == coordinator.as_str()).unwrap();
    node["deps"].as_array_mut().unwrap().push(serde_json::json!({ "pkg": worker, "dep_kinds": [{ "kind": null }] }));
    let wrong = layering_violations(&meta);
    assert!(
        wrong.iter().any(|w| w.contains("cbsweep-coordinator reaches torch-sys through cbsweep-coordinator -> cbsweep-worker")),
        "{wrong:?}"
    );
}

#[test]
fn a_path_architecture_names_that_does_not_exist_is_named() {
    let text = "# A\n`Cargo.toml` and `coordinator/src/nowhere.rs`.\n### train (`cbsweep-train`)\n`src/trainer.rs`, `torch/gone.rs`, \
                `OUT/SWEEP/logs`, `/metrics`, `fused::unroll`, `ldd target/release/cbsweep`\n- `src/fused/`: `unroll.rs` and\n  \
                `step.rs`\n- `unroll.rs` alone\n";
    let wrong = missing_paths(&root(), text);
    assert_eq!(wrong.len(), 3, "{wrong:?}");
    assert!(wrong[0].contains("ARCHITECTURE.md:2: `coordinator/src/nowhere.rs`"), "{wrong:?}");
    assert!(wrong[1].contains("`torch/gone.rs`"), "{wrong:?}");
    assert!(wrong[2].contains("ARCHITECTURE.md:7: `unroll.rs`"), "a folder named in another bullet does not count: {wrong:?}");
}

#[test]
fn an_unformatted_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.rs");
    std::fs::write(&bad, "//! Planted.\nfn  f( ) { let x=1 ; }\n").unwrap();
    let good = dir.path().join("good.rs");
    std::fs::write(&good, "//! Planted.\nfn f() {\n    let x = 1;\n}\n").unwrap();
    let config = root().join("rustfmt.toml");
    assert!(unformatted(std::slice::from_ref(&good), &config).is_empty());
    let wrong = unformatted(&[good, bad], &config);
    assert!(wrong.len() == 1 && wrong[0].contains("bad.rs"), "{wrong:?}");
}

/// Writes `files` (path, text) under a new temporary folder.
fn planted_tree(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (path, text) in files {
        let path = dir.path().join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    dir
}

#[test]
fn a_planted_import_circle_is_named() {
    let dir = planted_tree(&[
        ("x/src/lib.rs", "//! Root.\nmod a;\nmod b;\nmod store;\npub use a::f;\npub const VERSION: u32 = 1;\n"),
        // a -> b by a `use`, b -> a by a path through the root's re-export of `f`
        ("x/src/a.rs", "//! A.\nuse crate::b::g;\npub fn f() -> u32 {\n    g()\n}\n"),
        ("x/src/b.rs", "//! B.\npub fn g() -> u32 {\n    crate::f() + crate::VERSION\n}\n"),
        // a mod.rs that uses a child which uses it: a circle
        ("x/src/store/mod.rs", "//! Store.\nmod fs;\npub struct StoreError;\npub fn open() -> u32 {\n    fs::check()\n}\n"),
        ("x/src/store/fs.rs", "//! Fs.\nuse super::StoreError;\npub fn check() -> u32 {\n    let _ = StoreError;\n    0\n}\n"),
    ]);
    let circles = import_circles(dir.path());
    let keys: Vec<&str> = circles.iter().map(|c| c.key.as_str()).collect();
    assert_eq!(keys, ["x/src/a.rs <-> x/src/b.rs", "x/src/store/fs.rs <-> x/src/store/mod.rs"], "{circles:#?}");
    let ab = circles[0].to_string();
    assert!(ab.contains("x/src/a.rs -> x/src/b.rs: use crate::b::g"), "{ab}");
    assert!(ab.contains("x/src/b.rs -> x/src/a.rs: crate::f"), "the root's re-export leads to a.rs: {ab}");
    assert!(!ab.contains("lib.rs"), "re-exports and `mod` declarations tie nothing: {ab}");
    let store = circles[1].to_string();
    assert!(store.contains("x/src/store/mod.rs -> x/src/store/fs.rs: fs::check"), "{store}");
    assert!(store.contains("x/src/store/fs.rs -> x/src/store/mod.rs: use super::StoreError"), "{store}");
}

#[test]
fn declarations_inline_modules_tests_comments_and_strings_make_no_circle() {
    // Each of these would close a circle if it counted as an import.
    let b_names_c_but_in_code = "//! B, below `crate::c::h`.\n/* crate::c::h */\npub fn g() -> &'static str {\n    // crate::c::h()\n    \
                                 \"crate::c::h\"\n}\n#[cfg(test)]\nmod tests {\n    use crate::c::h;\n}\n";
    let dir = planted_tree(&[
        // the root declares a, and a uses the root's item
        ("x/src/lib.rs", "//! Root.\nmod a;\nmod b;\n#[path = \"c_impl.rs\"]\nmod c;\npub struct Shared;\n"),
        // a's inline module and a use each other: one file
        (
            "x/src/a.rs",
            "//! A.\nuse crate::Shared;\npub fn f(_: Shared) {\n    inner::q()\n}\nmod inner {\n    pub fn q() {\n        let _ = super::f;\n    }\n}\n",
        ),
        // c uses b; b names c in a comment, a string and its tests only
        ("x/src/b.rs", b_names_c_but_in_code),
        ("x/src/c_impl.rs", "//! C, found through #[path].\npub fn h() -> &'static str {\n    crate::b::g()\n}\n"),
    ]);
    let circles = import_circles(dir.path());
    assert!(circles.is_empty(), "{circles:#?}");
    // b's code really using c closes the circle
    std::fs::write(dir.path().join("x/src/b.rs"), "//! B.\npub fn g() -> &'static str {\n    super::c::h()\n}\n").unwrap();
    let keys: Vec<String> = import_circles(dir.path()).into_iter().map(|c| c.key).collect();
    assert_eq!(keys, ["x/src/b.rs <-> x/src/c_impl.rs"]);
}
