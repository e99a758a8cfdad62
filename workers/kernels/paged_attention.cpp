// Attention that reads keys and values through block tables, and the store that
// writes them there: the two operations a paged KV cache needs on CPU.
//
// The pools are one layer's keys (or values), [num_blocks, kv_heads, block_size,
// head_dim]: a block holds block_size tokens of every KV head, each head's tokens
// contiguous, so one (token, KV head) work item streams its keys block by block.
// A query token t belongs to row token_rows[t] and sees that row's first
// context_lens[t] tokens: a decode sees its whole row, a prefill token the row up
// to itself, so one call serves decodes and prefill chunks (mixed steps) alike.
//
// Two passes per work item, as in the decode kernels of vLLM's CPU backend: the
// scores of every context token for the item's query heads (grouped queries share
// one read of the keys), a softmax, then the weighted sum of the values. The scores
// of one item are context_len floats per query head: small next to the keys.
// Threads come from ATen's pool (at::parallel_for), the one torch's matmuls use.
//
// The pools hold the activations' dtype, or for a float32 model float16 or bfloat16
// (--kv-cache-dtype): the store rounds each key and value once, and attention reads
// them back to float32, so it reads half the bytes.
//
// Built by workers.paged_ops on first use; workers.paged_ops holds the same
// operations in plain torch for machines without a compiler.

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#if defined(__F16C__) && defined(__AVX2__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

namespace {

inline float to_float(float x) { return x; }

inline float to_float(c10::BFloat16 x) {
  // a bfloat16 is the high half of a float: a shift, which vectorizes
  uint32_t bits = static_cast<uint32_t>(x.x) << 16;
  float value;
  std::memcpy(&value, &bits, sizeof(value));
  return value;
}

inline float to_float(c10::Half x) { return static_cast<float>(x); }

// A cache may hold keys and values in the activations' dtype, or a float32 model's in
// float16 or bfloat16 (half the memory and the bytes attention reads; --kv-cache-dtype).
inline bool is_cache_dtype_of(at::ScalarType cache, at::ScalarType activations) {
  return cache == activations || (activations == at::kFloat && (cache == at::kHalf || cache == at::kBFloat16));
}

// A block's keys or values of one head, read as float32: the pool's own memory when it
// holds float32, else `count` values converted into `buffer` (eight at a time in
// hardware where the CPU has F16C / AVX2: c10's scalar conversions do not vectorize).
template <typename cache_t>
const float* as_floats(const cache_t* source, int64_t count, float* buffer) {
  if constexpr (std::is_same_v<cache_t, float>) {
    return source;
  } else {
    int64_t i = 0;
#if defined(__F16C__) && defined(__AVX2__)
    if constexpr (std::is_same_v<cache_t, c10::Half>) {
      for (; i + 8 <= count; i += 8) {
        const __m128i half = _mm_loadu_si128(reinterpret_cast<const __m128i*>(source + i));
        _mm256_storeu_ps(buffer + i, _mm256_cvtph_ps(half));
      }
    } else {
      for (; i + 8 <= count; i += 8) {  // a bfloat16 is a float's high half: widen, shift
        const __m128i bf16 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(source + i));
        const __m256i wide = _mm256_slli_epi32(_mm256_cvtepu16_epi32(bf16), 16);
        _mm256_storeu_ps(buffer + i, _mm256_castsi256_ps(wide));
      }
    }
#endif
    for (; i < count; ++i) buffer[i] = to_float(source[i]);
    return buffer;
  }
}

struct Geometry {
  int64_t num_tokens, num_heads, head_dim, num_kv_heads, block_size, num_blocks, max_blocks_per_row;
};

Geometry check_attention_args(const at::Tensor& query, const at::Tensor& key_pool, const at::Tensor& value_pool,
                              const at::Tensor& block_tables, const at::Tensor& token_rows,
                              const at::Tensor& context_lens) {
  TORCH_CHECK(query.dim() == 3, "query must be [tokens, heads, head_dim]");
  TORCH_CHECK(key_pool.dim() == 4 && key_pool.sizes() == value_pool.sizes(),
              "key and value pools must be [blocks, kv_heads, block_size, head_dim], alike");
  TORCH_CHECK(key_pool.is_contiguous() && value_pool.is_contiguous(), "pools must be contiguous");
  TORCH_CHECK(key_pool.scalar_type() == value_pool.scalar_type() &&
                  is_cache_dtype_of(key_pool.scalar_type(), query.scalar_type()),
              "the pools must have one dtype: the query's, or float16 or bfloat16 for a float32 query");
  TORCH_CHECK(query.size(2) == key_pool.size(3), "query and pools must have one head_dim");
  TORCH_CHECK(query.size(1) % key_pool.size(1) == 0, "query heads must be a multiple of KV heads");
  TORCH_CHECK(block_tables.dim() == 2 && block_tables.scalar_type() == at::kInt && block_tables.is_contiguous(),
              "block_tables must be contiguous int32 [rows, max_blocks]");
  TORCH_CHECK(token_rows.dim() == 1 && token_rows.scalar_type() == at::kInt && token_rows.is_contiguous() &&
                  token_rows.size(0) == query.size(0),
              "token_rows must be contiguous int32 [tokens]");
  TORCH_CHECK(context_lens.dim() == 1 && context_lens.scalar_type() == at::kInt && context_lens.is_contiguous() &&
                  context_lens.size(0) == query.size(0),
              "context_lens must be contiguous int32 [tokens]");
  return {query.size(0), query.size(1), query.size(2), key_pool.size(1), key_pool.size(2), key_pool.size(0),
          block_tables.size(1)};
}

