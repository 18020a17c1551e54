#pragma once
// The mst-plan command line, as a function so that tests can run it in-process.
//
//   std::ostringstream out, err;
//   int code = run_cli({"--model", "llama3-8b", "--gpu", "A100-80G", "--json"}, out, err);
//
// Exit codes (also in --help and the README):
//   0  success
//   1  the output could not be written, or an internal error (a bug: please report it)
//   2  usage: unknown flag, bad flag value, missing --model or --gpu
//   3  bad input: a model, GPU or scenario that cannot be found, read, parsed or accepted
//   4  unavailable: what was asked for needs something this machine lacks (a CUDA device)
//   5  no fit: no plan fits, so --out wrote nothing
//   6  mismatch: run/verify measured memory, loss or gradients beyond the documented tolerance,
//      or fidelity found prediction errors beyond its bounds
#include <iosfwd>
#include <string>
#include <vector>

namespace mstplan::cli {

enum class ExitCode : int { ok = 0, internal = 1, usage = 2, input = 3, unavailable = 4, no_fit = 5, mismatch = 6 };

/// Runs mst-plan with `args` (without the program name); writes results to `out` and one-line
/// errors to `err`; returns the exit code.
int run_cli(const std::vector<std::string>& args, std::ostream& out, std::ostream& err);

/// "mst-plan 0.1.0 (commit 1a2b3c4d5e6f, CUDA backend: yes)".
std::string version_string();

}  // namespace mstplan::cli
