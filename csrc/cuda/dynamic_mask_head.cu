// dynamic_mask_head on CUDA: CondInst's per-instance 1x1-conv network, fused.
//
// Grid: x = pixel tiles of one thread per pixel, y = instances (grid-stride). The instance's
// parameters are staged in shared memory (in the accumulation type); each thread runs the whole
// network for its pixel in registers (hidden width templated on MAXC >= channels, so the
// activation arrays are indexed only by unrolled constants). Nothing of size N x C x H x W exists.
//
// Backward: each thread recomputes the activations it needs (the input of layer l is rebuilt
// from the pixel's input vector, which costs a few hundred FLOPs and keeps everything in
// registers), walks the layers down, reduces the parameter gradients over the block with warp
// shuffles into shared memory and adds them to a float accumulator with one atomic per parameter
// per block; feature gradients are atomically added (in float) because instances of one image
// share them. half/bfloat16 inputs are read as float and all arithmetic is float.
#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include "compat.h"

#include "dynamic_mask_head.h"

namespace idip {
namespace {

constexpr int kThreads = 256;
constexpr int kMaxGridY = 65535;

// What a kernel needs to know of the network: an int copy of the host's MaskHeadLayout.
using Net = MaskHeadLayoutOf<int>;

template <typename scalar_t>
struct HeadArgs {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* feats;    // [B, Cf, H, W]
  const scalar_t* params;   // [N, P]
  const int64_t* im_inds;   // [N]
  const acc_t* locations;   // [N, 2]
  const acc_t* soi;         // [N]
  int64_t N, B, Cf, H, W, stride;
  bool rel_coords;
  Net net;
};

// Reads input i of layer 0 for this pixel: relative x, relative y, then the features.
template <typename scalar_t>
__device__ __forceinline__ at::opmath_type<scalar_t> layer0_input(const HeadArgs<scalar_t>& a,
                                                                  int64_t b, int64_t pix, int i,
                                                                  at::opmath_type<scalar_t> rx,
                                                                  at::opmath_type<scalar_t> ry) {
  if (a.rel_coords) {
    if (i == 0) return rx;
    if (i == 1) return ry;
    i -= 2;
  }
  return static_cast<at::opmath_type<scalar_t>>(a.feats[(b * a.Cf + i) * a.H * a.W + pix]);
}

// Pre-activation of layer 0 (outputs beyond out(0) are zero).
template <typename scalar_t, int MAXC>
__device__ __forceinline__ void layer0(const HeadArgs<scalar_t>& a,
                                       const at::opmath_type<scalar_t>* p, int64_t b, int64_t pix,
                                       at::opmath_type<scalar_t> rx, at::opmath_type<scalar_t> ry,
                                       at::opmath_type<scalar_t> (&h)[MAXC]) {
  const Net& net = a.net;
  const int out = net.out(0), in = net.in0;
  const auto* w = p + net.weight_offset(0);
  const auto* bias = p + net.bias_offset(0);
#pragma unroll
  for (int o = 0; o < MAXC; ++o) h[o] = o < out ? bias[o] : 0;
  for (int i = 0; i < in; ++i) {
    const auto v = layer0_input(a, b, pix, i, rx, ry);
#pragma unroll
    for (int o = 0; o < MAXC; ++o) {
      if (o < out) h[o] += w[o * in + i] * v;
    }
  }
}

// Pre-activation of layer l >= 1 from its (post-ReLU) input x.
template <typename acc_t, int MAXC>
__device__ __forceinline__ void dense(const Net& net, const acc_t* p, int l, const acc_t (&x)[MAXC],
                                      acc_t (&h)[MAXC]) {
  const int out = net.out(l), in = net.in(l);
  const acc_t* w = p + net.weight_offset(l);
  const acc_t* bias = p + net.bias_offset(l);
#pragma unroll
  for (int o = 0; o < MAXC; ++o) {
    acc_t s = o < out ? bias[o] : acc_t(0);
#pragma unroll
    for (int i = 0; i < MAXC; ++i) {
      if (o < out && i < in) s += w[o * in + i] * x[i];
    }
    h[o] = s;
  }
}

template <typename acc_t, int MAXC>
__device__ __forceinline__ void relu(acc_t (&h)[MAXC]) {
#pragma unroll
  for (int o = 0; o < MAXC; ++o) h[o] = h[o] > acc_t(0) ? h[o] : acc_t(0);
}

// The input of layer k >= 1 (post-ReLU output of layer k-1), or for k == num_layers the logit
// in h[0] (no ReLU after the last layer).
template <typename scalar_t, int MAXC>
__device__ __forceinline__ void forward_to(const HeadArgs<scalar_t>& a,
                                           const at::opmath_type<scalar_t>* p, int k, int64_t b,
                                           int64_t pix, at::opmath_type<scalar_t> rx,
                                           at::opmath_type<scalar_t> ry,
                                           at::opmath_type<scalar_t> (&h)[MAXC]) {
  using acc_t = at::opmath_type<scalar_t>;
  const int L = a.net.num_layers;
  layer0<scalar_t, MAXC>(a, p, b, pix, rx, ry, h);
  if (L > 1) relu<acc_t, MAXC>(h);
  acc_t t[MAXC];
  for (int l = 1; l < k; ++l) {
    dense<acc_t, MAXC>(a.net, p, l, h, t);
    if (l < L - 1) relu<acc_t, MAXC>(t);
#pragma unroll
    for (int o = 0; o < MAXC; ++o) h[o] = t[o];
  }
}

template <typename scalar_t>
__device__ __forceinline__ void relative_coords(const HeadArgs<scalar_t>& a, int64_t n,
                                                int64_t pix, at::opmath_type<scalar_t>* rx,
                                                at::opmath_type<scalar_t>* ry) {
  using acc_t = at::opmath_type<scalar_t>;
  *rx = 0;
  *ry = 0;
  if (!a.rel_coords) return;
  const int64_t x = pix % a.W, y = pix / a.W, half = a.stride / 2;
  const acc_t inv_soi = acc_t(1) / a.soi[n];
  *rx = (a.locations[2 * n] - static_cast<acc_t>(x * a.stride + half)) * inv_soi;
  *ry = (a.locations[2 * n + 1] - static_cast<acc_t>(y * a.stride + half)) * inv_soi;
}

template <typename acc_t, typename scalar_t>
__device__ __forceinline__ void stage_params(const Net& net, const scalar_t* params, int64_t n,
                                             acc_t* sp) {
  for (int j = threadIdx.x; j < net.num_params; j += blockDim.x) {
    sp[j] = static_cast<acc_t>(params[n * net.num_params + j]);
  }
}

template <typename scalar_t, int MAXC>
__global__ void __launch_bounds__(kThreads) dynamic_mask_head_forward_kernel(
    HeadArgs<scalar_t> a, scalar_t* __restrict__ logits) {
  using acc_t = at::opmath_type<scalar_t>;
  IDIP_DYNAMIC_SHARED(unsigned char, smem_raw);
  acc_t* sp = reinterpret_cast<acc_t*>(smem_raw);
  const int64_t HW = a.H * a.W;
  const int64_t pix = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  for (int64_t n = blockIdx.y; n < a.N; n += gridDim.y) {
    __syncthreads();
    stage_params<acc_t>(a.net, a.params, n, sp);
    __syncthreads();
    if (pix >= HW) continue;
    const int64_t b = a.im_inds[n];
    IDIP_KERNEL_ASSERT(b >= 0 && b < a.B);
    acc_t rx, ry, h[MAXC];
    relative_coords(a, n, pix, &rx, &ry);
    forward_to<scalar_t, MAXC>(a, sp, a.net.num_layers, b, pix, rx, ry, h);
    logits[n * HW + pix] = static_cast<scalar_t>(h[0]);
  }
}

// Sum of v over the warp, added by lane 0 to *dst (shared memory).
template <typename acc_t>
__device__ __forceinline__ void warp_sum_into(acc_t v, acc_t* dst) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
  if ((threadIdx.x & 31) == 0 && v != acc_t(0)) atomicAdd(dst, v);
}

template <typename scalar_t, int MAXC>
__global__ void __launch_bounds__(kThreads) dynamic_mask_head_backward_kernel(
    HeadArgs<scalar_t> a, const scalar_t* __restrict__ grad,
    at::opmath_type<scalar_t>* __restrict__ grad_feats,
    at::opmath_type<scalar_t>* __restrict__ grad_params) {
  using acc_t = at::opmath_type<scalar_t>;
  IDIP_DYNAMIC_SHARED(unsigned char, smem_raw);
  const Net& net = a.net;
  acc_t* sp = reinterpret_cast<acc_t*>(smem_raw);
  acc_t* sg = sp + net.num_params;
  const int64_t HW = a.H * a.W;
  const int64_t pix_raw = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  const bool valid = pix_raw < HW;
  const int64_t pix = valid ? pix_raw : 0;  // inactive threads still join the warp reductions
  const int L = net.num_layers;
  for (int64_t n = blockIdx.y; n < a.N; n += gridDim.y) {
    __syncthreads();
    stage_params<acc_t>(net, a.params, n, sp);
    for (int j = threadIdx.x; j < net.num_params; j += blockDim.x) sg[j] = 0;
    __syncthreads();
    const int64_t b = a.im_inds[n];
    IDIP_KERNEL_ASSERT(b >= 0 && b < a.B);
    acc_t rx, ry;
    relative_coords(a, n, pix, &rx, &ry);
    acc_t g[MAXC], x[MAXC], t[MAXC];
#pragma unroll
    for (int o = 0; o < MAXC; ++o) g[o] = 0;
    g[0] = valid ? static_cast<acc_t>(grad[n * HW + pix]) : acc_t(0);
    for (int l = L - 1; l >= 1; --l) {
      forward_to<scalar_t, MAXC>(a, sp, l, b, pix, rx, ry, x);
      const int out = net.out(l), in = net.in(l);
      const acc_t* w = sp + net.weight_offset(l);
      acc_t* gw = sg + net.weight_offset(l);
      acc_t* gb = sg + net.bias_offset(l);
#pragma unroll
      for (int o = 0; o < MAXC; ++o) {
        if (o < out) {
          warp_sum_into(g[o], gb + o);
#pragma unroll
          for (int i = 0; i < MAXC; ++i) {
            if (i < in) warp_sum_into(g[o] * x[i], gw + o * in + i);
          }
        }
      }
#pragma unroll
      for (int i = 0; i < MAXC; ++i) {
        acc_t s = 0;
#pragma unroll
        for (int o = 0; o < MAXC; ++o) {
          if (o < out && i < in) s += w[o * in + i] * g[o];
        }
        t[i] = x[i] > acc_t(0) ? s : acc_t(0);
      }
#pragma unroll
      for (int i = 0; i < MAXC; ++i) g[i] = t[i];
    }
    {
      const int out = net.out(0), in = net.in0;
      const acc_t* w = sp;
      acc_t* gb = sg + net.bias_offset(0);
#pragma unroll
      for (int o = 0; o < MAXC; ++o) {
        if (o < out) warp_sum_into(g[o], gb + o);
      }
      const int first_feat = a.rel_coords ? 2 : 0;
      for (int i = 0; i < in; ++i) {
        const acc_t v = layer0_input(a, b, pix, i, rx, ry);
        acc_t gi = 0;
#pragma unroll
        for (int o = 0; o < MAXC; ++o) {
          if (o < out) {
            warp_sum_into(g[o] * v, sg + o * in + i);
            gi += w[o * in + i] * g[o];
          }
        }
        if (valid && i >= first_feat) {
          atomicAdd(grad_feats + (b * a.Cf + (i - first_feat)) * HW + pix, gi);
        }
      }
    }
    __syncthreads();
    for (int j = threadIdx.x; j < net.num_params; j += blockDim.x) {
      if (sg[j] != acc_t(0)) atomicAdd(grad_params + n * net.num_params + j, sg[j]);
    }
  }
}

struct Prepared {
  at::Tensor feats, params, im_inds, locations, soi;
  MaskHeadLayout layout;
};

Prepared prepare(const char* op, const at::Tensor& mask_feats, const at::Tensor& params,
                 const at::Tensor& im_inds, const at::Tensor& locations, const at::Tensor& soi,
                 int64_t mask_stride, int64_t channels, int64_t num_layers, bool rel_coords) {
  MaskHeadLayout layout = check_dynamic_mask_head_args(op, mask_feats, params, im_inds, locations,
                                                       soi, mask_stride, channels, num_layers,
                                                       rel_coords);
  TORCH_CHECK(channels <= 32, op, ": the CUDA kernel supports channels <= 32, got ", channels);
  const auto acc = mask_feats.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  return {mask_feats.contiguous(), params.contiguous(), im_inds.to(at::kLong).contiguous(),
          locations.to(acc).contiguous(), soi.to(acc).contiguous(), std::move(layout)};
}

template <typename scalar_t>
HeadArgs<scalar_t> make_args(const Prepared& p, int64_t mask_stride, bool rel_coords) {
  using acc_t = at::opmath_type<scalar_t>;
  HeadArgs<scalar_t> a;
  a.feats = p.feats.data_ptr<scalar_t>();
  a.params = p.params.data_ptr<scalar_t>();
  a.im_inds = p.im_inds.data_ptr<int64_t>();
  a.locations = p.locations.data_ptr<acc_t>();
  a.soi = p.soi.data_ptr<acc_t>();
  a.N = p.params.size(0);
  a.B = p.feats.size(0);
  a.Cf = p.feats.size(1);
  a.H = p.feats.size(2);
  a.W = p.feats.size(3);
  a.stride = mask_stride;
  a.rel_coords = rel_coords;
  a.net = p.layout.as<int>();
  return a;
}

// Calls fn(std::integral_constant<int, MAXC>) with the smallest MAXC in {8, 16, 32} >= channels.
template <typename Fn>
void dispatch_width(int64_t channels, Fn&& fn) {
  if (channels <= 8) {
    fn(std::integral_constant<int, 8>());
  } else if (channels <= 16) {
    fn(std::integral_constant<int, 16>());
  } else {
    fn(std::integral_constant<int, 32>());
  }
}

// The parameters (and, backward, their gradients) of one instance live in dynamic shared memory:
// past the 48 KiB every block gets, the kernel opts in, up to what the device allows.
template <typename Kernel>
void reserve_shared_memory(const char* op, Kernel kernel, size_t bytes, const Prepared& p) {
  constexpr size_t kDefaultBytes = 48 * 1024;
  if (bytes <= kDefaultBytes) return;
  const size_t limit = gpu::max_optin_shared_bytes();
  TORCH_CHECK(bytes <= limit, op, ": ", p.layout.num_params, " parameters per instance (",
              p.feats.size(1), " mask channels, channels=", p.layout.channels, ", num_layers=",
              p.layout.num_layers, ", ", p.feats.scalar_type(), ") need ", bytes,
              " bytes of shared memory per block, more than the ", limit,
              " this GPU allows; use fewer mask channels or a narrower network");
  gpu::set_max_dynamic_shared(kernel, bytes);
}

dim3 head_grid(int64_t HW, int64_t N) {
  return dim3(static_cast<unsigned>((HW + kThreads - 1) / kThreads),
              static_cast<unsigned>(std::min<int64_t>(N, kMaxGridY)));
}

at::Tensor dynamic_mask_head_cuda(const at::Tensor& mask_feats, const at::Tensor& params,
                                  const at::Tensor& im_inds, const at::Tensor& locations,
                                  const at::Tensor& soi, int64_t mask_stride, int64_t channels,
                                  int64_t num_layers, bool rel_coords) {
  gpu::DeviceGuard guard(mask_feats.device());
  const Prepared p = prepare("dynamic_mask_head", mask_feats, params, im_inds, locations, soi,
                             mask_stride, channels, num_layers, rel_coords);
  const int64_t N = p.params.size(0), H = p.feats.size(2), W = p.feats.size(3);
  auto logits = at::empty({N, 1, H, W}, p.feats.options());
  if (logits.numel() == 0) return logits;
  const auto stream = gpu::current_stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.feats.scalar_type(),
                                  "dynamic_mask_head_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto args = make_args<scalar_t>(p, mask_stride, rel_coords);
    const size_t smem = p.layout.num_params * sizeof(acc_t);
    dispatch_width(channels, [&](auto width) {
      const auto forward_kernel =
          dynamic_mask_head_forward_kernel<scalar_t, decltype(width)::value>;
      reserve_shared_memory("dynamic_mask_head", forward_kernel, smem, p);
      IDIP_LAUNCH_KERNEL(forward_kernel, head_grid(H * W, N), kThreads, smem, stream, args,
                         logits.data_ptr<scalar_t>());
      IDIP_KERNEL_LAUNCH_CHECK();
    });
  });
  return logits;
}

