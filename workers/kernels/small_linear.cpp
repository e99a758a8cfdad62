// A float32 linear layer for a few rows (a decode step of one to eight requests): y = x W^T + b;
// and the same with int8 weights and a float32 scale per output (--quantization int8), whose
// input rows are rounded to int8 too, a float32 scale per block of 32 values (the activations
// of llama.cpp's q8_0), so the products are integer dot products.
//
// Such a product reads the whole weight once and does two flops a row per weight read, so
// its speed is the memory bandwidth it reaches (at 4 to 8 rows, and in int8, the arithmetic
// too). Each thread streams its own contiguous range
// of output rows of W (row-major [out, in]), and for each it keeps the dot products of all
// the input rows in independent vector accumulators, so every weight is loaded once.
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <torch/types.h>

#include <algorithm>
#include <cmath>
#include <utility>
#include <vector>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#endif

namespace {

constexpr int64_t kLanes = 16;
// the most rows a float32 product takes: 8 on AVX2 (at 16 rows oneDNN's packed product was
// the faster), 3 elsewhere
constexpr int64_t kMaxRows = 8;

int64_t max_float_rows() {
#if defined(__AVX2__) && defined(__FMA__)
  return kMaxRows;
#else
  return 3;
#endif
}  // one AVX-512 register of floats; the compiler picks the width

// the float32 product: the compiler vectorizes it
template <int Rows>
void dot_rows(const float* x, int64_t x_stride, const float* w, int64_t in, float* out) {
  float acc[Rows][2][kLanes] = {};
  int64_t i = 0;
  for (; i + 2 * kLanes <= in; i += 2 * kLanes) {
    for (int r = 0; r < Rows; ++r) {
      const float* xr = x + r * x_stride + i;
      for (int64_t k = 0; k < kLanes; ++k) acc[r][0][k] += w[i + k] * xr[k];
      for (int64_t k = 0; k < kLanes; ++k) acc[r][1][k] += w[i + kLanes + k] * xr[kLanes + k];
    }
  }
  for (int r = 0; r < Rows; ++r) {
    float sum = 0.0f;
    for (int64_t k = 0; k < kLanes; ++k) sum += acc[r][0][k] + acc[r][1][k];
    for (int64_t j = i; j < in; ++j) sum += w[j] * x[r * x_stride + j];
    out[r] = sum;
  }
}

constexpr int64_t kBlock = 32;  // input values per int8 block, each with its own scale

// The input rows rounded to int8, block by block: q[r][i] = round(x[r][i] / d[r][b]) with
// d[r][b] = the block's largest |x| / 127 (0 for a block of zeros), so every q is within
// [-127, 127]. A last partial block is padded with zeros.
struct QuantizedRows {
  std::vector<int8_t> q;
  std::vector<float> d;
  int64_t q_stride = 0;  // int8 values a row: `in` rounded up to a whole block
  int64_t d_stride = 0;  // blocks a row
};

QuantizedRows quantize_rows(const float* x, int64_t rows, int64_t in) {
  QuantizedRows out;
  out.d_stride = (in + kBlock - 1) / kBlock;
  out.q_stride = out.d_stride * kBlock;
  out.q.assign(rows * out.q_stride, 0);
  out.d.assign(rows * out.d_stride, 0.0f);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t b = 0; b < out.d_stride; ++b) {
      const float* xb = x + r * in + b * kBlock;
      const int64_t n = std::min(kBlock, in - b * kBlock);
      float amax = 0.0f;
      for (int64_t k = 0; k < n; ++k) amax = std::max(amax, std::fabs(xb[k]));
      const float d = amax / 127.0f;
      const float inverse = d != 0.0f ? 1.0f / d : 0.0f;
      int8_t* qb = out.q.data() + r * out.q_stride + b * kBlock;
      for (int64_t k = 0; k < n; ++k) qb[k] = static_cast<int8_t>(std::nearbyint(xb[k] * inverse));
      out.d[r * out.d_stride + b] = d;
    }
  }
  return out;
}

