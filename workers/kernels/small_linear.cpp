// A float32 linear layer for a few rows (a decode step of one to three requests): y = x W^T + b.
//
// Such a product reads the whole weight once and does two flops per weight read, so its
// speed is the memory bandwidth it reaches. Each thread streams its own contiguous range
// of output rows of W (row-major [out, in]), and for each it keeps the dot products of all
// the input rows in independent vector accumulators, so every weight is loaded once.
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <torch/types.h>

namespace {

constexpr int64_t kLanes = 16;  // one AVX-512 register of floats; the compiler picks the width

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

template <int Rows>
void linear_rows(const float* x, int64_t x_stride, const float* w, const float* bias, float* y,
                 int64_t y_stride, int64_t in, int64_t out_features) {
  at::parallel_for(0, out_features, 64, [&](int64_t begin, int64_t end) {
    float sums[Rows];
    for (int64_t o = begin; o < end; ++o) {
      dot_rows<Rows>(x, x_stride, w + o * in, in, sums);
      const float b = bias != nullptr ? bias[o] : 0.0f;
      for (int r = 0; r < Rows; ++r) y[r * y_stride + o] = sums[r] + b;
    }
  });
}

at::Tensor small_linear(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
  TORCH_CHECK(input.device().is_cpu() && weight.device().is_cpu(), "small_linear runs on CPU");
  TORCH_CHECK(input.scalar_type() == at::kFloat && weight.scalar_type() == at::kFloat, "small_linear is float32");
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
  const float* wd = weight.data_ptr<float>();
  float* yd = y.data_ptr<float>();
  if (rows == 1) linear_rows<1>(xd, in, wd, bias_data, yd, out_features, in, out_features);
  if (rows == 2) linear_rows<2>(xd, in, wd, bias_data, yd, out_features, in, out_features);
  if (rows == 3) linear_rows<3>(xd, in, wd, bias_data, yd, out_features, in, out_features);
  std::vector<int64_t> shape(input.sizes().begin(), input.sizes().end());
  shape.back() = out_features;
  return y.view(shape);
}

}  // namespace

TORCH_LIBRARY(llmos_cpu, m) { m.def("small_linear(Tensor input, Tensor weight, Tensor? bias) -> Tensor"); }

TORCH_LIBRARY_IMPL(llmos_cpu, CPU, m) { m.impl("small_linear", &small_linear); }
