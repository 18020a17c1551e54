// The mst-plan command line: its flags and subcommands (CLI11), and the dispatch to the commands of
// command.h, one file each.
#include "cli/cli.h"

#include <array>
#include <charconv>
#include <string>
#include <utility>
#include <vector>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <fmt/ostream.h>

#include "cli/command.h"
#include "cli/run_command.h"
#include "runtime/device_probe.h"

#ifndef MSTPLAN_VERSION
#define MSTPLAN_VERSION "unknown"
#endif
#ifndef MSTPLAN_GIT_COMMIT
#define MSTPLAN_GIT_COMMIT "unknown"
#endif

namespace mstplan::cli {
namespace {

// "mst-plan report --model llama3-8b ...": how the user asked, for the report's first line.
std::string command_line(const std::vector<std::string>& args) {
  std::string out = "mst-plan";
  for (const std::string& a : args) {
    const bool plain = !a.empty() && a.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
                                                         "-_./=:+,@%") == std::string::npos;
    out += " " + (plain ? a : "'" + a + "'");
  }
  return out;
}

constexpr const char* kFooter = R"(Examples:
  mst-plan --model llama3-8b --gpu A100-80G
  mst-plan --model llama3-70b --gpu H100-80G --precision mixed --json
  mst-plan --model path/to/config.json --gpu h200 --seq 128K --batch 2
  mst-plan --scenario scenarios/examples/llama3-8b-a100.yaml --optimizer adamw-8bit
  mst-plan models                    # the model catalog;  mst-plan models gemma2-9b  prints one spec
  mst-plan gpus                      # the GPU catalog
  mst-plan clusters                  # the cluster catalog (nodes, links, host memory)
  mst-plan --model llama3-8b --gpu H100-80G --gpus 8 --zero 3   # one rank of 8, ZeRO-3; layouts compared
  mst-plan --model llama3-8b --gpu H100 --seq 64K --out plan.yaml   # fastest plan for 64K tokens
  mst-plan show plan.yaml            # rebuild a plan file's step and check its prediction
  mst-plan devices                   # the CUDA devices of this machine against the catalog
  mst-plan --model tiny-llama --gpu A100-80G --seq 256 --out tiny.yaml && mst-plan verify tiny.yaml
  mst-plan run tiny.yaml --steps 20  # execute it: loss per step, predicted against measured memory
  mst-plan report --model llama3-8b --gpu A100-80G --out my-report   # Markdown + SVG trade-off report
  mst-plan sweep reports/examples.yaml --out reports                 # many reports and an index
  mst-plan fidelity                  # measured steps (scenarios/measured/) against the prediction

Exit codes: 0 success, 1 output not written or internal error, 2 usage (bad flag or value), 3 bad
input (model, GPU, scenario or plan not found, unreadable, malformed or invalid), 4 unavailable (no
CUDA device, or a plan too large for this machine's memory), 5 nothing fits, so --out wrote no
plan, 6 run/verify found memory, loss or gradients beyond the documented tolerance, or fidelity
found prediction errors beyond its bounds. Formats of model, GPU, scenario, sweep and measurement
files: docs/specs.md.)";

}  // namespace

std::string version_string() {
  return fmt::format("mst-plan {} (commit {}, CUDA backend: {})", MSTPLAN_VERSION, MSTPLAN_GIT_COMMIT,
                     runtime::cuda_compiled() ? "compiled in" : "not compiled in");
}