// one weight row against every quantized input row: per block an exact integer dot
// product, scaled by the block's d and summed in float32; the portable version
template <int Rows>
void dot_rows_q8(const QuantizedRows& x, const int8_t* w, int64_t in, float* out) {
  for (int r = 0; r < Rows; ++r) {
    const int8_t* xq = x.q.data() + r * x.q_stride;
    float sum = 0.0f;
    for (int64_t b = 0; b < x.d_stride; ++b) {
      const int64_t n = std::min(kBlock, in - b * kBlock);
      int32_t block = 0;
      for (int64_t k = b * kBlock; k < b * kBlock + n; ++k) block += int32_t{xq[k]} * int32_t{w[k]};
      sum += x.d[r * x.d_stride + b] * static_cast<float>(block);
    }
    out[r] = sum;
  }
}

#if defined(__AVX2__) && defined(__FMA__)
inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// One block of 32 weights against row r's block b, added to `acc`. On AVX2, 32 products in
// two instructions: vpmaddubsw multiplies |w| (unsigned) by x with w's sign (signed) and
// adds pairs into 16 bits (at most 2 * 128 * 127: no saturation, since |x| <= 127),
// vpmaddwd adds pairs again into 32 bits.
inline void add_block(const QuantizedRows& x, int r, int64_t b, __m256i wb, __m256i magnitudes, __m256& acc) {
  const int8_t* xb_data = x.q.data() + r * x.q_stride + b * kBlock;
  const __m256i xb = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xb_data));
  const __m256i pairs = _mm256_maddubs_epi16(magnitudes, _mm256_sign_epi8(xb, wb));
  const __m256 block = _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, _mm256_set1_epi16(1)));
  acc = _mm256_fmadd_ps(block, _mm256_set1_ps(x.d[r * x.d_stride + b]), acc);
}

// How far ahead of its reads a thread asks for its weights, in the products with much
// work a byte (int8's, and float32's of 2 to 8 rows). Without it, the products and the
// wait for memory took turns (int8 at one row: 13 GB/s from memory here, 26 from cache);
// with it they overlap (15-17 GB/s). float32's one-row product reads several streams a
// thread instead (`dot_streams_avx2`): a prefetch slowed it.
constexpr int64_t kPrefetchBytes = 4096;

// input streams a thread reads side by side in the one-row products (`dot_streams_avx2`)
constexpr int kStreams = 4;

// Outputs [begin, end) of a product cut in Streams parts, read side by side: `dot(rows,
// sums)` computes Streams weight rows' products for every input row (`sums[s][r]`),
// `store(o, sums[s])` writes output o. Returns the first output left (fewer than Streams).
template <int Streams, int Rows, typename Weight, typename Dot, typename Store>
int64_t side_by_side(const Weight* w, int64_t in, int64_t begin, int64_t end, Dot dot, Store store) {
  const int64_t part = (end - begin) / Streams;
  for (int64_t k = 0; k < part; ++k) {
    const Weight* rows[Streams];
    float sums[Streams][Rows];
    for (int s = 0; s < Streams; ++s) rows[s] = w + (begin + s * part + k) * in;
    dot(rows, sums);
    for (int s = 0; s < Streams; ++s) store(begin + s * part + k, sums[s]);
  }
  return begin + Streams * part;
}

// one weight row against every quantized input row (its weights read once for all of them)
template <int Rows>
void dot_rows_q8_avx2(const QuantizedRows& x, const int8_t* w, int64_t in, float* out) {
  __m256 even[Rows], odd[Rows];  // two accumulators a row: two blocks in flight
  for (int r = 0; r < Rows; ++r) even[r] = odd[r] = _mm256_setzero_ps();
  const int64_t full = in / kBlock;
  int64_t b = 0;
  for (; b + 2 <= full; b += 2) {
    _mm_prefetch(reinterpret_cast<const char*>(w + b * kBlock + kPrefetchBytes), _MM_HINT_T0);
    const __m256i w0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + b * kBlock));
    const __m256i w1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + (b + 1) * kBlock));
    const __m256i m0 = _mm256_sign_epi8(w0, w0), m1 = _mm256_sign_epi8(w1, w1);  // -128 is 128 unsigned
    for (int r = 0; r < Rows; ++r) {
      add_block(x, r, b, w0, m0, even[r]);
      add_block(x, r, b + 1, w1, m1, odd[r]);
    }
  }
  if (b < full) {
    const __m256i w0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + b * kBlock));
    const __m256i m0 = _mm256_sign_epi8(w0, w0);
    for (int r = 0; r < Rows; ++r) add_block(x, r, b, w0, m0, even[r]);
  }
  for (int r = 0; r < Rows; ++r) {
    float sum = hsum(_mm256_add_ps(even[r], odd[r]));
    if (full * kBlock < in) {  // a last partial block
      const int8_t* xq = x.q.data() + r * x.q_stride;
      int32_t block = 0;
      for (int64_t k = full * kBlock; k < in; ++k) block += int32_t{xq[k]} * int32_t{w[k]};
      sum += x.d[r * x.d_stride + full] * static_cast<float>(block);
    }
    out[r] = sum;
  }
}

