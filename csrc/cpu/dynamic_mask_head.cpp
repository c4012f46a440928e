// dynamic_mask_head on the CPU: CondInst's per-instance 1x1-conv network, fused.
//
// Work item = (instance, image row). The row's activations live in small [channels, W] buffers
// (a few KiB, in L1) laid out channel-major, so every layer is a loop over pixels that the
// compiler vectorises; nothing of size N x C x H x W is ever allocated. The backward pass
// recomputes the row's activations and propagates back through them. Parameter gradients of a
// work item go to its own slot of a [N, row_blocks, P] buffer, feature gradients to the running
// thread's own copy of grad_mask_feats; both are summed at the end (no races, no atomics).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "dynamic_mask_head.h"

// The 32-byte vector values below live in this file only (internal linkage), so GCC's note that
// passing them by value has an AVX-dependent ABI does not apply.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

namespace idip {
namespace {

template <typename scalar_t>
struct HeadArgs {
  const scalar_t* feats;   // [B, Cf, H, W]
  const scalar_t* params;  // [N, P]
  const int64_t* im_inds;  // [N]
  const scalar_t* locations;  // [N, 2]
  const scalar_t* soi;     // [N]
  int64_t B, Cf, H, W, stride;
  bool rel_coords;
  const MaskHeadLayout* layout;

