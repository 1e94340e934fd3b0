#include "metadata.h"

#include <fstream>
#include <stdexcept>

#include <nlohmann/json.hpp>

namespace codetr {
namespace {

using nlohmann::json;

class Reader {
 public:
  Reader(const json& document, std::string where) : document_(document), where_(std::move(where)) {}

  // The value at a dotted key ("input.height"); throws if a part is missing.
  const json& at(const std::string& key) const {
    const json* value = &document_;
    size_t start = 0;
    while (true) {
      const size_t dot = key.find('.', start);
      const std::string part = key.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
      if (!value->is_object() || !value->contains(part)) {
        fail("missing key " + key);
      }
      value = &(*value)[part];
      if (dot == std::string::npos) {
        return *value;
      }
      start = dot + 1;
    }
  }

  template <typename T>
  T get(const std::string& key) const {
    const json& value = at(key);
    try {
      if constexpr (std::is_same_v<T, bool>) {
        if (!value.is_boolean()) throw std::invalid_argument("not a boolean");
      } else if constexpr (std::is_integral_v<T>) {
        if (!value.is_number_integer()) throw std::invalid_argument("not an integer");
      } else if constexpr (std::is_floating_point_v<T>) {
        if (!value.is_number()) throw std::invalid_argument("not a number");
      }
      return value.get<T>();
    } catch (const std::exception&) {
      fail(key + " has the wrong type, got " + value.dump());
    }
  }

  SizeRange size_range(const std::string& key) const {
    SizeRange range{get<int64_t>(key + ".min"), get<int64_t>(key + ".opt"), get<int64_t>(key + ".max")};
    if (!(1 <= range.min && range.min <= range.opt && range.opt <= range.max)) {
      fail(key + " must satisfy 1 <= min <= opt <= max, got " + at(key).dump());
    }
    return range;
  }

  [[noreturn]] void fail(const std::string& message) const {
    throw std::runtime_error(where_ + ": " + message);
  }