// 6 to 8 rows (and the odd last output of 2 to 5): per 8 weights one load and one FMA a
// row, the inputs read from L1 as the FMAs' operands; four accumulators a row for 2 rows,
// two for 3 and 4, so that eight (six at 3 rows) FMA chains hide the FMA's latency.
// Several FMAs a weight vector make this product compute-bound too: the weights are
// prefetched as the int8 product's are. (One row runs `dot_streams_avx2`, 2 to 5
// `dot_two_streams_avx2`: this one was slower there.)
// (not inlined: inlined into linear_rows' loop it ran at 8 rows in 40-49 ms against 27-34)
template <int Rows>
__attribute__((noinline)) void dot_rows_avx2(const float* x, int64_t x_stride, const float* w, int64_t in,
                                             float* out) {
  constexpr int kAccs = Rows <= 2 ? 4 : Rows <= 4 ? 2 : 1;
  __m256 acc[Rows][kAccs];
  for (int r = 0; r < Rows; ++r)
    for (int a = 0; a < kAccs; ++a) acc[r][a] = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 * kAccs <= in; i += 8 * kAccs) {
    if constexpr (kAccs > 1) {  // a cache line (16 floats) or more a turn: each one's line
      for (int p = 0; p < 8 * kAccs; p += 16)
        _mm_prefetch(reinterpret_cast<const char*>(w + i + p) + kPrefetchBytes, _MM_HINT_T0);
    } else if ((i & 15) == 0) {
      _mm_prefetch(reinterpret_cast<const char*>(w + i) + kPrefetchBytes, _MM_HINT_T0);
    }
    for (int a = 0; a < kAccs; ++a) {
      const __m256 wv = _mm256_loadu_ps(w + i + 8 * a);
      for (int r = 0; r < Rows; ++r)
        acc[r][a] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x + r * x_stride + i + 8 * a), acc[r][a]);
    }
  }
  for (int r = 0; r < Rows; ++r) {
    __m256 total = acc[r][0];
    for (int a = 1; a < kAccs; ++a) total = _mm256_add_ps(total, acc[r][a]);
    float sum = hsum(total);
    for (int64_t j = i; j < in; ++j) sum += w[j] * x[r * x_stride + j];
    out[r] = sum;
  }
}
#endif

#if defined(__AVX2__) && defined(__FMA__)
// One quantized input row against kStreams int8 weight rows far apart, as the float32
// one-row product reads them (`dot_streams_avx2`); two blocks a turn, each input block
// loaded once for all the streams.
__attribute__((noinline)) void dot_streams_q8_avx2(const QuantizedRows& x, const int8_t* const* w, int64_t in,
                                                   float (*out)[1]) {
  __m256 acc[kStreams][2];
  for (int s = 0; s < kStreams; ++s) acc[s][0] = acc[s][1] = _mm256_setzero_ps();
  const int64_t full = in / kBlock;
  const __m256i ones = _mm256_set1_epi16(1);
  int64_t b = 0;
  for (; b + 2 <= full; b += 2) {
    for (int h = 0; h < 2; ++h) {
      const __m256i xb = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.q.data() + (b + h) * kBlock));
      const __m256 d = _mm256_set1_ps(x.d[b + h]);
      for (int s = 0; s < kStreams; ++s) {
        const __m256i wb = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w[s] + (b + h) * kBlock));
        const __m256i pairs = _mm256_maddubs_epi16(_mm256_sign_epi8(wb, wb), _mm256_sign_epi8(xb, wb));
        acc[s][h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, ones)), d, acc[s][h]);
      }
    }
  }
  for (int s = 0; s < kStreams; ++s) {
    float sum = hsum(_mm256_add_ps(acc[s][0], acc[s][1]));
    for (int64_t rest = b; rest < x.d_stride; ++rest) {  // an odd last block, a partial one
      const int64_t n = std::min(kBlock, in - rest * kBlock);
      int32_t block = 0;
      for (int64_t k = rest * kBlock; k < rest * kBlock + n; ++k) block += int32_t{x.q[k]} * int32_t{w[s][k]};
      sum += x.d[rest] * static_cast<float>(block);
    }
    out[s][0] = sum;
  }
}
#endif