std::tuple<at::Tensor, at::Tensor> dynamic_mask_head_backward_cuda(
    const at::Tensor& grad, const at::Tensor& mask_feats, const at::Tensor& params,
    const at::Tensor& im_inds, const at::Tensor& locations, const at::Tensor& soi,
    int64_t mask_stride, int64_t channels, int64_t num_layers, bool rel_coords) {
  gpu::DeviceGuard guard(mask_feats.device());
  const Prepared p = prepare("dynamic_mask_head_backward", mask_feats, params, im_inds, locations,
                             soi, mask_stride, channels, num_layers, rel_coords);
  const int64_t N = p.params.size(0), H = p.feats.size(2), W = p.feats.size(3);
  TORCH_CHECK(grad.dim() == 4 && grad.size(0) == N && grad.size(1) == 1 && grad.size(2) == H &&
                  grad.size(3) == W,
              "dynamic_mask_head_backward: grad must be [N, 1, H, W] = [", N, ", 1, ", H, ", ", W,
              "], got ", grad.sizes());
  TORCH_CHECK(grad.scalar_type() == mask_feats.scalar_type() && grad.device() == mask_feats.device(),
              "dynamic_mask_head_backward: grad must have the dtype and device of mask_feats");
  const auto acc = p.feats.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  auto grad_feats = at::zeros(p.feats.sizes(), p.feats.options().dtype(acc));
  auto grad_params = at::zeros(p.params.sizes(), p.params.options().dtype(acc));
  if (N > 0 && H * W > 0) {
    // Feature gradients are summed over the instances of an image, and parameter gradients over
    // the blocks of an instance, with float atomics: the order of the sums varies run to run.
    at::globalContext().alertNotDeterministic("idip::dynamic_mask_head_backward (CUDA)");
    auto g = grad.contiguous();
    const auto stream = gpu::current_stream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.feats.scalar_type(),
                                    "dynamic_mask_head_backward_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const auto args = make_args<scalar_t>(p, mask_stride, rel_coords);
      const size_t smem = 2 * p.layout.num_params * sizeof(acc_t);
      dispatch_width(channels, [&](auto width) {
        const auto backward_kernel =
            dynamic_mask_head_backward_kernel<scalar_t, decltype(width)::value>;
        reserve_shared_memory("dynamic_mask_head_backward", backward_kernel, smem, p);
        IDIP_LAUNCH_KERNEL(backward_kernel, head_grid(H * W, N), kThreads, smem, stream, args,
                           g.data_ptr<scalar_t>(), grad_feats.data_ptr<acc_t>(),
                           grad_params.data_ptr<acc_t>());
        IDIP_KERNEL_LAUNCH_CHECK();
      });
    });
  }
  return {grad_feats.to(p.feats.scalar_type()), grad_params.to(p.params.scalar_type())};
}

}  // namespace

IDIP_CUDA_KERNELS(m) {
  m.impl("dynamic_mask_head", &dynamic_mask_head_cuda);
  m.impl("dynamic_mask_head_backward", &dynamic_mask_head_backward_cuda);
}

}  // namespace idip
