//! Drawing initial weights as PyTorch's layers draw theirs, from the model's seeded generator.

use rand::Rng;

/// A standard normal draw: `nn.Embedding`'s initialisation.
pub(crate) fn normal(rng: &mut impl Rng) -> f32 {
    crate::rng::standard_normal(rng) as f32
}

/// `n` draws from U(±1/√fan): `nn.LSTM` everywhere (fan = hidden units), and `nn.Linear`,
/// whose Kaiming-uniform weight (a = √5) and bias have that same bound (fan = inputs).
pub(crate) fn uniform(n: usize, fan: usize, rng: &mut impl Rng) -> Vec<f32> {
    let bound = 1.0 / (fan as f32).sqrt();
    (0..n).map(|_| rng.gen_range(-bound..bound)).collect()
}
