//! Ctrl-C and SIGTERM stop a run promptly in every phase, with a message that says only what
//! is true; an epoch too large for memory is refused before it is made.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use smalltext_tests::{alive, bin, coordinator, free_port, stderr, trec, trec_slice, worker_pids};

/// Starts `coordinator ARGS`, sends SIGTERM once a log line contains `when` (or at once for
/// ""), and returns how long it took to exit after the signal, its exit status and its log.
fn terminate_when(args: &[String], when: &str) -> (Duration, std::process::ExitStatus, String) {
    let mut child = Command::new(bin("coordinator"))
        .args(args)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (lines, seen) = mpsc::channel();
    let err = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            let _ = lines.send(line.clone());
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let start = Instant::now();
    while !when.is_empty() {
        let line = seen
            .recv_timeout(Duration::from_secs(120))
            .unwrap_or_else(|_| panic!("no log line with {when:?}"));
        if line.contains(when) {
            break;
        }
    }
    assert!(start.elapsed() < Duration::from_secs(120));
    let signalled = Instant::now();
    let sent = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let status = child.wait().unwrap();
    let latency = signalled.elapsed();
    (latency, status, reader.join().unwrap())
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

#[test]
fn sigterm_is_acted_on_in_every_phase_and_the_message_tells_the_truth() {
    let dir = tempfile::tempdir().unwrap();
    let small = trec_slice(dir.path(), "train.tsv", 0, 600);
    let full = trec("train.tsv");
    let run = |name: &str| dir.path().join(name).display().to_string();

    // While the data is prepared: a large augmented epoch (about a second of work).
    let prep = run("prep");
    let (latency, status, log) = terminate_when(
        &strings(&[
            "--workers",
            "1",
            "--data",
            full.to_str().unwrap(),
            "--augment",
            "eda",
            "--num-aug",
            "64",
            "--balance",
            "oversample",
            "--run-dir",
            &prep,
        ]),
        "run directory",
    );
    assert!(!status.success(), "{log}");
    assert!(latency < Duration::from_secs(10), "{latency:?}: {log}");
    assert!(log.contains("no checkpoint was written"), "{log}");
    assert!(!std::path::Path::new(&prep).join("checkpoint").exists());

    // While waiting for workers that never come.
    let waiting = run("waiting");
    let token = dir.path().join("token");
    std::fs::write(&token, "a-token-nobody-else-has\n").unwrap();
    let (latency, status, log) = terminate_when(
        &strings(&[
            "--listen",
            &format!("127.0.0.1:{}", free_port()),
            "--expect-workers",
            "2",
            "--token-file",
            token.to_str().unwrap(),
            "--data",
            small.to_str().unwrap(),
            "--run-dir",
            &waiting,
        ]),
        "waiting for 2 workers",
    );
    assert!(!status.success());
    assert!(latency < Duration::from_secs(10), "{latency:?}: {log}");
    assert!(
        log.contains("interrupted while waiting for 2 workers to join"),
        "{log}"
    );
    assert!(log.contains("no checkpoint was written"), "{log}");

    // While training, after the first epoch's checkpoint: it is named, and it resumes.
    let training = run("training");
    let (latency, status, log) = terminate_when(
        &strings(&[
            "--workers",
            "2",
            "--threads",
            "1",
            "--data",
            full.to_str().unwrap(),
            "--epochs",
            "50",
            "--run-dir",
            &training,
        ]),
        "epoch 1/50",
    );
    assert!(!status.success());
    assert!(latency < Duration::from_secs(10), "{latency:?}: {log}");
    assert!(
        log.contains("interrupted while training epoch")
            || log.contains("interrupted while preparing epoch"),
        "{log}"
    );
    assert!(log.contains("this run's workers are stopped"), "{log}");
    assert!(
        log.contains(&format!(
            "is kept in {training}: `coordinator --resume {training}`"
        )),
        "{log}"
    );
    assert!(std::path::Path::new(&training).join("checkpoint").exists());
    for pid in worker_pids(&log) {
        let gone = Instant::now();
        while alive(pid) && gone.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(!alive(pid), "worker {pid} outlived its coordinator");
    }
}

#[test]
fn an_epoch_beyond_the_memory_budget_is_refused_before_it_is_made() {
    let dir = tempfile::tempdir().unwrap();
    let small = trec_slice(dir.path(), "train.tsv", 0, 300);
    bin("coordinator");
    let start = Instant::now();
    let o = coordinator(&[
        "--workers",
        "1",
        "--data",
        small.to_str().unwrap(),
        "--augment",
        "eda",
        "--num-aug",
        "1000000",
        "--run-dir",
        dir.path().join("huge").to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    let said = stderr(&o);
    assert!(said.contains("× (1 + 1000000 augmentations)"), "{said}");
    assert!(said.contains("give --memory-budget SIZE"), "{said}");
    assert!(!said.contains("joined"), "no worker starts: {said}");
    assert!(start.elapsed() < Duration::from_secs(30), "refused at once");
    // A budget given is the one held to, either way.
    let preview = |budget: &str| {
        coordinator(&[
            "data",
            "preview",
            "--data",
            small.to_str().unwrap(),
            "--augment",
            "eda",
            "--num-aug",
            "16",
            "--limit",
            "0",
            "--memory-budget",
            budget,
        ])
    };
    let o = preview("1M");
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("more than the --memory-budget of 1.0M"),
        "{}",
        stderr(&o)
    );
    assert!(preview("1G").status.success());
}
