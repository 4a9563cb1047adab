//! Multi-host on one machine: the coordinator and two workers in separate network namespaces,
//! joined by veth pairs routed through the coordinator's namespace. One worker's link is cut
//! mid-epoch (no reset, no FIN: its packets just stop), and the run completes with the other.
//!
//! Needs root and iproute2 (`ip`); without them the test says why and does nothing else.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use smalltext_tests::{bin, json, resumed_at, trec_slice};

/// Network namespaces and links made for one test, removed on drop.
struct Net {
    names: Vec<String>,
}

impl Net {
    fn ip(args: &[&str]) -> Output {
        Command::new("ip").args(args).output().expect("running ip")
    }

    fn must(args: &[&str]) {
        let o = Self::ip(args);
        assert!(
            o.status.success(),
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr)
        );
    }

    /// Namespace `c` routes between `w1` (10.77.1.0/24) and `w2` (10.77.2.0/24); `None` when
    /// this machine cannot make namespaces.
    fn new(tag: &str) -> Option<Self> {
        let root = Command::new("id").arg("-u").output().ok()?;
        if String::from_utf8_lossy(&root.stdout).trim() != "0" {
            return None;
        }
        let c = format!("{tag}c");
        if !Self::ip(&["netns", "add", &c]).status.success() {
            return None;
        }
        let net = Net {
            names: vec![c.clone(), format!("{tag}w1"), format!("{tag}w2")],
        };
        Self::must(&["-n", &c, "link", "set", "lo", "up"]);
        Self::must(&[
            "netns",
            "exec",
            &c,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
        ]);
        for (i, w) in net.names[1..].iter().enumerate() {
            let n = i + 1;
            let (gw, me) = (format!("10.77.{n}.1"), format!("10.77.{n}.2"));
            Self::must(&["netns", "add", w]);
            Self::must(&["-n", w, "link", "set", "lo", "up"]);
            Self::must(&[
                "link",
                "add",
                &format!("v{n}"),
                "netns",
                &c,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                w,
            ]);
            Self::must(&[
                "-n",
                &c,
                "addr",
                "add",
                &format!("{gw}/24"),
                "dev",
                &format!("v{n}"),
            ]);
            Self::must(&["-n", &c, "link", "set", &format!("v{n}"), "up"]);
            Self::must(&["-n", w, "addr", "add", &format!("{me}/24"), "dev", "eth0"]);
            Self::must(&["-n", w, "link", "set", "eth0", "up"]);
            Self::must(&["-n", w, "route", "add", "default", "via", &gw]);
        }
        Some(net)
    }

    fn exec(&self, ns: usize, program: &Path) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.names[ns]]).arg(program);
        cmd
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for n in &self.names {
            let _ = Self::ip(&["netns", "del", n]);
        }
    }
}

/// Reads a child's stderr to the end in a thread, so a full pipe never blocks it.
fn drain(child: &mut Child) -> std::thread::JoinHandle<String> {
    let err = child.stderr.take().expect("piped stderr");
    std::thread::spawn(move || std::io::read_to_string(err).unwrap_or_default())
}

fn wait(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

#[test]
fn a_worker_cut_off_the_network_mid_epoch_is_lost_and_the_run_completes_with_the_other() {
    let tag = format!("st{}", std::process::id() % 100_000);
    let Some(net) = Net::new(&tag) else {
        eprintln!("skipped: needs root and iproute2 to make network namespaces");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let train = trec_slice(dir.path(), "train.tsv", 0, 1500);
    let token = dir.path().join("join.token");
    std::fs::write(&token, "netns-token-for-the-namespaces\n").unwrap();
    let run = dir.path().join("run");
    let mut coord = net
        .exec(0, &bin("coordinator"))
        .args(["--listen", "0.0.0.0:50051", "--expect-workers", "2"])
        .args(["--token-file", token.to_str().unwrap()])
        .args([
            "--data",
            train.to_str().unwrap(),
            "--epochs",
            "3",
            "--seed",
            "5",
        ])
        .args(["--heartbeat-timeout", "2", "--join-timeout", "60"])
        // The namespaces share this host's /dev/shm, which separate hosts would not: keep the
        // ring on the network it is meant to lose.
        .args(["--ring-transport", "tcp"])
        .args(["--run-dir", run.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut workers: Vec<Child> = (1..=2)
        .map(|n| {
            net.exec(n, &bin("worker"))
                .args(["--coordinator", &format!("http://10.77.{n}.1:50051")])
                .args(["--token-file", token.to_str().unwrap(), "--threads", "1"])
                .args(["--advertise-addr", &format!("10.77.{n}.2")])
                .args(["--heartbeat-timeout", "5"])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let coord_log = drain(&mut coord);
    let w2_log = drain(&mut workers[1]);
    let _w1_log = drain(&mut workers[0]);

    // Cut worker 2's link a little into the second epoch.
    let metrics = run.join("metrics.jsonl");
    let start = Instant::now();
    let first: serde_json::Value = loop {
        if let Some(line) = std::fs::read_to_string(&metrics)
            .ok()
            .and_then(|t| t.lines().next().map(str::to_string))
        {
            break serde_json::from_str(&line).unwrap();
        }
        assert!(start.elapsed() < Duration::from_secs(120), "no first epoch");
        assert!(coord.try_wait().unwrap().is_none(), "the coordinator ended");
        std::thread::sleep(Duration::from_millis(5));
    };
    let epoch_s = first["examples"].as_f64().unwrap() / first["samples_per_s"].as_f64().unwrap();
    std::thread::sleep(Duration::from_secs_f64(epoch_s * 0.4));
    Net::must(&["-n", &net.names[0], "link", "set", "v2", "down"]);

    let status = wait(&mut coord, Duration::from_secs(120));
    let log = coord_log.join().unwrap();
    assert!(status.is_some_and(|s| s.success()), "{log}");
    assert!(log.contains("lost: no heartbeat for 2 s"), "{log}");
    let (step, total) = resumed_at(&log);
    assert!(
        0 < step && step < total,
        "the cut came at step {step} of {total}"
    );
    let s = json(&run.join("summary.json"));
    assert_eq!(s["workers_lost"], 1, "{s}");
    let epochs = s["epoch_log"].as_array().unwrap();
    for e in epochs {
        assert_eq!(e["examples_planned"], e["examples_trained"], "{e}");
    }
    assert_eq!(epochs[2]["workers"], 1);

    // The survivor ends with the run; the cut-off worker notices its coordinator is gone and
    // exits non-zero.
    let w1 = wait(&mut workers[0], Duration::from_secs(30));
    assert!(w1.is_some_and(|s| s.success()), "worker 1: {w1:?}");
    let w2 = wait(&mut workers[1], Duration::from_secs(60));
    let said = w2_log.join().unwrap();
    assert!(w2.is_some_and(|s| !s.success()), "worker 2: {w2:?} {said}");
    assert!(said.contains("lost the coordinator"), "{said}");
}
