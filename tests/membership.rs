//! Membership changes during a run: a worker lost mid-epoch (the run goes on with the
//! survivors, re-sharding the rest of the epoch, every example trained exactly once) and a
//! worker joining a run under way (admitted at the next epoch boundary with the current
//! weights and optimizer state).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use smalltext_tests::{
    alive, bin, coordinator, free_port, json, jsonl, max_weight_diff, resumed_at, stderr,
    trec_slice, unequal_tensors,
};

/// These tests time their faults from the first epoch's speed; run one at a time, each keeps
/// the speed it measured.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// What a membership test trains.
#[derive(Clone, Copy, PartialEq)]
enum Model {
    /// The seed's BiLSTM on `--data train`.
    Plain,
    /// TREC as the target task beside the bundled SUBJ slice as an auxiliary one.
    Tasks,
    /// A tiny BERT fine-tuned on `--data train` (its directory beside the data).
    Finetune,
    /// The seed's BiLSTM, its workers holding the training state as a GPU worker does
    /// (`SMALLTEXT_HOLD=device`, on Candle's CPU device).
    HeldOnDevice,
}

impl Model {
    /// What the coordinator's environment passes on to its workers.
    fn env(self) -> Vec<(&'static str, &'static str)> {
        match self {
            Model::HeldOnDevice => vec![("SMALLTEXT_HOLD", "device")],
            _ => Vec::new(),
        }
    }
}

/// The training data's and model's flags.
fn data_flags(train: &Path, model: Model) -> Vec<String> {
    match model {
        Model::Plain | Model::HeldOnDevice => vec!["--data".into(), train.display().to_string()],
        Model::Tasks => vec![
            "--task".into(),
            format!("trec={}", train.display()),
            "--task".into(),
            format!(
                "subj={}:0.3",
                smalltext_tests::root()
                    .join("data/subj/train.tsv")
                    .display()
            ),
        ],
        Model::Finetune => {
            let dir = train.parent().unwrap();
            let encoder = match dir.join("tiny-bert").is_dir() {
                true => dir.join("tiny-bert"),
                false => smalltext_tests::tiny_encoder(dir),
            };
            vec![
                "--data".into(),
                train.display().to_string(),
                "--encoder".into(),
                encoder.display().to_string(),
                "--encoder-mode".into(),
                "finetune".into(),
            ]
        }
    }
}

