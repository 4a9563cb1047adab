// One LSTM cell step for the composed GPU layer (lstm_cell.rs holds the CPU twin and the
// layout): gates i, f, g, o, B × 4H pre-activations; the cell c_prev, B × H.
//   forward:  out = [h | c], each B × H
//   backward: out = [d_gates (B × 4H) | d_c_prev (B × H)] from grad = [dh | dc]
// One thread per (row, unit), in a grid-stride loop.

template <typename T> __device__ __forceinline__ T sigmoid(T x) { return T(1) / (T(1) + exp(-x)); }

template <typename T>
__device__ void cell_fwd(const T *gates, const T *c_prev, T *out, unsigned int rows,
                         unsigned int hidden) {
  const unsigned int n = rows * hidden;
  for (unsigned int k = blockIdx.x * blockDim.x + threadIdx.x; k < n; k += blockDim.x * gridDim.x) {
    const unsigned int b = k / hidden, j = k % hidden;
    const T *a = gates + (size_t)b * 4 * hidden;
    const T i = sigmoid(a[j]), f = sigmoid(a[hidden + j]), g = tanh(a[2 * hidden + j]),
            o = sigmoid(a[3 * hidden + j]);
    const T c = f * c_prev[k] + i * g;
    out[k] = o * tanh(c);
    out[n + k] = c;
  }
}

template <typename T>
__device__ void cell_bwd(const T *gates, const T *c_prev, const T *grad, T *out,
                         unsigned int rows, unsigned int hidden) {
  const unsigned int n = rows * hidden;
  for (unsigned int k = blockIdx.x * blockDim.x + threadIdx.x; k < n; k += blockDim.x * gridDim.x) {
    const unsigned int b = k / hidden, j = k % hidden;
    const size_t row = (size_t)b * 4 * hidden;
    const T *a = gates + row;
    const T i = sigmoid(a[j]), f = sigmoid(a[hidden + j]), g = tanh(a[2 * hidden + j]),
            o = sigmoid(a[3 * hidden + j]);
    const T tc = tanh(f * c_prev[k] + i * g);
    const T dh = grad[k];
    const T dc = grad[n + k] + dh * o * (T(1) - tc * tc);
    T *d = out + row;
    d[j] = dc * g * i * (T(1) - i);
    d[hidden + j] = dc * c_prev[k] * f * (T(1) - f);
    d[2 * hidden + j] = dc * i * (T(1) - g * g);
    d[3 * hidden + j] = dh * tc * o * (T(1) - o);
    out[(size_t)4 * n + k] = dc * f;
  }
}

#define CELL(T, SUFFIX)                                                                        \
  extern "C" __global__ void lstm_cell_fwd_##SUFFIX(const T *gates, const T *c_prev, T *out,  \
                                                    unsigned int rows, unsigned int hidden) {  \
    cell_fwd<T>(gates, c_prev, out, rows, hidden);                                             \
  }                                                                                            \
  extern "C" __global__ void lstm_cell_bwd_##SUFFIX(const T *gates, const T *c_prev,           \
                                                    const T *grad, T *out, unsigned int rows,  \
                                                    unsigned int hidden) {                     \
    cell_bwd<T>(gates, c_prev, grad, out, rows, hidden);                                       \
  }

CELL(float, f32)
CELL(double, f64)
