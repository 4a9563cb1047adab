//! Seeded random streams derived from a path of integers (seed, example id, epoch, ...).
//!
//! Every random decision of the pipeline draws from a stream keyed by *what* it is for, never
//! from a shared generator, so results do not depend on thread count, worker count or the
//! order in which examples are processed.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// A generator whose state depends only on `parts`.
pub fn stream(parts: &[u64]) -> ChaCha8Rng {
    let mut h: u64 = 0x243F_6A88_85A3_08D3;
    for &p in parts {
        h = splitmix64(h ^ splitmix64(p));
    }
    ChaCha8Rng::seed_from_u64(h)
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A standard normal draw (Box–Muller).
pub fn standard_normal(rng: &mut impl rand::Rng) -> f64 {
    let u1: f64 = 1.0 - rng.gen::<f64>();
    let u2: f64 = rng.gen();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// Domain tags, so streams for different purposes never coincide.
pub mod tag {
    pub const AUGMENT: u64 = 1;
    pub const BALANCE: u64 = 2;
    pub const SHUFFLE: u64 = 3;
    pub const MIX: u64 = 4;
    pub const SPLIT: u64 = 5;
    pub const BALANCE_AUGMENT: u64 = 6;
    pub const INIT: u64 = 7;
    pub const SUBSAMPLE: u64 = 8;
    pub const DROPOUT: u64 = 9;
    pub const CHAR_NOISE: u64 = 10;
}
