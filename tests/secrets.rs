//! The join token is handled like the secret it is: a short one is refused, a file others can
//! read is named with the fix, and the coordinator's own listener stays on loopback when
//! nothing else needs it.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use smalltext_tests::{bin, stderr, trec_slice};

fn worker_with_token_file(token: &std::path::Path) -> std::process::Output {
    // Nobody listens on port 1: past the token the worker fails to connect, at once.
    Command::new(bin("worker"))
        .args([
            "--coordinator",
            "http://127.0.0.1:1",
            "--connect-timeout",
            "1",
        ])
        .arg("--token-file")
        .arg(token)
        .output()
        .unwrap()
}

#[test]
fn a_token_shorter_than_16_bytes_is_refused_from_a_file_and_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let short = dir.path().join("short.token");
    std::fs::write(&short, "x\n").unwrap();
    std::fs::set_permissions(&short, std::fs::Permissions::from_mode(0o600)).unwrap();
    let o = worker_with_token_file(&short);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("is 1 bytes; it needs at least 16"),
        "{}",
        stderr(&o)
    );
    let o = Command::new(bin("worker"))
        .args(["--coordinator", "http://127.0.0.1:1"])
        .env("SMALLTEXT_TOKEN", "fifteen-bytes!!")
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("(SMALLTEXT_TOKEN) is 15 bytes"),
        "{}",
        stderr(&o)
    );
    let o = Command::new(bin("coordinator"))
        .args(["--listen", "127.0.0.1:0", "--expect-workers", "1"])
        .arg("--token-file")
        .arg(&short)
        .arg("--data")
        .arg(trec_slice(dir.path(), "train.tsv", 0, 100))
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("it needs at least 16"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn a_token_file_others_can_read_is_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("join.token");
    std::fs::write(&token, "a-token-long-enough-to-be-kept\n").unwrap();
    for (mode, warns) in [(0o666, true), (0o644, true), (0o600, false), (0o400, false)] {
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(mode)).unwrap();
        let said = stderr(&worker_with_token_file(&token));
        assert_eq!(
            said.contains(&format!("has mode {mode:04o}")) && said.contains("chmod 600"),
            warns,
            "mode {mode:04o}: {said}"
        );
        assert!(said.contains("cannot reach the coordinator"), "{said}");
    }
}
