//! Scratch buffers for the fused op, reused from one training step to the next.
//!
//! The op needs a dozen buffers of 0.1–7 MB per call. Allocating them fresh means zeroing them
//! every time (and, without [`super::malloc`], faulting their pages in), although most are
//! overwritten entirely before they are read. Buffers dropped here go back to a small pool,
//! and [`Buf::stale`] hands one out without clearing it.

use std::ops::{Deref, DerefMut};
use std::sync::Mutex;

/// Buffers kept per element type; beyond this the smallest is freed.
const KEEP: usize = 48;

/// Element types with a buffer pool.
pub trait Pooled: Copy + Default + Send + 'static {
    fn pool() -> &'static Mutex<Vec<Vec<Self>>>;
}

macro_rules! pooled {
    ($t:ty) => {
        impl Pooled for $t {
            fn pool() -> &'static Mutex<Vec<Vec<$t>>> {
                static POOL: Mutex<Vec<Vec<$t>>> = Mutex::new(Vec::new());
                &POOL
            }
        }
    };
}

pooled!(f32);
pooled!(f64);

/// A buffer that goes back to its pool when dropped.
pub struct Buf<T: Pooled>(Vec<T>);

impl<T: Pooled> Buf<T> {
    /// `len` elements of unspecified (but initialised) values, for a buffer the caller
    /// overwrites entirely before reading it.
    pub fn stale(len: usize) -> Self {
        let mut v = take::<T>(len);
        if v.len() > len {
            v.truncate(len);
        } else {
            v.resize(len, T::default());
        }
        Buf(v)
    }

    /// `len` zeros.
    pub fn zeroed(len: usize) -> Self {
        let mut v = take::<T>(len);
        v.clear();
        v.resize(len, T::default());
        Buf(v)
    }
}

/// The pooled vector with the least capacity that still holds `len`, or a new one.
fn take<T: Pooled>(len: usize) -> Vec<T> {
    // A poisoned pool only means another thread panicked while holding it; its vectors are
    // still valid vectors.
    let mut pool = T::pool().lock().unwrap_or_else(|e| e.into_inner());
    let best = pool
        .iter()
        .enumerate()
        .filter(|(_, v)| v.capacity() >= len)
        .min_by_key(|(_, v)| v.capacity())
        .map(|(i, _)| i);
    match best {
        Some(i) => pool.swap_remove(i),
        None => Vec::with_capacity(len),
    }
}

impl<T: Pooled> Drop for Buf<T> {
    fn drop(&mut self) {
        let v = std::mem::take(&mut self.0);
        if v.capacity() == 0 {
            return;
        }
        let mut pool = T::pool().lock().unwrap_or_else(|e| e.into_inner());
        pool.push(v);
        if pool.len() > KEEP {
            if let Some(i) = (0..pool.len()).min_by_key(|&i| pool[i].capacity()) {
                pool.swap_remove(i);
            }
        }
    }
}

impl<T: Pooled> Deref for Buf<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        &self.0
    }
}

impl<T: Pooled> DerefMut for Buf<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        &mut self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zeroed_buffers_are_zero_even_when_reused() {
        {
            let mut a = Buf::<f64>::stale(1000);
            a.iter_mut().for_each(|x| *x = 7.0);
        }
        let b = Buf::<f64>::zeroed(900);
        assert_eq!(b.len(), 900);
        assert!(b.iter().all(|&x| x == 0.0));
        let c = Buf::<f64>::stale(1200);
        assert_eq!(c.len(), 1200);
    }
}
