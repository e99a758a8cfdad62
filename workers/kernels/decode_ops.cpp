// The small float32 operations around a decoder layer's products, each one call where
// torch takes several (workers.direct_forward runs Llama-style layers with them):
//
//   rms_norm(x, weight, eps)             x * rsqrt(mean(x^2) + eps) * weight, over the last dim
//   add_rms_norm(hidden!, delta, w, eps) hidden += delta (the residual), then rms_norm(hidden)
//   rope_store(query!, key, value, cos, sin, key_pool!, value_pool!, slots)
//                                        rotary embedding on the query (in place) and the
//                                        key, and the key and value stored at their slots
//                                        (float32 pools, or float16 / bfloat16 ones: rounded)
//
// A decode step calls each once per layer on a few rows, where torch's chains of
// element-wise operators cost more in dispatch and thread wake-ups than in arithmetic;
// so a call of few rows runs on the calling thread (at::parallel_for runs a range
// under its grain inline), and a prefill of many rows spreads over ATen's threads.
// The arithmetic is transformers' (LlamaRMSNorm in float32, apply_rotary_pos_emb's
// rotate-half); only the order of a sum's additions, and so the last bit, may differ.

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <initializer_list>

namespace {

constexpr int64_t kRowsPerTask = 32;  // rows a thread takes at once: fewer run inline
constexpr int64_t kMaxHeadDim = 1024;

void check_float_rows(const at::Tensor& x, const char* name) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kFloat, name, " must be a float32 CPU tensor");
  TORCH_CHECK(x.is_contiguous(), name, " must be contiguous");
}

inline void norm_row(const float* x, const float* weight, int64_t width, float eps, float* out) {
  constexpr int64_t kLanes = 16;  // independent partial sums, so the loop vectorizes
  float lanes[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= width; i += kLanes)
    for (int64_t k = 0; k < kLanes; ++k) lanes[k] += x[i + k] * x[i + k];
  float sum = 0.0f;
  for (int64_t k = 0; k < kLanes; ++k) sum += lanes[k];
  for (; i < width; ++i) sum += x[i] * x[i];
  const float scale = 1.0f / std::sqrt(sum / static_cast<float>(width) + eps);
  for (int64_t i = 0; i < width; ++i) out[i] = weight[i] * (x[i] * scale);
}

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  check_float_rows(x, "x");
  check_float_rows(weight, "weight");
  const int64_t width = x.size(-1);
  TORCH_CHECK(weight.numel() == width, "weight must have the last dimension's size");
  at::Tensor out = at::empty_like(x);
  const float *xd = x.data_ptr<float>(), *wd = weight.data_ptr<float>();
  float* od = out.data_ptr<float>();
  at::parallel_for(0, x.numel() / width, kRowsPerTask, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) norm_row(xd + r * width, wd, width, static_cast<float>(eps), od + r * width);
  });
  return out;
}

at::Tensor add_rms_norm(at::Tensor hidden, const at::Tensor& delta, const at::Tensor& weight, double eps) {
  check_float_rows(hidden, "hidden");
  check_float_rows(delta, "delta");
  check_float_rows(weight, "weight");
  TORCH_CHECK(hidden.sizes() == delta.sizes(), "hidden and delta must have one shape");
  const int64_t width = hidden.size(-1);
  TORCH_CHECK(weight.numel() == width, "weight must have the last dimension's size");
  at::Tensor out = at::empty_like(hidden);
  float* hd = hidden.data_ptr<float>();
  const float *dd = delta.data_ptr<float>(), *wd = weight.data_ptr<float>();
  float* od = out.data_ptr<float>();
  at::parallel_for(0, hidden.numel() / width, kRowsPerTask, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      float* h = hd + r * width;
      const float* d = dd + r * width;
      for (int64_t i = 0; i < width; ++i) h[i] += d[i];
      norm_row(h, wd, width, static_cast<float>(eps), od + r * width);
    }
  });
  return out;
}

// one head's rotate-half rotation: out[i] = x[i] cos[i] - x[i + half] sin[i],
// out[i + half] = x[i + half] cos[i + half] + x[i] sin[i + half]
inline void rotate(const float* x, const float* cos, const float* sin, int64_t head_dim, float* out) {
  const int64_t half = head_dim / 2;
  for (int64_t i = 0; i < half; ++i) {
    const float x1 = x[i], x2 = x[i + half];
    out[i] = x1 * cos[i] + (-x2) * sin[i];
    out[i + half] = x2 * cos[i + half] + x1 * sin[i + half];
  }
}

