// Fused attention softmax(q·kᵀ·scale + bias + mask)·v, forward and backward, f32 and bf16.
// Argument contract: crates/medseg-kernels/src/attention.rs; CPU kernel with the same arguments and
// mathematics: crates/medseg-ops/src/attention/cpu.rs (both tested against the composed reference).
//
// Layouts (contiguous, row-major):
//   q [B, H, nq, d], k [B, H, nk, d], v [B, H, nk, dv], bias [H, nq, nk], mask [nW, nq, nk]
//   (batch item b uses mask[b % nW]), out [B, H, nq, dv], lse [B, H, nq] (f32).
// Keys j >= n_valid are excluded from the softmax (Soft MoE token padding).
// Used by Swin window attention (N <= 343 tokens per window) and by Soft MoE dispatch/combine
// (queries = slots or tokens, scale = 1, H = 1). No [nq, nk] matrix is ever stored: the forward
// keeps an online softmax per query row, the backward recomputes p = exp(s - lse).
//
// The forward's log-sum-exp is recomputed at the start of the backward (forward with lse_only = 1:
// no values read, no output written), so the forward returns a plain tensor in the input dtype.
//
// Launch (see crates/medseg-ops/src/attention/cuda.rs):
//   forward   grid (ceil(nq/32), H, B), block 32, dynamic smem kt*(d + 32)*4 bytes
//   bwd_delta grid (ceil(B*H*nq/128)), block 128
//   bwd_dq    grid (ceil(nq/32), H, B*ceil(d/32)), block 32, smem kt*(d + dv)*4 bytes
//   bwd_dkv   grid (ceil(nk/32), H, B*ceil(max(d,dv)/32)), block 32, smem kt*(d + dv + 2)*4 bytes
#include <cuda_bf16.h>
#include <math_constants.h>

#define ROWS 32   // query (or key) rows per block: one thread each
#define CHUNK 32  // output columns per thread per pass

__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ void store(float* p, float x) { *p = x; }
__device__ __forceinline__ void store(__nv_bfloat16* p, float x) { *p = __float2bfloat16(x); }

// Logit of query row qi (pointer into q) against key kj (row of the shared key tile).
template <typename T>
__device__ __forceinline__ float logit(const T* qi, const float* kj, int d, float scale,
                                       const T* bias_row, const T* mask_row, int j) {
  float acc = 0.f;
  for (int e = 0; e < d; e++) acc += to_f(qi[e]) * kj[e];
  float s = acc * scale;
  if (bias_row) s += to_f(bias_row[j]);
  if (mask_row) s += to_f(mask_row[j]);
  return s;
}

template <typename T>
__device__ void attention_fwd(const T* q, const T* k, const T* v, const T* bias, const T* mask,
                              T* out, float* lse, int H, int nq, int nk, int d, int dv, int nw,
                              int n_valid, float scale, int has_bias, int has_mask, int kt,
                              int lse_only) {
  extern __shared__ float smem[];
  float* ks = smem;           // [kt, d]
  float* vs = smem + kt * d;  // [kt, CHUNK]
  const int dv_pass = lse_only ? 1 : dv;  // lse_only: one pass, no values, no output
  const int b = blockIdx.z, h = blockIdx.y;
  const int i = blockIdx.x * ROWS + threadIdx.x;
  const bool active = i < nq;
  const long long bh = (long long)b * H + h;
  const T* qi = q + (bh * nq + (active ? i : 0)) * d;
  const T* kb = k + bh * nk * d;
  const T* vb = v + bh * nk * dv;
  const T* bias_row = has_bias ? bias + ((long long)h * nq + (active ? i : 0)) * nk : nullptr;
  const T* mask_row =
      has_mask ? mask + ((long long)(b % nw) * nq + (active ? i : 0)) * nk : nullptr;
  for (int c0 = 0; c0 < dv_pass; c0 += CHUNK) {
    const int cw = lse_only ? 0 : min(CHUNK, dv - c0);
    float m = -CUDART_INF_F, l = 0.f, acc[CHUNK];
#pragma unroll
    for (int c = 0; c < CHUNK; c++) acc[c] = 0.f;
    for (int j0 = 0; j0 < nk; j0 += kt) {
      const int jw = min(kt, nk - j0);
      __syncthreads();
      for (int t = threadIdx.x; t < jw * d; t += blockDim.x) ks[t] = to_f(kb[(long long)j0 * d + t]);
      for (int t = threadIdx.x; t < jw * CHUNK; t += blockDim.x) {
        const int jj = t / CHUNK, c = t % CHUNK;
        vs[t] = c < cw ? to_f(vb[(long long)(j0 + jj) * dv + c0 + c]) : 0.f;
      }
      __syncthreads();
      if (!active) continue;
      for (int jj = 0; jj < jw; jj++) {
        const int j = j0 + jj;
        if (j >= n_valid) break;
        const float s = logit(qi, ks + jj * d, d, scale, bias_row, mask_row, j);
        const float mn = fmaxf(m, s);
        const float corr = expf(m - mn);
        const float p = expf(s - mn);
        l = l * corr + p;
#pragma unroll
        for (int c = 0; c < CHUNK; c++) acc[c] = acc[c] * corr + p * vs[jj * CHUNK + c];
        m = mn;
      }
    }
    if (active) {
      const float inv = l > 0.f ? 1.f / l : 0.f;
      if (!lse_only) {
        T* oi = out + (bh * nq + i) * dv + c0;
        for (int c = 0; c < cw; c++) store(oi + c, acc[c] * inv);
      }
      if (c0 == 0) lse[bh * nq + i] = l > 0.f ? m + logf(l) : -CUDART_INF_F;
    }
  }
}

