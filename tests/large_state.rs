//! A model whose weights and optimizer state are larger than a gRPC message may be (256 MiB):
//! its checkpoint uploads, epoch report and a resumed run's initial state all travel in
//! chunks, and the run completes and resumes as a small one does.
//!
//! LARGE, on purpose: about 318 MB of state (a vocabulary of about 2,600 words × a 10,000-wide
//! embedding, and Adam's two moments of it), so each process holds about 1 GB; 25 to 35 s on 2
//! busy cores. The chunking itself is tested at small sizes in `common::state_transfer` and
//! over the wire in `tests/wire.rs`.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::pb;
use smalltext_tests::{bin, coordinator, json, max_weight_diff, stderr, trec_slice};

/// 2 local workers, one epoch of 7 steps, a checkpoint upload every 3 steps, into `run`.
fn args(train: &Path, run: &Path) -> Vec<String> {
    [
        "--workers",
        "2",
        "--threads",
        "1",
        "--data",
        train.to_str().unwrap(),
        "--eval-split",
        "0.1",
        "--epochs",
        "1",
        "--seed",
        "6",
        "--embedding-dim",
        "10000",
        "--hidden-dim",
        "8",
        "--batch-size",
        "128",
        "--checkpoint-every",
        "3",
        "--heartbeat-timeout",
        "2",
        "--run-dir",
        run.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Bytes of the checkpoint's weights and optimizer state in `run`.
fn checkpoint_bytes(run: &Path) -> u64 {
    ["weights.safetensors", "optimizer.safetensors"]
        .iter()
        .map(|f| {
            std::fs::metadata(run.join("checkpoint").join(f))
                .unwrap()
                .len()
        })
        .sum()
}

#[test]
fn a_model_state_over_the_message_limit_trains_checkpoints_and_resumes() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let train = trec_slice(dir.path(), "train.tsv", 0, 1000);
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));

    // Undisturbed: step checkpoints and the epoch's report carry the whole state.
    let args_a = args(&train, &a);
    let o = coordinator(&args_a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "{}", stderr(&o));
    let state = checkpoint_bytes(&a);
    assert!(
        state > pb::MAX_MESSAGE_BYTES as u64,
        "the state has {state} bytes, not more than one message's {}",
        pb::MAX_MESSAGE_BYTES
    );

    // The same run, killed once a checkpoint inside the epoch is on disk…
    let mut child = Command::new(bin("coordinator"))
        .args(args(&train, &b))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let state_json = b.join("checkpoint/state.json");
    let inside = || {
        std::fs::read(&state_json)
            .ok()
            .and_then(|t| serde_json::from_slice::<serde_json::Value>(&t).ok())
            .is_some_and(|s| s["step"].as_u64().unwrap_or(0) > 0)
    };
    let waiting = Instant::now();
    while !inside() {
        assert!(
            waiting.elapsed() < Duration::from_secs(120),
            "no checkpoint inside the epoch"
        );
        assert!(child.try_wait().unwrap().is_none(), "finished too early");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Stopped first, so no newer checkpoint replaces the one just seen before the kill.
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-STOP", &pid])
        .status()
        .unwrap()
        .success());
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(checkpoint_bytes(&b) > pb::MAX_MESSAGE_BYTES as u64);

    // …resumes from it: the workers receive the checkpoint's weights and optimizer state.
    let o = coordinator(&["--resume", b.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("after epoch 0 and "), "{err}");
    let diff = max_weight_diff(
        &a.join("checkpoint/weights.safetensors"),
        &b.join("checkpoint/weights.safetensors"),
    );
    assert!(diff <= 1e-5, "resumed weights differ by {diff}");
    let (sa, sb) = (json(&a.join("summary.json")), json(&b.join("summary.json")));
    assert_eq!(sa["accuracy"], sb["accuracy"]);
    assert_eq!(sb["epochs"], 1);
    eprintln!(
        "{state} bytes of state; the test took {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
