// A float32 linear layer for a few rows (a decode step of one to three requests): y = x W^T + b;
// and the same with int8 weights and a float32 scale per output (--quantization int8).
//
// Such a product reads the whole weight once and does two flops per weight read, so its
// speed is the memory bandwidth it reaches. Each thread streams its own contiguous range
// of output rows of W (row-major [out, in]), and for each it keeps the dot products of all
// the input rows in independent vector accumulators, so every weight is loaded once.
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <torch/types.h>

#include <type_traits>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#endif

namespace {

constexpr int64_t kLanes = 16;  // one AVX-512 register of floats; the compiler picks the width

// the portable product: the compiler vectorizes it (for int8 weights, less well)
template <int Rows, typename weight_t>
void dot_rows(const float* x, int64_t x_stride, const weight_t* w, int64_t in, float* out) {
  float acc[Rows][2][kLanes] = {};
  int64_t i = 0;
  for (; i + 2 * kLanes <= in; i += 2 * kLanes) {
    for (int r = 0; r < Rows; ++r) {
      const float* xr = x + r * x_stride + i;
      for (int64_t k = 0; k < kLanes; ++k) acc[r][0][k] += static_cast<float>(w[i + k]) * xr[k];
      for (int64_t k = 0; k < kLanes; ++k) acc[r][1][k] += static_cast<float>(w[i + kLanes + k]) * xr[kLanes + k];
    }
  }
  for (int r = 0; r < Rows; ++r) {
    float sum = 0.0f;
    for (int64_t k = 0; k < kLanes; ++k) sum += acc[r][0][k] + acc[r][1][k];
    for (int64_t j = i; j < in; ++j) sum += static_cast<float>(w[j]) * x[r * x_stride + j];
    out[r] = sum;
  }
}

#if defined(__AVX2__) && defined(__FMA__)
// int8 weights on AVX2: 32 weights a turn widened to floats in four registers (the
// compiler does not vectorize the int8 -> float conversion well), then multiplied
// into each row's independent accumulators
inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

template <int Rows>
void dot_rows_int8(const float* x, int64_t x_stride, const int8_t* w, int64_t in, float* out) {
  constexpr int kAccs = Rows == 1 ? 4 : 2;  // accumulators a row: more rows, fewer (16 registers)
  __m256 acc[Rows][kAccs];
  for (int r = 0; r < Rows; ++r)
    for (int a = 0; a < kAccs; ++a) acc[r][a] = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 32 <= in; i += 32) {
    const __m256i bytes = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + i));
    const __m128i low = _mm256_castsi256_si128(bytes), high = _mm256_extracti128_si256(bytes, 1);
    const __m256 wf[4] = {_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(low)),
                          _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(low, 8))),
                          _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(high)),
                          _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(high, 8)))};
    for (int r = 0; r < Rows; ++r) {
      const float* xr = x + r * x_stride + i;
      for (int a = 0; a < 4; ++a)
        acc[r][a % kAccs] = _mm256_fmadd_ps(wf[a], _mm256_loadu_ps(xr + 8 * a), acc[r][a % kAccs]);
    }
  }
  for (int r = 0; r < Rows; ++r) {
    __m256 total = acc[r][0];
    for (int a = 1; a < kAccs; ++a) total = _mm256_add_ps(total, acc[r][a]);
    float sum = hsum(total);
    for (int64_t j = i; j < in; ++j) sum += static_cast<float>(w[j]) * x[r * x_stride + j];
    out[r] = sum;
  }
}

#endif

