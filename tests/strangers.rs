//! Strangers who connect to our ports and say nothing: on the coordinator's gRPC and metrics
//! ports, a daemon's port and the workers' ring ports. Each is let go after a timeout, and
//! the run they sit on trains as if they were not there.

use std::io::Read;
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use smalltext_tests::{bin, free_port, json, trec_slice};

const TOKEN: &str = "a-token-strangers-do-not-have";

/// Connects to `addr` as soon as something listens there.
fn stranger(addr: &str) -> TcpStream {
    let start = Instant::now();
    loop {
        if let Ok(s) = TcpStream::connect(addr) {
            return s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{addr} never listened"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether the server closed the stranger's connection within `within`.
fn let_go(mut s: TcpStream, within: Duration) -> bool {
    s.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            // An HTTP/2 server may greet first (settings, pings): keep listening.
            Ok(_) => continue,
            Err(e) => return e.kind() == std::io::ErrorKind::ConnectionReset,
        }
    }
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn idle_strangers_are_let_go_and_the_run_trains_as_if_they_were_not_there() {
    let dir = tempfile::tempdir().unwrap();
    let train = trec_slice(dir.path(), "train.tsv", 0, 300);
    let token = dir.path().join("join.token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    let grpc = format!("127.0.0.1:{}", free_port());
    let metrics = format!("127.0.0.1:{}", free_port());
    let daemon_addr = format!("127.0.0.1:{}", free_port());
    let run = dir.path().join("run");
    let coord = Command::new(bin("coordinator"))
        .args([
            "--listen",
            &grpc,
            "--expect-workers",
            "2",
            "--metrics-addr",
            &metrics,
        ])
        .arg("--token-file")
        .arg(&token)
        .arg("--data")
        .arg(&train)
        .args(["--epochs", "2", "--join-timeout", "180", "--run-dir"])
        .arg(&run)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _daemon = Killed(
        Command::new(bin("worker"))
            .args(["--listen", &daemon_addr])
            .arg("--token-file")
            .arg(&token)
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let idle = [stranger(&grpc), stranger(&metrics), stranger(&daemon_addr)];
    // Half a request, then silence.
    let mut half = stranger(&metrics);
    std::io::Write::write_all(&mut half, b"GET /metr").unwrap();
    // The servers' idle timeout is 20 s; allow for a loaded machine.
    for (s, port) in idle.into_iter().chain([half]).zip([
        "gRPC",
        "metrics",
        "daemon",
        "metrics (half a request)",
    ]) {
        assert!(
            let_go(s, Duration::from_secs(40)),
            "a stranger stays on the {port} port"
        );
    }

    // Now the workers, each with a stranger on its ring port before the ring forms.
    let ring_ports = [free_port(), free_port()];
    let workers: Vec<Killed> = ring_ports
        .iter()
        .map(|p| {
            Killed(
                Command::new(bin("worker"))
                    .args(["--coordinator", &format!("http://{grpc}"), "--threads", "1"])
                    .args(["--ring-port", &p.to_string()])
                    .arg("--token-file")
                    .arg(&token)
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap(),
            )
        })
        .collect();
    let _on_the_ring: Vec<TcpStream> = ring_ports
        .iter()
        .map(|p| stranger(&format!("127.0.0.1:{p}")))
        .collect();
    let out = coord.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    for mut w in workers {
        assert!(w.0.wait().unwrap().success());
    }
    let summary = json(&run.join("summary.json"));
    assert_eq!(summary["workers_lost"], 0, "{log}");
    assert_eq!(summary["workers"], 2);
    assert_eq!(summary["epochs"], 2, "{log}");
}
