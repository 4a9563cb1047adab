//! Helpers shared by the integration tests: the project's binaries (built on first use, in the
//! same profile as the tests) and the bundled data.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The bundled TREC file `name` (`train.tsv` or `test.tsv`).
pub fn trec(name: &str) -> PathBuf {
    root().join("data/trec").join(name)
}

/// The first `n` lines after `skip` of the bundled TREC file `name`, as a file in `dir`.
pub fn trec_slice(dir: &Path, name: &str, skip: usize, n: usize) -> PathBuf {
    let text = std::fs::read_to_string(trec(name)).expect("bundled TREC data");
    let out = dir.join(format!("{}-{skip}-{n}.tsv", name.trim_end_matches(".tsv")));
    let lines: Vec<&str> = text.lines().skip(skip).take(n).collect();
    std::fs::write(&out, lines.join("\n") + "\n").expect("writing a data slice");
    out
}

/// The directory holding the binaries of the profile the tests were built with.
fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> → target/<profile>
    exe.parent()
        .and_then(Path::parent)
        .expect("target directory")
        .to_path_buf()
}

/// Path to the project binary `name` (`coordinator` or `worker`), built once per test process.
pub fn bin(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    let dir = bin_dir();
    BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let target_dir = dir.parent().expect("target dir").to_path_buf();
        let mut cmd = Command::new(cargo);
        // Cargo gives a test process its package's variables; some build scripts (ring's)
        // track CARGO_MANIFEST_DIR, so passing them on would rebuild half the tree here and
        // again at the next plain `cargo build`.
        for (key, _) in std::env::vars_os() {
            let k = key.to_string_lossy();
            if [
                "CARGO_MANIFEST_",
                "CARGO_PKG_",
                "CARGO_CRATE_",
                "CARGO_BIN_",
                "CARGO_PRIMARY_PACKAGE",
                "CARGO_TARGET_TMPDIR",
                "CARGO_RUSTC_CURRENT_DIR",
            ]
            .iter()
            .any(|p| k.starts_with(p))
            {
                cmd.env_remove(&key);
            }
        }
        cmd.current_dir(root())
            .args(["build", "--quiet", "--workspace", "--bins", "--target-dir"])
            .arg(&target_dir);
        if dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("running cargo build");
        assert!(status.success(), "cargo build of the binaries failed");
    });
    dir.join(name)
}

/// Runs `coordinator` with `args` and returns its output.
pub fn coordinator(args: &[&str]) -> Output {
    Command::new(bin("coordinator"))
        .args(args)
        .output()
        .expect("running coordinator")
}

/// Runs `coordinator` on `args` with `--run-dir run`, which must succeed; returns its log.
pub fn train(run: &Path, args: &[&str]) -> String {
    let mut all = vec!["--run-dir", run.to_str().expect("a UTF-8 path")];
    all.extend_from_slice(args);
    let o = coordinator(&all);
    let log = stderr(&o);
    assert!(o.status.success(), "training failed:\n{log}");
    log
}