template <int Rows, typename weight_t>
void linear_rows(const float* x, int64_t x_stride, const weight_t* w, const float* scales, const float* bias,
                 float* y, int64_t y_stride, int64_t in, int64_t out_features) {
  at::parallel_for(0, out_features, 64, [&](int64_t begin, int64_t end) {
    float sums[Rows];
    for (int64_t o = begin; o < end; ++o) {
#if defined(__AVX2__) && defined(__FMA__)
      if constexpr (std::is_same_v<weight_t, int8_t>) {
        dot_rows_int8<Rows>(x, x_stride, w + o * in, in, sums);
      } else {
        dot_rows<Rows>(x, x_stride, w + o * in, in, sums);
      }
#else
      dot_rows<Rows>(x, x_stride, w + o * in, in, sums);
#endif
      const float scale = scales != nullptr ? scales[o] : 1.0f;
      const float b = bias != nullptr ? bias[o] : 0.0f;
      for (int r = 0; r < Rows; ++r) y[r * y_stride + o] = sums[r] * scale + b;
    }
  });
}

// the checks and the dispatch on the row count that both products share
template <typename weight_t>
at::Tensor few_rows(const at::Tensor& input, const at::Tensor& weight, const float* scales,
                    const std::optional<at::Tensor>& bias) {
  TORCH_CHECK(input.device().is_cpu() && weight.device().is_cpu(), "small_linear runs on CPU");
  TORCH_CHECK(input.scalar_type() == at::kFloat, "small_linear's input is float32");
  TORCH_CHECK(weight.dim() == 2 && weight.is_contiguous(), "weight must be a contiguous [out, in] matrix");
  const int64_t in = weight.size(1), out_features = weight.size(0);
  TORCH_CHECK(input.size(-1) == in, "input's last dimension must be the weight's in features");
  const at::Tensor x = input.reshape({-1, in}).contiguous();
  const int64_t rows = x.size(0);
  TORCH_CHECK(rows >= 1 && rows <= 3, "small_linear takes 1 to 3 rows");
  const float* bias_data = nullptr;
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->scalar_type() == at::kFloat && bias->is_contiguous() && bias->numel() == out_features,
                "bias must be a contiguous float32 [out]");
    bias_data = bias->data_ptr<float>();
  }
  at::Tensor y = at::empty({rows, out_features}, x.options());
  const float* xd = x.data_ptr<float>();
  const weight_t* wd = weight.data_ptr<weight_t>();
  float* yd = y.data_ptr<float>();
  if (rows == 1) linear_rows<1>(xd, in, wd, scales, bias_data, yd, out_features, in, out_features);
  if (rows == 2) linear_rows<2>(xd, in, wd, scales, bias_data, yd, out_features, in, out_features);
  if (rows == 3) linear_rows<3>(xd, in, wd, scales, bias_data, yd, out_features, in, out_features);
  std::vector<int64_t> shape(input.sizes().begin(), input.sizes().end());
  shape.back() = out_features;
  return y.view(shape);
}

at::Tensor small_linear(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
  TORCH_CHECK(weight.scalar_type() == at::kFloat, "small_linear's weight is float32");
  return few_rows<float>(input, weight, nullptr, bias);
}

// int8 weights, one float32 scale per output (symmetric: no zero point); the input stays
// float32, so each product is the dequantized weight's, rounded once per sum
at::Tensor small_linear_int8(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& scales,
                             const std::optional<at::Tensor>& bias) {
  TORCH_CHECK(weight.scalar_type() == at::kChar, "small_linear_int8's weight is int8");
  TORCH_CHECK(scales.scalar_type() == at::kFloat && scales.is_contiguous() && scales.dim() == 1 &&
                  scales.numel() == weight.size(0),
              "scales must be a contiguous float32 [out]");
  return few_rows<int8_t>(input, weight, scales.data_ptr<float>(), bias);
}

}  // namespace

TORCH_LIBRARY(llmos_cpu, m) {
  m.def("small_linear(Tensor input, Tensor weight, Tensor? bias) -> Tensor");
  m.def("small_linear_int8(Tensor input, Tensor weight, Tensor scales, Tensor? bias) -> Tensor");
}

TORCH_LIBRARY_IMPL(llmos_cpu, CPU, m) {
  m.impl("small_linear", &small_linear);
  m.impl("small_linear_int8", &small_linear_int8);
}
