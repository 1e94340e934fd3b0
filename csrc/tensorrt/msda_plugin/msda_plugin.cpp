#include "msda_plugin.h"

#include <cstring>
#include <exception>
#include <optional>
#include <sstream>

#include "msda/cuda/msda_launch.h"

namespace codetr::tensorrt {
namespace {

using nvinfer1::DataType;

enum Input : int32_t {
  kValue = 0,
  kSpatialShapes,
  kLevelStartIndex,
  kSamplingLocations,
  kAttentionWeights,
  kNumInputs
};
constexpr int32_t kNumOutputs = 1;
constexpr int32_t kInputRanks[kNumInputs] = {4, 2, 1, 6, 5};
constexpr const char* kInputNames[kNumInputs] = {"value", "spatial_shapes", "level_start_index",
                                                 "sampling_locations", "attention_weights"};
constexpr char kIm2colStepField[] = "im2col_step";

bool check_io_counts(int32_t num_inputs, int32_t num_outputs) {
  if (num_inputs == kNumInputs && num_outputs == kNumOutputs) return true;
  std::ostringstream message;
  message << "expected " << kNumInputs << " inputs and " << kNumOutputs << " output, got "
          << num_inputs << " inputs and " << num_outputs << " outputs";
  log_error(message.str());
  return false;
}

// One dimension of an input, named for error messages ("sampling_locations[3]").
struct DimRef {
  int32_t input;
  int32_t axis;
};

// The dimensions that must agree across inputs, as (a, b) pairs, plus the two fixed sizes of 2.
constexpr DimRef kEqualDims[][2] = {
    {{kSamplingLocations, 0}, {kValue, 0}},                 // B
    {{kSamplingLocations, 2}, {kValue, 2}},                 // M
    {{kSpatialShapes, 0}, {kSamplingLocations, 3}},         // L
    {{kLevelStartIndex, 0}, {kSamplingLocations, 3}},       // L
    {{kAttentionWeights, 0}, {kSamplingLocations, 0}},      // B
    {{kAttentionWeights, 1}, {kSamplingLocations, 1}},      // Q
    {{kAttentionWeights, 2}, {kSamplingLocations, 2}},      // M
    {{kAttentionWeights, 3}, {kSamplingLocations, 3}},      // L
    {{kAttentionWeights, 4}, {kSamplingLocations, 4}},      // P
};
constexpr DimRef kDimsOfTwo[] = {{kSpatialShapes, 1}, {kSamplingLocations, 5}};

std::string dim_name(DimRef ref) {
  return std::string(kInputNames[ref.input]) + ".shape[" + std::to_string(ref.axis) + "]";
}

// Checks ranks and dimension agreement. known(ref) returns the dimension's value when it is
// known (always at runtime, only for constants at build time).
template <typename Rank, typename Known>
bool check_shapes(Rank rank, Known known) {
  for (int32_t i = 0; i < kNumInputs; ++i) {
    if (rank(i) != kInputRanks[i]) {
      log_error(std::string(kInputNames[i]) + " must have rank " + std::to_string(kInputRanks[i]) +
                ", got rank " + std::to_string(rank(i)));
      return false;
    }
  }
  for (const auto& pair : kEqualDims) {
    const std::optional<int64_t> a = known(pair[0]);
    const std::optional<int64_t> b = known(pair[1]);
    if (a && b && *a != *b) {
      log_error(dim_name(pair[0]) + " = " + std::to_string(*a) + " must equal " +
                dim_name(pair[1]) + " = " + std::to_string(*b));
      return false;
    }
  }
  for (const DimRef ref : kDimsOfTwo) {
    const std::optional<int64_t> size = known(ref);
    if (size && *size != 2) {
      log_error(dim_name(ref) + " must be 2, got " + std::to_string(*size));
      return false;
    }
  }
  return true;
}

bool is_value_type(DataType type) {
  return type == DataType::kFLOAT || type == DataType::kHALF || type == DataType::kBF16;
}

bool is_location_type_for(DataType location, DataType value) {
  return location == value || (location == DataType::kFLOAT && value != DataType::kFLOAT);
}

std::optional<msda::DataType> to_msda_type(DataType type) {
  switch (type) {
    case DataType::kFLOAT: return msda::DataType::kFloat32;
    case DataType::kHALF: return msda::DataType::kFloat16;
    case DataType::kBF16: return msda::DataType::kBFloat16;
    default: return std::nullopt;
  }
}

int64_t volume(const nvinfer1::Dims& dims) {
  int64_t result = 1;
  for (int32_t i = 0; i < dims.nbDims; ++i) result *= dims.d[i];
  return result;
}

// Reads one integer field that TensorRT or the ONNX parser may hand over as int32 or int64.
std::optional<int64_t> read_int_field(const nvinfer1::PluginField& field) {
  if (field.data == nullptr || field.length != 1) return std::nullopt;
  if (field.type == nvinfer1::PluginFieldType::kINT32) {
    return *static_cast<const int32_t*>(field.data);
  }
  if (field.type == nvinfer1::PluginFieldType::kINT64) {
    return *static_cast<const int64_t*>(field.data);
  }
  return std::nullopt;
}

}  // namespace

MsdaPlugin::MsdaPlugin(int32_t im2col_step) : im2col_step_(im2col_step) {}

MsdaPlugin::MsdaPlugin(const MsdaPlugin& other) : MsdaPlugin(other.im2col_step_) {}

nvinfer1::IPluginCapability* MsdaPlugin::getCapabilityInterface(
    nvinfer1::PluginCapabilityType type) noexcept {
  switch (type) {
    case nvinfer1::PluginCapabilityType::kCORE:
      return static_cast<nvinfer1::IPluginV3OneCore*>(this);
    case nvinfer1::PluginCapabilityType::kBUILD:
      return static_cast<nvinfer1::IPluginV3OneBuild*>(this);
    case nvinfer1::PluginCapabilityType::kRUNTIME:
      return static_cast<nvinfer1::IPluginV3OneRuntime*>(this);
  }
  return nullptr;
}

nvinfer1::IPluginV3* MsdaPlugin::clone() noexcept {
  try {
    return new MsdaPlugin(*this);
  } catch (const std::exception& error) {
    log_error(std::string("clone failed: ") + error.what());
    return nullptr;
  }
}

int32_t MsdaPlugin::configurePlugin(const nvinfer1::DynamicPluginTensorDesc*, int32_t num_inputs,
                                    const nvinfer1::DynamicPluginTensorDesc*,
                                    int32_t num_outputs) noexcept {
  return check_io_counts(num_inputs, num_outputs) ? 0 : 1;
}

int32_t MsdaPlugin::getOutputDataTypes(DataType* output_types, int32_t num_outputs,
                                       const DataType* input_types,
                                       int32_t num_inputs) const noexcept {
  if (!check_io_counts(num_inputs, num_outputs)) return 1;
  if (!is_value_type(input_types[kValue])) {
    log_error("value must be float32, float16 or bfloat16, got TensorRT DataType " +
              std::to_string(static_cast<int32_t>(input_types[kValue])));
    return 1;
  }
  output_types[0] = input_types[kValue];
  return 0;
}

int32_t MsdaPlugin::getOutputShapes(const nvinfer1::DimsExprs* inputs, int32_t num_inputs,
                                    const nvinfer1::DimsExprs*, int32_t,
                                    nvinfer1::DimsExprs* outputs, int32_t num_outputs,
                                    nvinfer1::IExprBuilder& expr_builder) noexcept {
  if (!check_io_counts(num_inputs, num_outputs)) return 1;
  const bool valid = check_shapes(
      [&](int32_t i) { return inputs[i].nbDims; },
      [&](DimRef ref) -> std::optional<int64_t> {
        const nvinfer1::IDimensionExpr* dim = inputs[ref.input].d[ref.axis];
        if (!dim->isConstant()) return std::nullopt;
        return dim->getConstantValue();
      });
  if (!valid) return 1;
  const nvinfer1::DimsExprs& value = inputs[kValue];
  outputs[0].nbDims = 3;
  outputs[0].d[0] = value.d[0];
  outputs[0].d[1] = inputs[kSamplingLocations].d[1];
  outputs[0].d[2] = expr_builder.operation(nvinfer1::DimensionOperation::kPROD, *value.d[2],
                                           *value.d[3]);
  return 0;
}

bool MsdaPlugin::supportsFormatCombination(int32_t pos,
                                           const nvinfer1::DynamicPluginTensorDesc* in_out,
                                           int32_t num_inputs, int32_t num_outputs) noexcept {
  if (num_inputs != kNumInputs || num_outputs != kNumOutputs) return false;
  const nvinfer1::PluginTensorDesc& desc = in_out[pos].desc;
  if (desc.format != nvinfer1::TensorFormat::kLINEAR) return false;
  const DataType value_type = in_out[kValue].desc.type;
  switch (pos) {
    case kValue: return is_value_type(desc.type);
    case kSpatialShapes:
    case kLevelStartIndex: return desc.type == DataType::kINT64;
    case kSamplingLocations: return is_location_type_for(desc.type, value_type);
    case kAttentionWeights: return desc.type == in_out[kSamplingLocations].desc.type;
    default: return desc.type == value_type;  // the output
  }
}

const char* MsdaPlugin::getTimingCacheID() noexcept {
  // im2col_step does not change the kernels, so all instances share timing entries.
  return kPluginName;
}

int32_t MsdaPlugin::onShapeChange(const nvinfer1::PluginTensorDesc* in, int32_t num_inputs,
                                  const nvinfer1::PluginTensorDesc*, int32_t num_outputs) noexcept {
  if (!check_io_counts(num_inputs, num_outputs)) return 1;
  const bool valid = check_shapes([&](int32_t i) { return in[i].dims.nbDims; },
                                  [&](DimRef ref) -> std::optional<int64_t> {
                                    return in[ref.input].dims.d[ref.axis];
                                  });
  return valid ? 0 : 1;
}

int32_t MsdaPlugin::enqueue(const nvinfer1::PluginTensorDesc* input_desc,
                            const nvinfer1::PluginTensorDesc* output_desc,
                            const void* const* inputs, void* const* outputs, void*,
                            cudaStream_t stream) noexcept {
  const std::optional<msda::DataType> value_type = to_msda_type(input_desc[kValue].type);
  const std::optional<msda::DataType> location_type =
      to_msda_type(input_desc[kSamplingLocations].type);
  if (!value_type || !location_type) {
    log_error("enqueue called with unsupported data types");
    return 1;
  }
  if (volume(output_desc[0].dims) == 0) return 0;

  const nvinfer1::Dims& value = input_desc[kValue].dims;
  const nvinfer1::Dims& locations = input_desc[kSamplingLocations].dims;
  msda::Problem problem;
  problem.batch = value.d[0];
  problem.num_values = value.d[1];
  problem.num_heads = value.d[2];
  problem.channels = value.d[3];
  problem.num_queries = locations.d[1];
  problem.num_levels = locations.d[3];
  problem.num_points = locations.d[4];

  const cudaError_t status = msda::launch_forward(
      problem, *value_type, *location_type, inputs[kValue],
      static_cast<const int64_t*>(inputs[kSpatialShapes]),
      static_cast<const int64_t*>(inputs[kLevelStartIndex]), inputs[kSamplingLocations],
      inputs[kAttentionWeights], outputs[0], stream);
  if (status != cudaSuccess) {
    log_error(std::string("kernel launch failed: ") + cudaGetErrorString(status));
    return 1;
  }
  return 0;
}

nvinfer1::IPluginV3* MsdaPlugin::attachToContext(nvinfer1::IPluginResourceContext*) noexcept {
  return clone();
}

const nvinfer1::PluginFieldCollection* MsdaPlugin::getFieldsToSerialize() noexcept {
  serialized_fields_ = {
      nvinfer1::PluginField(kIm2colStepField, &im2col_step_, nvinfer1::PluginFieldType::kINT32, 1)};
  serialized_collection_.nbFields = static_cast<int32_t>(serialized_fields_.size());
  serialized_collection_.fields = serialized_fields_.data();
  return &serialized_collection_;
}

MsdaPluginCreator::MsdaPluginCreator()
    : field_names_{nvinfer1::PluginField(kIm2colStepField, nullptr,
                                         nvinfer1::PluginFieldType::kINT32, 1)} {
  field_collection_.nbFields = static_cast<int32_t>(field_names_.size());
  field_collection_.fields = field_names_.data();
}

const nvinfer1::PluginFieldCollection* MsdaPluginCreator::getFieldNames() noexcept {
  return &field_collection_;
}

nvinfer1::IPluginV3* MsdaPluginCreator::createPlugin(const char* name,
                                                     const nvinfer1::PluginFieldCollection* fields,
                                                     nvinfer1::TensorRTPhase) noexcept {
  const std::string layer = name != nullptr ? name : "<unnamed>";
  int64_t im2col_step = kDefaultIm2colStep;
  const int32_t num_fields = fields != nullptr ? fields->nbFields : 0;
  for (int32_t i = 0; i < num_fields; ++i) {
    const nvinfer1::PluginField& field = fields->fields[i];
    const std::string field_name = field.name != nullptr ? field.name : "";
    if (field_name != kIm2colStepField) {
      log_error("layer " + layer + ": unknown field '" + field_name +
                "'; the only field is im2col_step");
      return nullptr;
    }
    const std::optional<int64_t> step = read_int_field(field);
    if (!step || *step <= 0 || *step > INT32_MAX) {
      log_error("layer " + layer + ": im2col_step must be one positive int32/int64 value");
      return nullptr;
    }
    im2col_step = *step;
  }
  try {
    return new MsdaPlugin(static_cast<int32_t>(im2col_step));
  } catch (const std::exception& error) {
    log_error("layer " + layer + ": " + error.what());
    return nullptr;
  }
}

}  // namespace codetr::tensorrt