// the int8 product of Rows quantized rows: per output, its weight row's dot products,
// times its scale, plus its bias
template <int Rows>
void linear_rows_q8(const QuantizedRows& x, const int8_t* w, const float* scales, const float* bias, float* y,
                    int64_t y_stride, int64_t in, int64_t out_features) {
  at::parallel_for(0, out_features, 64, [&](int64_t begin, int64_t end) {
    const auto store = [&](int64_t o, const float* sums) {
      const float b = bias != nullptr ? bias[o] : 0.0f;
      for (int r = 0; r < Rows; ++r) y[r * y_stride + o] = sums[r] * scales[o] + b;
    };
    int64_t o = begin;
#if defined(__AVX2__) && defined(__FMA__)
    if constexpr (Rows == 1) {
      const auto dot = [&](const int8_t* const* rows, float (*sums)[1]) { dot_streams_q8_avx2(x, rows, in, sums); };
      o = side_by_side<kStreams, 1>(w, in, begin, end, dot, store);
    }
#endif
    float sums[Rows];
    for (; o < end; ++o) {  // what is left: 2 and 3 rows, and the last outputs of one
#if defined(__AVX2__) && defined(__FMA__)
      dot_rows_q8_avx2<Rows>(x, w + o * in, in, sums);
#else
      dot_rows_q8<Rows>(x, w + o * in, in, sums);
#endif
      store(o, sums);
    }
  });
}

#if defined(__AVX2__) && defined(__FMA__)
// One input row against kStreams weight rows far apart in memory: each thread reads its
// weights as kStreams sequential streams, not one, and keeps more loads in flight (one
// stream reached 18-20 GB/s here, four 23-28; eight did no better than four).
__attribute__((noinline)) void dot_streams_avx2(const float* x, const float* const* w, int64_t in,
                                                float (*out)[1]) {
  __m256 acc[kStreams][2];
  for (int s = 0; s < kStreams; ++s) acc[s][0] = acc[s][1] = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= in; i += 16) {
    const __m256 x0 = _mm256_loadu_ps(x + i), x1 = _mm256_loadu_ps(x + i + 8);
    for (int s = 0; s < kStreams; ++s) {
      acc[s][0] = _mm256_fmadd_ps(_mm256_loadu_ps(w[s] + i), x0, acc[s][0]);
      acc[s][1] = _mm256_fmadd_ps(_mm256_loadu_ps(w[s] + i + 8), x1, acc[s][1]);
    }
  }
  for (int s = 0; s < kStreams; ++s) {
    float sum = hsum(_mm256_add_ps(acc[s][0], acc[s][1]));
    for (int64_t j = i; j < in; ++j) sum += w[s][j] * x[j];
    out[s][0] = sum;
  }
}

