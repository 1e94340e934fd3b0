#include "output_folder.h"

#include <algorithm>
#include <cerrno>
#include <stdexcept>

#include <signal.h>
#include <unistd.h>

namespace codetr {
namespace fs = std::filesystem;
namespace {

// `path` absolute, with links and dot parts resolved as far as it exists, without a trailing
// separator (as Python's Path.resolve), so that two names of one folder compare equal.
fs::path resolved(const fs::path& path) {
  const fs::path result = fs::weakly_canonical(fs::absolute(path));
  return result.has_filename() ? result : result.parent_path();
}

// Whether the resolved `path` is the resolved `folder` or inside it.
bool inside(const fs::path& path, const fs::path& folder) {
  return std::mismatch(folder.begin(), folder.end(), path.begin(), path.end()).first == folder.end();
}

// The first names in `folder`, sorted, for a message: "a, b, c, d, e, ...".
std::string listing(const fs::path& folder) {
  std::vector<std::string> names;
  for (const auto& entry : fs::directory_iterator(folder)) names.push_back(entry.path().filename().string());
  std::sort(names.begin(), names.end());
  std::string text;
  for (size_t index = 0; index < std::min<size_t>(names.size(), 5); ++index) text += (index ? ", " : "") + names[index];
  return names.size() > 5 ? text + ", ..." : text;
}

bool process_alive(pid_t pid) {
  // Signal 0 only checks that the process exists; EPERM: it does, owned by another user.
  return kill(pid, 0) == 0 || errno == EPERM;
}

// Removes the staging and replaced folders beside `path` (".<name>.partial-<pid>",
// ".<name>.replaced-<pid>") of this process and of processes that no longer run: a run killed
// before it could clean up (SIGKILL, Ctrl-C) leaves them, and nothing else would remove them.
void remove_stale_siblings(const fs::path& path) {
  const std::string prefix = "." + path.filename().string() + ".";
  std::vector<fs::path> stale;
  for (const auto& entry : fs::directory_iterator(path.parent_path())) {
    const std::string name = entry.path().filename().string();
    for (const std::string kind : {"partial-", "replaced-"}) {
      if (name.rfind(prefix + kind, 0) != 0) continue;
      const std::string pid = name.substr(prefix.size() + kind.size());
      if (pid.empty() || pid.size() > 9 || pid.find_first_not_of("0123456789") != std::string::npos) continue;
      const auto id = static_cast<pid_t>(std::stol(pid));
      if (id == getpid() || !process_alive(id)) stale.push_back(entry.path());
    }
  }
  std::error_code ignored;  // another run may be removing the same folder
  for (const auto& folder : stale) fs::remove_all(folder, ignored);
}

}  // namespace

OutputFolder::OutputFolder(const fs::path& path, const std::string& option, bool overwrite,
                           const std::vector<fs::path>& inputs)
    : given_(path), option_(option) {
  try {
    path_ = fs::absolute(path).lexically_normal();
    if (!path_.has_filename()) path_ = path_.parent_path();  // "out/"
    if (fs::exists(path_) && !fs::is_directory(path_)) {
      throw std::runtime_error(named("exists and is not a folder; give a folder (created if missing)"));
    }
    const fs::path target = resolved(path_);
    std::vector<std::pair<fs::path, std::string>> held{{fs::current_path(), "the current folder"}};
    for (const auto& input : inputs) held.emplace_back(input, "the input " + input.string());
    for (const auto& [kept, what] : held) {
      if (inside(resolved(kept), target)) {
        throw std::runtime_error(named("holds " + what + "; a finished run replaces " + given_.string() +
                                       " whole, so choose a folder outside it"));
      }
    }
    if (fs::is_directory(path_) && !overwrite && !fs::is_empty(path_)) {
      throw std::runtime_error(named("is not empty (holds " + listing(path_) +
                                     "); choose a new or empty folder, or pass --overwrite to replace that folder "
                                     "and everything in it"));
    }
    fs::path existing = path_.parent_path();
    std::vector<fs::path> missing;
    for (; !fs::exists(existing); existing = existing.parent_path()) missing.push_back(existing);
    if (!fs::is_directory(existing)) {
      throw std::runtime_error(named("cannot be created: " + existing.string() + " is not a folder"));
    }
    for (auto folder = missing.rbegin(); folder != missing.rend(); ++folder) {
      fs::create_directory(*folder);
      created_.insert(created_.begin(), *folder);
    }
    remove_stale_siblings(path_);
    staging_ = path_.parent_path() / ("." + path_.filename().string() + ".partial-" + std::to_string(getpid()));
    fs::create_directory(staging_);
  } catch (const fs::filesystem_error& error) {
    discard();
    throw std::runtime_error(named(std::string("cannot be written: ") + error.what()));
  } catch (...) {
    discard();
    throw;
  }
}

OutputFolder::~OutputFolder() {
  if (!committed_) discard();
}

void OutputFolder::write(const std::string& name, const std::function<void(const fs::path&)>& write) const {
  try {
    write(staging_ / name);
  } catch (const std::exception& error) {
    throw std::runtime_error(named("cannot be written (" + name + "): " + error.what()));
  }
}

void OutputFolder::commit() {
  try {
    if (!fs::exists(path_)) {
      fs::rename(staging_, path_);
      committed_ = true;
      return;
    }
    const fs::path replaced =
        path_.parent_path() / ("." + path_.filename().string() + ".replaced-" + std::to_string(getpid()));
    try {
      fs::rename(path_, replaced);
    } catch (const fs::filesystem_error& error) {  // e.g. an immutable folder (chattr +i), which no permission bit shows
      throw std::runtime_error(named("cannot be replaced with the finished run (" + error.code().message() +
                                     "); it was left as it was and the new run discarded"));
    }
    try {
      fs::rename(staging_, path_);
    } catch (...) {
      fs::rename(replaced, path_);
      throw;
    }
    committed_ = true;
    std::error_code ignored;  // the new run is in place; a leftover is removed by the next run
    fs::remove_all(replaced, ignored);
  } catch (const fs::filesystem_error& error) {
    throw std::runtime_error(named(std::string("cannot be written: ") + error.what()));
  }
}

std::string OutputFolder::named(const std::string& what) const {
  return option_ + " " + given_.string() + " " + what;
}

void OutputFolder::discard() noexcept {
  std::error_code ignored;  // best effort: the run already failed with its own message
  if (!staging_.empty()) fs::remove_all(staging_, ignored);
  for (const auto& folder : created_) fs::remove(folder, ignored);  // innermost first; only if left empty
}

}  // namespace codetr
