// The --output folder, written as one unit as `codetr infer` writes it (codetr.atomic:
// check_replaceable_dir, then atomic_dir): the run goes into a staging folder beside it and is
// swapped in whole only when complete, so the folder never mixes two runs' files and a failed run
// leaves it as it was.
#pragma once

#include <filesystem>
#include <functional>
#include <string>
#include <vector>

namespace codetr {

class OutputFolder {
 public:
  // Checks, before any work, that a run can replace `path` (named `option` in messages): it must be
  // missing or an empty folder, or any folder with `overwrite`; never a file, nor a folder holding
  // the current folder or one of `inputs` (the swap would delete them). Then creates the missing
  // parents and the empty staging folder `.<name>.partial-<pid>` beside it, after removing the
  // staging and replaced folders that killed runs left there. Throws std::runtime_error naming
  // `option` and `path`.
  OutputFolder(const std::filesystem::path& path, const std::string& option, bool overwrite,
               const std::vector<std::filesystem::path>& inputs);
  // Without commit(): removes the staging folder and the parents created for it.
  ~OutputFolder();
  OutputFolder(const OutputFolder&) = delete;
  OutputFolder& operator=(const OutputFolder&) = delete;

  // Calls `write` with the path of file `name` in the staging folder; its failure (a full disk, ...)
  // is rethrown naming the option.
  void write(const std::string& name, const std::function<void(const std::filesystem::path&)>& write) const;

  // Puts the finished staging folder at the path. What was there is moved aside first, removed only
  // once the new run is in place, and restored if that move fails.
  void commit();

 private:
  // "<option> <path> <what>": every message names the option and the path as given.
  std::string named(const std::string& what) const;
  // Removes the staging folder and the parents created for it.
  void discard() noexcept;

  std::filesystem::path given_;  // as the user wrote it, for messages
  std::string option_;
  std::filesystem::path path_;  // absolute, without a trailing separator
  std::filesystem::path staging_;
  std::vector<std::filesystem::path> created_;  // parents created for the staging folder, innermost first
  bool committed_ = false;
};

}  // namespace codetr
