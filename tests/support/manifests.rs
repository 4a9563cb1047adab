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
            let env = environment(c);
            out.push(Container {
                file: file.clone(),
                command: strings(&c["command"]),
                args: strings(&c["args"])
                    .iter()
                    .map(|a| expand(a, &env))
                    .collect(),
            });
        }
    }
    out
}

/// A container's environment as the process would see it: literal values, and for the pod's
/// own IP (`fieldRef: status.podIP`, known only at run time) a sample address.
fn environment(container: &serde_yaml::Value) -> Vec<(String, String)> {
    let mut env = Vec::new();
    for var in container["env"].as_sequence().into_iter().flatten() {
        let Some(name) = var["name"].as_str() else {
            continue;
        };
        let value = match (
            var["value"].as_str(),
            var["valueFrom"]["fieldRef"]["fieldPath"].as_str(),
        ) {
            (Some(v), _) => v.to_string(),
            (None, Some("status.podIP")) => "10.0.0.7".to_string(),
            _ => continue,
        };
        env.push((name.to_string(), value));
    }
    env
}

/// `$(NAME)` in an argument replaced by the variable's value, as the kubelet does before the
/// container starts; unknown names stay as they are (so does Kubernetes).
fn expand(arg: &str, env: &[(String, String)]) -> String {
    env.iter().fold(arg.to_string(), |a, (name, value)| {
        a.replace(&format!("$({name})"), value)
    })
}
