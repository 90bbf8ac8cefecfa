# Sourced by tests/gpu/run.sh: finds cuDNN and cuBLAS on a GPU machine whose CUDA toolkit lacks
# them (they may come only with Python wheels, nvidia-cudnn-* and nvidia-cublas*). Sets
# CUDA_MAKE_ARGS for make (CUDNN_HOME pointing at a folder of links to headers and libraries)
# and puts the wheels' library folders on LD_LIBRARY_PATH (cuDNN loads its engines by name).
CUDA_MAKE_ARGS=""
nvcc_path=$(command -v nvcc || ls /usr/local/cuda/bin/nvcc 2>/dev/null)
cuda_home=${nvcc_path%/bin/nvcc}
echo "nvcc: ${nvcc_path:-none}; CUDA_HOME: ${cuda_home:-none}"
have() { # have HEADER LIB: both in the toolkit or the system folders
  { [ -f "$cuda_home/include/$1" ] || [ -f "/usr/include/$1" ] || [ -f "/usr/include/x86_64-linux-gnu/$1" ]; } &&
    { [ -e "$cuda_home/lib64/$2" ] || [ -e "/usr/lib/x86_64-linux-gnu/$2" ]; }
}
missing=""
have cudnn.h libcudnn.so || missing="$missing cudnn"
have cublas_v2.h libcublas.so || missing="$missing cublas"
if [ -n "$missing" ]; then
  echo "not in the toolkit:$missing; looking in the Python wheels"
  extra=$PWD/.cuda-extra
  rm -rf "$extra"; mkdir -p "$extra/include" "$extra/lib"
  for sp in $(${VTL_PY:-python3} -c 'import site; print(" ".join(site.getsitepackages()))' 2>/dev/null) /usr/lib/python3/dist-packages; do
    [ -d "$sp/nvidia" ] || continue
    for lib in $missing; do
      for h in $(find "$sp/nvidia" -name "${lib}*.h" 2>/dev/null); do ln -sf "$h" "$extra/include/"; done
      [ "$lib" = cublas ] && for h in $(find "$sp/nvidia" -name "cublas*.h" 2>/dev/null); do ln -sf "$h" "$extra/include/"; done
      for so in $(find "$sp/nvidia" -name "lib${lib}*.so*" 2>/dev/null); do
        ln -sf "$so" "$extra/lib/"
        d=$(dirname "$so"); case ":${LD_LIBRARY_PATH:-}:" in *":$d:"*) ;; *) export LD_LIBRARY_PATH=$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH} ;; esac
      done
    done
  done
  # the unversioned names the linker wants
  for so in "$extra"/lib/*.so.*; do
    [ -e "$so" ] || continue
    base=${so%%.so.*}.so; [ -e "$base" ] || ln -sf "$(readlink "$so")" "$base"
  done
  ls "$extra/include" "$extra/lib" | tr '\n' ' '; echo
  CUDA_MAKE_ARGS="CUDNN_HOME=$extra"
fi
echo "make args: ${CUDA_MAKE_ARGS:-none}; LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"
