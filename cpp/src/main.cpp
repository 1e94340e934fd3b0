// codetr_infer: detect objects in images with an exported Co-DINO, without Python.
//
//   codetr_infer MODEL IMAGES --output DIR [options]
//
// MODEL is an AOTInductor package (model_aoti.pt2) or a TensorRT engine (model.engine), with the
// export's metadata.json beside it. Writes into DIR, as `codetr infer` does: results.json (COCO
// results, boxes in original pixels), images.json (COCO image entries) and one drawn image per
// input, named after the input's full file name. DIR must be new or empty, or is replaced whole with
// --overwrite; the run is swapped in only when complete (OutputFolder). An image that cannot be
// read is named on stderr and skipped: the exit status is then 1. Errors a user can act on print
// "error: ..." and exit with status 2.
//
// Post-processing is what the Python predictor (codetr.runtime.predictor) applies: the metadata's
// `postprocessing` section. For an export with in-graph post-processing (metadata `postprocess`
// mode threshold or nms) that section holds only what the graph left to the host (the exporter
// writes it so: no NMS after in-graph nms), so the graph's detections are rescaled, clamped and
// thresholded, never suppressed twice.
#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstdio>
#include <iostream>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include <ATen/ops/stack.h>
#include <c10/util/Exception.h>
#include <nlohmann/json.hpp>

#include "image_io.h"
#include "metadata.h"
#include "model.h"
#include "output_folder.h"
#include "postprocess.h"
#include "preprocess.h"

namespace fs = std::filesystem;