int run_cli(const std::vector<std::string>& args, std::ostream& out, std::ostream& err) {
  CLI::App app{"mst-plan: the longest sequence you can train a model on a GPU, how, and how fast.\n"
               "Plans Mini-Sequence Transformer training (chunked MLP and LM head + recomputation) byte by byte.",
               "mst-plan"};
  app.footer(kFooter);
  app.get_formatter()->column_width(34);
  app.require_subcommand(0, 1);

  PlanFlags f;
  bool version = false;
  app.add_flag("--version", version, "Print the version and whether the CUDA backend is compiled in");
  auto option = [&app](Flag& flag, const char* names, const char* type, const std::string& help) {
    flag.option = app.add_option(names, flag.value, help)->type_name(type);
  };
  option(f.model, "--model,-m", "NAME|PATH",
         "Model: a catalog name (mst-plan models), a YAML spec, or a Hugging Face config.json or its folder; "
         "e.g. --model llama3-8b");
  option(f.gpu, "--gpu,-g", "NAME|PATH", "GPU: a catalog name or alias (mst-plan gpus) or a YAML spec; e.g. --gpu A100-80G");
  option(f.scenario, "--scenario,-s", "FILE",
         "Scenario YAML with the setup (and optionally model and GPU); flags override it; "
         "e.g. --scenario scenarios/examples/llama3-8b-a100.yaml");
  option(f.batch, "--batch,-b", "N", "Sequences per micro-batch (default 1); e.g. --batch 2");
  option(f.seq, "--seq", "N|search", "Sequence length in tokens, or 'search' for the maximum (default); e.g. --seq 128K");
  option(f.precision, "--precision", "bf16|mixed|fp32",
         "bf16: bf16 weights and optimizer state (default); mixed: fp32 master weights and state; "
         "fp32: everything fp32 (native profile); "
         "e.g. --precision mixed");
  option(f.optimizer, "--optimizer", "NAME",
         "adamw (default), adamw-8bit, sgd (no momentum), none (frozen weights); e.g. --optimizer adamw-8bit");
  bool in_backward = false;  // presence is read through the options
  bool not_in_backward = false;
  f.in_backward.option = app.add_flag("--optimizer-in-backward", in_backward,
                                      "Apply each parameter's update as soon as its gradient is complete (the default); "
                                      "e.g. --optimizer-in-backward");
  f.not_in_backward.option = app.add_flag(
      "--no-optimizer-in-backward", not_in_backward,
      "Keep every gradient until a separate optimizer step after backward; e.g. --no-optimizer-in-backward");
  option(f.grad_accum, "--grad-accum", "N", "Micro-batches accumulated per optimizer step (default 1); e.g. --grad-accum 4");
  option(f.attention, "--attention", "NAME",
         "flash (default, O(S) extra memory; pytorch profile: SDPA), eager (S x S scores), or flash-attn (pytorch "
         "profile: attn_implementation=flash_attention_2); e.g. --attention eager");
  option(f.framework, "--framework", "NAME",
         "pytorch profile: the modelling code, transformers-5 (default; 4.49 and later), transformers-4.46, "
         "transformers-4.44 (up to 4.45: fp32 logits from the model) or torchtune; e.g. --framework transformers-4.44");
  bool hold_outputs = false, expandable = false;
  f.hold_outputs.option = app.add_flag("--hold-outputs", hold_outputs,
                                       "pytorch profile: the loop keeps `outputs` (the logits) through backward into the "
                                       "next step, as `outputs = model(...); outputs.loss.backward()` does (the HF Trainer "
                                       "drops them); e.g. --hold-outputs");
  f.expandable_segments.option = app.add_flag("--expandable-segments", expandable,
                                              "pytorch profile: PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True; "
                                              "e.g. --expandable-segments");
  option(f.gpus, "--gpus", "N|auto",
         "Data-parallel GPUs, each running the step on its own micro-batch (default 1); memory is per rank, tokens/s "
         "of all; auto (with --seq): the fewest GPUs and the ZeRO stage that fit; e.g. --gpus 8");
  option(f.zero, "--zero", "0|1|2|3",
         "With --gpus: what the ranks shard (ZeRO stage): 0 nothing (DDP, default), 1 optimizer state, 2 and "
         "gradients, 3 and weights (FSDP full shard); e.g. --zero 3");
  option(f.sp, "--sp", "N",
         "With --gpus: Ulysses sequence parallelism, N ranks sharing each sequence (all-to-alls around attention; N "
         "divides --gpus and the query heads); default 1, and the layouts table compares the others; e.g. --sp 8");
  option(f.cp, "--cp", "N",
         "With --gpus: context parallelism, N ranks sharing each sequence (keys and values all-gathered for "
         "attention, their gradients reduce-scattered; N divides --gpus; native profile, not with --sp); default 1; "
         "e.g. --cp 4");
  bool offload_optimizer = false;
  f.offload_optimizer.option = app.add_flag(
      "--offload-optimizer", offload_optimizer,
      "ZeRO-Offload: fp32 master weights, AdamW state and the gradient shards in host memory, DeepSpeed's CPU Adam "
      "stepping them after backward (implies --no-optimizer-in-backward); one GPU, or --zero 2 or 3; "
      "e.g. --offload-optimizer");
  bool offload_param = false;
  f.offload_param.option = app.add_flag(
      "--offload-param", offload_param,
      "ZeRO-Infinity's parameter offload: the weights (the rank's shard) in host memory too, each layer's uploaded "
      "before use (implies --offload-optimizer); one GPU, or --zero 3; e.g. --offload-param");
  option(f.adapter, "--adapter", "lora|none",
         "Parameter-efficient fine-tuning: lora trains rank-r adapters (A, B) on the chosen linears of every layer "
         "and freezes the base weights (no gradients, no optimizer state); default none; e.g. --adapter lora");
  option(f.lora_rank, "--lora-rank", "R", "With --adapter lora: the adapters' rank (default 16); e.g. --lora-rank 64");
  option(f.lora_alpha, "--lora-alpha", "X",
         "With --adapter lora: the update's scale is alpha / r (default 16; no bytes depend on it); e.g. --lora-alpha 32");
  option(f.lora_targets, "--lora-targets", "LIST",
         "With --adapter lora: the adapted linears, of q,k,v,o,gate,up,down (default all seven); e.g. --lora-targets q,v");
  option(f.lora_dropout, "--lora-dropout", "P",
         "With --adapter lora, pytorch profile: PEFT's lora_dropout, whose mask and output are kept for backward "
         "(default 0); e.g. --lora-dropout 0.05");
  option(f.adapter_dtype, "--adapter-dtype", "bf16|fp32",
         "With --adapter lora: the adapters' weights, gradients and AdamW state (default: native bf16; pytorch fp32, "
         "PEFT's upcast); e.g. --adapter-dtype bf16");
  option(f.base, "--base", "bf16|int8|nf4|fp4",
         "With --adapter lora: the frozen base linears' storage, bf16 (default), int8 (bitsandbytes LLM.int8) or nf4 / "
         "fp4 (bitsandbytes 4-bit, QLoRA); e.g. --base nf4");
  bool no_double_quant = false;
  f.no_double_quant.option = app.add_flag(
      "--no-double-quant", no_double_quant,
      "With --base nf4 or fp4: fp32 block scales instead of QLoRA's double quantization (the default); "
      "e.g. --no-double-quant");
  option(f.cluster, "--cluster", "NAME|PATH",
         "With --gpus: the nodes and links (mst-plan clusters; default: the catalog node of the GPU); "
         "e.g. --cluster DGX-H100");
  option(f.profile, "--profile", "native|pytorch",
         "Who executes the step: native (this project's runtime, default) or pytorch (transformers on "
         "autograd); e.g. --profile pytorch");
  option(f.method, "--method", "METHOD",
         "Only this method: vanilla, recompute, mst, mst-offload or auto (default: all, choosing auto's plan), or "
         "mst-reference (pytorch profile: the MST authors' code); e.g. --method mst");
  option(f.out, "--out,-o", "FILE", "Write the chosen plan as a plan file (read by `mst-plan show`); e.g. --out plan.yaml");
  option(f.export_engine, "--export", "ENGINE",
         "With --out: also write the plan as the config of a training engine, beside the plan file: deepspeed (an "
         "ArcticTraining recipe: ZeRO-3, Ulysses, TiledMLP, Liger), accelerate (FSDP2 or DDP, with the Trainer's "
         "arguments); needs --profile pytorch, implies --no-optimizer-in-backward, and keeps auto to plans the engine "
         "can run; e.g. --export deepspeed");
  app.add_flag("--json", f.json, "Print JSON instead of tables (also for the subcommands); e.g. --json | jq .model.parameters");

  std::string models_which;
  bool models_json = false;
  CLI::App* models = app.add_subcommand("models", "List the model catalog, or print one spec as YAML (a name or a file: "
                                                  "converts a config.json); e.g. mst-plan models llama3-8b");
  models->add_option("model", models_which, "A model name or file")->type_name("NAME|PATH");
  models->add_flag("--json", models_json, "Print JSON");

  std::string gpus_which;
  bool gpus_json = false;
  CLI::App* gpus = app.add_subcommand("gpus", "List the GPU catalog, or print one spec as YAML; e.g. mst-plan gpus h100");
  gpus->add_option("gpu", gpus_which, "A GPU name or file")->type_name("NAME|PATH");
  gpus->add_flag("--json", gpus_json, "Print JSON");

  std::string clusters_which;
  bool clusters_json = false;
  CLI::App* clusters = app.add_subcommand(
      "clusters", "List the cluster catalog (one node each), or print one spec as YAML; e.g. mst-plan clusters dgx-h100");
  clusters->add_option("cluster", clusters_which, "A cluster name or file")->type_name("NAME|PATH");
  clusters->add_flag("--json", clusters_json, "Print JSON");

  std::string show_file;
  CLI::App* show = app.add_subcommand("show", "Rebuild the step of a plan file and check the prediction it carries; "
                                              "e.g. mst-plan show plan.yaml");
  show->add_option("plan", show_file, "A plan file written by --out")->type_name("FILE")->required();
  bool show_json = false;
  show->add_flag("--json", show_json, "Print JSON");

  RunCommand run_cmd, verify_cmd;
  verify_cmd.verify = true;
  // Read as text and checked after parsing: CLI11 would wrap -1 into a uint64 and let nan past a range.
  std::array<std::string, 2> seed_text, ignore_text;
  CLI::App* run = app.add_subcommand(
      "run", "Execute a plan file with the bundled runtime and compare measured with predicted memory; "
             "e.g. mst-plan run plan.yaml --steps 3");
  CLI::App* verify = app.add_subcommand(
      "verify", "Run one step of a plan file and check memory, loss, every gradient and every updated parameter "
                "against a plain step (no chunks, no recompute); e.g. mst-plan verify plan.yaml");
  for (std::size_t which = 0; which < 2; ++which) {
    CLI::App* sub = which == 0 ? run : verify;
    RunCommand* cmd = which == 0 ? &run_cmd : &verify_cmd;
    sub->add_option("plan", cmd->plan_file, "A plan file written by --out")->type_name("FILE")->required();
    sub->add_option("--backend", cmd->backend, "cpu (the reference kernels; default) or cuda")->type_name("NAME");
    sub->add_option("--seed", seed_text[which], "Seed of the synthetic weights and data, 0 to 2^64 - 1 (default 1)")
        ->type_name("N");
    sub->add_option("--ignore-fraction", ignore_text[which],
                    "Share of labels set to -100 (ignored by the loss), 0 to 1 (default 0)")
        ->type_name("X");
    sub->add_flag("--json", cmd->json, "Print JSON");
  }
  run->add_option("--steps", run_cmd.steps, "Training steps to run (default 3)")->type_name("N")->check(CLI::Range(1, 1000000));
  run->add_flag("--memory-only", run_cmd.memory_only,
                "Allocate and free every tensor as the step does but run no kernel: whether a long plan fits, in "
                "seconds (no loss)");

  ReportFlags report_flags;
  CLI::App* report_cmd = app.add_subcommand(
      "report", "Write a trade-off report (Markdown, SVG figures through gnuplot, CSV/JSON data) for a model and a GPU; "
                "takes the planning flags; e.g. mst-plan report --model llama3-8b --gpu A100-80G --out reports/mine");
  report_cmd->fallthrough();  // the planning flags (--model, --gpu, --batch, ...) belong to the main command
  report_cmd->add_option("--out,-o", report_flags.out, "The folder to write (created; an earlier report there is replaced)")
      ->type_name("DIR");
  report_cmd->add_option("--measured", report_flags.measured,
                         "Measurement files to compare with, besides scenarios/measured/ (repeatable)")
      ->type_name("FILE");
  report_cmd->add_flag("--json", report_flags.json, "Print what was written as JSON");

  ReportFlags sweep_flags;
  CLI::App* sweep_cmd = app.add_subcommand(
      "sweep", "One report per scenario, in parallel, and an index with a summary table; FILEs are scenario files or "
               "sweep files (models x GPUs x setups); e.g. mst-plan sweep reports/examples.yaml --out reports");
  sweep_cmd->add_option("files", sweep_flags.files, "Scenario or sweep files")->type_name("FILE...")->required();
  sweep_cmd->add_option("--out,-o", sweep_flags.out, "The folder for the reports and index.md")->type_name("DIR");
  sweep_cmd->add_option("--jobs,-j", sweep_flags.jobs, "Reports built at once (default: one per hardware thread)")
      ->type_name("N")
      ->check(CLI::Range(1, 1024));
  sweep_cmd->add_option("--measured", sweep_flags.measured,
                        "Measurement files to compare with, besides scenarios/measured/ (repeatable)")
      ->type_name("FILE");

  FidelityFlags fidelity_flags;
  CLI::App* fidelity_cmd = app.add_subcommand(
      "fidelity", "Every measured step (scenarios/measured/, --measured) against the planner's prediction, with the "
                  "errors; exit 6 beyond the bounds (median 2%, worst 5%, longest 3%); e.g. mst-plan fidelity");
  fidelity_cmd->add_option("--measured", fidelity_flags.measured, "More measurement files (repeatable)")->type_name("FILE");
  fidelity_cmd->add_flag("--no-builtin", fidelity_flags.no_builtin, "Leave out scenarios/measured/");
  fidelity_cmd->add_option("--profile", fidelity_flags.profile, "pytorch (default), native or all")->type_name("NAME");
  fidelity_cmd->add_flag("--json", fidelity_flags.json, "Print JSON");
  fidelity_cmd->add_flag("--published", fidelity_flags.published,
                         "Published measurements (tests/data/published/) instead: peak memory, longest lengths and "
                         "tokens/s of papers and recipes; exit 6 beyond their bounds (peak median 3%, worst 8%, longest "
                         "20%, tokens/s median 15%)");
  fidelity_cmd->add_option("--case", fidelity_flags.cases, "More published case files, with --published (repeatable)")
      ->type_name("FILE");

  bool devices_json = false;
  CLI::App* devices = app.add_subcommand(
      "devices", "Probe this machine's CUDA devices and compare their memory with the catalog; e.g. mst-plan devices");
  devices->add_flag("--json", devices_json, "Print JSON");

  // A planning flag after another subcommand reaches the main command, which then names it and
  // the subcommand it does not apply to (rather than CLI11's "not expected").
  for (CLI::App* sub : {models, gpus, clusters, show, run, verify, sweep_cmd, fidelity_cmd, devices}) sub->fallthrough();

  std::vector<const char*> argv{"mst-plan"};
  for (const std::string& a : args) argv.push_back(a.c_str());
  try {
    app.parse(static_cast<int>(argv.size()), argv.data());
  } catch (const CLI::CallForHelp&) {
    out << app.help();
    return 0;
  } catch (const CLI::CallForAllHelp&) {
    out << app.help("", CLI::AppFormatMode::All);
    return 0;
  } catch (const CLI::ParseError& e) {
    std::string message = e.what();
    fmt::print(err, "mst-plan: {} (see mst-plan --help)\n", message);
    return static_cast<int>(ExitCode::usage);
  }

  if (version) {
    out << version_string() << '\n';
    return 0;
  }
  std::optional<Failure> failure;
  CLI::App* subcommand = app.get_subcommands().empty() ? nullptr : app.get_subcommands().front();
  if (report_cmd->parsed()) {
    failure = run_report(f, report_flags, command_line(args), out);
  } else if (subcommand && !f.given_names().empty()) {
    failure = usage(fmt::format("{} applies to planning, not to 'mst-plan {}'", f.given_names().front(),
                                subcommand->get_name()));
  } else if (fidelity_cmd->parsed()) {
    fidelity_flags.json = fidelity_flags.json || f.json;
    failure = run_fidelity(fidelity_flags, out);
  } else if (sweep_cmd->parsed()) {
    failure = run_sweep_command(sweep_flags, command_line(args), out, err);
  } else if (models->parsed()) {
    failure = run_models(models_which, models_json || f.json, out);
  } else if (gpus->parsed()) {
    failure = run_gpus(gpus_which, gpus_json || f.json, out);
  } else if (clusters->parsed()) {
    failure = run_clusters(clusters_which, clusters_json || f.json, out);
  } else if (devices->parsed()) {
    failure = run_devices(devices_json || f.json, out);
  } else if (show->parsed()) {
    failure = run_show(show_file, show_json || f.json, out);
  } else if (run->parsed() || verify->parsed()) {
    const std::size_t which = run->parsed() ? 0 : 1;
    RunCommand& cmd = which == 0 ? run_cmd : verify_cmd;
    cmd.json = cmd.json || f.json;
    if (!seed_text[which].empty()) {
      const std::string& t = seed_text[which];
      const auto [end, ec] = std::from_chars(t.data(), t.data() + t.size(), cmd.seed);
      if (ec != std::errc() || end != t.data() + t.size()) {
        failure = usage(fmt::format("--seed: expected an integer from 0 to 18446744073709551615, got '{}'", printable(t)));
      }
    }
    if (!failure && !ignore_text[which].empty()) {
      const std::string& t = ignore_text[which];
      double x = 0;
      const auto [end, ec] = std::from_chars(t.data(), t.data() + t.size(), x);
      if (ec != std::errc() || end != t.data() + t.size() || !(x >= 0.0 && x <= 1.0)) {
        failure = usage(fmt::format("--ignore-fraction: expected a number from 0 to 1, got '{}'", printable(t)));
      } else {
        cmd.ignore_fraction = x;
      }
    }
    if (!failure) {
      const RunOutcome outcome = run_command(cmd, out);
      if (outcome.code != 0) failure = Failure{static_cast<ExitCode>(outcome.code), outcome.message};
    }
  } else {
    failure = run_plan(f, out);
  }
  if (failure) {
    fmt::print(err, "mst-plan: {}\n", failure->message);
    return static_cast<int>(failure->code);
  }
  return 0;
}

}  // namespace mstplan::cli