// 2 to 5 rows: the same against two weight rows far apart, two streams a thread (more
// streams take more accumulators than AVX2 has registers); two accumulators a row and
// stream up to 3 rows, one at 4 and 5. Against one stream with a prefetch
// (`dot_rows_avx2`): 1.45x at 2 rows, 1.25x at 3, 1.13-1.22x at 4, 1.00-1.12x at 5; at 6
// and 8 rows it was no faster, or slower.
template <int Rows>
__attribute__((noinline)) void dot_two_streams_avx2(const float* x, int64_t x_stride, const float* const* w,
                                                    int64_t in, float (*out)[Rows]) {
  constexpr int kAccs = Rows <= 3 ? 2 : 1;
  __m256 acc[2][Rows][kAccs];
  for (int s = 0; s < 2; ++s)
    for (int r = 0; r < Rows; ++r)
      for (int a = 0; a < kAccs; ++a) acc[s][r][a] = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= in; i += 16) {
    for (int h = 0; h < 2; ++h) {
      const __m256 wa = _mm256_loadu_ps(w[0] + i + 8 * h), wb = _mm256_loadu_ps(w[1] + i + 8 * h);
      for (int r = 0; r < Rows; ++r) {
        const __m256 xv = _mm256_loadu_ps(x + r * x_stride + i + 8 * h);
        acc[0][r][h % kAccs] = _mm256_fmadd_ps(wa, xv, acc[0][r][h % kAccs]);
        acc[1][r][h % kAccs] = _mm256_fmadd_ps(wb, xv, acc[1][r][h % kAccs]);
      }
    }
  }
  for (int s = 0; s < 2; ++s) {
    for (int r = 0; r < Rows; ++r) {
      __m256 total = acc[s][r][0];
      for (int a = 1; a < kAccs; ++a) total = _mm256_add_ps(total, acc[s][r][a]);
      float sum = hsum(total);
      for (int64_t j = i; j < in; ++j) sum += w[s][j] * x[r * x_stride + j];
      out[s][r] = sum;
    }
  }
}

#endif

template <int Rows>
void linear_rows(const float* x, int64_t x_stride, const float* w, const float* bias, float* y, int64_t y_stride,
                 int64_t in, int64_t out_features) {
  at::parallel_for(0, out_features, 64, [&](int64_t begin, int64_t end) {
    const auto store = [&](int64_t o, const float* sums) {
      const float b = bias != nullptr ? bias[o] : 0.0f;
      for (int r = 0; r < Rows; ++r) y[r * y_stride + o] = sums[r] + b;
    };
    int64_t o = begin;
#if defined(__AVX2__) && defined(__FMA__)
    if constexpr (Rows == 1) {
      const auto dot = [&](const float* const* rows, float (*sums)[1]) { dot_streams_avx2(x, rows, in, sums); };
      o = side_by_side<kStreams, 1>(w, in, begin, end, dot, store);
    } else if constexpr (Rows <= 5) {
      const auto dot = [&](const float* const* rows, float (*sums)[Rows]) {
        dot_two_streams_avx2<Rows>(x, x_stride, rows, in, sums);
      };
      o = side_by_side<2, Rows>(w, in, begin, end, dot, store);
    }
#endif
    float sums[Rows];
    for (; o < end; ++o) {  // what is left: 6 to 8 rows, and the last outputs of the others
#if defined(__AVX2__) && defined(__FMA__)
      if constexpr (Rows > 1) {
        dot_rows_avx2<Rows>(x, x_stride, w + o * in, in, sums);
      } else {
        dot_rows<Rows>(x, x_stride, w + o * in, in, sums);
      }
#else
      dot_rows<Rows>(x, x_stride, w + o * in, in, sums);
#endif
      store(o, sums);
    }
  });
}

// the checks both products share; (the input as contiguous [rows, in], its bias or nullptr)
std::pair<at::Tensor, const float*> checked_input(const at::Tensor& input, const at::Tensor& weight,
                                                  const std::optional<at::Tensor>& bias, int64_t max_rows) {
  TORCH_CHECK(input.device().is_cpu() && weight.device().is_cpu(), "small_linear runs on CPU");
  TORCH_CHECK(input.scalar_type() == at::kFloat, "small_linear's input is float32");
  TORCH_CHECK(weight.dim() == 2 && weight.is_contiguous(), "weight must be a contiguous [out, in] matrix");
  const int64_t in = weight.size(1), out_features = weight.size(0);
  TORCH_CHECK(input.size(-1) == in, "input's last dimension must be the weight's in features");
  const at::Tensor x = input.reshape({-1, in}).contiguous();
  TORCH_CHECK(x.size(0) >= 1 && x.size(0) <= max_rows, "small_linear takes 1 to ", max_rows, " rows");
  const float* bias_data = nullptr;
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->scalar_type() == at::kFloat && bias->is_contiguous() && bias->numel() == out_features,
                "bias must be a contiguous float32 [out]");
    bias_data = bias->data_ptr<float>();
  }
  return {x, bias_data};
}

