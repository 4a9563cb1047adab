//! Ring all-reduce throughput on this machine: `world` ranks as threads in one process, over
//! real TCP on 127.0.0.1, all-reducing a gradient-sized buffer again and again.
//!
//! cargo run --release -p common --example bench_ring -- [world=2] [floats=1500000] [iters=100] [segment_kib=128] [shm=1]
//!
//! With shm=1 (the default) the ranks sum through shared memory, as workers on one host do;
//! shm=0 keeps them on TCP.

use std::net::TcpListener;
use std::thread;
use std::time::{Duration, Instant};

use common::collective::{Collective, RingAllReduce, RingAuth, RingOptions};

fn arg(i: usize, default: usize) -> usize {
    std::env::args()
        .nth(i)
        .map(|a| {
            a.parse()
                .unwrap_or_else(|_| panic!("argument {i} must be a number, got {a}"))
        })
        .unwrap_or(default)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (world, floats, iters, segment_kib, shm) = (
        arg(1, 2),
        arg(2, 1_500_000),
        arg(3, 100),
        arg(4, 128),
        arg(5, 1),
    );
    let listeners = (0..world)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()?;
    let peers = listeners
        .iter()
        .map(|l| l.local_addr())
        .collect::<Result<Vec<_>, _>>()?;
    let auth = RingAuth::new(b"bench-token", 1);
    let options = RingOptions {
        connect_timeout: Duration::from_secs(10),
        segment_bytes: segment_kib << 10,
        shared_memory: if shm == 0 { 0 } else { floats },
        ..RingOptions::default()
    };

    let per_rank = thread::scope(|s| {
        let handles: Vec<_> = listeners
            .into_iter()
            .enumerate()
            .map(|(rank, listener)| {
                let (peers, auth, options) = (&peers, &auth, &options);
                s.spawn(move || -> Result<(Duration, u64, &'static str), String> {
                    let mut ring =
                        RingAllReduce::connect_with(rank, peers, listener, auth, options)
                            .map_err(|e| e.to_string())?;
                    let mut buf = vec![rank as f32 * 0.001; floats];
                    // Warm-up: connections, socket buffers and allocations settle.
                    for _ in 0..5 {
                        ring.all_reduce_sum(&mut buf).map_err(|e| e.to_string())?;
                    }
                    ring.take_bytes_sent();
                    let start = Instant::now();
                    for _ in 0..iters {
                        ring.all_reduce_sum(&mut buf).map_err(|e| e.to_string())?;
                    }
                    Ok((start.elapsed(), ring.take_bytes_sent(), ring.transport()))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("rank thread"))
            .collect::<Result<Vec<_>, _>>()
    })?;

    let (elapsed, bytes, transport) = per_rank[0];
    let ms = elapsed.as_secs_f64() * 1e3 / iters as f64;
    let per_call = bytes / iters as u64;
    println!(
        "world {world} over {transport}, {floats} floats ({:.1} MB), segment {segment_kib} KiB: \
         {ms:.2} ms per all-reduce, {per_call} bytes sent per rank per call, \
         {:.2} GB/s algorithm bandwidth",
        floats as f64 * 4.0 / 1e6,
        floats as f64 * 4.0 / (ms * 1e-3) / 1e9,
    );
    Ok(())
}