namespace {

struct Options {
  fs::path model;
  fs::path images;
  fs::path output;
  std::optional<fs::path> metadata;
  std::optional<double> score_threshold;
  std::vector<fs::path> plugin_libraries;
  int device_index = -1;  // -1: the current CUDA device (GPU 0)
  bool draw = true;
  bool overwrite = false;
};

const char* kUsage =
    "usage: codetr_infer MODEL IMAGES --output DIR [--overwrite] [--metadata FILE] [--score-threshold X]\n"
    "                    [--plugin-library PATH ...] [--device-index N] [--no-draw]\n"
    "\n"
    "Detect objects in IMAGES (an image or a folder of images) with MODEL, an AOTInductor package\n"
    "(.pt2) or a TensorRT engine (.engine/.plan) exported by `codetr export`.\n"
    "\n"
    "  --output DIR            folder for results.json, images.json and the drawn images (required): new\n"
    "                          or empty (created if missing), never one holding MODEL or IMAGES\n"
    "  --overwrite             replace an --output folder that is not empty, and everything in it\n"
    "                          (default: refuse)\n"
    "  --metadata FILE         the export's metadata.json (default: metadata.json beside MODEL)\n"
    "  --score-threshold X     keep detections scoring above the larger of X (in [0, 1]) and the metadata's\n"
    "                          postprocessing.score_threshold, as `codetr infer` (default: the metadata's)\n"
    "  --plugin-library PATH   TensorRT plugin library to load, e.g. libcodetr_msda_trt.so; repeatable\n"
    "                          (default: none; engines exported with msda 'plugin' need ours)\n"
    "  --device-index N        GPU to run a CUDA package or an engine on (default: -1, the current one)\n"
    "  --no-draw               do not write drawn images (default: draw)\n";

struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

Options parse_options(int argc, char** argv) {
  Options options;
  std::vector<std::string> positional;
  for (int index = 1; index < argc; ++index) {
    const std::string argument = argv[index];
    auto value = [&]() -> std::string {
      if (index + 1 >= argc) throw UsageError(argument + " needs a value");
      return argv[++index];
    };
    if (argument == "-h" || argument == "--help") {
      std::cout << kUsage;
      std::exit(0);
    } else if (argument == "--output") {
      options.output = value();
    } else if (argument == "--overwrite") {
      options.overwrite = true;
    } else if (argument == "--metadata") {
      options.metadata = value();
    } else if (argument == "--score-threshold") {
      const std::string text = value();
      char* end = nullptr;
      const double threshold = std::strtod(text.c_str(), &end);
      if (text.empty() || *end != '\0') throw UsageError("--score-threshold must be a number, got " + text);
      // Written so that NaN, which compares false with everything, is refused too.
      if (!(0.0 <= threshold && threshold <= 1.0)) throw UsageError("--score-threshold must be in [0, 1], got " + text);
      options.score_threshold = threshold;
    } else if (argument == "--plugin-library") {
      options.plugin_libraries.emplace_back(value());
    } else if (argument == "--device-index") {
      const std::string text = value();
      try {
        options.device_index = std::stoi(text);
      } catch (const std::exception&) {
        throw UsageError("--device-index must be an integer, got " + text);
      }
    } else if (argument == "--no-draw") {
      options.draw = false;
    } else if (argument.rfind("--", 0) == 0) {
      throw UsageError("unknown option " + argument);
    } else {
      positional.push_back(argument);
    }
  }
  if (positional.size() != 2) throw UsageError("expected MODEL and IMAGES, got " + std::to_string(positional.size()) + " arguments");
  if (options.output.empty()) throw UsageError("--output DIR is required");
  options.model = positional[0];
  options.images = positional[1];
  return options;
}

std::unique_ptr<codetr::Model> load_model(const Options& options, const codetr::ExportMetadata& metadata) {
  const std::string suffix = options.model.extension().string();
  if (suffix == ".pt2") return codetr::load_aoti_package(options.model, options.device_index);
  if (suffix == ".engine" || suffix == ".plan") {
    if (metadata.msda == "plugin" && options.plugin_libraries.empty()) {
      throw std::runtime_error("this engine calls codetr's MSDA plugin: pass --plugin-library .../libcodetr_msda_trt.so");
    }
    return codetr::load_tensorrt_engine(options.model, options.plugin_libraries, options.device_index);
  }
  throw std::runtime_error(options.model.string() + ": unknown model file type '" + suffix +
                           "'; accepted: an AOTInductor package (.pt2) or a TensorRT engine (.engine, .plan)");
}

// COCO image id: the file stem when it is a number (as for COCO's own files), else the 1-based
// position in sorted order (as `codetr infer`).
int64_t image_id(const fs::path& path, int64_t position) {
  const std::string stem = path.stem().string();
  const bool numeric = !stem.empty() && stem.find_first_not_of("0123456789") == std::string::npos;
  return numeric ? std::stoll(stem) : position;
}

int run(const Options& options) {
  const fs::path metadata_path = options.metadata.value_or(options.model.parent_path() / "metadata.json");
  const auto metadata = codetr::read_metadata(metadata_path);
  codetr::check_exported_size(metadata, options.model);
  // As codetr.runtime.predictor.Predictor: a threshold below the export's cannot bring back what the
  // export (or its graph) drops.
  const double score_threshold = std::max(options.score_threshold.value_or(0.0), metadata.score_threshold);
  const auto paths = codetr::list_images(options.images);
  // Checked before the model loads; the files go to a staging folder until the run is complete.
  codetr::OutputFolder output(options.output, "--output", options.overwrite,
                              {options.images, options.model, metadata_path});
  auto model = load_model(options, metadata);

  auto results = nlohmann::ordered_json::array();
  auto image_entries = nlohmann::ordered_json::array();
  std::vector<fs::path> skipped;
  double model_seconds = 0.0;
  int64_t batches = 0;
  const auto batch_size = static_cast<size_t>(metadata.batch_size);
  std::vector<std::pair<size_t, at::Tensor>> pending;  // the next batch: (position in paths, decoded image)
  auto run_batch = [&]() {
    std::vector<at::Tensor> images;
    for (const auto& entry : pending) images.push_back(entry.second);
    // A static-batch export takes exactly batch_size images: the last batch is filled with
    // copies of its last image, whose detections are dropped.
    while (images.size() < batch_size) images.push_back(images.back());
    const auto batch = codetr::make_batch(images, metadata);
    const auto begin = std::chrono::steady_clock::now();
    auto detections = model->run(batch.images, batch.image_sizes);
    detections = {detections.boxes.cpu(), detections.scores.cpu(), detections.labels.cpu()};
    model_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - begin).count();
    ++batches;
    const auto per_image = codetr::postprocess(detections, batch, metadata.nms, score_threshold);
    for (size_t slot = 0; slot < pending.size(); ++slot) {
      const auto& [index, image] = pending[slot];
      const auto& path = paths[index];
      const int64_t id = image_id(path, static_cast<int64_t>(index) + 1);
      for (auto& entry : codetr::coco_results(id, per_image[slot], metadata.category_ids)) results.push_back(entry);
      image_entries.push_back(
          {{"id", id}, {"file_name", path.filename().string()}, {"height", image.size(1)}, {"width", image.size(2)}});
      if (options.draw) {
        auto drawn = image.clone();
        codetr::draw_boxes(drawn, per_image[slot].boxes);
        // The full file name, as `codetr infer` names its drawings, so that x.jpg and x.png stay apart.
        output.write(path.filename().string() + codetr::drawn_image_suffix(),
                     [&](const fs::path& file) { codetr::write_image(file, drawn); });
      }
    }
    pending.clear();
  };
  for (size_t index = 0; index < paths.size(); ++index) {
    try {
      pending.emplace_back(index, codetr::read_image(paths[index]));
    } catch (const std::runtime_error& error) {
      // As `codetr infer`: one unreadable file does not stop the others.
      std::fprintf(stderr, "skipped: %s\n", error.what());
      skipped.push_back(paths[index]);
      continue;
    }
    if (pending.size() == batch_size) run_batch();
  }
  if (!pending.empty()) run_batch();
  if (image_entries.empty()) {
    throw std::runtime_error("none of the " + std::to_string(paths.size()) +
                             " image(s) could be read (see the messages above)");
  }
  output.write("results.json", [&](const fs::path& file) { codetr::write_text(file, results.dump()); });
  output.write("images.json", [&](const fs::path& file) { codetr::write_text(file, image_entries.dump(1)); });
  output.commit();
  std::printf("codetr_infer: %zu image(s), %zu detection(s), model on %s, %.2f ms per batch of %zu (mean over %lld, "
              "incl. the copy to the host)\n",
              image_entries.size(), results.size(), model->device().c_str(), 1e3 * model_seconds / batches, batch_size,
              static_cast<long long>(batches));
  std::printf("codetr_infer: post-processing in the graph: %s; on the host: NMS %s, score > %g\n",
              metadata.in_graph.mode.c_str(), metadata.nms.kind.c_str(), score_threshold);
  std::printf("codetr_infer: wrote %s\n", (options.output / "results.json").c_str());
  if (!skipped.empty()) {
    std::string names;
    for (const auto& path : skipped) names += (names.empty() ? "" : ", ") + path.string();
    std::fprintf(stderr, "skipped %zu unreadable image(s): %s\n", skipped.size(), names.c_str());
    return 1;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(parse_options(argc, argv));
  } catch (const UsageError& error) {
    std::fprintf(stderr, "%serror: %s\n", kUsage, error.what());
    return 2;
  } catch (const c10::Error& error) {
    std::fprintf(stderr, "error: %s\n", error.what_without_backtrace());
    return 2;
  } catch (const std::exception& error) {
    std::fprintf(stderr, "error: %s\n", error.what());
    return 2;
  }
}
