// One pass over a tensor for each direction of a learned-step quantizer (LSQ's and DQ's).
//
// TfadaqatGridQuantize(inputs x, step s, clip_low, clip_high, integer_low, integer_high) returns
//   q = s * min(max(floor(min(max(x, clip_low), clip_high) / s + 1/2), integer_low), integer_high)
// with the float operations of the TensorFlow-op formula in tfadaqat/ops.py, in the same order
// (built with -ffp-contract=off), so both give the same bits. LSQ clamps the integer (clip bounds
// infinite), DQ clamps x (integer bounds infinite).
//
// TfadaqatQuantizerGradient(upstream g, inputs x, outputs q, low, high) returns
//   input_gradient      g where low <= x <= high, else 0          (straight-through estimator)
//   inside_error_sum    sum of g * (q - x) where low <= x <= high (LSQ's and DQ's step gradient,
//                                                                  times the step)
//   below_sum           sum of g where x < low
//   above_sum           sum of g where x > high
// With nudge = true, low and high are first moved the way TensorFlow's FakeQuantWithMinMaxVars
// moves them (so that zero lies on the grid of num_bits bits, narrow_range or not), which makes
// the mask the one of FakeQuantWithMinMaxVarsGradient. The pure-TensorFlow path computes the same
// with four passes over the tensor (tfadaqat/ops.py); this kernel reads g, x and q once.
//
// TfadaqatFakeQuantize(inputs, low, high, num_bits) and its gradient are TensorFlow's
// FakeQuantWithMinMaxVars and FakeQuantWithMinMaxVarsGradient with the bit-width as an int32
// tensor instead of an attribute: the same functors (fake_quant_ops_functor.h) with the same
// arguments, so the same bits. AdaQAT's activations learn their bit-width; with the attribute,
// a tensor bit-width needs a tf.switch_case over one kernel per bit-width in each direction.
//
// Sums are added in float over runs of 1,024 elements (vectorized), the runs in double over fixed
// blocks of the flattened tensor, and the blocks in order, so the result does not depend on the
// number of threads.

#define EIGEN_USE_THREADS  // the FakeQuant functors run on Eigen::ThreadPoolDevice

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/kernels/fake_quant_ops_functor.h"
#include "tensorflow/core/lib/core/threadpool.h"

namespace tfadaqat {
namespace {

using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Tensor;
using ::tensorflow::TensorShape;

constexpr int64_t kBlockSize = 1 << 15;
constexpr int64_t kRun = 1024;

// TensorFlow's own nudging of a [low, high] range onto a grid of quant_min..quant_max that holds
// zero (the function FakeQuantWithMinMaxVars and its gradient call).
void NudgedRange(float low, float high, int quant_min, int quant_max, float* nudged_low,
                 float* nudged_high) {
  float scale, inverse_scale;
  ::tensorflow::Nudge(low, high, quant_min, quant_max, nudged_low, nudged_high, &scale,
                      &inverse_scale);
}

struct BlockSums {
  double inside_error = 0.0;
  double below = 0.0;
  double above = 0.0;
};

// The backward pass over [begin, end): writes dx and returns the three sums, each added in float
// over runs of kRun elements (vectorized: OpenMP simd reductions) and the runs in double.
BlockSums QuantizerGradientRange(const float* __restrict__ g, const float* __restrict__ x,
                                 const float* __restrict__ q, float* __restrict__ dx,
                                 int64_t begin, int64_t end, float low, float high) {
  BlockSums sums;
  for (int64_t run = begin; run < end; run += kRun) {
    const int64_t run_end = std::min(end, run + kRun);
    float run_error = 0.0f, run_below = 0.0f, run_above = 0.0f;
#pragma omp simd reduction(+ : run_error, run_below, run_above)
    for (int64_t i = run; i < run_end; ++i) {
      const float value = x[i];
      const float gradient = g[i];
      const bool is_inside = (value >= low) & (value <= high);
      const float inside = is_inside ? gradient : 0.0f;
      dx[i] = inside;
      run_error += inside * (q[i] - value);
      run_below += value < low ? gradient : 0.0f;
      run_above += value > high ? gradient : 0.0f;
    }
    sums.inside_error += run_error;
    sums.below += run_below;
    sums.above += run_above;
  }
  return sums;
}

class QuantizerGradientOp : public OpKernel {
 public:
  explicit QuantizerGradientOp(OpKernelConstruction* context) : OpKernel(context) {
    OP_REQUIRES_OK(context, context->GetAttr("num_bits", &num_bits_));
    OP_REQUIRES_OK(context, context->GetAttr("narrow_range", &narrow_range_));
    OP_REQUIRES_OK(context, context->GetAttr("nudge", &nudge_));
    OP_REQUIRES(context, num_bits_ >= 2 && num_bits_ <= 16,
                ::tensorflow::errors::InvalidArgument("num_bits must be in [2, 16], got ",
                                                      num_bits_));
  }

