//! Compiling a hot element-wise loop for the processor it runs on.
//!
//! The crate is built for baseline x86-64 (SSE2) so that its binaries run anywhere, but the
//! machines we train on have AVX-512. `multiversion!` compiles one `#[inline(always)]` kernel
//! three times (AVX-512, AVX2+FMA, baseline) and picks at run time; the check is a cached
//! atomic load, negligible next to a loop over a block of rows.

/// `multiversion!(pub fn name<T: Bound>(arg: Type) => kernel);` defines `name`, which calls
/// `kernel(arg)` compiled for the best instruction set available.
macro_rules! multiversion {
    ($vis:vis fn $name:ident $(<$g:ident : $bound:path>)? ($arg:ident : $ty:ty) => $imp:path) => {
        $vis fn $name $(<$g: $bound>)? ($arg: $ty) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx2,fma")]
                unsafe fn avx512 $(<$g: $bound>)? ($arg: $ty) {
                    $imp($arg)
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2 $(<$g: $bound>)? ($arg: $ty) {
                    $imp($arg)
                }
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the processor has the features `avx512` is compiled for.
                    return unsafe { avx512($arg) };
                }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: as above, for `avx2`.
                    return unsafe { avx2($arg) };
                }
            }
            $imp($arg)
        }
    };
}

pub(crate) use multiversion;
