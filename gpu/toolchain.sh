#!/usr/bin/env bash
# Installs the CUDA 13.0 toolchain the `cuda,nccl` build needs from NVIDIA's PyPI packages
# (no system CUDA, no GPU needed) into .cuda/ (git-ignored), and prints nothing else but
# what it does. gpu/env.sh then points cargo, nvcc and cudarc at it.
#
# Pinned to the 13.0 line: the GPU machines run driver 580 (CUDA 13.0) with PyTorch cu130, and
# nvcc, cicc (nvvm) and the crt headers must come from the same release or ptxas rejects the
# PTX that cicc writes.
#
# The toolchain counts as installed only once this script has run to its end (the folder is
# made beside its place and moved there last, with a `complete` stamp): a run cut short, or
# one that failed, leaves nothing that gpu/build.sh would take for a finished toolchain.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="$root/.cuda/venv"
# cudarc's sources name the driver API functions the libcuda stub below must define. A CPU
# build never downloads that optional dependency, so fetch every locked package first.
(cd "$root" && cargo fetch --locked --quiet)
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
done_dir="$root/.cuda/root"
top="$root/.cuda/root.partial"
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
cudarc="$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-0.19.* 2>/dev/null | sort -V | tail -1)"
if [[ -z $cudarc ]]; then
  echo "gpu/toolchain.sh: cudarc 0.19's sources are not in cargo's registry after cargo fetch" >&2
  exit 1
fi
grep -rhoE 'pub unsafe fn cu[A-Za-z0-9_]+' "$cudarc/src/driver/sys/" | sed 's/pub unsafe fn //' | sort -u \
  | awk '{print "void " $1 "(void) {}"}' > "$top/lib64/stubs/libcuda.c"
gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$top/lib64/stubs/libcuda.so" "$top/lib64/stubs/libcuda.c"
version="$("$top/bin/nvcc" --version | tail -1)"
rm -rf "$done_dir"
mv "$top" "$done_dir"
touch "$done_dir/complete"
echo "CUDA 13.0 toolchain in $done_dir ($version)"