/// The coordinator on `args`, quiet, left running.
pub fn start(args: &[String]) -> Child {
    Command::new(bin("coordinator"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Starts the coordinator on `args` and kills it (SIGKILL: no clean-up) once `epochs` epochs
/// are in the metrics of its run directory `run`.
pub fn kill_after_epochs(args: &[String], run: &Path, epochs: usize) {
    let mut child = start(args);
    let metrics = run.join("metrics.jsonl");
    let start = Instant::now();
    while std::fs::read_to_string(&metrics).map_or(0, |t| t.lines().count()) < epochs {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no epoch {epochs}"
        );
        assert!(child.try_wait().unwrap().is_none(), "finished too early");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Reads a JSON file.
pub fn json(path: &Path) -> serde_json::Value {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
}

/// Reads a JSON-lines file.
pub fn jsonl(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .collect()
}

/// Largest absolute difference between the tensors of two safetensors files (same names).
///
/// A fine-tuned encoder's attention key biases are left out: a key's bias adds the same q·b to
/// every score of a query, which softmax ignores, so their exact gradient is zero and what they
/// get is rounding noise, which Adam scales up to steps of the learning rate's size (PyTorch's
/// do the same). Summed in another order, that noise differs.
pub fn max_weight_diff(a: &Path, b: &Path) -> f32 {
    let dev = candle_core::Device::Cpu;
    let ta = candle_core::safetensors::load(a, &dev).expect("weights a");
    let tb = candle_core::safetensors::load(b, &dev).expect("weights b");
    assert_eq!(ta.len(), tb.len());
    let mut max = 0f32;
    for (name, x) in ta
        .iter()
        .filter(|(n, _)| !n.ends_with("attention.self.key.bias"))
    {
        max = max.max(tensor_diff(x, &tb[name]));
    }
    max
}

/// The names of the tensors whose bits differ between two safetensors files (same names),
/// each with its largest difference: empty when the weights are identical.
pub fn unequal_tensors(a: &Path, b: &Path) -> Vec<(String, f32)> {
    let dev = candle_core::Device::Cpu;
    let ta = candle_core::safetensors::load(a, &dev).expect("weights a");
    let tb = candle_core::safetensors::load(b, &dev).expect("weights b");
    assert_eq!(ta.len(), tb.len());
    let bits = |t: &candle_core::Tensor| -> Vec<u32> {
        let v = t.flatten_all().and_then(|t| t.to_vec1::<f32>());
        v.expect("f32 weights")
            .into_iter()
            .map(f32::to_bits)
            .collect()
    };
    let mut out: Vec<(String, f32)> = ta
        .iter()
        .filter(|(name, x)| bits(x) != bits(&tb[*name]))
        .map(|(name, x)| (name.clone(), tensor_diff(x, &tb[name])))
        .collect();
    out.sort_by(|x, y| x.0.cmp(&y.0));
    out
}

/// Largest absolute difference between two f32 tensors of one shape.
pub fn tensor_diff(a: &candle_core::Tensor, b: &candle_core::Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b)
        .and_then(|d| d.abs())
        .and_then(|d| d.flatten_all())
        .and_then(|d| d.max(0))
        .and_then(|d| d.to_scalar::<f32>())
        .expect("comparing tensors")
}

/// Process ids of the workers a coordinator's log names ("... joined: host H pid N, ...").
pub fn worker_pids(log: &str) -> Vec<u32> {
    log.lines()
        .filter(|l| l.contains("joined: host"))
        .filter_map(|l| l.split(" pid ").nth(1))
        .filter_map(|rest| rest.split(',').next())
        .filter_map(|p| p.trim().parse().ok())
        .collect()
}

/// Whether a process is still alive (not gone, not a zombie).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .split(") ")
            .nth(1)
            .is_some_and(|rest| rest.starts_with('Z')),
        Err(_) => false,
    }
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// The step and total steps of "epoch E goes on at step S of T" in the coordinator's log.
pub fn resumed_at(log: &str) -> (u64, u64) {
    let rest = log
        .split("goes on at step ")
        .nth(1)
        .unwrap_or_else(|| panic!("no regroup in the log: {log}"));
    let mut words = rest.split_whitespace();
    let step = words.next().unwrap().parse().unwrap();
    assert_eq!(words.next(), Some("of"));
    let total = words.next().unwrap().parse().unwrap();
    (step, total)
}

/// A CA and a certificate it signed for 127.0.0.1 and localhost (server and client use), made
/// with the openssl command in `dir/name-*`: (CA certificate, certificate, key).
pub fn tls_files(dir: &Path, name: &str) -> (PathBuf, PathBuf, PathBuf) {
    let p = |s: &str| dir.join(format!("{name}-{s}"));
    let run = |args: &[&str]| {
        let o = Command::new("openssl")
            .args(args)
            .output()
            .expect("running openssl (apt-get install openssl)");
        assert!(
            o.status.success(),
            "openssl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr)
        );
    };
    let s = |p: &PathBuf| p.to_str().expect("utf-8 path").to_string();
    let (ca, ca_key, cert, key, csr, ext) = (
        p("ca.pem"),
        p("ca.key"),
        p("cert.pem"),
        p("key.pem"),
        p("cert.csr"),
        p("ext.cnf"),
    );
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut args = vec!["req", "-x509", "-days", "2", "-subj"];
    let subject = format!("/CN={name} test CA");
    args.push(&subject);
    args.extend(ec);
    let (ca_s, ca_key_s) = (s(&ca), s(&ca_key));
    args.extend(["-keyout", &ca_key_s, "-out", &ca_s]);
    run(&args);
    let (key_s, csr_s) = (s(&key), s(&csr));
    let mut args = vec!["req", "-subj", "/CN=localhost"];
    args.extend(ec);
    args.extend(["-keyout", &key_s, "-out", &csr_s]);
    run(&args);
    std::fs::write(
        &ext,
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n\
         keyUsage=digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\n",
    )
    .expect("writing the extensions");
    let (cert_s, ext_s) = (s(&cert), s(&ext));
    run(&[
        "x509",
        "-req",
        "-days",
        "2",
        "-in",
        &csr_s,
        "-CA",
        &ca_s,
        "-CAkey",
        &ca_key_s,
        "-CAcreateserial",
        "-extfile",
        &ext_s,
        "-out",
        &cert_s,
    ]);
    (ca, cert, key)
}

/// A gRPC client of the coordinator at `url`, retrying for up to a minute while it starts.
pub async fn connect_coordinator(
    url: &str,
) -> common::pb::coordinator_client::CoordinatorClient<tonic::transport::Channel> {
    use common::pb::coordinator_client::CoordinatorClient;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        match CoordinatorClient::connect(url.to_string()).await {
            Ok(c) => {
                break c
                    .max_decoding_message_size(usize::MAX)
                    .max_encoding_message_size(usize::MAX)
            }
            Err(_) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await
            }
            Err(e) => panic!("connecting to the coordinator at {url}: {e}"),
        }
    }
}