// [rows, out] for the input's leading dimensions
at::Tensor output_like(const at::Tensor& input, const at::Tensor& y) {
  std::vector<int64_t> shape(input.sizes().begin(), input.sizes().end());
  shape.back() = y.size(1);
  return y.view(shape);
}

at::Tensor small_linear(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
  TORCH_CHECK(weight.scalar_type() == at::kFloat, "small_linear's weight is float32");
  const auto [x, bias_data] = checked_input(input, weight, bias, max_float_rows());
  const int64_t rows = x.size(0), in = weight.size(1), out_features = weight.size(0);
  at::Tensor y = at::empty({rows, out_features}, x.options());
  const float *xd = x.data_ptr<float>(), *wd = weight.data_ptr<float>();
  float* yd = y.data_ptr<float>();
  if (rows == 1) linear_rows<1>(xd, in, wd, bias_data, yd, out_features, in, out_features);
  if (rows == 2) linear_rows<2>(xd, in, wd, bias_data, yd, out_features, in, out_features);
  if (rows == 3) linear_rows<3>(xd, in, wd, bias_data, yd, out_features, in, out_features);
#if defined(__AVX2__) && defined(__FMA__)
  if (rows == 4) linear_rows<4>(xd, in, wd, bias_data, yd, out_features, in, out_features);
  if (rows == 5) linear_rows<5>(xd, in, wd, bias_data, yd, out_features, in, out_features);
  if (rows == 6) linear_rows<6>(xd, in, wd, bias_data, yd, out_features, in, out_features);
  if (rows == 7) linear_rows<7>(xd, in, wd, bias_data, yd, out_features, in, out_features);
  if (rows == 8) linear_rows<8>(xd, in, wd, bias_data, yd, out_features, in, out_features);
#endif
  return output_like(input, y);
}

// int8 weights, one float32 scale per output (symmetric: no zero point); the input rows
// rounded to int8 per block of 32 values (`quantize_rows`), integer products
at::Tensor small_linear_int8(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& scales,
                             const std::optional<at::Tensor>& bias) {
  TORCH_CHECK(weight.scalar_type() == at::kChar, "small_linear_int8's weight is int8");
  TORCH_CHECK(scales.scalar_type() == at::kFloat && scales.is_contiguous() && scales.dim() == 1 &&
                  scales.numel() == weight.size(0),
              "scales must be a contiguous float32 [out]");
  const auto [x, bias_data] = checked_input(input, weight, bias, 3);
  const int64_t rows = x.size(0), in = weight.size(1), out_features = weight.size(0);
  const QuantizedRows q = quantize_rows(x.data_ptr<float>(), rows, in);
  at::Tensor y = at::empty({rows, out_features}, x.options());
  const int8_t* wd = weight.data_ptr<int8_t>();
  const float* sd = scales.data_ptr<float>();
  float* yd = y.data_ptr<float>();
  if (rows == 1) linear_rows_q8<1>(q, wd, sd, bias_data, yd, out_features, in, out_features);
  if (rows == 2) linear_rows_q8<2>(q, wd, sd, bias_data, yd, out_features, in, out_features);
  if (rows == 3) linear_rows_q8<3>(q, wd, sd, bias_data, yd, out_features, in, out_features);
  return output_like(input, y);
}

}  // namespace

TORCH_LIBRARY(llmos_cpu, m) {
  m.def("small_linear(Tensor input, Tensor weight, Tensor? bias) -> Tensor");
  m.def("small_linear_max_rows() -> int", &max_float_rows);
  m.def("small_linear_int8(Tensor input, Tensor weight, Tensor scales, Tensor? bias) -> Tensor");
}

TORCH_LIBRARY_IMPL(llmos_cpu, CPU, m) {
  m.impl("small_linear", &small_linear);
  m.impl("small_linear_int8", &small_linear_int8);
}
