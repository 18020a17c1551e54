// mst-plan: see cli/cli.h for the command line and its exit codes.
#include <exception>
#include <iostream>

#include "cli/cli.h"

int main(int argc, char** argv) {
  try {
    std::vector<std::string> args(argv + 1, argv + argc);
    const int code = mstplan::cli::run_cli(args, std::cout, std::cerr);
    std::cout.flush();
    if (!std::cout) {  // a full disk or a closed pipe: the result did not arrive
      std::cerr << "mst-plan: could not write the output\n";
      return static_cast<int>(mstplan::cli::ExitCode::internal);
    }
    return code;
  } catch (const std::exception& e) {
    std::cerr << "mst-plan: internal error: " << e.what() << " (please report this with the command line)\n";
    return static_cast<int>(mstplan::cli::ExitCode::internal);
  }
}