  void Compute(OpKernelContext* context) override {
    const Tensor& upstream = context->input(0);
    const Tensor& inputs = context->input(1);
    const Tensor& outputs = context->input(2);
    const Tensor& low_tensor = context->input(3);
    const Tensor& high_tensor = context->input(4);
    OP_REQUIRES(context, upstream.shape() == inputs.shape() && inputs.shape() == outputs.shape(),
                ::tensorflow::errors::InvalidArgument(
                    "upstream, inputs and outputs must have one shape, got ",
                    upstream.shape().DebugString(), ", ", inputs.shape().DebugString(), ", ",
                    outputs.shape().DebugString()));
    OP_REQUIRES(context, low_tensor.NumElements() == 1 && high_tensor.NumElements() == 1,
                ::tensorflow::errors::InvalidArgument("low and high must be scalars"));
    float low = low_tensor.flat<float>()(0);
    float high = high_tensor.flat<float>()(0);
    if (nudge_) {
      const int quant_min = narrow_range_ ? 1 : 0;
      const int quant_max = (1 << num_bits_) - 1;
      NudgedRange(low, high, quant_min, quant_max, &low, &high);
    }

    Tensor* input_gradient = nullptr;
    OP_REQUIRES_OK(context, context->allocate_output(0, inputs.shape(), &input_gradient));
    Tensor* inside_error_sum = nullptr;
    Tensor* below_sum = nullptr;
    Tensor* above_sum = nullptr;
    OP_REQUIRES_OK(context, context->allocate_output(1, TensorShape({}), &inside_error_sum));
    OP_REQUIRES_OK(context, context->allocate_output(2, TensorShape({}), &below_sum));
    OP_REQUIRES_OK(context, context->allocate_output(3, TensorShape({}), &above_sum));

    const float* __restrict__ g = upstream.flat<float>().data();
    const float* __restrict__ x = inputs.flat<float>().data();
    const float* __restrict__ q = outputs.flat<float>().data();
    float* __restrict__ dx = input_gradient->flat<float>().data();
    const int64_t size = inputs.NumElements();
    const int64_t blocks = (size + kBlockSize - 1) / kBlockSize;
    std::vector<BlockSums> sums(static_cast<size_t>(blocks));

    auto work = [=, &sums](int64_t first_block, int64_t end_block) {
      for (int64_t block = first_block; block < end_block; ++block) {
        const int64_t begin = block * kBlockSize;
        sums[static_cast<size_t>(block)] = QuantizerGradientRange(
            g, x, q, dx, begin, std::min(size, begin + kBlockSize), low, high);
      }
    };
    auto* workers = context->device()->tensorflow_cpu_worker_threads()->workers;
    workers->ParallelFor(blocks, /*cost_per_unit=*/kBlockSize * 8, work);

    BlockSums total;
    for (const BlockSums& block : sums) {
      total.inside_error += block.inside_error;
      total.below += block.below;
      total.above += block.above;
    }
    inside_error_sum->scalar<float>()() = static_cast<float>(total.inside_error);
    below_sum->scalar<float>()() = static_cast<float>(total.below);
    above_sum->scalar<float>()() = static_cast<float>(total.above);
  }

 private:
  int num_bits_;
  bool narrow_range_;
  bool nudge_;
};


// q[i] for i in [begin, end): the loop body of TfadaqatGridQuantize, in a function of its own
// with restrict pointers so that the compiler vectorizes it.
void GridQuantizeRange(const float* __restrict__ x, float* __restrict__ q, int64_t begin,
                       int64_t end, float step, float clip_low, float clip_high,
                       float integer_low, float integer_high) {
  for (int64_t i = begin; i < end; ++i) {
    // min then max, as tf.clip_by_value does (as selects, which vectorize).
    const float value = x[i];
    const float below_high = value > clip_high ? clip_high : value;
    const float clipped = below_high < clip_low ? clip_low : below_high;
    const float rounded = std::floor(clipped / step + 0.5f);
    const float under_high = rounded > integer_high ? integer_high : rounded;
    q[i] = step * (under_high < integer_low ? integer_low : under_high);
  }
}

class GridQuantizeOp : public OpKernel {
 public:
  explicit GridQuantizeOp(OpKernelConstruction* context) : OpKernel(context) {}

