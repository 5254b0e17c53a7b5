//! The files under `deploy/` work with the binaries they are for: each sample config file is
//! read and validated by the component's own parser, every variable an env file sets (or
//! offers commented out) is one the component reads, and every unit starts a binary this
//! workspace builds (or tansu / rotel) with an env file that exists.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn sample_config_files_are_valid_for_their_components() {
    let etc = root().join("deploy/etc/dlog");
    let bridge = collector_bridge::Config::from_toml_file(etc.join("bridge.toml")).unwrap();
    bridge.validate().unwrap();
    assert_eq!(bridge.otlp_grpc.port(), 14317, "behind the collector");

    let indexer = dlog_indexer::IndexerConfig::from_file(&etc.join("indexer.toml")).unwrap();
    indexer.validate().unwrap();
    let alerter = dlog_alerting::AlerterConfig::from_file(&etc.join("alerter.toml")).unwrap();
    alerter.validate().unwrap();
    // Both stages write to the same store, the one the viewer reads.
    assert_eq!(
        indexer.store.elasticsearch_url,
        alerter.outputs.store.backend.elasticsearch_url
    );
    assert!(alerter.outputs.store.enabled);
}

/// `env = "NAME"` attributes and logging variables in a component's sources.
fn env_names(dirs: &[&str]) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for dir in dirs {
        for entry in std::fs::read_dir(root().join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "rs") {
                let text = read(&path);
                for part in text.split('"').skip(1).step_by(2) {
                    if part.chars().all(|c| c.is_ascii_uppercase() || c == '_')
                        && part.contains('_')
                    {
                        names.insert(part.to_string());
                    }
                }
            }
        }
    }
    names
}

/// The variables an env file names, set or commented out.
fn env_file_names(file: &str) -> Vec<String> {
    read(&root().join("deploy/etc/default").join(file))
        .lines()
        .map(|l| l.trim_start_matches('#').trim())
        .filter_map(|l| l.split_once('='))
        .map(|(name, _)| name.trim().to_string())
        .filter(|name| !name.is_empty() && name.chars().all(|c| c.is_ascii_uppercase() || c == '_'))
        .collect()
}

#[test]
fn env_files_name_only_variables_their_components_read() {
    let cases: [(&str, &[&str]); 5] = [
        ("dlog-bridge", &["collector-bridge/src"]),
        // `dlog viewer`: the store settings are dlog's global ones.
        ("dlog-viewer", &["dlog/src"]),
        ("dlog-indexer", &["indexer/src", "storage/src"]),
        ("dlog-alerter", &["alerting/src"]),
        ("dlog-demo", &["services/src", "sdk/src", "core/src"]),
    ];
    for (file, dirs) in cases {
        let known = env_names(dirs);
        let named = env_file_names(file);
        assert!(!named.is_empty(), "{file} sets nothing");
        for name in named {
            assert!(
                known.contains(&name),
                "{file} sets {name}, which {dirs:?} never read"
            );
        }
    }
}

#[test]
fn the_rotel_env_file_uses_rotels_own_variables() {
    let Some(help) = rotel_help() else {
        // rotel comes with scripts/install-test-deps.sh; CI always has it.
        assert!(
            std::env::var_os("CI").is_none(),
            "rotel-agent is not installed (scripts/install-test-deps.sh installs it)"
        );
        return;
    };
    for name in env_file_names("dlog-rotel") {
        assert!(
            help.contains(&format!("[env: {name}=")),
            "rotel-agent start reads no {name}"
        );
    }
}

fn rotel_help() -> Option<String> {
    let dir = std::process::Command::new("python3")
        .args([
            "-c",
            "import rotel,os;print(os.path.dirname(rotel.__file__))",
        ])
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    let bin = PathBuf::from(String::from_utf8_lossy(&dir.stdout).trim()).join("rotel-agent");
    let out = std::process::Command::new(bin)
        .args(["start", "--help"])
        .output()
        .ok()?;
    Some(String::from_utf8_lossy(&out.stdout).to_string())
}

#[test]
fn units_start_binaries_that_exist_with_env_files_that_exist() {
    // Binaries this workspace builds: [[bin]] names and src/bin/*.rs files.
    let mut binaries: BTreeSet<String> = ["tansu", "rotel-agent"].map(String::from).into();
    for entry in std::fs::read_dir(root()).unwrap() {
        let dir = entry.unwrap().path();
        let manifest = dir.join("Cargo.toml");
        if !manifest.is_file() {
            continue;
        }
        let text = read(&manifest);
        for line in text.lines() {
            if let Some(name) = line.strip_prefix("name = \"") {
                binaries.insert(name.trim_end_matches('"').to_string());
            }
        }
        if let Ok(bins) = std::fs::read_dir(dir.join("src/bin")) {
            for bin in bins {
                let path = bin.unwrap().path();
                binaries.insert(path.file_stem().unwrap().to_string_lossy().to_string());
            }
        }
    }
    let units = root().join("deploy/systemd");
    let mut seen = 0;
    for entry in std::fs::read_dir(&units).unwrap() {
        let path = entry.unwrap().path();
        let text = read(&path);
        seen += 1;
        let exec = text
            .lines()
            .find_map(|l| l.strip_prefix("ExecStart="))
            .unwrap_or_else(|| panic!("{}: no ExecStart", path.display()));
        let program = exec.split_whitespace().next().unwrap();
        let name = program.rsplit('/').next().unwrap();
        assert!(
            binaries.contains(name),
            "{}: {name} is not a binary this workspace builds",
            path.display()
        );
        for env_file in text
            .lines()
            .filter_map(|l| l.strip_prefix("EnvironmentFile=-"))
        {
            let base = env_file.rsplit('/').next().unwrap();
            if base.contains("%i") {
                continue; // optional per-instance overrides
            }
            assert!(
                root().join("deploy/etc/default").join(base).is_file(),
                "{}: {env_file} has no sample in deploy/etc/default",
                path.display()
            );
        }
    }
    assert!(seen >= 4, "bridge, indexer, alerter and viewer units");
    for unit in ["dlog-bridge", "dlog-indexer", "dlog-alerter", "dlog-viewer"] {
        assert!(units.join(format!("{unit}.service")).is_file(), "{unit}");
    }
}

#[test]
fn the_viewer_unit_runs_a_dlog_subcommand_that_reads_its_env_file() {
    let unit = read(&root().join("deploy/systemd/dlog-viewer.service"));
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .unwrap();
    let mut words = exec.split_whitespace();
    assert!(words.next().unwrap().ends_with("/dlog"), "{exec}");
    let sub: Vec<&str> = words.collect();
    assert_eq!(sub, ["viewer"], "{exec}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dlog"))
        .args(["viewer", "--help"])
        .env_clear()
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let help = String::from_utf8_lossy(&out.stdout);
    // Every variable the env file sets is one `dlog viewer` takes (clap lists each as
    // `[env: NAME=`), except the logging filter, read before the arguments.
    for name in env_file_names("dlog-viewer") {
        if name == "DLOG_LOG" {
            continue;
        }
        assert!(
            help.contains(&format!("[env: {name}")),
            "`dlog viewer` takes no {name}:\n{help}"
        );
    }
}
