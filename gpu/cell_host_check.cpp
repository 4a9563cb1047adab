// The CUDA cell kernels of common/src/model/lstm_cell.cu compiled for the host (one "thread",
// a grid-stride loop of stride 1), so that CI checks their arithmetic without a GPU: backward
// against central finite differences of forward (f64), forward against the cell's
// definition, and the f32 kernels against the f64 ones. Run by gpu/cell_host_check.sh.
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>
using std::exp;
using std::tanh;

struct Dim {
  unsigned int x;
};
static const Dim blockIdx{0}, blockDim{1}, threadIdx{0}, gridDim{1};
#define __global__
#define __device__
#define __forceinline__ inline
#include "lstm_cell.cu"

using Vec = std::vector<double>;
static const unsigned rows = 3, hidden = 5, n = rows * hidden;

static double sig(double v) { return 1 / (1 + exp(-v)); }

// Σ out · probe: a scalar whose gradient with respect to out is the probe.
static double loss(const Vec &gates, const Vec &cell, const Vec &probe) {
  Vec out(2 * n);
  lstm_cell_fwd_f64(gates.data(), cell.data(), out.data(), rows, hidden);
  double l = 0;
  for (unsigned k = 0; k < 2 * n; k++) l += out[k] * probe[k];
  return l;
}

// The worst gap between d[offset..] and central differences of loss() with respect to x.
static double worst_fd(Vec &x, const Vec &d, unsigned offset, bool is_gates, const Vec &gates,
                       const Vec &cell, const Vec &probe) {
  const double eps = 1e-6;
  double worst = 0;
  for (unsigned k = 0; k < x.size(); k++) {
    const double keep = x[k];
    x[k] = keep + eps;
    const double up = is_gates ? loss(x, cell, probe) : loss(gates, x, probe);
    x[k] = keep - eps;
    const double down = is_gates ? loss(x, cell, probe) : loss(gates, x, probe);
    x[k] = keep;
    worst = std::fmax(worst, std::fabs((up - down) / (2 * eps) - d[offset + k]));
  }
  return worst;
}

int main() {
  std::mt19937 gen(1);
  std::uniform_real_distribution<double> dist(-1.5, 1.5);
  Vec gates(4 * n), cell(n), probe(2 * n);
  for (auto *v : {&gates, &cell, &probe}) {
    for (auto &x : *v) x = dist(gen);
  }

  Vec d(5 * n);
  lstm_cell_bwd_f64(gates.data(), cell.data(), probe.data(), d.data(), rows, hidden);
  Vec g2 = gates, c2 = cell;
  const double bwd = std::fmax(worst_fd(g2, d, 0, true, gates, cell, probe),
                               worst_fd(c2, d, 4 * n, false, gates, cell, probe));

  Vec out(2 * n);
  lstm_cell_fwd_f64(gates.data(), cell.data(), out.data(), rows, hidden);
  double fwd = 0;
  for (unsigned b = 0; b < rows; b++) {
    for (unsigned j = 0; j < hidden; j++) {
      const double *a = &gates[b * 4 * hidden];
      const unsigned k = b * hidden + j;
      const double c = sig(a[hidden + j]) * cell[k] + sig(a[j]) * tanh(a[2 * hidden + j]);
      const double h = sig(a[3 * hidden + j]) * tanh(c);
      fwd = std::fmax(fwd, std::fmax(std::fabs(c - out[n + k]), std::fabs(h - out[k])));
    }
  }

  std::vector<float> gf(gates.begin(), gates.end()), cf(cell.begin(), cell.end()),
      pf(probe.begin(), probe.end()), df(5 * n), of(2 * n);
  lstm_cell_bwd_f32(gf.data(), cf.data(), pf.data(), df.data(), rows, hidden);
  lstm_cell_fwd_f32(gf.data(), cf.data(), of.data(), rows, hidden);
  double f32 = 0;
  for (unsigned k = 0; k < 5 * n; k++) f32 = std::fmax(f32, std::fabs(df[k] - d[k]));
  for (unsigned k = 0; k < 2 * n; k++) f32 = std::fmax(f32, std::fabs(of[k] - out[k]));

  const bool ok = bwd < 1e-6 && fwd < 1e-12 && f32 < 1e-5;
  printf("lstm_cell.cu on the host: backward vs finite differences %.2e (tolerance 1e-6), "
         "forward vs definition %.2e (1e-12), f32 vs f64 %.2e (1e-5): %s\n",
         bwd, fwd, f32, ok ? "ok" : "FAILED");
  return ok ? 0 : 1;
}