// delta[r] = sum_c dout[r, c] * out[r, c] for every query row r.
template <typename T>
__device__ void attention_bwd_delta(const T* out, const T* dout, float* delta, long long rows,
                                    int dv) {
  const long long r = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (r >= rows) return;
  float acc = 0.f;
  for (int c = 0; c < dv; c++) acc += to_f(out[r * dv + c]) * to_f(dout[r * dv + c]);
  delta[r] = acc;
}

// dq[i, c0..c0+32) = scale * sum_j ds_ij k_j: one thread per query row and column chunk.
template <typename T>
__device__ void attention_bwd_dq(const T* q, const T* k, const T* v, const T* bias, const T* mask,
                                 const float* lse, const float* delta, const T* dout, float* dq,
                                 int B, int H, int nq, int nk, int d, int dv, int nw, int n_valid,
                                 float scale, int has_bias, int has_mask, int kt) {
  extern __shared__ float smem[];
  float* ks = smem;           // [kt, d]
  float* vs = smem + kt * d;  // [kt, dv]
  const int chunks = (d + CHUNK - 1) / CHUNK;
  const int b = blockIdx.z / chunks, c0 = (blockIdx.z % chunks) * CHUNK;
  const int h = blockIdx.y;
  const int i = blockIdx.x * ROWS + threadIdx.x;
  const bool active = i < nq;
  const long long bh = (long long)b * H + h;
  const long long row = bh * nq + (active ? i : 0);
  const T* qi = q + row * d;
  const T* doi = dout + row * dv;
  const T* bias_row = has_bias ? bias + ((long long)h * nq + (active ? i : 0)) * nk : nullptr;
  const T* mask_row =
      has_mask ? mask + ((long long)(b % nw) * nq + (active ? i : 0)) * nk : nullptr;
  const float li = lse[row], di = delta[row];
  float acc[CHUNK];
#pragma unroll
  for (int c = 0; c < CHUNK; c++) acc[c] = 0.f;
  for (int j0 = 0; j0 < nk; j0 += kt) {
    const int jw = min(kt, nk - j0);
    __syncthreads();
    for (int t = threadIdx.x; t < jw * d; t += blockDim.x) ks[t] = to_f(k[(bh * nk + j0) * d + t]);
    for (int t = threadIdx.x; t < jw * dv; t += blockDim.x) vs[t] = to_f(v[(bh * nk + j0) * dv + t]);
    __syncthreads();
    if (!active || li == -CUDART_INF_F) continue;
    for (int jj = 0; jj < jw; jj++) {
      const int j = j0 + jj;
      if (j >= n_valid) break;
      const float p = expf(logit(qi, ks + jj * d, d, scale, bias_row, mask_row, j) - li);
      float dp = 0.f;
      for (int c = 0; c < dv; c++) dp += to_f(doi[c]) * vs[jj * dv + c];
      const float ds = p * (dp - di);
#pragma unroll
      for (int c = 0; c < CHUNK; c++)
        if (c0 + c < d) acc[c] += ds * ks[jj * d + c0 + c];
    }
  }
  if (active)
    for (int c = 0; c < CHUNK && c0 + c < d; c++) dq[row * d + c0 + c] = scale * acc[c];
}

