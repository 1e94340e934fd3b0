// TensorRT IPluginV3 for multiscale deformable attention (MSDA), the TensorRT face of
// torch.ops.codetr.msda. It runs the same CUDA launchers as the torch op
// (csrc/msda/cuda/msda_launch.h); this folder holds no kernel of its own.
//
// Identity: name "CodetrMSDA", version "1", namespace "codetr". The ONNX node that maps to it is
// op_type "CodetrMSDA", domain "codetr" (domain version 1) with the string attributes
// plugin_version = "1" and plugin_namespace = "codetr" that TensorRT's ONNX parser uses to find
// the creator.
//
// Fields (the attributes; the serialized state of the plugin is exactly these):
//   im2col_step  int32 or int64, one value > 0, default 64. Accepted for compatibility with the
//                torch op's signature and otherwise ignored: the kernels need no batch chunking.
// Any other field is an error reported through the TensorRT logger (createPlugin returns null).
// (TensorRT's ONNX parser only forwards the node attributes the creator lists in getFieldNames,
// so an ONNX node's extra attributes never reach the plugin; they are ignored, not refused.)
//
// Inputs (all linear layout, dense), outputs, formats:
//   0 value               [B, S, M, D]        float32 | float16 | bfloat16
//   1 spatial_shapes      [L, 2]              int64   (H_l, W_l)
//   2 level_start_index   [L]                 int64
//   3 sampling_locations  [B, Q, M, L, P, 2]  value's type, or float32 with a 16-bit value
//   4 attention_weights   [B, Q, M, L, P]     sampling_locations' type
//   out output            [B, Q, M * D]       value's type
// int32 spatial_shapes/level_start_index are not supported: the launchers read int64 and TensorRT
// keeps int64 constants as int64, so a conversion would only cost a kernel and a workspace.
// All dimensions may be dynamic. Shape errors that are visible at build time (ranks, disagreeing
// constant dimensions) fail the build with a logged message; the same checks run on concrete
// shapes in onShapeChange.
#pragma once

#include <NvInferRuntime.h>

#include <cstdint>
#include <string>
#include <vector>

namespace codetr::tensorrt {

inline constexpr char kPluginName[] = "CodetrMSDA";
inline constexpr char kPluginVersion[] = "1";
inline constexpr char kPluginNamespace[] = "codetr";
inline constexpr int32_t kDefaultIm2colStep = 64;

class MsdaPlugin final : public nvinfer1::IPluginV3,
                         public nvinfer1::IPluginV3OneCore,
                         public nvinfer1::IPluginV3OneBuild,
                         public nvinfer1::IPluginV3OneRuntime {
 public:
  explicit MsdaPlugin(int32_t im2col_step);
  MsdaPlugin(const MsdaPlugin& other);
  MsdaPlugin& operator=(const MsdaPlugin&) = delete;
  ~MsdaPlugin() override = default;

  // IPluginV3
  nvinfer1::IPluginCapability* getCapabilityInterface(
      nvinfer1::PluginCapabilityType type) noexcept override;
  nvinfer1::IPluginV3* clone() noexcept override;

  // IPluginV3OneCore
  const char* getPluginName() const noexcept override { return kPluginName; }
  const char* getPluginVersion() const noexcept override { return kPluginVersion; }
  const char* getPluginNamespace() const noexcept override { return kPluginNamespace; }

  // IPluginV3OneBuild
  int32_t configurePlugin(const nvinfer1::DynamicPluginTensorDesc* in, int32_t num_inputs,
                          const nvinfer1::DynamicPluginTensorDesc* out,
                          int32_t num_outputs) noexcept override;
  int32_t getOutputDataTypes(nvinfer1::DataType* output_types, int32_t num_outputs,
                             const nvinfer1::DataType* input_types,
                             int32_t num_inputs) const noexcept override;
  int32_t getOutputShapes(const nvinfer1::DimsExprs* inputs, int32_t num_inputs,
                          const nvinfer1::DimsExprs* shape_inputs, int32_t num_shape_inputs,
                          nvinfer1::DimsExprs* outputs, int32_t num_outputs,
                          nvinfer1::IExprBuilder& expr_builder) noexcept override;
  bool supportsFormatCombination(int32_t pos, const nvinfer1::DynamicPluginTensorDesc* in_out,
                                 int32_t num_inputs, int32_t num_outputs) noexcept override;
  int32_t getNbOutputs() const noexcept override { return 1; }
  const char* getTimingCacheID() noexcept override;

  // IPluginV3OneRuntime
  int32_t onShapeChange(const nvinfer1::PluginTensorDesc* in, int32_t num_inputs,
                        const nvinfer1::PluginTensorDesc* out, int32_t num_outputs) noexcept override;
  int32_t enqueue(const nvinfer1::PluginTensorDesc* input_desc,
                  const nvinfer1::PluginTensorDesc* output_desc, const void* const* inputs,
                  void* const* outputs, void* workspace, cudaStream_t stream) noexcept override;
  nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* context) noexcept override;
  const nvinfer1::PluginFieldCollection* getFieldsToSerialize() noexcept override;

 private:
  int32_t im2col_step_;
  // getFieldsToSerialize hands TensorRT pointers into these, so they live as long as the plugin.
  std::vector<nvinfer1::PluginField> serialized_fields_;
  nvinfer1::PluginFieldCollection serialized_collection_{};
};

class MsdaPluginCreator final : public nvinfer1::IPluginCreatorV3One {
 public:
  MsdaPluginCreator();

  nvinfer1::IPluginV3* createPlugin(const char* name, const nvinfer1::PluginFieldCollection* fields,
                                    nvinfer1::TensorRTPhase phase) noexcept override;
  const nvinfer1::PluginFieldCollection* getFieldNames() noexcept override;
  const char* getPluginName() const noexcept override { return kPluginName; }
  const char* getPluginVersion() const noexcept override { return kPluginVersion; }
  const char* getPluginNamespace() const noexcept override { return kPluginNamespace; }

 private:
  std::vector<nvinfer1::PluginField> field_names_;
  nvinfer1::PluginFieldCollection field_collection_{};
};

// Reports through the logger TensorRT handed to setLoggerFinder, or stderr before that.
void log_error(const std::string& message) noexcept;

}  // namespace codetr::tensorrt
