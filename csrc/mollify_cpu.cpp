// Fused CPU kernels for mollify (README, "The contract, in short"): noise, and blur + noise, in one pass.
//
//   out = alpha_n * B(x) + sigma_n * eps,   eps from the Philox stream by logical index
//
// Work is split into items that depend only on their own index (a segment of logical
// elements, or a band of rows of one plane), so results do not depend on the thread count.
// Per item: draw the segment's normals into a thread-local buffer (normals_cpu, vectorised),
// then one read of x and one write of out (and of noise) with 64-bit offsets.
#include <math.h>
#include <stdint.h>
#include <string.h>

#include <algorithm>
#include <stdexcept>
#include <type_traits>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif
#ifdef _OPENMP
#include <omp.h>
#endif

#include "dispatch.h"
#include "dtypes.h"
#include "mollify_args.h"
#include "philox.h"

namespace mollify_fast {
MF_ISA_BEGIN  // compiled once per instruction set: csrc/cpu_dispatch.cpp picks one

void normals_cpu(uint64_t seed, uint64_t group0, int64_t ngroups, float* out);
void uniforms_cpu(uint64_t seed, uint64_t group0, int64_t ngroups, float* out);

namespace {

// Logical elements per noise work item: long enough to amortise the unravel and keep the
// vector loops busy, short enough that a (256, 3, 32, 32) batch still splits across cores.
constexpr int64_t kSegment = 4096;
// Output rows per blur work item: each recomputes 2r halo rows of the width pass, so 32 rows
// (1.19x at radius 3) beat 16 (1.38x): CIFAR blur + noise 1.23 -> 1.20 ms on one dev-VM core.
constexpr int64_t kBand = 32;
// A buffer of this thread's, at least n elements, kept from call to call (one per Slot): a noise
// call then neither allocates nor zero-fills its segment buffers (a std::vector per call wrote
// 16 KB of zeros before the normals). Only for the noise kernels' fixed sizes, so what a thread
// keeps is bounded (a blur's buffers grow with the image and are freed after each call).
template <typename V, int Slot>
V* thread_buffer(int64_t n) {
  thread_local std::vector<V> buf;
  if (static_cast<int64_t>(buf.size()) < n) buf.resize(n);
  return buf.data();
}

// work(first, last) over the items [0, items) on nthreads threads, each a contiguous share (as
// OpenMP's schedule(static)). One thread runs on the caller, outside any parallel region:
// `omp parallel if (false)` still builds libgomp's team of one, a cost that shows on the small
// calls a training loop makes.
template <typename Work>
void for_items(int64_t items, int nthreads, Work& work) {
#ifdef _OPENMP
  if (nthreads > 1) {
#pragma omp parallel num_threads(nthreads)
    {
      const int64_t t = omp_get_thread_num(), n = omp_get_num_threads();
      const int64_t share = items / n, extra = items % n;
      const int64_t first = t * share + std::min(t, extra);
      work(first, first + share + (t < extra ? 1 : 0));
    }
    return;
  }
#else
  (void)nthreads;
#endif
  work(0, items);
}

// Normals of logical elements [i0, i0 + len) into buf (needs len + 8 floats); returns the
// pointer to element i0's normal.
inline float* draw(const MollifyArgs& a, int64_t i0, int64_t len, float* buf) {
  const int64_t g0 = i0 >> 2, g1 = (i0 + len + 3) >> 2;
  normals_cpu(stream_key(a), stream_offset(a) + static_cast<uint64_t>(g0), g1 - g0, buf);
  return buf + (i0 & 3);
}

// Work item `item` of a noise kernel (segments of kSegment elements of the coalesced last dim,
// segs per row of W): its length, its memory offsets in x, out and noise, and its first logical
// index (returned).
inline int64_t segment(const MollifyArgs& a, int64_t item, int64_t segs, int64_t W, int64_t& len, int64_t& ox,
                       int64_t& oo, int64_t& on) {
  const int last = a.ndim - 1;
  const int64_t row = item / segs, w0 = (item % segs) * kSegment;
  len = std::min(kSegment, W - w0);
  unravel_offsets(a, last, row, ox, oo, on);
  ox += w0 * a.x_strides[last];
  oo += w0 * a.out_strides[last];
  on += w0 * a.noise_strides[last];
  return row * W + w0;
}

// The caller's eps (noise_in != kNoiseOut) of `len` elements from `on` with stride `sn`, in the
// compute type A: read as x's storage type T (kNoiseInT) or as A itself (kNoiseInA).
template <typename T>
inline void load_eps(const MollifyArgs& a, int64_t on, int64_t sn, int64_t len, typename Io<T>::acc* dst) {
  using A = typename Io<T>::acc;
  if (a.noise_in == kNoiseInA) {
    const A* e = static_cast<const A*>(a.noise) + on;
    for (int64_t k = 0; k < len; ++k) dst[k] = e[k * sn];
  } else {
    const T* e = static_cast<const T*>(a.noise) + on;
    for (int64_t k = 0; k < len; ++k) dst[k] = Io<T>::load(e + k * sn);
  }
}

// ---- noise: out = alpha * x + sigma * eps over segments of the coalesced last dim ----
template <typename T>
void noise_kernel(const MollifyArgs& a, int nthreads) {
  using A = typename Io<T>::acc;
  const int last = a.ndim - 1;
  const int64_t W = a.sizes[last];
  const int64_t segs = (W + kSegment - 1) / kSegment;
  const int64_t items = (a.numel / W) * segs;
  const T* x = static_cast<const T*>(a.x);
  T* out = static_cast<T*>(a.out);
  const bool noise_in = a.noise_in != kNoiseOut;
  T* noise = noise_in ? nullptr : static_cast<T*>(a.noise);  // written only when drawn
  const int64_t sx = a.x_strides[last], so = a.out_strides[last], sn = a.noise_strides[last];
  const bool per_sample = any_per_sample(a);
  // One thread's items [first, last): its buffers, then the items.
  auto work = [&](int64_t first, int64_t last) {
    float* buf = noise_in ? nullptr : thread_buffer<float, 0>(kSegment + 8);
    A* given = noise_in ? thread_buffer<A, 1>(kSegment) : nullptr;  // the caller's eps of a segment
    for (int64_t item = first; item < last; ++item) {
      int64_t len, ox, oo, on;
      const int64_t i0 = segment(a, item, segs, W, len, ox, oo, on);
      // Split the segment where the sample (and so the parameters) changes; scalar parameters
      // never change, so the segment stays whole. (Split per sample, a (4096, 4) tabular batch
      // ran its loops 4 elements at a time: 2.2 ns per element where the normals take 0.75.)
      // eps: the drawn float normals, or the caller's eps in A.
      auto combine = [&](const auto* eps) {
        for (int64_t j = 0; j < len;) {
          const int64_t n = (i0 + j) / a.sample_numel;
          const int64_t stop = per_sample ? std::min(len, (n + 1) * a.sample_numel - i0) : len;
          const A al = param<A>(a, kAlpha, n), sg = param<A>(a, kSigma, n);
          if (sx == 1 && so == 1) {
            const T* xs = x + ox;
            T* os = out + oo;
#pragma omp simd
            for (int64_t k = j; k < stop; ++k)
              Io<T>::store(os + k, al * Io<T>::load(xs + k) + sg * static_cast<A>(eps[k]));
          } else {
            for (int64_t k = j; k < stop; ++k)
              Io<T>::store(out + oo + k * so, al * Io<T>::load(x + ox + k * sx) + sg * static_cast<A>(eps[k]));
          }
          if (noise)
            for (int64_t k = j; k < stop; ++k) Io<T>::store(noise + on + k * sn, static_cast<A>(eps[k]));
          j = stop;
        }
      };
      if (noise_in) {
        load_eps<T>(a, on, sn, len, given);
        combine(given);
      } else {
        combine(draw(a, i0, len, buf));
      }
    }
  };
  for_items(items, nthreads, work);
}

// ---- blur + noise: per (plane, band of kBand rows), separable, mirrored borders ----

// dst[w] = sum_k wt[k] * src[w + k * step] for w < W, k = 0 .. ntaps - 1, summed in k order
// (each lane's sum is a * b + c per tap, contracted to one FMA like the scalar tail, so every
// lane gives the same bits as the scalar loop). Blocks of two 32-byte vectors keep their sums
// in registers across the taps (GCC vector extensions, no ISA intrinsics). Measured on one
// thread of the 2-core dev VM, CIFAR batch, radius 3: accumulating tap by tap into dst
// (a load and a store of dst per tap) made the blur cost 1.7 ns per element on top of the
// noise; plain loops with the sums in arrays were not vectorised across lanes by gcc 12.
template <typename A, int kVecs>
inline int64_t taps_block(const A* __restrict src, int64_t step, const A* __restrict wt, int64_t ntaps, int64_t W,
                          A* __restrict dst, int64_t w0) {
  typedef A V __attribute__((vector_size(32)));
  constexpr int64_t L = 32 / sizeof(A);
  for (; w0 + kVecs * L <= W; w0 += kVecs * L) {
    V acc[kVecs] = {};
    for (int64_t k = 0; k < ntaps; ++k) {
      const V wk = V{} + wt[k];
      const A* s = src + w0 + k * step;
      for (int j = 0; j < kVecs; ++j) {
        V v;
        memcpy(&v, s + j * L, sizeof(V));
        acc[j] += wk * v;
      }
    }
    // One store per vector (an array copy let gcc reload the sums as 64-byte words from the
    // stack: a store-forwarding stall per block).
    for (int j = 0; j < kVecs; ++j) memcpy(dst + w0 + j * L, &acc[j], sizeof(V));
  }
  return w0;
}

template <typename A>
inline void taps(const A* __restrict src, int64_t step, const A* __restrict wt, int64_t ntaps, int64_t W,
                 A* __restrict dst) {
  // 4 vectors in flight: one chain of dependent FMAs (4 cycles each) per vector, so fewer
  // than 4 left the FMA units idle (2 vectors: radius 3 cost 0.65 ns per element, 4: see above).
  int64_t w0 = taps_block<A, 4>(src, step, wt, ntaps, W, dst, 0);
  w0 = taps_block<A, 1>(src, step, wt, ntaps, W, dst, w0);
  for (int64_t w = w0; w < W; ++w) {
    A acc = 0;
    for (int64_t k = 0; k < ntaps; ++k) acc += wt[k] * src[w + k * step];
    dst[w] = acc;
  }
}

template <typename T>
void blur_kernel(const MollifyArgs& a, int nthreads) {
  using A = typename Io<T>::acc;
  const int hd = a.ndim - 2, wd = a.ndim - 1;
  const int64_t H = a.sizes[hd], W = a.sizes[wd];
  const int64_t planes = a.numel / (H * W);
  const int64_t bands = (H + kBand - 1) / kBand;
  const int64_t planes_per_sample = planes / a.batch;
  const T* x = static_cast<const T*>(a.x);
  T* out = static_cast<T*>(a.out);
  const bool noise_in = a.noise_in != kNoiseOut;
  T* noise = noise_in ? nullptr : static_cast<T*>(a.noise);  // written only when drawn
  const int64_t sxh = a.x_strides[hd], sxw = a.x_strides[wd];
  const int64_t soh = a.out_strides[hd], sow = a.out_strides[wd];
  const int64_t snh = a.noise_strides[hd], snw = a.noise_strides[wd];
  const int64_t R = a.max_radius;
  // One thread's items [first, last): its buffers, then the (plane, band) items.
  auto work = [&](int64_t first, int64_t last) {
    std::vector<A> weights(2 * R + 1), padded((kBand + 2 * R) * (W + 2 * R)), res(kBand * W);
    std::vector<A> rows((kBand + 2 * R) * W);
    std::vector<float> buf(noise_in ? 0 : kBand * W + 8);
    std::vector<A> given(noise_in ? kBand * W : 0);  // the caller's eps of a band
    int64_t cached_n = -1;
    int64_t r = 0;
    for (int64_t item = first; item < last; ++item) {
      const int64_t p = item / bands, h0 = (item % bands) * kBand, h1 = std::min(H, h0 + kBand);
      const int64_t n = p / planes_per_sample;
      // This sample's taps, exp(-k^2 / (2 s^2)) normalised; computed once when they are shared.
      // Written exp(-(k/s)^2 / 2): 2 s^2 underflows to 0 for s ~ 1e-30 (0/0 = NaN at k = 0),
      // while k/s overflows harmlessly to inf (weight 0) and k = 0 stays exp(0) = 1.
      if (n != cached_n && (cached_n < 0 || a.param_ptr[kBlurSigma] || a.radius_p)) {
        cached_n = n;
        const A s = param<A>(a, kBlurSigma, n);
        r = a.radius_p ? a.radius_p[n] : a.radius;
        if (s == A(0)) {
          r = 0;
          weights[0] = A(1);
        } else {
          A sum = 0;
          for (int64_t k = -r; k <= r; ++k) {
            const A ks = static_cast<A>(k) / s;
            weights[k + r] = static_cast<A>(exp(A(-0.5) * ks * ks));
            sum += weights[k + r];
          }
          for (int64_t k = 0; k <= 2 * r; ++k) weights[k] /= sum;
        }
      }
      int64_t ox, oo, on;
      unravel_offsets(a, hd, p, ox, oo, on);
      // Width pass for the source rows h0 - r .. h1 + r - 1 (mirrored).
      const int64_t nrows = h1 - h0 + 2 * r;
      for (int64_t t = 0; t < nrows; ++t) {
        // Inside the image no mirror (reflect_index's 64-bit % is ~1 cycle per element at W = 32).
        const int64_t yi = h0 - r + t;
        const int64_t y = yi >= 0 && yi < H ? yi : reflect_index(yi, H);
        const T* src = x + ox + y * sxh;
        // Interior straight (vectorisable when contiguous), then the 2r mirrored edge taps.
        A* const row = padded.data() + t * (W + 2 * r);
        A* mid = row + r;
        if (sxw == 1) {
          for (int64_t w = 0; w < W; ++w) mid[w] = Io<T>::load(src + w);
        } else {
          for (int64_t w = 0; w < W; ++w) mid[w] = Io<T>::load(src + w * sxw);
        }
        if (r < W) {  // one reflection: no division (reflect_index's % cost ~10 cycles per output at W = 32)
          // From x, not from mid: a scalar load of what a vector store just wrote stalled on
          // store forwarding (~10% of the blur's time at radius 3).
          for (int64_t j = 1; j <= r; ++j) {
            mid[-j] = Io<T>::load(src + j * sxw);
            mid[W - 1 + j] = Io<T>::load(src + (W - 1 - j) * sxw);
          }
        } else {
          for (int64_t j = 0; j < r; ++j) {
            row[j] = mid[reflect_index(j - r, W)];
            row[W + r + j] = mid[reflect_index(W + j, W)];
          }
        }
      }
      // The taps run over all the band's padded rows after they are all written: reading each
      // row right after writing it (vector stores, then the scalar mirrored edges) made the
      // unaligned tap loads wait on store forwarding (~35% of the blur's time in perf on the
      // 2-core dev VM; the pass went from ~0.9 to ~0.4 ns per element at radius 3).
      for (int64_t t = 0; t < nrows; ++t)
        taps(padded.data() + t * (W + 2 * r), 1, weights.data(), 2 * r + 1, W, rows.data() + t * W);
      // Height pass, noise, write. The band's rows are consecutive logical elements: one draw.
      // (or the caller's: noise=, read in the same pass, row by row into the compute type).
      const float* band_eps = nullptr;
      if (noise_in) {
        for (int64_t h = h0; h < h1; ++h) load_eps<T>(a, on + h * snh, snw, W, given.data() + (h - h0) * W);
      } else {
        band_eps = draw(a, (p * H + h0) * W, (h1 - h0) * W, buf.data());
      }
      // All rows' height taps first, then the writes (the same store-forwarding reason as above:
      // the write loop's wide loads of a row just stored cost ~20% of the blur's time).
      for (int64_t h = h0; h < h1; ++h)
        taps(rows.data() + (h - h0) * W, W, weights.data(), 2 * r + 1, W, res.data() + (h - h0) * W);
      const A al = param<A>(a, kAlpha, n), sg = param<A>(a, kSigma, n);
      auto write = [&](const auto* eps_band) {
      for (int64_t h = h0; h < h1; ++h) {
        const auto* eps = eps_band + (h - h0) * W;
        const A* bl = res.data() + (h - h0) * W;
        T* o = out + oo + h * soh;
        if (sow == 1) {
#pragma omp simd
          for (int64_t w = 0; w < W; ++w) Io<T>::store(o + w, al * bl[w] + sg * static_cast<A>(eps[w]));
        } else {
          for (int64_t w = 0; w < W; ++w) Io<T>::store(o + w * sow, al * bl[w] + sg * static_cast<A>(eps[w]));
        }
        if (noise) {
          T* nz = noise + on + h * snh;
          for (int64_t w = 0; w < W; ++w) Io<T>::store(nz + w * snw, static_cast<A>(eps[w]));
        }
      }
      };
      if (noise_in)
        write(static_cast<const A*>(given.data()));
      else
        write(band_eps);
    }
  };
  for_items(planes * bands, nthreads, work);
}

template <typename T>
void run(const MollifyArgs& a, int nthreads) {
  if (a.has_blur)
    blur_kernel<T>(a, nthreads);
  else
    noise_kernel<T>(a, nthreads);
}

// Ask for transparent huge pages on the 2 MB-aligned interior of a large output buffer before
// the kernel first touches it. A fresh 50 MB tensor otherwise costs ~12,000 4 KB page faults:
// on the 2-core dev VM x.clone() of (64, 3, 256, 256) float32 ran at 3.8 GB/s, page-fault
// bound (THP is in "madvise" mode there); with this hint the fused noise op on that shape went
// from 32-42 ms to 17 ms. Only a hint: where THP is off it does nothing, and it does not change
// the memory's contents.
void advise_huge_pages(const void* p, int64_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t(1) << 21;
  if (!p || bytes < int64_t(4 * kHuge)) return;
  const uintptr_t lo = (reinterpret_cast<uintptr_t>(p) + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t hi = (reinterpret_cast<uintptr_t>(p) + static_cast<uintptr_t>(bytes)) & ~(kHuge - 1);
  if (hi > lo) madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_HUGEPAGE);
#else
  (void)p;
  (void)bytes;
#endif
}

int64_t element_size(int32_t dtype) { return dtype == kFloat64 ? 8 : dtype == kFloat32 ? 4 : 2; }

// ---- the input map: x of any dtype (uint8 too) in, out of another dtype (README, "The input map") ----

template <typename TI> struct MapLoad {
  template <typename A> static A get(const TI* p) { return static_cast<A>(Io<TI>::load(p)); }
};
template <> struct MapLoad<uint8_t> {
  template <typename A> static A get(const uint8_t* p) { return static_cast<A>(*p); }
};

// out = alpha * x_f + sigma * eps, x_f = ((x + u) * scale) + shift in A (double when x or out is
// double), one rounding per step (no contraction: -ffp-contract=off), rounded once to TO. Same
// work items as noise_kernel; the uniforms of a segment come from counter groups ceil(numel / 4)
// after its normals'. Plain scalar loops: the map serves image pipelines, whose cost is the
// normals and the memory traffic (uint8 in: a quarter of float32's read).
template <typename TI, typename TO>
void mapped_noise_kernel(const MollifyArgs& a, const MapArgs& m, int nthreads) {
  using A = typename std::conditional<std::is_same<TI, double>::value || std::is_same<TO, double>::value, double,
                                      float>::type;
  using S = typename Io<TO>::acc;
  const int last = a.ndim - 1;
  const int64_t W = a.sizes[last], segs = (W + kSegment - 1) / kSegment, items = (a.numel / W) * segs;
  const int64_t sx = a.x_strides[last], so = a.out_strides[last], sn = a.noise_strides[last];
  const TI* x = static_cast<const TI*>(a.x);
  TO *out = static_cast<TO*>(a.out), *noise = static_cast<TO*>(a.noise);
  const A scale = static_cast<A>(m.scale), shift = static_cast<A>(m.shift);
  const uint64_t ugroup0 = stream_offset(a) + static_cast<uint64_t>((a.numel + 3) >> 2);
  const bool per_sample = any_per_sample(a);
  auto work = [&](int64_t first, int64_t last) {
    // Without dequantisation u is a segment of zeros: x + 0 is exact, and the loop stays one
    // branch-free body that gcc vectorises on unit strides.
    float* buf = thread_buffer<float, 0>(kSegment + 8);
    std::vector<float> ubuf(kSegment + 8, 0.0f);
    for (int64_t item = first; item < last; ++item) {
      int64_t len, ox, oo, on;
      const int64_t i0 = segment(a, item, segs, W, len, ox, oo, on);
      const float* eps = draw(a, i0, len, buf);
      const float* u = ubuf.data();
      if (m.dequant) {
        const int64_t g0 = i0 >> 2, g1 = (i0 + len + 3) >> 2;
        uniforms_cpu(stream_key(a), ugroup0 + static_cast<uint64_t>(g0), g1 - g0, ubuf.data());
        u += i0 & 3;
      }
      // Split where the sample changes, as noise_kernel: the parameters are fixed inside a run.
      for (int64_t j = 0; j < len;) {
        const int64_t n = (i0 + j) / a.sample_numel;
        const int64_t stop = per_sample ? std::min(len, (n + 1) * a.sample_numel - i0) : len;
        const A al = param<A>(a, kAlpha, n), sg = param<A>(a, kSigma, n);
        const TI* xs = x + ox;
        TO* os = out + oo;
#pragma omp simd
        for (int64_t k = j; k < stop; ++k) {
          const A v = (MapLoad<TI>::template get<A>(xs + k * sx) + static_cast<A>(u[k])) * scale + shift;
          Io<TO>::store(os + k * so, static_cast<S>(al * v + sg * static_cast<A>(eps[k])));
        }
        if (noise)
          for (int64_t k = j; k < stop; ++k) Io<TO>::store(noise + on + k * sn, static_cast<S>(eps[k]));
        j = stop;
      }
    }
  };
  for_items(items, nthreads, work);
}

}  // namespace

// The noise op with an input map (no blur), nthreads as for mollify_cpu.
void mollify_cpu_mapped(const MollifyArgs& a, const MapArgs& m, int nthreads) {
  if (a.numel == 0) return;
  if (a.has_blur) throw std::invalid_argument("mollify_cpu_mapped: no blur (the map runs unfused there)");
  if (a.ndim < 1 || a.ndim > kMaxDims) throw std::invalid_argument("mollify_cpu_mapped: ndim out of range");
  dispatch_input(m.x_dtype, "mollify_cpu_mapped", [&](auto xi) {
    dispatch_float(a.dtype, "mollify_cpu_mapped",
                   [&](auto xo) { mapped_noise_kernel<decltype(xi), decltype(xo)>(a, m, nthreads); });
  });
}

// nthreads: from threads_for_call (csrc/cpu_dispatch.cpp), at least 1.
void mollify_cpu(const MollifyArgs& a, int nthreads) {
  if (a.numel == 0) return;
  // [data_ptr, data_ptr + numel * size) lies inside any non-overlapping tensor's allocation
  // (strides are non-negative), so the hint never reaches memory that is not the tensor's.
  advise_huge_pages(a.out, a.numel * element_size(a.dtype));
  if (a.noise && a.noise_in == kNoiseOut) advise_huge_pages(a.noise, a.numel * element_size(a.dtype));
  if (a.ndim < 1 || a.ndim > kMaxDims) throw std::invalid_argument("mollify_cpu: ndim out of range");
  dispatch_float(a.dtype, "mollify_cpu", [&](auto t) { run<decltype(t)>(a, nthreads); });
}

MF_ISA_END
}  // namespace mollify_fast