 private:
  const json& document_;
  std::string where_;
};

PreprocessConfig read_preprocess(const Reader& reader) {
  PreprocessConfig config;
  const auto scale = reader.get<std::vector<int64_t>>("preprocessing.scale");
  if (scale.size() != 2 || scale[0] < 1 || scale[1] < 1) {
    reader.fail("preprocessing.scale must be two positive sizes");
  }
  config.scale = {scale[0], scale[1]};
  const json& pad_size = reader.at("preprocessing.pad_size");
  if (!pad_size.is_null()) {
    const auto size = reader.get<std::vector<int64_t>>("preprocessing.pad_size");
    if (size.size() != 2) reader.fail("preprocessing.pad_size must be null or [height, width]");
    config.pad_size = std::make_pair(size[0], size[1]);
  }
  config.size_divisor = reader.get<int64_t>("preprocessing.size_divisor");
  if (config.size_divisor < 1) reader.fail("preprocessing.size_divisor must be positive");
  config.mask_padding = reader.get<bool>("preprocessing.mask_padding");
  // pad_value: an RGB 0-255 intensity, or "mean": the normalisation mean (codetr.config.PreprocessConfig.pad_colour).
  const json& pad_value = reader.at("preprocessing.pad_value");
  if (pad_value.is_string() && pad_value.get<std::string>() == "mean") {
    const auto mean = reader.get<std::vector<double>>("preprocessing.mean");
    if (mean.size() != 3) reader.fail("preprocessing.mean must have 3 values");
    for (size_t channel = 0; channel < 3; ++channel) config.pad_colour[channel] = static_cast<float>(mean[channel]);
  } else if (pad_value.is_number()) {
    config.pad_colour.fill(static_cast<float>(pad_value.get<double>()));
  } else {
    reader.fail("preprocessing.pad_value must be a number or \"mean\", got " + pad_value.dump());
  }
  return config;
}

InGraphPostprocess read_in_graph_postprocess(const Reader& reader, const json& document, int64_t batch_size) {
  InGraphPostprocess config;
  if (!document.contains("postprocess")) return config;
  config.mode = reader.get<std::string>("postprocess.mode");
  if (config.mode == "none") return config;
  if (config.mode != "threshold" && config.mode != "nms") {
    reader.fail("postprocess.mode must be none, threshold or nms, got " + config.mode);
  }
  if (batch_size != 1) reader.fail("postprocess.mode " + config.mode + " needs input.batch_size 1");
  config.score_threshold = reader.get<double>("postprocess.score_threshold");
  if (config.mode == "nms") config.iou_threshold = reader.get<double>("postprocess.iou_threshold");
  return config;
}

}  // namespace

ExportMetadata read_metadata(const std::filesystem::path& path) {
  std::ifstream stream(path);
  if (!stream) {
    throw std::runtime_error("no export metadata at " + path.string() +
                             " (codetr export writes it beside the model; or pass --metadata)");
  }
  json document;
  try {
    document = json::parse(stream);
  } catch (const json::parse_error& error) {
    throw std::runtime_error(path.string() + ": not valid JSON (" + error.what() + ")");
  }
  const Reader reader(document, path.string());
  if (!document.is_object() || document.value("format", json()) != kMetadataFormat) {
    reader.fail(std::string("format ") + (document.is_object() ? document.value("format", json()).dump() : "?") +
                ", this runner reads \"" + kMetadataFormat + "\"; re-export the model with this codetr version");
  }
  ExportMetadata metadata;
  metadata.path = path;
  metadata.class_names = reader.get<std::vector<std::string>>("model.class_names");
  metadata.category_ids = reader.get<std::vector<int64_t>>("model.category_ids");
  if (metadata.category_ids.size() != metadata.class_names.size()) {
    reader.fail("model.category_ids must have one id per class name");
  }
  metadata.batch_size = reader.get<int64_t>("input.batch_size");
  metadata.height = reader.size_range("input.height");
  metadata.width = reader.size_range("input.width");
  metadata.multiple = reader.get<int64_t>("input.multiple");
  if (metadata.batch_size < 1 || metadata.multiple < 1) reader.fail("input.batch_size and input.multiple must be positive");
  metadata.dtype = reader.get<std::string>("precision.dtype");
  metadata.msda = reader.get<std::string>("msda");
  metadata.preprocess = read_preprocess(reader);
  metadata.score_threshold = reader.get<double>("postprocessing.score_threshold");
  metadata.nms.kind = reader.get<std::string>("postprocessing.nms.kind");
  if (metadata.nms.kind != "none" && metadata.nms.kind != "nms" && metadata.nms.kind != "soft_nms") {
    reader.fail("postprocessing.nms.kind must be none, nms or soft_nms, got " + metadata.nms.kind);
  }
  metadata.nms.iou_threshold = reader.get<double>("postprocessing.nms.iou_threshold");
  metadata.nms.sigma = reader.get<double>("postprocessing.nms.sigma");
  metadata.nms.min_score = reader.get<double>("postprocessing.nms.min_score");
  metadata.in_graph = read_in_graph_postprocess(reader, document, metadata.batch_size);
  metadata.files = reader.get<std::map<std::string, std::string>>("files");
  // Each stage that wrote a file records its name and size; other stages have nulls (as the
  // Python check, entries without both are passed over).
  for (const json& stage : document.value("stages", json::array())) {
    if (stage.is_object() && stage.value("file", json()).is_string() && stage.value("bytes", json()).is_number_unsigned()) {
      metadata.file_bytes[stage["file"].get<std::string>()] = stage["bytes"].get<uintmax_t>();
    }
  }
  return metadata;
}

void check_exported_size(const ExportMetadata& metadata, const std::filesystem::path& artifact) {
  const auto recorded = metadata.file_bytes.find(artifact.filename().string());
  if (recorded == metadata.file_bytes.end() || !std::filesystem::is_regular_file(artifact)) return;
  const uintmax_t size = std::filesystem::file_size(artifact);
  if (size != recorded->second) {
    throw std::runtime_error(artifact.string() + " has " + std::to_string(size) + " bytes but " + metadata.path.string() +
                             " recorded " + std::to_string(recorded->second) +
                             " when it was exported: the file was changed (truncated, or replaced by another "
                             "export's) or the metadata.json was copied from another export; keep each export's "
                             "files together, or re-export");
  }
}

}  // namespace codetr
