// 3-D im2col / col2im (vol2col / col2vol) for convolution as GEMM, f32 and bf16.
// Argument contract: crates/medseg-kernels/src/im2col.rs; CPU kernel with the same arguments and
// mathematics: crates/medseg-ops/src/conv/cpu.rs (`im2col` / `col2im` over whole volumes).
//
// x [N, C, D, H, W]; cols [N, C·Kd·Kh·Kw, Do·Ho·Wo] with
//   cols[n, (c, kd, kh, kw), (od, oh, ow)] = x[n, c, od·s0 − p0 + kd·l0, oh·s1 − p1 + kh·l1, ow·s2 − p2 + kw·l2]
// (0 outside the volume). col2im is its adjoint: every x element gathers the cols entries that
// read it (no atomics). Convolution = im2col + one cuBLAS GEMM per group; the transposed
// convolution = GEMM + col2im; the backward of each is the other.
//
// Launch: one thread per output element, 256 threads per block, 1-D grid.
#include <cuda_bf16.h>

__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ void store(float* p, float x) { *p = x; }
__device__ __forceinline__ void store(__nv_bfloat16* p, float x) { *p = __float2bfloat16(x); }

struct Geom {
  int d, h, w;     // input volume
  int od, oh, ow;  // output grid
  int kd, kh, kw;  // kernel
  int s0, s1, s2, p0, p1, p2, l0, l1, l2;
};

template <typename T>
__device__ void im2col(const T* x, T* cols, long long total, Geom g) {
  const long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (idx >= total) return;
  const long long P = (long long)g.od * g.oh * g.ow;
  const int K = g.kd * g.kh * g.kw;
  const long long p = idx % P;
  const long long row = idx / P;  // (n, c, k)
  const int k = (int)(row % K);
  const long long nc = row / K;
  const int ow = (int)(p % g.ow), oh = (int)((p / g.ow) % g.oh), od = (int)(p / ((long long)g.ow * g.oh));
  const int kw = k % g.kw, kh = (k / g.kw) % g.kh, kd = k / (g.kw * g.kh);
  const int z = od * g.s0 - g.p0 + kd * g.l0;
  const int y = oh * g.s1 - g.p1 + kh * g.l1;
  const int xx = ow * g.s2 - g.p2 + kw * g.l2;
  float v = 0.f;
  if (z >= 0 && z < g.d && y >= 0 && y < g.h && xx >= 0 && xx < g.w)
    v = to_f(x[((nc * g.d + z) * g.h + y) * g.w + xx]);
  store(cols + idx, v);
}

// Offsets o along one axis with o·s − p + k·l = i for some kernel tap k, 0 ≤ o < n_out.
template <typename T>
__device__ void col2im(const T* cols, T* x, long long total, Geom g) {
  const long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (idx >= total) return;
  const long long P = (long long)g.od * g.oh * g.ow;
  const int K = g.kd * g.kh * g.kw;
  const int xx = (int)(idx % g.w), y = (int)((idx / g.w) % g.h), z = (int)((idx / ((long long)g.w * g.h)) % g.d);
  const long long nc = idx / ((long long)g.w * g.h * g.d);
  float acc = 0.f;
  for (int kd = 0; kd < g.kd; kd++) {
    const int a = z + g.p0 - kd * g.l0;
    if (a < 0 || a % g.s0 != 0 || a / g.s0 >= g.od) continue;
    for (int kh = 0; kh < g.kh; kh++) {
      const int b = y + g.p1 - kh * g.l1;
      if (b < 0 || b % g.s1 != 0 || b / g.s1 >= g.oh) continue;
      for (int kw = 0; kw < g.kw; kw++) {
        const int c = xx + g.p2 - kw * g.l2;
        if (c < 0 || c % g.s2 != 0 || c / g.s2 >= g.ow) continue;
        const int k = (kd * g.kh + kh) * g.kw + kw;
        const long long p = ((long long)(a / g.s0) * g.oh + b / g.s1) * g.ow + c / g.s2;
        acc += to_f(cols[(nc * K + k) * P + p]);
      }
    }
  }
  store(x + idx, acc);
}

#define IM2COL_KERNELS(T, SUFFIX)                                                              \
  extern "C" __global__ void im2col_##SUFFIX(const T* x, T* cols, long long total, Geom g) { \
    im2col<T>(x, cols, total, g);                                                            \
  }                                                                                          \
  extern "C" __global__ void col2im_##SUFFIX(const T* cols, T* x, long long total, Geom g) { \
    col2im<T>(cols, x, total, g);                                                            \
  }

IM2COL_KERNELS(float, f32)
IM2COL_KERNELS(__nv_bfloat16, bf16)