// the query rotated in place; the key rotated, and the value, stored at each token's slot
template <typename cache_t>
void rotate_and_store(float* qd, const float* kd, const float* vd, const float* cd, const float* snd, cache_t* kp,
                      cache_t* vp, const int64_t* sd, int64_t tokens, int64_t heads, int64_t kv_heads,
                      int64_t head_dim, int64_t block_size) {
  at::parallel_for(0, tokens, kRowsPerTask, [&](int64_t begin, int64_t end) {
    float rotated[kMaxHeadDim];
    for (int64_t t = begin; t < end; ++t) {
      const float *c = cd + t * head_dim, *s = snd + t * head_dim;
      for (int64_t h = 0; h < heads; ++h) {
        float* q = qd + (t * heads + h) * head_dim;
        rotate(q, c, s, head_dim, rotated);
        std::copy(rotated, rotated + head_dim, q);
      }
      const int64_t block = sd[t] / block_size, offset = sd[t] % block_size;
      for (int64_t h = 0; h < kv_heads; ++h) {
        const int64_t at = ((block * kv_heads + h) * block_size + offset) * head_dim;
        rotate(kd + (t * kv_heads + h) * head_dim, c, s, head_dim, rotated);
        const float* v = vd + (t * kv_heads + h) * head_dim;
        for (int64_t d = 0; d < head_dim; ++d) {  // float16 and bfloat16 round to nearest even
          kp[at + d] = static_cast<cache_t>(rotated[d]);
          vp[at + d] = static_cast<cache_t>(v[d]);
        }
      }
    }
  });
}

void rope_store(at::Tensor query, const at::Tensor& key, const at::Tensor& value, const at::Tensor& cos,
                const at::Tensor& sin, at::Tensor key_pool, at::Tensor value_pool, const at::Tensor& slots) {
  for (const at::Tensor* t : std::initializer_list<const at::Tensor*>{&query, &key, &value, &cos, &sin})
    check_float_rows(*t, "query, key, value, cos and sin");
  const at::ScalarType cache = key_pool.scalar_type();
  TORCH_CHECK(key_pool.device().is_cpu() && key_pool.is_contiguous() && value_pool.is_contiguous() &&
                  value_pool.scalar_type() == cache &&
                  (cache == at::kFloat || cache == at::kHalf || cache == at::kBFloat16),
              "the pools must be contiguous CPU tensors of one dtype: float32, float16 or bfloat16");
  TORCH_CHECK(query.dim() == 3 && key.dim() == 3 && key.sizes() == value.sizes(),
              "query, key and value must be [tokens, heads, head_dim], key and value alike");
  const int64_t tokens = query.size(0), heads = query.size(1), head_dim = query.size(2), kv_heads = key.size(1);
  TORCH_CHECK(key.size(0) == tokens && key.size(2) == head_dim && head_dim % 2 == 0,
              "key must match the query's tokens and (even) head_dim");
  TORCH_CHECK(cos.sizes() == sin.sizes() && cos.numel() == tokens * head_dim, "cos and sin must be [tokens, head_dim]");
  TORCH_CHECK(key_pool.dim() == 4 && key_pool.sizes() == value_pool.sizes() && key_pool.size(1) == kv_heads &&
                  key_pool.size(3) == head_dim,
              "pools must be [blocks, kv_heads, block_size, head_dim], alike");
  TORCH_CHECK(slots.scalar_type() == at::kLong && slots.is_contiguous() && slots.numel() == tokens,
              "slots must be a contiguous int64 [tokens]");
  TORCH_CHECK(head_dim <= kMaxHeadDim, "head_dim must be at most ", kMaxHeadDim);
  const int64_t block_size = key_pool.size(2), num_slots = key_pool.size(0) * block_size;
  const int64_t* sd = slots.data_ptr<int64_t>();
  for (int64_t t = 0; t < tokens; ++t) TORCH_CHECK(sd[t] >= 0 && sd[t] < num_slots, "slot out of the pools");
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, cache, "rope_store", [&] {
    rotate_and_store<scalar_t>(query.data_ptr<float>(), key.data_ptr<float>(), value.data_ptr<float>(),
                               cos.data_ptr<float>(), sin.data_ptr<float>(), key_pool.data_ptr<scalar_t>(),
                               value_pool.data_ptr<scalar_t>(), sd, tokens, heads, kv_heads, head_dim, block_size);
  });
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(llmos_cpu, m) {
  m.def("rms_norm(Tensor x, Tensor weight, float eps) -> Tensor");
  m.def("add_rms_norm(Tensor(a!) hidden, Tensor delta, Tensor weight, float eps) -> Tensor");
  m.def(
      "rope_store(Tensor(a!) query, Tensor key, Tensor value, Tensor cos, Tensor sin, Tensor(b!) key_pool, "
      "Tensor(c!) value_pool, Tensor slots) -> ()");
}

TORCH_LIBRARY_IMPL(llmos_cpu, CPU, m) {
  m.impl("rms_norm", &rms_norm);
  m.impl("add_rms_norm", &add_rms_norm);
  m.impl("rope_store", &rope_store);
}