  int64_t image_of(int64_t n) const {
    const int64_t b = im_inds[n];
    TORCH_CHECK(b >= 0 && b < B, "dynamic_mask_head: im_inds[", n, "] = ", b,
                " is outside [0, ", B, ")");
    return b;
  }
};

// Weight gradients reduce over a row's pixels in GCC vector values (32 bytes: registers),
// kOutBlock inputs at a time.
constexpr int kOutBlock = 4;

template <typename scalar_t>
struct Lanes {
  typedef scalar_t vec __attribute__((vector_size(32)));
  static constexpr int kCount = 32 / sizeof(scalar_t);
  static vec load(const scalar_t* p) {
    vec v;
    std::memcpy(&v, p, sizeof(v));
    return v;
  }
  static void store(scalar_t* p, vec v) { std::memcpy(p, &v, sizeof(v)); }
  static vec splat(scalar_t s) { return vec{} + s; }
  static scalar_t sum(vec v) {
    scalar_t t = 0;
    for (int k = 0; k < kCount; ++k) t += v[k];
    return t;
  }
};

// gw[o * in + i] += sum_x g[o][x] * a[i][x] and gb[o] += sum_x g[o][x]: vector accumulators over
// the row, kOutBlock inputs at a time, reduced once at the end (fixed order: deterministic).
template <typename scalar_t>
void weight_grad_row(const scalar_t* g, const scalar_t* const* a, int64_t in, int64_t out,
                     int64_t W, scalar_t* gw, scalar_t* gb) {
  using L = Lanes<scalar_t>;
  using vec = typename L::vec;
  constexpr int V = L::kCount;
  const int64_t Wv = W - W % V;
  for (int64_t o = 0; o < out; ++o) {
    const scalar_t* go = g + o * W;
    vec bacc = vec{};
    for (int64_t x = 0; x < Wv; x += V) bacc += L::load(go + x);
    scalar_t bsum = L::sum(bacc);
    for (int64_t x = Wv; x < W; ++x) bsum += go[x];
    gb[o] += bsum;
    int64_t i0 = 0;
    for (; i0 + kOutBlock <= in; i0 += kOutBlock) {
      vec acc[kOutBlock] = {};
      for (int64_t x = 0; x < Wv; x += V) {
        const vec gv = L::load(go + x);
        for (int ib = 0; ib < kOutBlock; ++ib) acc[ib] += gv * L::load(a[i0 + ib] + x);
      }
      for (int ib = 0; ib < kOutBlock; ++ib) {
        scalar_t dot = L::sum(acc[ib]);
        for (int64_t x = Wv; x < W; ++x) dot += go[x] * a[i0 + ib][x];
        gw[o * in + i0 + ib] += dot;
      }
    }
    for (; i0 < in; ++i0) {
      vec acc = vec{};
      for (int64_t x = 0; x < Wv; x += V) acc += L::load(go + x) * L::load(a[i0] + x);
      scalar_t dot = L::sum(acc);
      for (int64_t x = Wv; x < W; ++x) dot += go[x] * a[i0][x];
      gw[o * in + i0] += dot;
    }
  }
}

// Per-thread scratch: the input rows of every layer, acts[l] = [in_l, W] (acts[0] holds the
// relative coordinates; the feature rows are read in place), and the output of the last layer.
template <typename scalar_t>
struct RowScratch {
  std::vector<std::vector<scalar_t>> acts;
  std::vector<scalar_t> out, grad, grad_prev;
  std::vector<const scalar_t*> rows;
  explicit RowScratch(const MaskHeadLayout& L, int64_t W) {
    const int64_t widest_in = std::max(L.in0, L.channels);
    rows.resize(widest_in);
    acts.resize(L.num_layers);
    for (int64_t l = 0; l < L.num_layers; ++l) acts[l].resize((l == 0 ? 2 : L.in(l)) * W);
    out.resize(W);
    const int64_t widest = std::max<int64_t>(L.channels, 1) * W;
    grad.resize(widest);
    grad_prev.resize(widest);
  }
};

// Returns the pointer to input row i of layer 0 (relative coordinates first, then features).
template <typename scalar_t>
inline const scalar_t* layer0_input(const HeadArgs<scalar_t>& args,
                                    const RowScratch<scalar_t>& s, int64_t b, int64_t y,
                                    int64_t i) {
  if (args.rel_coords) {
    if (i < 2) return s.acts[0].data() + i * args.W;
    i -= 2;
  }
  return args.feats + ((b * args.Cf + i) * args.H + y) * args.W;
}

// Runs the network for instance n on image row y; leaves every layer's input in s.acts and the
// logits in s.out.
template <typename scalar_t>
void forward_row(const HeadArgs<scalar_t>& args, RowScratch<scalar_t>& s, int64_t n,
                 int64_t b, int64_t y) {
  const MaskHeadLayout& L = *args.layout;
  const int64_t W = args.W;
  const scalar_t* p = args.params + n * L.num_params;
  if (args.rel_coords) {
    const scalar_t inv_soi = scalar_t(1) / args.soi[n];
    const scalar_t lx = args.locations[n * 2], ly = args.locations[n * 2 + 1];
    const int64_t half = args.stride / 2;
    scalar_t* rx = s.acts[0].data();
    scalar_t* ry = rx + W;
    const scalar_t ry_value = (ly - static_cast<scalar_t>(y * args.stride + half)) * inv_soi;
    for (int64_t x = 0; x < W; ++x) {
      rx[x] = (lx - static_cast<scalar_t>(x * args.stride + half)) * inv_soi;
      ry[x] = ry_value;
    }
  }
  for (int64_t l = 0; l < L.num_layers; ++l) {
    const int64_t in = L.in(l), out = L.out(l);
    const scalar_t* w = p + L.weight_offset(l);
    const scalar_t* bias = p + L.bias_offset(l);
    const bool last = l == L.num_layers - 1;
    scalar_t* dst = last ? s.out.data() : s.acts[l + 1].data();
    for (int64_t o = 0; o < out; ++o) {
      scalar_t* d = dst + o * W;
      const scalar_t bo = bias[o];
      for (int64_t x = 0; x < W; ++x) d[x] = bo;
      for (int64_t i = 0; i < in; ++i) {
        const scalar_t* src = l == 0 ? layer0_input(args, s, b, y, i) : s.acts[l].data() + i * W;
        const scalar_t wi = w[o * in + i];
        for (int64_t x = 0; x < W; ++x) d[x] += wi * src[x];
      }
      if (!last) {
        for (int64_t x = 0; x < W; ++x) d[x] = d[x] > scalar_t(0) ? d[x] : scalar_t(0);
      }
    }
  }
}

template <typename scalar_t>
void dynamic_mask_head_forward_kernel(const HeadArgs<scalar_t>& args, int64_t N,
                                      scalar_t* logits) {
  const int64_t H = args.H, W = args.W;
  at::parallel_for(0, N * H, 4, [&](int64_t begin, int64_t end) {
    RowScratch<scalar_t> s(*args.layout, W);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t n = item / H, y = item % H;
      forward_row(args, s, n, args.image_of(n), y);
      std::copy(s.out.begin(), s.out.end(), logits + item * W);
    }
  });
}

// Backward of one row: recompute, then walk the layers down. grad_params_row is [P] (added to),
// grad_feats is the running thread's [B, Cf, H, W] copy (added to).
template <typename scalar_t>
void backward_row(const HeadArgs<scalar_t>& args, RowScratch<scalar_t>& s,
                  const scalar_t* g_out, int64_t n, int64_t b, int64_t y,
                  scalar_t* grad_params_row, scalar_t* grad_feats) {
  const MaskHeadLayout& L = *args.layout;
  const int64_t W = args.W;
  const scalar_t* p = args.params + n * L.num_params;
  forward_row(args, s, n, b, y);
  std::copy(g_out, g_out + W, s.grad.begin());
  for (int64_t l = L.num_layers - 1; l >= 0; --l) {
    const int64_t in = L.in(l), out = L.out(l);
    const scalar_t* w = p + L.weight_offset(l);
    scalar_t* gw = grad_params_row + L.weight_offset(l);
    scalar_t* gb = grad_params_row + L.bias_offset(l);
    const scalar_t* g = s.grad.data();
    const scalar_t** rows = s.rows.data();
    for (int64_t i = 0; i < in; ++i) {
      rows[i] = l == 0 ? layer0_input(args, s, b, y, i) : s.acts[l].data() + i * W;
    }
    weight_grad_row(g, rows, in, out, W, gw, gb);
    if (l > 0) {
      scalar_t* gp = s.grad_prev.data();
      const scalar_t* a = s.acts[l].data();
      for (int64_t i = 0; i < in; ++i) {
        scalar_t* gi = gp + i * W;
        for (int64_t x = 0; x < W; ++x) gi[x] = 0;
        for (int64_t o = 0; o < out; ++o) {
          const scalar_t wi = w[o * in + i];
          const scalar_t* go = g + o * W;
          for (int64_t x = 0; x < W; ++x) gi[x] += wi * go[x];
        }
        // ReLU: a is the post-activation, a > 0 exactly where the pre-activation was > 0.
        const scalar_t* ai = a + i * W;
        for (int64_t x = 0; x < W; ++x) gi[x] = ai[x] > scalar_t(0) ? gi[x] : scalar_t(0);
      }
      std::swap(s.grad, s.grad_prev);
    } else {
      const int64_t first_feat = args.rel_coords ? 2 : 0;
      for (int64_t c = 0; c < args.Cf; ++c) {
        scalar_t* gf = grad_feats + ((b * args.Cf + c) * args.H + y) * W;
        for (int64_t o = 0; o < out; ++o) {
          const scalar_t wi = w[o * in + first_feat + c];
          const scalar_t* go = g + o * W;
          for (int64_t x = 0; x < W; ++x) gf[x] += wi * go[x];
        }
      }
    }
  }
}

template <typename scalar_t>
void dynamic_mask_head_backward_kernel(const HeadArgs<scalar_t>& args, int64_t N,
                                       const scalar_t* grad, int64_t row_blocks,
                                       scalar_t* grad_params_partial,
                                       scalar_t* grad_feats_copies) {
  const int64_t H = args.H, W = args.W, P = args.layout->num_params;
  const int64_t feats_numel = args.B * args.Cf * H * W;
  const int64_t rows_per_block = (H + row_blocks - 1) / row_blocks;
  at::parallel_for(0, N * row_blocks, 1, [&](int64_t begin, int64_t end) {
    RowScratch<scalar_t> s(*args.layout, W);
    scalar_t* grad_feats = grad_feats_copies + at::get_thread_num() * feats_numel;
    for (int64_t item = begin; item < end; ++item) {
      const int64_t n = item / row_blocks, block = item % row_blocks;
      const int64_t b = args.image_of(n);
      scalar_t* gp = grad_params_partial + item * P;
      const int64_t y_end = std::min(H, (block + 1) * rows_per_block);
      for (int64_t y = block * rows_per_block; y < y_end; ++y) {
        backward_row(args, s, grad + (n * H + y) * W, n, b, y, gp, grad_feats);
      }
    }
  });
}

template <typename scalar_t>
HeadArgs<scalar_t> make_args(const at::Tensor& feats, const at::Tensor& params,
                             const at::Tensor& im_inds, const at::Tensor& locations,
                             const at::Tensor& soi, int64_t stride, bool rel_coords,
                             const MaskHeadLayout& layout) {
  HeadArgs<scalar_t> args;
  args.feats = feats.data_ptr<scalar_t>();
  args.params = params.data_ptr<scalar_t>();
  args.im_inds = im_inds.data_ptr<int64_t>();
  args.locations = locations.data_ptr<scalar_t>();
  args.soi = soi.data_ptr<scalar_t>();
  args.B = feats.size(0);
  args.Cf = feats.size(1);
  args.H = feats.size(2);
  args.W = feats.size(3);
  args.stride = stride;
  args.rel_coords = rel_coords;
  args.layout = &layout;
  return args;
}

struct Inputs {
  at::Tensor feats, params, im_inds, locations, soi;
};

// float16/bfloat16 inputs run in float32 (converted once on the way in and out), as on CUDA
// where they accumulate in float32.
Inputs contiguous_inputs(const at::Tensor& mask_feats, const at::Tensor& params,
                         const at::Tensor& im_inds, const at::Tensor& locations,
                         const at::Tensor& soi) {
  const auto t = mask_feats.scalar_type();
  TORCH_CHECK(t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16,
              "dynamic_mask_head: mask_feats must be a floating-point tensor, got ", t);
  const auto dtype = (t == at::kHalf || t == at::kBFloat16) ? at::kFloat : t;
  return {mask_feats.to(dtype).contiguous(), params.to(dtype).contiguous(),
          im_inds.to(at::kLong).contiguous(), locations.to(dtype).contiguous(),
          soi.to(dtype).contiguous()};
}

at::Tensor dynamic_mask_head_cpu(const at::Tensor& mask_feats, const at::Tensor& params,
                                 const at::Tensor& im_inds, const at::Tensor& locations,
                                 const at::Tensor& soi, int64_t mask_stride, int64_t channels,
                                 int64_t num_layers, bool rel_coords) {
  const MaskHeadLayout layout = check_dynamic_mask_head_args(
      "dynamic_mask_head", mask_feats, params, im_inds, locations, soi, mask_stride, channels,
      num_layers, rel_coords);
  const Inputs in = contiguous_inputs(mask_feats, params, im_inds, locations, soi);
  const int64_t N = params.size(0), H = mask_feats.size(2), W = mask_feats.size(3);
  auto logits = at::empty({N, 1, H, W}, in.feats.options());
  if (logits.numel() == 0) return logits.to(mask_feats.scalar_type());
  AT_DISPATCH_FLOATING_TYPES(in.feats.scalar_type(), "dynamic_mask_head_cpu", [&] {
    const auto args = make_args<scalar_t>(in.feats, in.params, in.im_inds, in.locations, in.soi,
                                          mask_stride, rel_coords, layout);
    dynamic_mask_head_forward_kernel<scalar_t>(args, N, logits.data_ptr<scalar_t>());
  });
  return logits.to(mask_feats.scalar_type());
}

std::tuple<at::Tensor, at::Tensor> dynamic_mask_head_backward_cpu(
    const at::Tensor& grad, const at::Tensor& mask_feats, const at::Tensor& params,
    const at::Tensor& im_inds, const at::Tensor& locations, const at::Tensor& soi,
    int64_t mask_stride, int64_t channels, int64_t num_layers, bool rel_coords) {
  const MaskHeadLayout layout = check_dynamic_mask_head_args(
      "dynamic_mask_head_backward", mask_feats, params, im_inds, locations, soi, mask_stride,
      channels, num_layers, rel_coords);
  const int64_t N = params.size(0), B = mask_feats.size(0), Cf = mask_feats.size(1),
                H = mask_feats.size(2), W = mask_feats.size(3);
  TORCH_CHECK(grad.dim() == 4 && grad.size(0) == N && grad.size(1) == 1 && grad.size(2) == H &&
                  grad.size(3) == W,
              "dynamic_mask_head_backward: grad must be [N, 1, H, W] = [", N, ", 1, ", H, ", ", W,
              "], got ", grad.sizes());
  TORCH_CHECK(grad.scalar_type() == mask_feats.scalar_type(),
              "dynamic_mask_head_backward: grad must have the dtype of mask_feats");
  const Inputs in = contiguous_inputs(mask_feats, params, im_inds, locations, soi);
  if (N == 0 || H * W == 0) {
    return {at::zeros_like(mask_feats, at::MemoryFormat::Contiguous),
            at::zeros_like(params, at::MemoryFormat::Contiguous)};
  }
  auto g = grad.to(in.feats.scalar_type()).contiguous();
  // Enough items for load balance, few enough that the partial parameter gradients stay small.
  const int64_t threads = at::get_num_threads();
  const int64_t row_blocks = std::min<int64_t>(H, std::max<int64_t>(1, (4 * threads + N - 1) / N));
  auto grad_params_partial = at::zeros({N, row_blocks, layout.num_params}, in.params.options());
  auto grad_feats_copies = at::zeros({threads, B, Cf, H, W}, in.feats.options());
  AT_DISPATCH_FLOATING_TYPES(in.feats.scalar_type(), "dynamic_mask_head_backward_cpu", [&] {
    const auto args = make_args<scalar_t>(in.feats, in.params, in.im_inds, in.locations, in.soi,
                                          mask_stride, rel_coords, layout);
    dynamic_mask_head_backward_kernel<scalar_t>(args, N, g.data_ptr<scalar_t>(), row_blocks,
                                                grad_params_partial.data_ptr<scalar_t>(),
                                                grad_feats_copies.data_ptr<scalar_t>());
  });
  auto grad_feats = threads == 1 ? grad_feats_copies[0] : grad_feats_copies.sum(0);
  auto grad_params = row_blocks == 1 ? grad_params_partial.select(1, 0).contiguous()
                                     : grad_params_partial.sum(1);
  return {grad_feats.to(mask_feats.scalar_type()), grad_params.to(params.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(idip, CPU, m) {
  m.impl("dynamic_mask_head", &dynamic_mask_head_cpu);
  m.impl("dynamic_mask_head_backward", &dynamic_mask_head_backward_cpu);
}

}  // namespace idip