/// A tiny BERT (2 blocks of width 32) with all-MiniLM-L6-v2's tokenizer and vocabulary and
/// random weights, written as a model directory under `dir`: fine-tuning runs on it in seconds
/// with real WordPiece tokens. Needs `models/fetch.sh` (for the tokenizer).
pub fn tiny_encoder(dir: &Path) -> PathBuf {
    let out = dir.join("tiny-bert");
    std::fs::create_dir_all(&out).expect("creating the tiny encoder's directory");
    let minilm = root().join("models/all-MiniLM-L6-v2");
    std::fs::copy(minilm.join("tokenizer.json"), out.join("tokenizer.json"))
        .expect("models/all-MiniLM-L6-v2/tokenizer.json (run models/fetch.sh)");
    let (vocab, h, inner, layers, positions) = (30522, 32, 64, 2, 128);
    let config = serde_json::json!({
        "architectures": ["BertModel"],
        "model_type": "bert",
        "vocab_size": vocab,
        "hidden_size": h,
        "num_hidden_layers": layers,
        "num_attention_heads": 2,
        "intermediate_size": inner,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "max_position_embeddings": positions,
        "type_vocab_size": 2,
        "initializer_range": 0.02,
        "layer_norm_eps": 1e-12,
        "pad_token_id": 0
    });
    std::fs::write(
        out.join("config.json"),
        serde_json::to_string_pretty(&config).unwrap(),
    )
    .unwrap();
    let mut shapes: Vec<(String, Vec<usize>)> = vec![
        ("embeddings.word_embeddings.weight".into(), vec![vocab, h]),
        (
            "embeddings.position_embeddings.weight".into(),
            vec![positions, h],
        ),
        ("embeddings.token_type_embeddings.weight".into(), vec![2, h]),
        ("embeddings.LayerNorm.weight".into(), vec![h]),
        ("embeddings.LayerNorm.bias".into(), vec![h]),
    ];
    for l in 0..layers {
        let p = format!("encoder.layer.{l}");
        for (name, o, i) in [
            ("attention.self.query", h, h),
            ("attention.self.key", h, h),
            ("attention.self.value", h, h),
            ("attention.output.dense", h, h),
            ("intermediate.dense", inner, h),
            ("output.dense", h, inner),
        ] {
            shapes.push((format!("{p}.{name}.weight"), vec![o, i]));
            shapes.push((format!("{p}.{name}.bias"), vec![o]));
        }
        for norm in ["attention.output.LayerNorm", "output.LayerNorm"] {
            shapes.push((format!("{p}.{norm}.weight"), vec![h]));
            shapes.push((format!("{p}.{norm}.bias"), vec![h]));
        }
    }
    // A fixed generator (64-bit LCG, Box–Muller): the same model in every test.
    let mut state = 0x5eed_u64;
    let mut uniform = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((state >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    let mut tensors = std::collections::HashMap::new();
    for (name, shape) in shapes {
        let n: usize = shape.iter().product();
        let values: Vec<f32> = if name.contains("LayerNorm.weight") {
            vec![1.0; n]
        } else if name.ends_with(".bias") {
            vec![0.0; n]
        } else {
            (0..n)
                .map(|_| {
                    let (u1, u2) = (uniform(), uniform());
                    let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
                    (0.2 * z) as f32
                })
                .collect()
        };
        let t = candle_core::Tensor::from_vec(values, shape, &candle_core::Device::Cpu).unwrap();
        tensors.insert(name, t);
    }
    candle_core::safetensors::save(&tensors, out.join("model.safetensors")).unwrap();
    out
}