// dk[j] = scale * sum_i ds_ij q_i, dv[j] = sum_i p_ij dout_i (one thread per key row and column
// chunk); the chunk-0 threads also add ds_ij into dbias[h, i, j] (shared over the batch).
template <typename T>
__device__ void attention_bwd_dkv(const T* q, const T* k, const T* v, const T* bias, const T* mask,
                                  const float* lse, const float* delta, const T* dout, float* dk,
                                  float* dvv, float* dbias, int B, int H, int nq, int nk, int d,
                                  int dv, int nw, int n_valid, float scale, int has_bias,
                                  int has_mask, int kt) {
  extern __shared__ float smem[];
  float* qs = smem;                // [kt, d]
  float* dos = smem + kt * d;      // [kt, dv]
  float* ls = dos + kt * dv;       // [kt]
  float* ds_ = ls + kt;            // [kt]
  const int wide = max(d, dv);
  const int chunks = (wide + CHUNK - 1) / CHUNK;
  const int b = blockIdx.z / chunks, c0 = (blockIdx.z % chunks) * CHUNK;
  const int h = blockIdx.y;
  const int j = blockIdx.x * ROWS + threadIdx.x;
  const bool active = j < nk && j < n_valid;
  const long long bh = (long long)b * H + h;
  const long long col = bh * nk + (j < nk ? j : 0);
  const T* kjp = k + col * d;
  const T* vjp = v + col * dv;
  float acc_k[CHUNK], acc_v[CHUNK];
#pragma unroll
  for (int c = 0; c < CHUNK; c++) acc_k[c] = acc_v[c] = 0.f;
  for (int i0 = 0; i0 < nq; i0 += kt) {
    const int iw = min(kt, nq - i0);
    __syncthreads();
    for (int t = threadIdx.x; t < iw * d; t += blockDim.x) qs[t] = to_f(q[(bh * nq + i0) * d + t]);
    for (int t = threadIdx.x; t < iw * dv; t += blockDim.x)
      dos[t] = to_f(dout[(bh * nq + i0) * dv + t]);
    for (int t = threadIdx.x; t < iw; t += blockDim.x) {
      ls[t] = lse[bh * nq + i0 + t];
      ds_[t] = delta[bh * nq + i0 + t];
    }
    __syncthreads();
    if (!active) continue;
    for (int ii = 0; ii < iw; ii++) {
      const int i = i0 + ii;
      if (ls[ii] == -CUDART_INF_F) continue;
      float acc = 0.f;
      for (int e = 0; e < d; e++) acc += qs[ii * d + e] * to_f(kjp[e]);
      float s = acc * scale;
      if (has_bias) s += to_f(bias[((long long)h * nq + i) * nk + j]);
      if (has_mask) s += to_f(mask[((long long)(b % nw) * nq + i) * nk + j]);
      const float p = expf(s - ls[ii]);
      float dp = 0.f;
      for (int c = 0; c < dv; c++) dp += dos[ii * dv + c] * to_f(vjp[c]);
      const float ds = p * (dp - ds_[ii]);
#pragma unroll
      for (int c = 0; c < CHUNK; c++) {
        if (c0 + c < d) acc_k[c] += ds * qs[ii * d + c0 + c];
        if (c0 + c < dv) acc_v[c] += p * dos[ii * dv + c0 + c];
      }
      if (has_bias && c0 == 0) atomicAdd(dbias + ((long long)h * nq + i) * nk + j, ds);
    }
  }
  if (j < nk) {
    for (int c = 0; c < CHUNK; c++) {
      if (c0 + c < d) dk[col * d + c0 + c] = scale * acc_k[c];
      if (c0 + c < dv) dvv[col * dv + c0 + c] = acc_v[c];
    }
  }
}

#define ATTENTION_KERNELS(T, SUFFIX)                                                               \
  extern "C" __global__ void attention_fwd_##SUFFIX(                                               \
      const T* q, const T* k, const T* v, const T* bias, const T* mask, T* out, float* lse, int H, \
      int nq, int nk, int d, int dv, int nw, int n_valid, float scale, int has_bias, int has_mask, \
      int kt, int lse_only) {                                                                      \
    attention_fwd<T>(q, k, v, bias, mask, out, lse, H, nq, nk, d, dv, nw, n_valid, scale,          \
                     has_bias, has_mask, kt, lse_only);                                            \
  }                                                                                                \
  extern "C" __global__ void attention_bwd_delta_##SUFFIX(const T* out, const T* dout,             \
                                                          float* delta, long long rows, int dv) {  \
    attention_bwd_delta<T>(out, dout, delta, rows, dv);                                            \
  }                                                                                                \
  extern "C" __global__ void attention_bwd_dq_##SUFFIX(                                            \
      const T* q, const T* k, const T* v, const T* bias, const T* mask, const float* lse,          \
      const float* delta, const T* dout, float* dq, int B, int H, int nq, int nk, int d, int dv,   \
      int nw, int n_valid, float scale, int has_bias, int has_mask, int kt) {                      \
    attention_bwd_dq<T>(q, k, v, bias, mask, lse, delta, dout, dq, B, H, nq, nk, d, dv, nw,        \
                        n_valid, scale, has_bias, has_mask, kt);                                   \
  }                                                                                                \
  extern "C" __global__ void attention_bwd_dkv_##SUFFIX(                                           \
      const T* q, const T* k, const T* v, const T* bias, const T* mask, const float* lse,          \
      const float* delta, const T* dout, float* dk, float* dvv, float* dbias, int B, int H,        \
      int nq, int nk, int d, int dv, int nw, int n_valid, float scale, int has_bias,               \
      int has_mask, int kt) {                                                                      \
    attention_bwd_dkv<T>(q, k, v, bias, mask, lse, delta, dout, dk, dvv, dbias, B, H, nq, nk, d,  \
                         dv, nw, n_valid, scale, has_bias, has_mask, kt);                          \
  }

ATTENTION_KERNELS(float, f32)
ATTENTION_KERNELS(__nv_bfloat16, bf16)
