// The forward orbit terms of units._forward_terms as one hand-written CPU loop (an XLA FFI custom
// call), for benchmarks/orbit_terms_kernel.py only: the library does not use it.
//
//   t_k = -1/2 sum_i sum_c a_ic delta_kic (delta_kic + 2 r_ic),  delta_k = s_k x[p_k] - x,  r = x - loc
//
// Each assignment reads the gathered row, x, r and a once and sums in registers: nothing is written
// out per element. The sum over c uses LANES partial sums per row (two AVX2 vectors by default), so it rounds differently from XLA's.
#include <cstdint>

#include "xla/ffi/api/ffi.h"

#ifndef LANES
#define LANES 16
#endif

namespace ffi = xla::ffi;

static ffi::Error OrbitTerms(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> r, ffi::Buffer<ffi::F32> a,
                             ffi::Buffer<ffi::S32> p, ffi::Buffer<ffi::F32> s,
                             ffi::ResultBuffer<ffi::F32> out) {
  const auto xd = x.dimensions();
  const int64_t d = xd[0], c = xd[1];
  const int64_t k = p.dimensions()[0];
  const float* X = x.typed_data();
  const float* R = r.typed_data();
  const float* A = a.typed_data();
  const int32_t* P = p.typed_data();
  const float* S = s.typed_data();
  float* T = out->typed_data();
  for (int64_t kk = 0; kk < k; ++kk) {
    float total = 0.0f;
    for (int64_t i = 0; i < d; ++i) {
      const float sign = S[kk * d + i];
      const float* xp = X + static_cast<int64_t>(P[kk * d + i]) * c;
      const float* xi = X + i * c;
      const float* ri = R + i * c;
      const float* ai = A + i * c;
      float acc[LANES] = {};
      int64_t j = 0;
      for (; j + LANES <= c; j += LANES) {
#pragma GCC unroll 32
        for (int l = 0; l < LANES; ++l) {
          const float delta = sign * xp[j + l] - xi[j + l];
          acc[l] += ai[j + l] * delta * (delta + 2.0f * ri[j + l]);
        }
      }
      float row = 0.0f;
      for (; j < c; ++j) {
        const float delta = sign * xp[j] - xi[j];
        row += ai[j] * delta * (delta + 2.0f * ri[j]);
      }
      for (int l = 0; l < LANES; ++l) row += acc[l];
      total += row;
    }
    T[kk] = -0.5f * total;
  }
  return ffi::Error::Success();
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(orbit_terms, OrbitTerms,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