template <typename scalar_t, typename cache_t>
void attend(const at::Tensor& query, const at::Tensor& key_pool, const at::Tensor& value_pool,
            const at::Tensor& block_tables, const at::Tensor& token_rows, const at::Tensor& context_lens,
            double scale, at::Tensor& out, const Geometry& g) {
  const int64_t group = g.num_heads / g.num_kv_heads, dim = g.head_dim, block_size = g.block_size;
  const scalar_t* q = query.data_ptr<scalar_t>();
  const int64_t q_token_stride = query.stride(0), q_head_stride = query.stride(1), q_dim_stride = query.stride(2);
  const cache_t* keys = key_pool.data_ptr<cache_t>();
  const cache_t* values = value_pool.data_ptr<cache_t>();
  const int32_t* tables = block_tables.data_ptr<int32_t>();
  const int32_t* rows = token_rows.data_ptr<int32_t>();
  const int32_t* lens = context_lens.data_ptr<int32_t>();
  const int64_t num_rows = block_tables.size(0);
  scalar_t* o = out.data_ptr<scalar_t>();
  const int64_t head_stride = block_size * dim, block_stride = g.num_kv_heads * head_stride;

  at::parallel_for(0, g.num_tokens * g.num_kv_heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> queries(group * dim), sums(group * dim), scores, converted(block_size * dim);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t token = item / g.num_kv_heads, kv_head = item % g.num_kv_heads;
      const int64_t row = rows[token], num_context = lens[token];
      TORCH_CHECK(row >= 0 && row < num_rows, "token row out of range");
      TORCH_CHECK(num_context > 0 && num_context <= g.max_blocks_per_row * block_size,
                  "context length out of range");
      const int32_t* table = tables + row * g.max_blocks_per_row;
      for (int64_t h = 0; h < group; ++h) {
        const scalar_t* source = q + token * q_token_stride + (kv_head * group + h) * q_head_stride;
        for (int64_t d = 0; d < dim; ++d) queries[h * dim + d] = to_float(source[d * q_dim_stride]) * scale;
      }
      scores.resize(group * num_context);
      for (int64_t first = 0; first < num_context; first += block_size) {  // pass 1: scores
        const int64_t block = table[first / block_size];
        TORCH_CHECK(block >= 0 && block < g.num_blocks, "block id out of range");
        const int64_t count = std::min(block_size, num_context - first);
        const float* block_keys =
            as_floats(keys + block * block_stride + kv_head * head_stride, count * dim, converted.data());
        for (int64_t j = 0; j < count; ++j) {
          const float* key = block_keys + j * dim;
          for (int64_t h = 0; h < group; ++h) {
            const float* query_h = queries.data() + h * dim;
            float dot = 0.f;
#pragma omp simd reduction(+ : dot)
            for (int64_t d = 0; d < dim; ++d) dot += query_h[d] * key[d];
            scores[h * num_context + first + j] = dot;
          }
        }
      }
      for (int64_t h = 0; h < group; ++h) {  // softmax
        float* s = scores.data() + h * num_context;
        const float top = *std::max_element(s, s + num_context);
        float total = 0.f;
        for (int64_t i = 0; i < num_context; ++i) {
          s[i] = std::exp(s[i] - top);
          total += s[i];
        }
        const float inverse = 1.f / total;
        for (int64_t i = 0; i < num_context; ++i) s[i] *= inverse;
      }
      std::fill(sums.begin(), sums.end(), 0.f);
      for (int64_t first = 0; first < num_context; first += block_size) {  // pass 2: weighted values
        const int64_t block = table[first / block_size];
        const int64_t count = std::min(block_size, num_context - first);
        const float* block_values =
            as_floats(values + block * block_stride + kv_head * head_stride, count * dim, converted.data());
        for (int64_t j = 0; j < count; ++j) {
          const float* value = block_values + j * dim;
          for (int64_t h = 0; h < group; ++h) {
            const float weight = scores[h * num_context + first + j];
            float* sum = sums.data() + h * dim;
#pragma omp simd
            for (int64_t d = 0; d < dim; ++d) sum[d] += weight * value[d];
          }
        }
      }
      for (int64_t h = 0; h < group; ++h) {
        scalar_t* target = o + (token * g.num_heads + kv_head * group + h) * dim;
        for (int64_t d = 0; d < dim; ++d) target[d] = static_cast<scalar_t>(sums[h * dim + d]);
      }
    }
  });
}