fn args(train: &Path, test: &Path, run: &Path, model: Model) -> Vec<String> {
    let mut args = data_flags(train, model);
    args.extend(
        [
            "--workers",
            "3",
            "--threads",
            "1",
            "--test",
            test.to_str().unwrap(),
            "--epochs",
            "3",
            "--seed",
            "5",
            "--heartbeat-timeout",
            "2",
            "--run-dir",
            run.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    args
}

/// A coordinator whose log is collected as it runs.
struct Running {
    child: Child,
    log: Arc<Mutex<String>>,
}

impl Running {
    fn start(args: &[String], model: Model) -> Self {
        let mut child = Command::new(bin("coordinator"))
            .args(args)
            .envs(model.env())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let err = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let mut l = sink.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        Running { child, log }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// The process id of worker `id`, once it has joined.
    fn worker_pid(&self, id: usize) -> u32 {
        let start = Instant::now();
        let prefix = format!("worker rank {id} joined: host ");
        loop {
            let log = self.log();
            if let Some(pid) = log
                .lines()
                .filter_map(|l| l.split(&prefix).nth(1))
                .filter_map(|rest| rest.split(" pid ").nth(1))
                .filter_map(|rest| rest.split(',').next())
                .find_map(|p| p.trim().parse().ok())
            {
                return pid;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "no join in {log}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until the first epoch is recorded, then for `fraction` of its training time, so
    /// that what happens next lands inside the second epoch.
    fn wait_into_second_epoch(&mut self, metrics: &Path, fraction: f64) {
        let start = Instant::now();
        let first = loop {
            if let Some(line) = std::fs::read_to_string(metrics)
                .ok()
                .and_then(|t| t.lines().next().map(str::to_string))
            {
                break serde_json::from_str::<serde_json::Value>(&line).unwrap();
            }
            assert!(start.elapsed() < Duration::from_secs(120), "no first epoch");
            assert!(self.child.try_wait().unwrap().is_none(), "{}", self.log());
            std::thread::sleep(Duration::from_millis(5));
        };
        let seconds =
            first["examples"].as_f64().unwrap() / first["samples_per_s"].as_f64().unwrap();
        std::thread::sleep(Duration::from_secs_f64(seconds * fraction));
    }

    fn wait(mut self) -> (bool, String) {
        let start = Instant::now();
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            if start.elapsed() > Duration::from_secs(180) {
                let _ = self.child.kill();
                panic!("the run did not finish: {}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        // The reader thread drains what is left of the log.
        std::thread::sleep(Duration::from_millis(200));
        (status.success(), self.log())
    }
}

fn setup(dir: &Path) -> (PathBuf, PathBuf) {
    (
        trec_slice(dir, "train.tsv", 0, 1500),
        trec_slice(dir, "test.tsv", 0, 500),
    )
}

/// The run's record after losing one worker: checked against the uninterrupted run.
fn check_record(lost: &Path, whole: &Path, pid: u32, reason: &str) {
    let (s, w) = (
        json(&lost.join("summary.json")),
        json(&whole.join("summary.json")),
    );
    assert_eq!(s["workers_lost"], 1, "{s}");
    assert_eq!(w["workers_lost"], 0);
    let log = s["epoch_log"].as_array().unwrap();
    assert_eq!(log.len(), 3);
    for e in log {
        assert_eq!(e["examples_planned"], e["examples_trained"], "{e}");
    }
    assert_eq!(log[0]["workers"], 3);
    assert_eq!(log[2]["workers"], 2);
    let gone = log[1]["workers_lost"].as_array().unwrap();
    assert_eq!(gone.len(), 1, "{}", log[1]);
    assert_eq!(gone[0]["pid"], pid);
    assert!(
        gone[0]["reason"].as_str().unwrap().contains(reason),
        "{}",
        gone[0]
    );

    // A survivor computes the lost worker's slot of every later step on its own, and the
    // sums are taken in the full world's order: the survivors reach the uninterrupted run's
    // weights bit for bit.
    let (a, b) = (
        s["accuracy"].as_f64().unwrap(),
        w["accuracy"].as_f64().unwrap(),
    );
    assert!(
        (a - b).abs() <= 0.02,
        "accuracy {a} after losing a worker, {b} without"
    );
    let unequal = unequal_tensors(
        &lost.join("checkpoint/weights.safetensors"),
        &whole.join("checkpoint/weights.safetensors"),
    );
    assert!(unequal.is_empty(), "weights differ: {unequal:?}");
    let lines = jsonl(&lost.join("metrics.jsonl"));
    assert_eq!(lines.len(), 3);
    // The epoch that lost a worker reports all of its examples, the lost worker's share of
    // the steps before the loss included, with a loss like the uninterrupted run's.
    let whole_lines = jsonl(&whole.join("metrics.jsonl"));
    for (e, (line, undisturbed)) in log.iter().zip(lines.iter().zip(&whole_lines)) {
        assert_eq!(line["examples"], e["examples_trained"], "{line}");
        assert_eq!(line["examples"], undisturbed["examples"], "{line}");
        let (a, b) = (
            line["train_loss"].as_f64().unwrap(),
            undisturbed["train_loss"].as_f64().unwrap(),
        );
        assert!(
            (a - b).abs() <= 1e-3 * b,
            "train loss {a} after a loss, {b} without"
        );
        // With tasks, each task's examples too.
        if let Some(tasks) = line["tasks"].as_object() {
            let sum: u64 = tasks
                .values()
                .map(|t| t["examples"].as_u64().unwrap())
                .sum();
            assert_eq!(line["examples"].as_u64().unwrap(), sum, "{line}");
            for (name, t) in tasks {
                assert_eq!(
                    t["examples"], undisturbed["tasks"][name]["examples"],
                    "{line}"
                );
            }
        }
    }
}

/// Runs the 3-worker job uninterrupted, then again sending worker `victim` `signal` 40% into
/// the second epoch; checks the run finished with the survivors, resumed mid-epoch, kept
/// nothing behind and recorded it all (see `check_record`). Returns the second run's log and
/// the victim's process id.
fn lose_one(victim: usize, signal: &str, reason: &str, model: Model) -> (String, u32) {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let (train, test) = setup(dir.path());
    let (whole, lost) = (dir.path().join("whole"), dir.path().join("lost"));
    let o = Command::new(bin("coordinator"))
        .args(args(&train, &test, &whole, model))
        .envs(model.env())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));

    let mut run = Running::start(&args(&train, &test, &lost, model), model);
    let pids: Vec<u32> = (0..3).map(|id| run.worker_pid(id)).collect();
    run.wait_into_second_epoch(&lost.join("metrics.jsonl"), 0.4);
    let pid = pids[victim];
    assert!(Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .unwrap()
        .success());
    let (ok, log) = run.wait();
    assert!(ok, "{log}");
    assert!(
        log.contains(&format!("worker {victim} (host "))
            && log.contains(&format!("pid {pid}) lost: {reason}")),
        "{log}"
    );
    let (step, total) = resumed_at(&log);
    assert!(
        0 < step && step < total,
        "the {signal} landed at step {step} of {total}"
    );
    check_record(&lost, &whole, pid, reason);
    for pid in pids {
        assert!(!alive(pid), "worker {pid} left behind");
    }
    (log, pid)
}

#[test]
fn a_worker_killed_mid_epoch_is_replaced_by_resharding_among_the_survivors() {
    lose_one(1, "-KILL", "its process exited", Model::Plain);
}

/// Workers holding their training state on the device (as GPU workers do; here Candle's CPU
/// device): the survivors adopt the furthest one's weights and moments, copied out of the
/// device and back in, and the run ends with the undisturbed run's weights bit for bit.
#[test]
fn a_run_held_on_the_device_that_loses_a_worker_stays_exact() {
    let (log, _) = lose_one(1, "-KILL", "its process exited", Model::HeldOnDevice);
    assert!(log.contains("training state held on the device"), "{log}");
}

/// With two tasks the heads are dense parameters like the rest: the survivors of a lost
/// worker reach the undisturbed run's weights, and each task's figures still cover the epoch
/// (see `check_record`).
#[test]
fn a_multitask_run_that_loses_a_worker_stays_exact() {
    let (log, _) = lose_one(2, "-KILL", "its process exited", Model::Tasks);
    assert!(log.contains("epoch 3/3"), "{log}");
}

/// Fine-tuning an encoder, whose weights and moments are most of the state a survivor
/// adopts: the lost worker still costs one step, and the run ends with the undisturbed run's
/// weights (see `check_record`).
#[test]
fn a_finetune_run_that_loses_a_worker_stays_exact() {
    let (log, _) = lose_one(1, "-KILL", "its process exited", Model::Finetune);
    assert!(log.contains("epoch 3/3"), "{log}");
}

/// A hung worker (SIGSTOP: its sockets stay open, its heartbeats stop) is found by its
/// missing heartbeats; the survivors blocked in the ring with it are released by the new
/// generation, and the coordinator kills the hung process.
#[test]
fn a_hung_worker_is_declared_lost_by_its_heartbeats_and_the_run_goes_on() {
    let started = Instant::now();
    let (log, _) = lose_one(2, "-STOP", "no heartbeat for 2 s", Model::Plain);
    assert!(log.contains("declared lost while running: killed"), "{log}");
    assert!(started.elapsed() < Duration::from_secs(120));
}

/// The same hang while fine-tuning, where the survivors wait in the thread that sums the
/// gradient's buckets beside the backward pass: the new generation releases that thread too,
/// and the run still ends with the undisturbed run's weights.
#[test]
fn a_hung_worker_of_a_finetune_run_is_declared_lost_and_the_run_stays_exact() {
    let (log, _) = lose_one(2, "-STOP", "no heartbeat for 2 s", Model::Finetune);
    assert!(log.contains("declared lost while running: killed"), "{log}");
    assert!(log.contains("epoch 3/3"), "{log}");
}

/// A third worker joins a 2-worker run after its first epoch: it enters at an epoch boundary,
/// takes the current weights and optimizer state from the ring, and since the global batches
/// do not depend on how they are split, the run ends with the 2-worker run's weights.
#[test]
fn a_worker_joining_a_run_under_way_is_admitted_at_the_next_epoch_boundary() {
    join_one(Model::Plain);
}

/// The same with a fine-tuned encoder: the late worker takes the encoder's weights, its
/// moments and the schedule's position from the ring.
#[test]
fn a_worker_joining_a_finetune_run_reaches_the_same_weights() {
    join_one(Model::Finetune);
}

/// Trains 4 epochs with 2 workers, then again with a third joining after the first epoch, and
/// compares the two.
fn join_one(model: Model) {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let (train, test) = setup(dir.path());
    let (whole, joined) = (dir.path().join("whole"), dir.path().join("joined"));
    let common = |run: &Path| -> Vec<String> {
        let mut a = args(&train, &test, run, model);
        let at = a.iter().position(|x| x == "--epochs").unwrap();
        a[at + 1] = "4".into();
        let at = a.iter().position(|x| x == "--workers").unwrap();
        a.drain(at..at + 4); // --workers 3 --threads 1
        a
    };
    let mut a = vec!["--workers", "2", "--threads", "1"]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>();
    a.extend(common(&whole));
    let o = coordinator(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "{}", stderr(&o));

    let token = dir.path().join("join.token");
    std::fs::write(&token, "a-token-for-membership-tests\n").unwrap();
    let port = free_port();
    let mut a: Vec<String> = [
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--expect-workers",
        "2",
        "--token-file",
        token.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    a.extend(common(&joined));
    let mut run = Running::start(&a, model);
    let worker = || {
        Command::new(bin("worker"))
            .args(["--coordinator", &format!("http://127.0.0.1:{port}")])
            .args(["--token-file", token.to_str().unwrap(), "--threads", "1"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut workers = vec![worker(), worker()];
    run.wait_into_second_epoch(&joined.join("metrics.jsonl"), 0.0);
    workers.push(worker());
    let late = workers[2].id();
    let (ok, log) = run.wait();
    assert!(ok, "{log}");
    for w in &mut workers {
        let status = w.wait().unwrap();
        assert!(status.success(), "a worker exited with {status}: {log}");
    }
    assert!(
        log.contains(&format!("pid {late}) admitted to the run")),
        "{log}"
    );
    let s = json(&joined.join("summary.json"));
    let epochs = s["epoch_log"].as_array().unwrap();
    assert_eq!(epochs.len(), 4);
    for e in epochs {
        assert_eq!(e["examples_planned"], e["examples_trained"], "{e}");
    }
    let counts: Vec<u64> = epochs
        .iter()
        .map(|e| e["workers"].as_u64().unwrap())
        .collect();
    assert_eq!(
        (counts[0], counts[3]),
        (2, 3),
        "workers per epoch {counts:?}"
    );
    let diff = max_weight_diff(
        &joined.join("checkpoint/weights.safetensors"),
        &whole.join("checkpoint/weights.safetensors"),
    );
    assert!(diff <= 1e-4, "weights differ by {diff}");
}
