//! The containers of the Kubernetes manifests in deploy/k8s, for tests that parse their
//! arguments with the binaries' own parsers (shared by the coordinator's and worker's tests
//! through `#[path]`, which keeps serde_yaml a dev-dependency).

use std::path::{Path, PathBuf};

/// A container of a manifest: the file, its command and arguments.
pub struct Container {
    pub file: PathBuf,
    pub command: Vec<String>,
    pub args: Vec<String>,
}

/// Every `*.yaml` under deploy/k8s.
pub fn manifest_files() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/k8s");
    let mut files = Vec::new();
    let mut dirs = vec![root];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("deploy/k8s exists") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "yaml") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// Every document of every manifest.
pub fn documents() -> Vec<(PathBuf, serde_yaml::Value)> {
    let mut docs = Vec::new();
    for file in manifest_files() {
        let text = std::fs::read_to_string(&file).expect("a readable manifest");
        for part in text.split("\n---") {
            let value: serde_yaml::Value =
                serde_yaml::from_str(part).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            if !value.is_null() {
                docs.push((file.clone(), value));
            }
        }
    }
    docs
}

/// The containers of every workload (Deployment, StatefulSet, ...) in the manifests.
pub fn containers() -> Vec<Container> {
    let strings = |v: &serde_yaml::Value| -> Vec<String> {
        v.as_sequence()
            .map(|s| {
                s.iter()
                    .map(|x| match x {
                        serde_yaml::Value::String(s) => s.clone(),
                        other => panic!("a non-string command or argument: {other:?}"),
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut out = Vec::new();
    for (file, doc) in documents() {
        let Some(list) = doc["spec"]["template"]["spec"]["containers"].as_sequence() else {
            continue;
        };
        for c in list {
            out.push(Container {
                file: file.clone(),
                command: strings(&c["command"]),
                args: strings(&c["args"]),
            });
        }
    }
    out
}