at::Tensor paged_attention(const at::Tensor& query, const at::Tensor& key_pool, const at::Tensor& value_pool,
                           const at::Tensor& block_tables, const at::Tensor& token_rows,
                           const at::Tensor& context_lens, double scale) {
  const Geometry g = check_attention_args(query, key_pool, value_pool, block_tables, token_rows, context_lens);
  at::Tensor out = at::empty({g.num_tokens, g.num_heads, g.head_dim}, query.options());
  if (g.num_tokens == 0) return out;
  if (key_pool.scalar_type() == query.scalar_type()) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, query.scalar_type(), "paged_attention", [&] {
      attend<scalar_t, scalar_t>(query, key_pool, value_pool, block_tables, token_rows, context_lens, scale, out, g);
    });
  } else {  // a float32 query over float16 or bfloat16 pools
    AT_DISPATCH_REDUCED_FLOATING_TYPES(key_pool.scalar_type(), "paged_attention", [&] {
      attend<float, scalar_t>(query, key_pool, value_pool, block_tables, token_rows, context_lens, scale, out, g);
    });
  }
  return out;
}

template <typename cache_t, typename scalar_t>
void store(at::Tensor& pool, const at::Tensor& states, const int64_t* slots) {
  const int64_t num_tokens = states.size(0), num_heads = states.size(1), dim = states.size(2);
  const int64_t block_size = pool.size(2), num_slots = pool.size(0) * block_size;
  const int64_t head_stride = block_size * dim, block_stride = num_heads * head_stride;
  cache_t* target = pool.data_ptr<cache_t>();
  const scalar_t* source = states.data_ptr<scalar_t>();
  const int64_t s0 = states.stride(0), s1 = states.stride(1), s2 = states.stride(2);
  for (int64_t t = 0; t < num_tokens; ++t) {
    const int64_t slot = slots[t];
    TORCH_CHECK(slot >= 0 && slot < num_slots, "slot out of range");
    cache_t* token_target = target + (slot / block_size) * block_stride + (slot % block_size) * dim;
    for (int64_t h = 0; h < num_heads; ++h)
      for (int64_t d = 0; d < dim; ++d) {
        const scalar_t value = source[t * s0 + h * s1 + d * s2];
        if constexpr (std::is_same_v<cache_t, scalar_t>) {
          token_target[h * head_stride + d] = value;
        } else {
          token_target[h * head_stride + d] = static_cast<cache_t>(to_float(value));  // nearest even
        }
      }
  }
}

void store_kv(at::Tensor key_pool, at::Tensor value_pool, const at::Tensor& keys, const at::Tensor& values,
              const at::Tensor& slots) {
  TORCH_CHECK(key_pool.dim() == 4 && key_pool.sizes() == value_pool.sizes() && key_pool.is_contiguous() &&
                  value_pool.is_contiguous(),
              "pools must be contiguous [blocks, kv_heads, block_size, head_dim], alike");
  TORCH_CHECK(keys.dim() == 3 && keys.sizes() == values.sizes() && keys.size(1) == key_pool.size(1) &&
                  keys.size(2) == key_pool.size(3),
              "keys and values must be [tokens, kv_heads, head_dim]");
  TORCH_CHECK(keys.scalar_type() == values.scalar_type() && key_pool.scalar_type() == value_pool.scalar_type() &&
                  is_cache_dtype_of(key_pool.scalar_type(), keys.scalar_type()),
              "keys and values must have one dtype, the pools theirs or float16 or bfloat16 for float32 ones");
  TORCH_CHECK(slots.dim() == 1 && slots.scalar_type() == at::kLong && slots.is_contiguous() &&
                  slots.size(0) == keys.size(0),
              "slots must be contiguous int64 [tokens]");
  if (key_pool.scalar_type() == keys.scalar_type()) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, keys.scalar_type(), "store_kv", [&] {
      store<scalar_t, scalar_t>(key_pool, keys, slots.data_ptr<int64_t>());
      store<scalar_t, scalar_t>(value_pool, values, slots.data_ptr<int64_t>());
    });
  } else {  // float32 keys and values into float16 or bfloat16 pools
    AT_DISPATCH_REDUCED_FLOATING_TYPES(key_pool.scalar_type(), "store_kv", [&] {
      store<scalar_t, float>(key_pool, keys, slots.data_ptr<int64_t>());
      store<scalar_t, float>(value_pool, values, slots.data_ptr<int64_t>());
    });
  }
}

}  // namespace

TORCH_LIBRARY(llmos_paged, m) {
  m.def(
      "paged_attention(Tensor query, Tensor key_pool, Tensor value_pool, Tensor block_tables, "
      "Tensor token_rows, Tensor context_lens, float scale) -> Tensor");
  m.def("store_kv(Tensor(a!) key_pool, Tensor(b!) value_pool, Tensor keys, Tensor values, Tensor slots) -> ()");
}

TORCH_LIBRARY_IMPL(llmos_paged, CPU, m) {
  m.impl("paged_attention", &paged_attention);
  m.impl("store_kv", &store_kv);
}
