#pragma once
// Helpers shared by the tests: a scratch folder that cleans up after itself, and an in-process
// run of the command line that captures both streams and the exit code.
#include <filesystem>
#include <string>
#include <vector>

namespace mstplan::test {

/// A fresh folder under the system temp dir, removed with everything in it at destruction.
class ScratchDir {
 public:
  ScratchDir();
  ~ScratchDir();
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;

  /// Writes `content` (bytes, verbatim) to `name` inside the folder; returns the full path.
  std::string write(const std::string& name, const std::string& content) const;
  [[nodiscard]] const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

struct CliResult {
  int code = -1;
  std::string out;
  std::string err;
};

/// Runs mst-plan in-process with `args` (without the program name).
CliResult run(const std::vector<std::string>& args);

/// Text of a file of the source tree ("models/llama3-8b.yaml").
std::string source_file(const std::string& relative);

/// Text of any file (empty when it cannot be read).
std::string source_file_at(const std::string& path);

/// Path of a file under tests/data.
std::string data_path(const std::string& relative);

}  // namespace mstplan::test
