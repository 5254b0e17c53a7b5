#![allow(dead_code)]
//! Helpers shared by the store tests: the conformance suite every backend passes, and its
//! fixtures.

pub mod conformance;

/// The day partition files of an embedded store directory.
pub fn partition_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir.join("partitions"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "sqlite3"))
        .collect();
    files.sort();
    files
}

/// Asserts that each file carries this build's schema version.
pub fn assert_schema_version(files: &[&std::path::Path]) {
    for file in files {
        let version: i32 = rusqlite::Connection::open(file)
            .unwrap()
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(
            version,
            dlog_storage::embedded::SCHEMA_VERSION,
            "{}",
            file.display()
        );
    }
}
