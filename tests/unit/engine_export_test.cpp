// Engine exports (Note [Engine exports] in planner/engine_export.cpp): what each engine can run, how
// auto is kept to it, and the files written, read back as the engine would read them.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <yaml-cpp/yaml.h>

#include "planner/catalog.h"
#include "planner/engine_export.h"
#include "planner/hf_config.h"
#include "planner/search.h"
#include "test_util.h"

namespace mstplan {
namespace {

using ::testing::HasSubstr;

// ALST's single-node recipe as the pytorch profile: ZeRO-3, Ulysses over 8, CPU Adam, flash-attn.
TrainingSetup alst(std::int64_t seq_len) {
  TrainingSetup s;
  s.seq_len = seq_len;
  s.profile = Profile::pytorch;
  s.attention = AttentionKind::flash_attn;
  s.expandable_segments = true;
  s.parallel = Parallelism{8, ZeroStage::parameters, 8};
  s.offload_optimizer = true;
  s.optimizer_in_backward = false;
  return s;
}

TrainingSetup fsdp() {
  TrainingSetup s;
  s.profile = Profile::pytorch;
  s.precision = Precision::mixed;
  s.optimizer_in_backward = false;
  s.parallel = Parallelism{8, ZeroStage::parameters, 1};
  return s;
}

PlanFile plan_file(const ModelSpec& m, const TrainingSetup& s, const Plan& p, std::int64_t seq_len) {
  return PlanFile{m, *resolve_gpu("H100-80G"), s, p, seq_len, Prediction{"auto", 70LL << 30, 69LL << 30, 71LL << 30,
                                                                           "layer.31.bwd.attention.grad", 512.0},
                  s.parallel.gpus > 1
                      ? std::optional(*cluster_for_ranks(std::nullopt, *resolve_gpu("H100-80G"), s.parallel.gpus))
                      : std::nullopt};
}

Plan liger_tiled(const ModelSpec& m) {
  Plan p = Plan::mst_reference(m);
  p.lm_head_mode = LmHeadMode::forward_grad;
  p.offload_checkpoints = true;
  return p;
}

TEST(EngineExport, SetupsTheEnginesDoNotRunAreRefusedWithTheFlagToChange) {
  const ModelSpec m = *resolve_model("llama3.1-8b");
  EXPECT_FALSE(export_setup_problem(Engine::deepspeed, m, alst(1 << 20)));
  EXPECT_FALSE(export_setup_problem(Engine::accelerate, m, fsdp()));
  auto refused = [&](Engine e, TrainingSetup s, const char* says) {
    const auto why = export_setup_problem(e, m, s);
    ASSERT_TRUE(why.has_value()) << says;
    EXPECT_THAT(*why, HasSubstr(says));
  };
  TrainingSetup native = alst(1 << 20);
  native.profile = Profile::native;
  refused(Engine::deepspeed, native, "--profile pytorch");
  TrainingSetup in_backward = fsdp();
  in_backward.optimizer_in_backward = true;
  refused(Engine::accelerate, in_backward, "--no-optimizer-in-backward");
  TrainingSetup ddp = alst(1 << 20);
  ddp.parallel = Parallelism{8, ZeroStage::none, 1};
  ddp.offload_optimizer = false;
  refused(Engine::deepspeed, ddp, "--zero 3");
  refused(Engine::deepspeed, fsdp(), "--precision is mixed");
  refused(Engine::accelerate, alst(1 << 20), "--export deepspeed for --sp");
  TrainingSetup eager = alst(1 << 20);
  eager.attention = AttentionKind::eager;
  refused(Engine::deepspeed, eager, "not eager");
  refused(Engine::torchtitan, fsdp(), "torchtitan is not exported");
  // Context parallelism is the native profile's: its own reason, not "add --profile pytorch" (which
  // the pytorch profile would then refuse).
  TrainingSetup context = alst(1 << 20);
  context.profile = Profile::native;
  context.parallel.sp = 1;
  context.parallel.cp = 8;
  for (Engine e : {Engine::deepspeed, Engine::accelerate}) refused(e, context, "context parallelism (cp 8)");
}

TEST(EngineExport, AModelWithoutNameOrPathIsRefused) {
  ModelSpec m = *resolve_model("llama3.1-8b");
  m.name_or_path.clear();
  const auto why = export_setup_problem(Engine::deepspeed, m, alst(1 << 20));
  ASSERT_TRUE(why.has_value());
  EXPECT_THAT(*why, HasSubstr("has no name_or_path"));
}

TEST(EngineExport, PlansOutsideTheEnginesKnobsAreNamed) {
  const ModelSpec m = *resolve_model("llama3.1-8b");
  const TrainingSetup s = alst(1 << 20);
  EXPECT_FALSE(export_plan_problem(Engine::deepspeed, m, s, liger_tiled(m)));
  Plan selective = liger_tiled(m);
  selective.recompute = RecomputeKind::selective;
  EXPECT_THAT(export_plan_problem(Engine::deepspeed, m, s, selective).value_or(""), HasSubstr("selective"));
  Plan partial = liger_tiled(m);
  partial.recompute_layers = {0, 1, 2};
  EXPECT_THAT(export_plan_problem(Engine::deepspeed, m, s, partial).value_or(""), HasSubstr("not 3 of 32"));
  Plan small_tiles = liger_tiled(m);
  small_tiles.mlp = ChunkSetting{{}, 1024};  // TiledMLP's shards are hidden_size (4096) tokens
  EXPECT_THAT(export_plan_problem(Engine::deepspeed, m, s, small_tiles).value_or(""), HasSubstr("TiledMLP"));
  // The MST reference LM head recomputes its logits in backward: with Ulysses ArcticTraining's
  // non-Liger loss shards by 1 GiB of logits, which no plan states.
  Plan recompute_head = Plan::mst_reference(m);
  EXPECT_THAT(export_plan_problem(Engine::deepspeed, m, s, recompute_head).value_or(""), HasSubstr("1 GiB"));
  // Unchunked and kept is transformers' own loss: only with one rank per sequence.
  TrainingSetup one = s;
  one.parallel = Parallelism{8, ZeroStage::parameters, 1};
  EXPECT_FALSE(export_plan_problem(Engine::deepspeed, m, one, Plan::recompute_all()));
  EXPECT_TRUE(export_plan_problem(Engine::deepspeed, m, s, Plan::recompute_all()));
  // accelerate: no tiling, no checkpoint offload.
  EXPECT_THAT(export_plan_problem(Engine::accelerate, m, fsdp(), liger_tiled(m)).value_or(""), HasSubstr("offload"));
  Plan tiled = liger_tiled(m);
  tiled.offload_checkpoints = false;
  EXPECT_THAT(export_plan_problem(Engine::accelerate, m, fsdp(), tiled).value_or(""), HasSubstr("chunked MLP"));
}

TEST(EngineExport, ExpressingAPlanGivesOneTheEngineRunsAndIsIdempotent) {
  const ModelSpec m = *resolve_model("llama3.1-8b");
  Plan selective_partial = Plan::mst_reference(m);
  selective_partial.recompute = RecomputeKind::selective;
  selective_partial.recompute_layers = {0, 5};
  Plan paper = Plan::mst_reference(m);
  paper.mlp_mode = MlpMode::paper;
  paper.mlp = ChunkSetting{3, {}};
  Plan finest = liger_tiled(m);
  finest.mlp = ChunkSetting{{}, 1024};
  finest.lm_head = ChunkSetting{{}, 512};
  Plan offloaded_no_recompute = Plan::vanilla();
  offloaded_no_recompute.offload_checkpoints = true;
  for (const auto& [engine, setup] :
       {std::pair{Engine::deepspeed, alst(1 << 20)}, std::pair{Engine::accelerate, fsdp()}}) {
    for (const Plan& p : {Plan::vanilla(), Plan::recompute_all(), Plan::mst_reference(m), selective_partial, paper,
                          finest, offloaded_no_recompute}) {
      const std::optional<Plan> q = express_plan(engine, m, setup, p);
      ASSERT_TRUE(q.has_value());
      EXPECT_FALSE(export_plan_problem(engine, m, setup, *q)) << to_string(engine);
      EXPECT_EQ(express_plan(engine, m, setup, *q), q);
    }
  }
  // What each becomes for ArcticTraining with Ulysses: every layer checkpointed, TiledMLP's chunks
  // of d tokens, Liger's loss.
  const Plan q = *express_plan(Engine::deepspeed, m, alst(1 << 20), selective_partial);
  EXPECT_EQ(q.recompute, RecomputeKind::full);
  EXPECT_TRUE(q.recompute_layers.empty());
  EXPECT_EQ(q.mlp, (ChunkSetting{{}, 4096}));
  EXPECT_EQ(q.mlp_mode, MlpMode::tiled);
  EXPECT_EQ(q.lm_head_mode, LmHeadMode::forward_grad);
  EXPECT_EQ(q.lm_head, (ChunkSetting{32, {}}));  // ceil(128256 / 4096)
  EXPECT_FALSE(express_plan(Engine::deepspeed, m, alst(1 << 20), Plan::mst_authors()).has_value());
}

TEST(EngineExport, AutoKeepsToPlansTheEngineRuns) {
  // On one H100 with the pytorch profile, auto's answer for an export is a plan the engine runs,
  // and not longer than auto's answer without the constraint.
  const ModelSpec m = *resolve_model("llama3.2-1b");
  TrainingSetup s;
  s.profile = Profile::pytorch;
  s.optimizer_in_backward = false;
  const GpuSpec gpu = *resolve_gpu("H100-80G");
  const std::array<Method, 1> automatic{Method::automatic};
  const SearchResult free = search(m, gpu, s, automatic, SearchOptions{});
  for (Engine e : {Engine::deepspeed, Engine::accelerate}) {
    SearchOptions options;
    options.express = [&](const TrainingSetup& at, const Plan& p) { return express_plan(e, m, at, p); };
    const SearchResult kept = search(m, gpu, s, automatic, options);
    ASSERT_TRUE(kept.methods[0].at_max.has_value());
    EXPECT_FALSE(export_plan_problem(e, m, s, kept.methods[0].at_max->plan)) << to_string(e);
    EXPECT_LE(kept.methods[0].at_max->seq_len, free.methods[0].at_max->seq_len);
    for (const Evaluation& point : kept.pareto) EXPECT_FALSE(export_plan_problem(e, m, s, point.plan));
  }
}

TEST(EngineExport, EveryLayoutIsKeptToWhatTheEngineRunsThere) {
  // One rank per sequence may keep transformers' unchunked loss; with Ulysses ArcticTraining's loss
  // is Liger's or a 1 GiB tiling no plan states: each layout's plan is expressed for its own degree.
  const ModelSpec m = *resolve_model("llama3.2-1b");
  const GpuSpec gpu = *resolve_gpu("H100-80G");
  TrainingSetup s = alst(0);
  s.seq_len.reset();
  s.parallel.sp = 1;
  SearchOptions options;
  options.cluster = *cluster_for_ranks(std::nullopt, gpu, 8);
  options.express = [&](const TrainingSetup& at, const Plan& p) { return express_plan(Engine::deepspeed, m, at, p); };
  const std::vector<LayoutResult> layouts = search_layouts(m, gpu, s, options);
  ASSERT_FALSE(layouts.empty());
  // Every plan each layout offers (its longest, and each of its trade-offs, where the faster,
  // shorter plans are those that could keep the unchunked loss) is one its engine runs there.
  std::int64_t ulysses_points = 0;
  bool unchunked_loss_alone = false;
  for (const LayoutResult& l : layouts) {
    TrainingSetup at = s;
    at.parallel.zero = l.zero;
    at.parallel.sp = l.sp;
    std::vector<const Evaluation*> offered;
    if (l.longest) offered.push_back(&*l.longest);
    for (const Evaluation& e : l.pareto) offered.push_back(&e);
    for (const Evaluation* e : offered) {
      EXPECT_FALSE(export_plan_problem(Engine::deepspeed, m, at, e->plan)) << "sp " << l.sp << ": " << describe_plan(e->plan, m, e->positions) << " at " << e->seq_len;
      if (l.sp > 1) ++ulysses_points;
      const bool unchunked = e->plan.lm_head_mode == LmHeadMode::keep && e->lm_head_chunks == 1;
      unchunked_loss_alone = unchunked_loss_alone || (l.sp == 1 && unchunked);
    }
  }
  EXPECT_GT(ulysses_points, 1);
  // The test means something only if one rank per sequence does keep a plan Ulysses may not.
  EXPECT_TRUE(unchunked_loss_alone);
}

TEST(EngineExport, TheArcticRecipeStatesThePlan) {
  const ModelSpec m = *resolve_model("llama3.1-8b");
  const std::int64_t seq = 3'700'000;
  const std::vector<ExportFile> files =
      export_files(Engine::deepspeed, plan_file(m, alst(seq), liger_tiled(m), seq), "out/plan.yaml", "mst-plan test");
  ASSERT_EQ(files.size(), 1U);
  EXPECT_EQ(files[0].path, "out/plan.arctic.yml");
  const YAML::Node r = YAML::Load(files[0].text);
  EXPECT_EQ(r["type"].as<std::string>(), "sft");
  EXPECT_EQ(r["micro_batch_size"].as<int>(), 1);
  EXPECT_EQ(r["sequence_parallel_size"].as<int>(), 8);
  EXPECT_TRUE(r["activation_checkpoint_cpu_offload"].as<bool>());
  EXPECT_TRUE(r["tiled_mlp_compute"].as<bool>());
  EXPECT_EQ(r["deepspeed"]["zero_optimization"]["stage"].as<int>(), 3);
  EXPECT_EQ(r["deepspeed"]["zero_optimization"]["offload_optimizer"]["device"].as<std::string>(), "cpu");
  EXPECT_EQ(r["optimizer"]["type"].as<std::string>(), "cpu_adam");
  EXPECT_EQ(r["model"]["type"].as<std::string>(), "liger");
  EXPECT_EQ(r["model"]["name_or_path"].as<std::string>(), "meta-llama/Llama-3.1-8B");
  EXPECT_EQ(r["model"]["attn_implementation"].as<std::string>(), "flash_attention_2");
  EXPECT_FALSE(r["model"]["disable_activation_checkpoint"]);
  EXPECT_EQ(r["data"]["max_length"].as<std::int64_t>(), seq);
  EXPECT_THAT(files[0].text, HasSubstr("PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True arctic_training out/plan.arctic.yml"));

  // Without the offload and the checkpoints' offload, on one rank per sequence, unchunked, no
  // recompute: bf16 master weights and state on the device, transformers' loss, checkpointing off.
  TrainingSetup plain = alst(seq);
  plain.offload_optimizer = false;
  plain.parallel.sp = 1;
  plain.attention = AttentionKind::flash;
  const YAML::Node v = YAML::Load(
      export_files(Engine::deepspeed, plan_file(m, plain, Plan::vanilla(), 8192), "p.yaml", "t")[0].text);
  EXPECT_FALSE(v["deepspeed"]["zero_optimization"]["offload_optimizer"]);
  EXPECT_TRUE(v["deepspeed"]["bfloat16"]["bf16_master_weights_and_grads"].as<bool>());
  EXPECT_TRUE(v["deepspeed"]["bfloat16"]["bf16_optimizer_states"].as<bool>());
  EXPECT_EQ(v["optimizer"]["type"].as<std::string>(), "fused_adam");
  EXPECT_EQ(v["model"]["type"].as<std::string>(), "huggingface");
  EXPECT_EQ(v["model"]["attn_implementation"].as<std::string>(), "sdpa");
  EXPECT_TRUE(v["model"]["disable_activation_checkpoint"].as<bool>());
  EXPECT_FALSE(v["tiled_mlp_compute"].as<bool>());
  EXPECT_FALSE(v["deepspeed"]["seq_parallel_communication_data_type"]);

  // ALST's one-GPU recipe: the parameters offloaded too.
  TrainingSetup one = alst(500'000);
  one.parallel = Parallelism{};
  one.offload_param = true;
  const YAML::Node o =
      YAML::Load(export_files(Engine::deepspeed, plan_file(m, one, liger_tiled(m), 500'000), "o.yaml", "t")[0].text);
  EXPECT_EQ(o["deepspeed"]["zero_optimization"]["stage"].as<int>(), 3);
  EXPECT_EQ(o["deepspeed"]["zero_optimization"]["offload_param"]["device"].as<std::string>(), "cpu");
  EXPECT_EQ(o["sequence_parallel_size"].as<int>(), 1);
}

TEST(EngineExport, TheAccelerateConfigAndTrainerArguments) {
  const ModelSpec m = *resolve_model("llama3-8b");
  Plan liger = Plan::recompute_all();
  liger.lm_head = Plan::mst_reference(m).lm_head;
  liger.lm_head_mode = LmHeadMode::forward_grad;
  const std::vector<ExportFile> files =
      export_files(Engine::accelerate, plan_file(m, fsdp(), liger, 40'640), "acc.yaml", "t");
  ASSERT_EQ(files.size(), 2U);
  EXPECT_EQ(files[0].path, "acc.accelerate.yaml");
  EXPECT_EQ(files[1].path, "acc.training_args.json");
  const YAML::Node c = YAML::Load(files[0].text);
  EXPECT_EQ(c["distributed_type"].as<std::string>(), "FSDP");
  EXPECT_EQ(c["mixed_precision"].as<std::string>(), "bf16");
  EXPECT_EQ(c["num_processes"].as<int>(), 8);
  EXPECT_EQ(c["num_machines"].as<int>(), 1);
  EXPECT_EQ(c["fsdp_config"]["fsdp_version"].as<int>(), 2);
  EXPECT_TRUE(c["fsdp_config"]["fsdp_reshard_after_forward"].as<bool>());
  EXPECT_TRUE(c["fsdp_config"]["fsdp_activation_checkpointing"].as<bool>());
  const nlohmann::json a = nlohmann::json::parse(files[1].text);
  EXPECT_EQ(a["per_device_train_batch_size"], 1);
  EXPECT_EQ(a["gradient_checkpointing"], false);  // FSDP checkpoints the layers itself
  EXPECT_EQ(a["bf16"], true);
  EXPECT_EQ(a["use_liger_kernel"], true);

  // DDP over 16 ranks of two DGX nodes; one GPU in bf16 without autocast.
  TrainingSetup ddp = fsdp();
  ddp.parallel = Parallelism{16, ZeroStage::none, 1};
  const YAML::Node d = YAML::Load(
      export_files(Engine::accelerate, plan_file(m, ddp, Plan::recompute_all(), 8192), "d.yaml", "t")[0].text);
  EXPECT_EQ(d["distributed_type"].as<std::string>(), "MULTI_GPU");
  EXPECT_EQ(d["num_machines"].as<int>(), 2);
  EXPECT_FALSE(d["fsdp_config"]);
  TrainingSetup one = fsdp();
  one.parallel = Parallelism{};
  one.precision = Precision::bf16;
  const std::vector<ExportFile> o =
      export_files(Engine::accelerate, plan_file(m, one, Plan::vanilla(), 4096), "o.yaml", "t");
  EXPECT_EQ(YAML::Load(o[0].text)["distributed_type"].as<std::string>(), "NO");
  EXPECT_EQ(YAML::Load(o[0].text)["mixed_precision"].as<std::string>(), "no");
  EXPECT_EQ(nlohmann::json::parse(o[1].text)["bf16"], false);
  EXPECT_EQ(nlohmann::json::parse(o[1].text)["gradient_checkpointing"], false);
  EXPECT_THAT(o[0].text, HasSubstr("torch_dtype=torch.bfloat16"));
}

TEST(EngineExport, CatalogModelsNameTheirHubRepositoryAndConfigFoldersThemselves) {
  EXPECT_EQ(resolve_model("llama3-8b")->name_or_path, "meta-llama/Meta-Llama-3-8B");
  EXPECT_EQ(resolve_model("qwen2.5-7b")->name_or_path, "Qwen/Qwen2.5-7B");
  EXPECT_TRUE(resolve_model("tiny-llama")->name_or_path.empty());
  const ModelSpec m = *resolve_model("gemma2-9b");
  EXPECT_EQ(parse_model_yaml(model_to_yaml(m), "round trip")->name_or_path, "google/gemma-2-9b");
  test::ScratchDir dir;
  std::filesystem::create_directories(dir.path() / "Llama-3.2-1B");
  dir.write("Llama-3.2-1B/config.json", test::source_file_at(test::data_path("hf/llama3.2-1b/config.json")));
  const auto hf = load_hf_config((dir.path() / "Llama-3.2-1B").string());
  ASSERT_TRUE(hf.has_value()) << hf.error().message;
  EXPECT_EQ(hf->name_or_path, std::filesystem::absolute(dir.path() / "Llama-3.2-1B").string());
}

TEST(EngineExport, TheCommandWritesThePlanAndTheRecipeBesideIt) {
  test::ScratchDir dir;
  const std::string plan = (dir.path() / "plan.yaml").string();
  const test::CliResult r = test::run({"--model", "llama3.2-1b", "--gpu", "H100-80G", "--profile", "pytorch",
                                       "--seq", "64K", "--export", "deepspeed", "--out", plan, "--json"});
  ASSERT_EQ(r.code, 0) << r.err;
  const nlohmann::json j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["export"]["engine"], "deepspeed");
  EXPECT_EQ(j["export"]["files"][0], (dir.path() / "plan.arctic.yml").string());
  EXPECT_EQ(j["setup"]["optimizer_in_backward"], false);  // --export implies it
  const YAML::Node recipe = YAML::LoadFile((dir.path() / "plan.arctic.yml").string());
  EXPECT_EQ(recipe["data"]["max_length"].as<std::int64_t>(), 65536);
  EXPECT_EQ(recipe["model"]["name_or_path"].as<std::string>(), "meta-llama/Llama-3.2-1B");
  EXPECT_TRUE(std::filesystem::exists(plan));
}

TEST(EngineExport, TheCommandRefusesWhatItCannotExport) {
  auto refused = [](std::vector<std::string> args, const char* says) {
    std::vector<std::string> all{"--model", "llama3.2-1b", "--gpu", "H100-80G", "--seq", "8K"};
    all.insert(all.end(), args.begin(), args.end());
    const test::CliResult r = test::run(all);
    EXPECT_EQ(r.code, 2) << says;
    EXPECT_THAT(r.err, HasSubstr(says));
    EXPECT_TRUE(r.out.empty());
  };
  refused({"--export", "deepspeed", "--out", "p.yaml"}, "--export deepspeed: deepspeed runs the Hugging Face step");
  refused({"--profile", "pytorch", "--export", "deepspeed"}, "give --out plan.yaml");
  refused({"--profile", "pytorch", "--export", "megatron", "--out", "p.yaml"},
          "--export: expected one of deepspeed, accelerate, torchtitan, got 'megatron'");
  refused({"--profile", "pytorch", "--export", "torchtitan", "--out", "p.yaml"}, "torchtitan is not exported");
  refused({"--profile", "pytorch", "--export", "accelerate", "--method", "mst", "--out", "p.yaml"},
          "method mst: accelerate has no chunked MLP");
  refused({"--profile", "pytorch", "--export", "deepspeed", "--optimizer-in-backward", "--out", "p.yaml"},
          "--no-optimizer-in-backward");
  refused({"--profile", "pytorch", "--export", "deepspeed", "--gpus", "auto", "--out", "p.yaml"}, "give --gpus N");
  EXPECT_FALSE(std::filesystem::exists("p.yaml"));
}

}  // namespace
}  // namespace mstplan
