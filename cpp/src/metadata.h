// The parts of an export's metadata.json (format "codetr-export/2", written by
// codetr.contract.metadata) that the runner acts on.
#pragma once

#include <array>
#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace codetr {

inline constexpr const char* kMetadataFormat = "codetr-export/2";

// An input side in pixels; min == max for a static export.
struct SizeRange {
  int64_t min = 0;
  int64_t opt = 0;
  int64_t max = 0;
};

// codetr.config.PreprocessConfig: keep-ratio resize into scale, pad to pad_size or to a multiple
// of size_divisor with pad_colour (RGB 0-255).
struct PreprocessConfig {
  std::pair<int64_t, int64_t> scale;  // (long edge limit, short edge limit), any order
  std::array<float, 3> pad_colour{};
  std::optional<std::pair<int64_t, int64_t>> pad_size;  // (h, w)
  int64_t size_divisor = 32;
  bool mask_padding = false;
};

// codetr.config.NmsConfig: kind is "none", "nms" or "soft_nms".
struct NmsConfig {
  std::string kind = "none";
  double iou_threshold = 0.8;
  double sigma = 0.5;
  double min_score = 1e-3;
};

// codetr.contract.postprocess: what the exported graph does after the score top-k (metadata key
// "postprocess"; absent in exports older than it: none). threshold and nms exports have batch size 1
// and outputs [1, N, ...] with a data-dependent N; `postprocessing` (score_threshold, nms) is then
// what the host still applies after the graph, as codetr.export.postprocess.host_postprocessing
// writes it (after in-graph nms: no host NMS).
struct InGraphPostprocess {
  std::string mode = "none";  // none | threshold | nms
  double score_threshold = 0.0;  // the graph keeps scores above it (threshold, nms)
  double iou_threshold = 1.0;  // class-wise hard NMS (nms)

  bool is_data_dependent() const { return mode != "none"; }
};

struct ExportMetadata {
  std::filesystem::path path;
  std::vector<std::string> class_names;
  std::vector<int64_t> category_ids;  // COCO category id of each label
  int64_t batch_size = 1;
  SizeRange height;
  SizeRange width;
  int64_t multiple = 1;
  std::string dtype;
  std::string msda;  // plugin | nvidia | decomposed: the form MSDA takes in the ONNX file and engine
  PreprocessConfig preprocess;
  double score_threshold = 0.0;  // postprocessing: what the host applies
  NmsConfig nms;
  InGraphPostprocess in_graph;
  std::map<std::string, std::string> files;  // artifact -> file name
  std::map<std::string, uintmax_t> file_bytes;  // file name -> its size when exported ("stages")
};

// Reads and checks metadata.json; throws std::runtime_error naming the file and the key.
ExportMetadata read_metadata(const std::filesystem::path& path);

// Throws std::runtime_error naming both files unless `artifact` has the size its export recorded,
// as codetr.runtime.loader._check_exported_file does first: a metadata.json of another export with
// the same file names (e.g. a dynamic export's beside a static package) would otherwise run silently
// with the wrong pre-processing and input size. The recorded SHA-256, which the Python loader also
// checks, is not computed here (it would need a hashing library).
void check_exported_size(const ExportMetadata& metadata, const std::filesystem::path& artifact);

}  // namespace codetr
