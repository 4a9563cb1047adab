#!/usr/bin/env bash
# Installs the CUDA 13.0 toolchain the `cuda,nccl` build needs from NVIDIA's PyPI packages
# (no system CUDA, no GPU needed) into .cuda/ (git-ignored), and prints nothing else but
# what it does. gpu/env.sh then points cargo, nvcc and cudarc at it.
#
# Pinned to the 13.0 line: the GPU machines run driver 580 (CUDA 13.0) with PyTorch cu130, and
# nvcc, cicc (nvvm) and the crt headers must come from the same release or ptxas rejects the
# PTX that cicc writes.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="$root/.cuda/venv"
if [[ ! -x "$venv/bin/python" ]]; then
  python3 -m venv "$venv"
fi
"$venv/bin/pip" install -q --disable-pip-version-check \
  "nvidia-cuda-nvcc==13.0.*" "nvidia-nvvm==13.0.*" "nvidia-cuda-crt==13.0.*" \
  "nvidia-cuda-runtime==13.0.*" "nvidia-cuda-nvrtc==13.0.*" "nvidia-cuda-cccl==13.0.*" \
  "nvidia-cublas==13.0.*" "nvidia-curand==10.4.*" "nvidia-nccl-cu13==2.27.*"
site="$("$venv/bin/python" -c 'import nvidia, os; print(os.path.dirname(nvidia.__path__[0]))')"
cu="$site/nvidia/cu13"
nccl="$site/nvidia/nccl"

# A CUDA_ROOT in the layout cudarc's and candle-kernels' build scripts search: bin/, include/,
# lib64/ with the unversioned names the linker wants. NCCL's header and library join it.
top="$root/.cuda/root"
rm -rf "$top"
mkdir -p "$top/lib64/stubs" "$top/include"
ln -s "$cu/bin" "$top/bin"
ln -s "$cu/nvvm" "$top/nvvm"
for h in "$cu"/include/* "$nccl"/include/*; do ln -s "$h" "$top/include/"; done
for lib in "$cu"/lib/*.so.* "$nccl"/lib/*.so.*; do
  name="$(basename "$lib")"
  ln -s "$lib" "$top/lib64/$name"
  ln -sf "$lib" "$top/lib64/${name%%.so.*}.so"
done

# libcuda.so is the driver's and no package ships it; the binaries link against a stub with
# the same soname and find the real driver on the GPU machine. The stub's symbols are the
# driver API functions cudarc binds.
cudarc="$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-0.19.* | sort -V | tail -1)"
grep -rhoE 'pub unsafe fn cu[A-Za-z0-9_]+' "$cudarc/src/driver/sys/" | sed 's/pub unsafe fn //' | sort -u \
  | awk '{print "void " $1 "(void) {}"}' > "$top/lib64/stubs/libcuda.c"
gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$top/lib64/stubs/libcuda.so" "$top/lib64/stubs/libcuda.c"
echo "CUDA 13.0 toolchain in $top ($("$top/bin/nvcc" --version | tail -1))"
