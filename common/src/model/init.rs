//! Drawing initial weights as PyTorch's layers draw theirs, from the model's seeded generator.

use std::f64::consts::PI;

use rand::Rng;

/// A standard normal draw (Box–Muller): `nn.Embedding`'s initialisation.
pub(crate) fn normal(rng: &mut impl Rng) -> f32 {
    let u1: f64 = 1.0 - rng.gen::<f64>();
    let u2: f64 = rng.gen();
    ((-2.0 * u1.ln()).sqrt() * (2.0 * PI * u2).cos()) as f32
}

/// `n` draws from U(±1/√fan): `nn.LSTM` everywhere (fan = hidden units), and `nn.Linear`,
/// whose Kaiming-uniform weight (a = √5) and bias have that same bound (fan = inputs).
pub(crate) fn uniform(n: usize, fan: usize, rng: &mut impl Rng) -> Vec<f32> {
    let bound = 1.0 / (fan as f32).sqrt();
    (0..n).map(|_| rng.gen_range(-bound..bound)).collect()
}
