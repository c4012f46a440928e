// box_ddim_step on CUDA: one block per image, one launch, no host synchronisation.
//
// The block walks its image's N rows in chunks of blockDim.x. In each chunk a warp ballot gives
// every kept row its rank among the chunk's kept rows; adding the kept count of the earlier
// chunks gives its output row, so the kept rows land, in order, at the front. The rows after the
// image's kept count are then filled from renew.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include "compat.h"

#include <limits>

#include "box_diffusion.h"

namespace idip {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    box_ddim_step_kernel(const scalar_t* __restrict__ x_t, const scalar_t* __restrict__ pred_boxes,
                         const scalar_t* __restrict__ image_size, const bool* __restrict__ keep,
                         const scalar_t* __restrict__ noise, const scalar_t* __restrict__ renew,
                         at::opmath_type<scalar_t> sa, at::opmath_type<scalar_t> s1a,
                         at::opmath_type<scalar_t> sa_next, at::opmath_type<scalar_t> c,
                         at::opmath_type<scalar_t> sigma, scalar_t* __restrict__ x_next,
                         scalar_t* __restrict__ boxes_next, int64_t N) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ int warp_kept[kWarps];
  const int64_t b = blockIdx.x;
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const unsigned lanes_below = (1u << lane) - 1u;
  const scalar_t* size_b = image_size + b * 4;
  const int64_t base = b * N;

  int64_t kept_before = 0;  // kept rows in the chunks already processed (same in every thread)
  for (int64_t start = 0; start < N; start += kThreads) {
    const int64_t n = start + threadIdx.x;
    const bool is_kept = n < N && keep[base + n];
    const unsigned ballot = __ballot_sync(0xffffffffu, is_kept);
    if (lane == 0) warp_kept[warp] = __popc(ballot);
    __syncthreads();
    int rank = __popc(ballot & lanes_below);
    int chunk_kept = 0;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) {
      const int count = warp_kept[w];
      rank += w < warp ? count : 0;
      chunk_kept += count;
    }
    if (is_kept) {
      const int64_t src = (base + n) * 4;
      const int64_t dst = (base + kept_before + rank) * 4;
      acc_t x0[4];
      box_abs_to_signal(pred_boxes + src, size_b, x0);
      acc_t x[4];
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const acc_t eps = (static_cast<acc_t>(x_t[src + j]) - sa * x0[j]) / s1a;
        x[j] = sa_next * x0[j] + c * eps + sigma * static_cast<acc_t>(noise[src + j]);
        x_next[dst + j] = static_cast<scalar_t>(x[j]);
      }
      box_to_abs(x, size_b, boxes_next + dst);
    }
    kept_before += chunk_kept;
    __syncthreads();  // warp_kept is rewritten by the next chunk
  }

  for (int64_t n = kept_before + threadIdx.x; n < N; n += kThreads) {
    const int64_t src = (base + n - kept_before) * 4;
    const int64_t dst = (base + n) * 4;
    acc_t x[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const scalar_t v = renew[src + j];
      x_next[dst + j] = v;
      x[j] = static_cast<acc_t>(v);
    }
    box_to_abs(x, size_b, boxes_next + dst);
  }
}

std::tuple<at::Tensor, at::Tensor> box_ddim_step_cuda(const at::Tensor& x_t,
                                                      const at::Tensor& pred_boxes,
                                                      const at::Tensor& image_size, double alpha,
                                                      double alpha_next, double eta,
                                                      const at::Tensor& keep,
                                                      const at::Tensor& noise,
                                                      const at::Tensor& renew) {
  check_box_ddim_step_args(x_t, pred_boxes, image_size, keep, noise, renew);
  const DdimCoefficients k = ddim_coefficients(alpha, alpha_next, eta);
  gpu::DeviceGuard guard(x_t.device());
  auto xt = x_t.contiguous();
  auto pb = pred_boxes.contiguous();
  auto sz = image_size.contiguous();
  auto kp = keep.contiguous();
  auto nz = noise.contiguous();
  auto rn = renew.contiguous();
  auto x_next = at::empty_like(xt);
  auto boxes_next = at::empty_like(xt);
  const int64_t B = xt.size(0), N = xt.size(1);
  if (B == 0 || N == 0) return {x_next, boxes_next};
  TORCH_CHECK(B <= std::numeric_limits<int32_t>::max(), "box_ddim_step: too many images (", B, ")");
  const auto stream = gpu::current_stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, xt.scalar_type(), "box_ddim_step_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    IDIP_LAUNCH_KERNEL(box_ddim_step_kernel<scalar_t>, static_cast<unsigned>(B), kThreads, 0,
        stream,
        xt.data_ptr<scalar_t>(), pb.data_ptr<scalar_t>(), sz.data_ptr<scalar_t>(),
        kp.data_ptr<bool>(), nz.data_ptr<scalar_t>(), rn.data_ptr<scalar_t>(),
        static_cast<acc_t>(k.sqrt_alpha), static_cast<acc_t>(k.sqrt_one_minus_alpha),
        static_cast<acc_t>(k.sqrt_alpha_next), static_cast<acc_t>(k.c),
        static_cast<acc_t>(k.sigma), x_next.data_ptr<scalar_t>(), boxes_next.data_ptr<scalar_t>(),
        N);
    IDIP_KERNEL_LAUNCH_CHECK();
  });
  return {x_next, boxes_next};
}

}  // namespace

IDIP_CUDA_KERNELS(m) { m.impl("box_ddim_step", &box_ddim_step_cuda); }

}  // namespace idip