  void Compute(OpKernelContext* context) override {
    const Tensor& inputs = context->input(0);
    for (int index = 1; index <= 5; ++index) {
      OP_REQUIRES(context, context->input(index).NumElements() == 1,
                  ::tensorflow::errors::InvalidArgument(
                      "step, clip_low, clip_high, integer_low and integer_high must be "
                      "scalars; input ", index, " has shape ",
                      context->input(index).shape().DebugString()));
    }
    const float step = context->input(1).flat<float>()(0);
    const float clip_low = context->input(2).flat<float>()(0);
    const float clip_high = context->input(3).flat<float>()(0);
    const float integer_low = context->input(4).flat<float>()(0);
    const float integer_high = context->input(5).flat<float>()(0);
    Tensor* outputs = nullptr;
    OP_REQUIRES_OK(context, context->allocate_output(0, inputs.shape(), &outputs));
    const float* input_data = inputs.flat<float>().data();
    float* output_data = outputs->flat<float>().data();
    const int64_t size = inputs.NumElements();
    auto work = [=](int64_t begin, int64_t end) {
      GridQuantizeRange(input_data, output_data, begin, end, step, clip_low, clip_high,
                        integer_low, integer_high);
    };
    auto* workers = context->device()->tensorflow_cpu_worker_threads()->workers;
    workers->ParallelFor(size, /*cost_per_unit=*/8, work);
  }
};

// What the two FakeQuant kernels share: the narrow_range attribute and the checks of the range
// (scalar low and high) and the bit-width (a scalar int32 in [2, 16]).
class FakeQuantizeKernel : public OpKernel {
 public:
  explicit FakeQuantizeKernel(OpKernelConstruction* context) : OpKernel(context) {
    OP_REQUIRES_OK(context, context->GetAttr("narrow_range", &narrow_range_));
  }

 protected:
  // The quant_min and quant_max of a FakeQuant kernel of `num_bits`; the context's status set
  // instead when `low`, `high` or `num_bits` is not as above (OP_REQUIRES returns).
  void QuantRange(OpKernelContext* context, const Tensor& low, const Tensor& high,
                  const Tensor& num_bits, int* quant_min, int* quant_max) const {
    OP_REQUIRES(context, low.NumElements() == 1 && high.NumElements() == 1,
                ::tensorflow::errors::InvalidArgument("low and high must be scalars, got ",
                                                      low.shape().DebugString(), " and ",
                                                      high.shape().DebugString()));
    OP_REQUIRES(context, num_bits.NumElements() == 1,
                ::tensorflow::errors::InvalidArgument("num_bits must be a scalar, got shape ",
                                                      num_bits.shape().DebugString()));
    const int bits = num_bits.flat<int32_t>()(0);
    OP_REQUIRES(context, bits >= 2 && bits <= 16,
                ::tensorflow::errors::InvalidArgument("num_bits must be in [2, 16], got ", bits));
    *quant_min = narrow_range_ ? 1 : 0;
    *quant_max = (1 << bits) - 1;
  }

 private:
  bool narrow_range_;
};

class FakeQuantizeOp : public FakeQuantizeKernel {
 public:
  using FakeQuantizeKernel::FakeQuantizeKernel;

  void Compute(OpKernelContext* context) override {
    const Tensor& inputs = context->input(0);
    const Tensor& low = context->input(1);
    const Tensor& high = context->input(2);
    int quant_min = 0, quant_max = 0;
    QuantRange(context, low, high, context->input(3), &quant_min, &quant_max);
    if (!context->status().ok()) return;
    Tensor* outputs = nullptr;
    OP_REQUIRES_OK(context, context->allocate_output(0, inputs.shape(), &outputs));
    ::tensorflow::FakeQuantWithMinMaxVarsFunctor<Eigen::ThreadPoolDevice> functor;
    functor(context->eigen_device<Eigen::ThreadPoolDevice>(), inputs.flat<float>(),
            low.scalar<float>(), high.scalar<float>(), quant_min, quant_max,
            outputs->flat<float>());
  }
};

class FakeQuantizeGradientOp : public FakeQuantizeKernel {
 public:
  using FakeQuantizeKernel::FakeQuantizeKernel;

