// Autograd of torch.ops.codetr.msda, in C++ so that a training step pays no Python overhead per
// call (in the decoder, where a call's kernels take tens of microseconds, a Python autograd
// formula cost more than the kernels). Double backward is not supported.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

namespace codetr::msda {
namespace {

at::Tensor call_forward(const at::Tensor& value, const at::Tensor& spatial_shapes,
                        const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
                        const at::Tensor& attention_weights, int64_t im2col_step) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("codetr::msda", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                         const at::Tensor&, const at::Tensor&, int64_t)>();
  return op.call(value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
                 im2col_step);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> call_backward(
    const at::Tensor& grad_output, const at::Tensor& value, const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
    const at::Tensor& attention_weights, int64_t im2col_step) {
  static auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("codetr::msda_backward", "")
          .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
              const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
              const at::Tensor&, const at::Tensor&, int64_t)>();
  return op.call(grad_output, value, spatial_shapes, level_start_index, sampling_locations,
                 attention_weights, im2col_step);
}

class MsdaFunction : public torch::autograd::Function<MsdaFunction> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& value,
                            const at::Tensor& spatial_shapes, const at::Tensor& level_start_index,
                            const at::Tensor& sampling_locations,
                            const at::Tensor& attention_weights, int64_t im2col_step) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward(
        {value, spatial_shapes, level_start_index, sampling_locations, attention_weights});
    ctx->saved_data["im2col_step"] = im2col_step;
    return call_forward(value, spatial_shapes, level_start_index, sampling_locations,
                        attention_weights, im2col_step);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    auto [grad_value, grad_locations, grad_weights] =
        call_backward(grad_outputs[0].contiguous(), saved[0], saved[1], saved[2], saved[3],
                      saved[4], ctx->saved_data["im2col_step"].toInt());
    return {grad_value, at::Tensor(), at::Tensor(), grad_locations, grad_weights, at::Tensor()};
  }
};

at::Tensor msda_autograd(const at::Tensor& value, const at::Tensor& spatial_shapes,
                         const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
                         const at::Tensor& attention_weights, int64_t im2col_step) {
  return MsdaFunction::apply(value, spatial_shapes, level_start_index, sampling_locations,
                             attention_weights, im2col_step);
}

}  // namespace

TORCH_LIBRARY_IMPL(codetr, Autograd, m) { m.impl("msda", &msda_autograd); }

}  // namespace codetr::msda