  void Compute(OpKernelContext* context) override {
    const Tensor& gradients = context->input(0);
    const Tensor& inputs = context->input(1);
    const Tensor& low = context->input(2);
    const Tensor& high = context->input(3);
    OP_REQUIRES(context, gradients.shape() == inputs.shape(),
                ::tensorflow::errors::InvalidArgument(
                    "gradients and inputs must have one shape, got ",
                    gradients.shape().DebugString(), " and ", inputs.shape().DebugString()));
    int quant_min = 0, quant_max = 0;
    QuantRange(context, low, high, context->input(4), &quant_min, &quant_max);
    if (!context->status().ok()) return;
    Tensor* input_gradient = nullptr;
    Tensor* low_gradient = nullptr;
    Tensor* high_gradient = nullptr;
    OP_REQUIRES_OK(context, context->allocate_output(0, inputs.shape(), &input_gradient));
    OP_REQUIRES_OK(context, context->allocate_output(1, TensorShape({}), &low_gradient));
    OP_REQUIRES_OK(context, context->allocate_output(2, TensorShape({}), &high_gradient));
    ::tensorflow::FakeQuantWithMinMaxVarsGradientFunctor<Eigen::ThreadPoolDevice> functor;
    functor(context->eigen_device<Eigen::ThreadPoolDevice>(), gradients.flat<float>(),
            inputs.flat<float>(), low.scalar<float>(), high.scalar<float>(), quant_min,
            quant_max, input_gradient->flat<float>(), low_gradient->scalar<float>(),
            high_gradient->scalar<float>());
  }
};

}  // namespace

REGISTER_OP("TfadaqatFakeQuantize")
    .Input("inputs: float")
    .Input("low: float")
    .Input("high: float")
    .Input("num_bits: int32")
    .Attr("narrow_range: bool = false")
    .Output("outputs: float")
    .SetShapeFn([](::tensorflow::shape_inference::InferenceContext* context) {
      context->set_output(0, context->input(0));
      return absl::OkStatus();
    });

REGISTER_KERNEL_BUILDER(Name("TfadaqatFakeQuantize").Device(::tensorflow::DEVICE_CPU),
                        FakeQuantizeOp);

REGISTER_OP("TfadaqatFakeQuantizeGradient")
    .Input("gradients: float")
    .Input("inputs: float")
    .Input("low: float")
    .Input("high: float")
    .Input("num_bits: int32")
    .Attr("narrow_range: bool = false")
    .Output("input_gradient: float")
    .Output("low_gradient: float")
    .Output("high_gradient: float")
    .SetShapeFn([](::tensorflow::shape_inference::InferenceContext* context) {
      context->set_output(0, context->input(1));
      context->set_output(1, context->Scalar());
      context->set_output(2, context->Scalar());
      return absl::OkStatus();
    });

REGISTER_KERNEL_BUILDER(Name("TfadaqatFakeQuantizeGradient").Device(::tensorflow::DEVICE_CPU),
                        FakeQuantizeGradientOp);

REGISTER_OP("TfadaqatGridQuantize")
    .Input("inputs: float")
    .Input("step: float")
    .Input("clip_low: float")
    .Input("clip_high: float")
    .Input("integer_low: float")
    .Input("integer_high: float")
    .Output("outputs: float")
    .SetShapeFn([](::tensorflow::shape_inference::InferenceContext* context) {
      context->set_output(0, context->input(0));
      return absl::OkStatus();
    });

REGISTER_KERNEL_BUILDER(Name("TfadaqatGridQuantize").Device(::tensorflow::DEVICE_CPU),
                        GridQuantizeOp);

REGISTER_OP("TfadaqatQuantizerGradient")
    .Input("upstream: float")
    .Input("inputs: float")
    .Input("outputs: float")
    .Input("low: float")
    .Input("high: float")
    .Attr("num_bits: int = 8")
    .Attr("narrow_range: bool = false")
    .Attr("nudge: bool = true")
    .Output("input_gradient: float")
    .Output("inside_error_sum: float")
    .Output("below_sum: float")
    .Output("above_sum: float")
    .SetShapeFn([](::tensorflow::shape_inference::InferenceContext* context) {
      context->set_output(0, context->input(1));
      context->set_output(1, context->Scalar());
      context->set_output(2, context->Scalar());
      context->set_output(3, context->Scalar());
      return absl::OkStatus();
    });

REGISTER_KERNEL_BUILDER(Name("TfadaqatQuantizerGradient").Device(::tensorflow::DEVICE_CPU),
                        QuantizerGradientOp);

}  // namespace tfadaqat
