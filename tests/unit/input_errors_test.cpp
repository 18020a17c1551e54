// Bad input never crashes and never half-writes: one clear line on stderr naming the file, field
// and value, nothing on stdout, and the documented exit code (2 usage, 3 bad input).
#include <functional>
#include <regex>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <rapidcheck/gtest.h>

#include "planner/gpu_spec.h"
#include "planner/hf_config.h"
#include "planner/json_output.h"
#include "planner/model_spec.h"
#include "planner/setup.h"
#include "test_util.h"

namespace mstplan {
namespace {

struct BadInput {
  std::string name;
  std::map<std::string, std::string> files;  // written into a scratch folder first
  std::vector<std::string> args;             // "{dir}" stands for that folder
  int code;
  std::vector<std::string> in_message;       // each must appear in the error line
};

void PrintTo(const BadInput& c, std::ostream* os) { *os << c.name; }

// Runs while the table is built (before any test), so a setup mistake becomes a case that fails.
std::string replace(std::string text, const std::string& from, const std::string& to) {
  const auto at = text.find(from);
  if (at == std::string::npos) return "test setup error: '" + from + "' is not in the base text";
  text.replace(at, from.size(), to);
  return text;
}

std::vector<BadInput> cases() {
  const std::string model = test::source_file("models/tiny-llama.yaml");
  const std::string gpu = test::source_file("scenarios/gpus/a100-80g.yaml");
  const std::string hf = R"({"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 176,
  "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 515})";
  const std::vector<std::string> with_gpu = {"--gpu", "A100-80G"};
  auto m = [&](const std::string& content) { return std::map<std::string, std::string>{{"m.yaml", content}}; };
  auto margs = std::vector<std::string>{"--model", "{dir}/m.yaml", "--gpu", "A100-80G"};
  auto hargs = std::vector<std::string>{"--model", "{dir}/h/config.json", "--gpu", "A100-80G"};
  auto h = [&](const std::string& content) { return std::map<std::string, std::string>{{"h/config.json", content}}; };
  auto gargs = std::vector<std::string>{"--model", "tiny-llama", "--gpu", "{dir}/g.yaml"};
  auto g = [&](const std::string& content) { return std::map<std::string, std::string>{{"g.yaml", content}}; };
  auto sargs = std::vector<std::string>{"--scenario", "{dir}/s.yaml", "--model", "tiny-llama", "--gpu", "A100-80G"};
  auto s = [&](const std::string& content) { return std::map<std::string, std::string>{{"s.yaml", content}}; };
  const std::string garbage("\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe", 18);
  const std::string garbage_no_nul = "\x89PNG\r\n\x1a\n\xff\xfe\xfd: \x80\x81\n\t- [\x90";

  return {
      // Models: names and files.
      {"unknown model name", {}, {"--model", "llama9-1t", "--gpu", "A100-80G"}, 3,
       {"unknown model 'llama9-1t'", "known models: gemma2-27b", "tiny-llama"}},
      {"missing model file", {}, {"--model", "{dir}/absent.yaml", "--gpu", "A100-80G"}, 3, {"absent.yaml: no such file"}},
      {"model folder without config.json", {{"empty/.keep", ""}}, {"--model", "{dir}/empty", "--gpu", "A100-80G"}, 3,
       {"empty/config.json: no such file"}},
      {"empty model file", m(""), margs, 3, {"m.yaml: empty document, expected a model spec"}},
      {"model file of comments only", m("# nothing here\n"), margs, 3, {"m.yaml: empty document"}},
      {"binary model file", m(garbage), margs, 3, {"m.yaml: binary data (NUL byte at offset 8)"}},
      {"binary model file without NUL", m(garbage_no_nul), margs, 3, {"m.yaml: not UTF-8 text (byte 0x89 at offset 0)"}},
      {"invalid UTF-8 inside a name", m(replace(model, "name: tiny-llama", "name: tiny\xff")),
       {"--model", "{dir}/m.yaml", "--gpu", "A100-80G", "--json"}, 3, {"m.yaml: not UTF-8 text (byte 0xff at offset"}},
      {"two YAML documents", m(model + "---\nname: other\n"), margs, 3, {"m.yaml:25:1: a second YAML document starts here, expected one model spec"}},
      {"lone comma", m(","), margs, 3, {"m.yaml"}},
      {"YAML merge key", m("base: &b {hidden_size: 64}\n<<: *b\n" + model), margs, 3,
       {"m.yaml:2:1: YAML merge keys (<<) are not supported"}},
      {"quoted number", m(replace(model, "hidden_size: 64", "hidden_size: \"64\"")), margs, 3,
       {"field 'hidden_size': expected a positive integer, got the quoted or tagged text '64'"}},
      {"quoted boolean", m(replace(model, "tie_word_embeddings: false", "tie_word_embeddings: 'false'")), margs, 3,
       {"field 'tie_word_embeddings': expected true or false, got the quoted or tagged text 'false'"}},
      {"model path is a device", {}, {"--model", "/dev/null.yaml", "--gpu", "A100-80G"}, 3, {"/dev/null.yaml: no such file"}},
      {"model path is a character device", {}, {"--gpu", "/dev/zero", "--model", "tiny-llama"}, 3,
       {"/dev/zero: not a regular file (a device, FIFO or socket)"}},
      {"malformed model YAML", m("name: x\nfamily: llama\nhidden_size: [64\n"), margs, 3,
       {"m.yaml:4:1: malformed YAML"}},
      {"model YAML that is a list", m("- a\n- b\n"), margs, 3,
       {"m.yaml:1:1: expected a model spec (a YAML mapping of fields), got a list"}},
      {"missing field", m(replace(model, "vocab_size: 515\n", "")), margs, 3,
       {"m.yaml:3:1: missing field 'vocab_size' (a positive integer) in model spec"}},
      {"unknown field", m(model + "hiden_size: 64\n"), margs, 3,
       {"m.yaml:25:1: unknown field 'hiden_size' in model spec; did you mean 'hidden_size'?"}},
      {"duplicate field", m(model + "name: again\n"), margs, 3, {"m.yaml:25:1: field 'name' appears twice"}},
      {"zero size", m(replace(model, "hidden_size: 64", "hidden_size: 0")), margs, 3,
       {"m.yaml:5:14: field 'hidden_size': expected a positive integer, got 0"}},
      {"negative size", m(replace(model, "intermediate_size: 176", "intermediate_size: -176")), margs, 3,
       {"field 'intermediate_size': expected a positive integer, got -176"}},
      {"size that is text", m(replace(model, "num_hidden_layers: 2", "num_hidden_layers: two")), margs, 3,
       {"field 'num_hidden_layers': expected a positive integer, got 'two'"}},
      {"size that is fractional", m(replace(model, "hidden_size: 64", "hidden_size: 64.5")), margs, 3,
       {"field 'hidden_size': expected a positive integer, got '64.5'"}},
      {"heads do not divide hidden size", m(replace(model, "num_attention_heads: 4", "num_attention_heads: 6")), margs,
       3, {"m.yaml:8:22: field 'num_attention_heads': 6 heads do not divide hidden_size 64"}},
      {"key/value heads do not divide heads", m(replace(model, "num_key_value_heads: 2", "num_key_value_heads: 3")),
       margs, 3, {"field 'num_key_value_heads': 3 key/value heads do not divide 4 attention heads"}},
      {"byte counts overflow", m(replace(model, "vocab_size: 515", "vocab_size: 9223372036854775807")), margs, 3,
       {"field 'vocab_size'", "overflow 64 bits"}},
      {"integer beyond 64 bits", m(replace(model, "vocab_size: 515", "vocab_size: 99999999999999999999")), margs, 3,
       {"field 'vocab_size': expected a positive integer, got '99999999999999999999', which is out of the 64-bit range"}},
      {"absurd layer count", m(replace(model, "num_hidden_layers: 2", "num_hidden_layers: 9223372036854775807")), margs,
       3, {"field 'num_hidden_layers': 9223372036854775807 layers is beyond the 65536 this planner handles"}},
      {"unknown enum value", m(replace(model, "family: llama", "family: gpt")), margs, 3,
       {"field 'family': expected one of llama, mistral, qwen2, gemma2, got 'gpt'"}},
      {"nested field error", m(replace(model, "sliding_window: null", "sliding_window: {size: 0, layers: all}")), margs,
       3, {"field 'sliding_window.size': expected a positive integer, got 0"}},

      // GPUs.
      {"unknown GPU name", {}, {"--model", "tiny-llama", "--gpu", "B300"}, 3,
       {"unknown GPU 'B300'", "known GPUs: A100-40G", "RTX-3090"}},
      // Issue 18's campaign: capacities, lengths and batches whose byte counts would wrap int64.
      {"GPU capacity near 2^63", g(replace(gpu, "capacity_bytes: 85167439872", "capacity_bytes: 9223372036854775807")),
       gargs, 3, {"field 'capacity_bytes': expected an integer from 1 to 1125899906842624, got 9223372036854775807"}},
      {"sequence of one position", {}, {"--model", "tiny-llama", "--gpu", "a100", "--seq", "1"}, 3,
       {"flags: field 'seq_len': 1: a training step needs at least 2 positions"}},
      {"scenario sequence of one position", s("seq_len: 1\n"), sargs, 3,
       {"s.yaml: field 'seq_len': 1: a training step needs at least 2 positions"}},
      {"sweep entry of one position", {{"w.yaml", "scenarios:\n  - {model: tiny-llama, gpu: A100-80G, seq_len: 1, name: one}\n"}},
       {"sweep", "{dir}/w.yaml", "--out", "{dir}/out"}, 3,
       {"w.yaml:2:5: scenarios[0]: field 'seq_len': 1: a training step needs at least 2 positions"}},
      {"sequence whose logits pass 2^63 bytes", {}, {"--model", "llama3-8b", "--gpu", "a100", "--seq", "4611686018427387904"},
       3, {"field 'seq_len': 4611686018427387904 tokens (batch 1) make a tensor of", "give a shorter sequence"}},
      {"batch whose logits pass 2^63 bytes", {}, {"--model", "llama3-8b", "--gpu", "a100", "--batch", "9223372036854775807",
       "--seq", "64K"}, 3, {"field 'batch': 9223372036854775807: even 2 positions", "give a smaller batch"}},
      {"batch of 2^40 sequences, JSON", {}, {"--model", "llama3-8b", "--gpu", "a100", "--batch", "1099511627776", "--seq",
       "64K", "--json"}, 3, {"field 'batch': 1099511627776"}},
      {"GPU missing field", g(replace(gpu, "bf16_tflops: 312\n", "")), gargs, 3,
       {"g.yaml", "missing field 'bf16_tflops' (a positive number) in GPU spec"}},
      {"GPU reserve above capacity", g(replace(gpu, "reserve_bytes: 536870912", "reserve_bytes: 95167439872")), gargs, 3,
       {"field 'reserve_bytes': reserve 95167439872 (88.63 GiB) leaves nothing of capacity_bytes 85167439872"}},
      {"GPU negative bandwidth", g(replace(gpu, "memory_bandwidth_gb_per_s: 2039", "memory_bandwidth_gb_per_s: -1")),
       gargs, 3, {"field 'memory_bandwidth_gb_per_s': expected a positive number, got -1"}},
      {"GPU empty file", g(""), gargs, 3, {"g.yaml: empty document, expected a GPU spec"}},

      // Hugging Face config.json.
      {"malformed JSON", h("{\"architectures\": [\"LlamaForCausalLM\"],\n  \"hidden_size\": 64,,\n}"), hargs, 3,
       {"h/config.json:2:21: malformed JSON"}},
      {"empty config.json", h(""), hargs, 3, {"h/config.json: empty file"}},
      {"binary config.json", h(garbage), hargs, 3, {"h/config.json: binary data"}},
      {"config.json that is a list", h("[1, 2]"), hargs, 3, {"expected a JSON object", "got array"}},
      {"unsupported architecture", h(R"({"architectures": ["MambaForCausalLM"]})"), hargs, 3,
       {"field 'architectures': unsupported architecture 'MambaForCausalLM' (supported: LlamaForCausalLM"}},
      {"config.json missing field", h(replace(hf, R"("vocab_size": 515)", R"("vocab": 515)")), hargs, 3,
       {"h/config.json: missing field 'vocab_size'"}},
      {"config.json zero size", h(replace(hf, R"("hidden_size": 64)", R"("hidden_size": 0)")), hargs, 3,
       {"field 'hidden_size': expected a positive integer, got 0"}},
      {"config.json kv heads", h(replace(hf, R"("num_key_value_heads": 2)", R"("num_key_value_heads": 3)")), hargs, 3,
       {"field 'num_key_value_heads': 3 key/value heads do not divide 4 attention heads"}},
      {"config.json heads do not divide", h(replace(hf, R"("num_attention_heads": 4)", R"("num_attention_heads": 5)")),
       hargs, 3, {"field 'num_attention_heads': 5 heads do not divide hidden_size 64"}},
      {"config.json huge number", h(replace(hf, R"("vocab_size": 515)", R"("vocab_size": 1e30)")), hargs, 3,
       {"field 'vocab_size'", "out of the 64-bit range"}},
      {"config.json number beyond double", h(replace(hf, R"("vocab_size": 515)", R"("vocab_size": 1e400)")), hargs, 3,
       {"h/config.json: malformed JSON: number overflow parsing '1e400'"}},
      {"config.json overflow", h(replace(hf, R"("vocab_size": 515)", R"("vocab_size": 9223372036854775807)")), hargs, 3,
       {"field 'vocab_size'", "overflow 64 bits"}},
      {"config.json wrong type", h(replace(hf, R"("hidden_size": 64)", R"("hidden_size": "64")")), hargs, 3,
       {"field 'hidden_size': expected a positive integer, got \"64\""}},

      // Scenarios.
      {"missing scenario", {}, {"--scenario", "{dir}/none.yaml"}, 3, {"none.yaml: no such file"}},
      {"scenario bad enum", s("precision: fp8\n"), sargs, 3,
       {"s.yaml:1:12: field 'precision': expected one of bf16, mixed, fp32, got 'fp8'"}},
      {"scenario unknown field", s("batchsize: 2\n"), sargs, 3, {"s.yaml:1:1: unknown field 'batchsize' in scenario; did you mean 'batch'?"}},
      {"scenario unrelated field", s("colour: blue\n"), sargs, 3,
       {"unknown field 'colour' in scenario (known fields: model, gpu, cluster, batch, seq_len"}},
      {"scenario zero batch", s("batch: 0\n"), sargs, 3, {"field 'batch': expected a positive integer, got 0"}},
      {"scenario bad seq", s("seq_len: lots\n"), sargs, 3,
       {"field 'seq_len': expected a positive integer (K = 1024 and M = 1048576 suffixes allowed) or 'search', got 'lots'"}},
      {"scenario chunks twice", s("mlp: {chunks: 4, chunk_tokens: 1024}\n"), sargs, 3,
       {"field 'mlp.chunk_tokens': give either chunks or chunk_tokens for the MLP, not both"}},
      {"scenario layer out of range", s("recompute: {kind: full, layers: [0, 5]}\n"), sargs, 3,
       {"s.yaml: field 'recompute.layers': layer 5 does not exist (tiny-llama has layers 0 to 1)"}},
      {"scenario names a missing model", s("model: ../nowhere/model.yaml\n"), {"--scenario", "{dir}/s.yaml", "--gpu", "a100"}, 3,
       {"nowhere/model.yaml: no such file"}},

      // Plan files.
      {"missing plan file", {}, {"show", "{dir}/none.yaml"}, 3, {"none.yaml: no such file"}},
      {"plan file without a model", {{"p.yaml", "mst_plan_version: 1\nseq_len: 128\n"}}, {"show", "{dir}/p.yaml"}, 3,
       {"p.yaml:1:1: field 'model': missing section"}},
      {"plan file of another version", {{"p.yaml", "mst_plan_version: 2\nseq_len: 128\n"}}, {"show", "{dir}/p.yaml"}, 3,
       {"field 'mst_plan_version': expected an integer from 1 to 1, got 2"}},

      // Usage: exit 2.
      {"missing --model", {}, with_gpu, 2, {"--model is required"}},
      {"missing --gpu", {}, {"--model", "tiny-llama"}, 2, {"--gpu is required"}},
      {"zero batch flag", {}, {"--model", "tiny-llama", "--gpu", "a100", "--batch", "0"}, 2,
       {"--batch: expected a positive integer, got '0'"}},
      {"text seq flag", {}, {"--model", "tiny-llama", "--gpu", "a100", "--seq", "long"}, 2, {"--seq: expected", "got 'long'"}},
      {"overflowing seq flag", {}, {"--model", "tiny-llama", "--gpu", "a100", "--seq", "9999999999999999K"}, 2,
       {"--seq: expected a positive integer", "got '9999999999999999K', which is out of the 64-bit range"}},
      {"empty batch flag", {}, {"--model", "tiny-llama", "--gpu", "a100", "--batch", ""}, 2,
       {"--batch: expected a positive integer, got ''"}},
      {"empty model flag", {}, {"--model", "", "--gpu", "a100"}, 2, {"--model: empty model name"}},
      {"empty scenario flag", {}, {"--scenario", ""}, 2, {"--scenario: expected a file, got ''"}},
      {"empty precision flag", {}, {"--model", "tiny-llama", "--gpu", "a100", "--precision", ""}, 2,
       {"--precision: expected one of bf16, mixed, fp32, got ''"}},
      {"contradicting flags", {}, {"--model", "tiny-llama", "--gpu", "a100", "--optimizer-in-backward",
                                   "--no-optimizer-in-backward"}, 2, {"contradict each other"}},
      {"plan flag with a subcommand", {}, {"--model", "tiny-llama", "gpus"}, 2,
       {"--model applies to planning, not to 'mst-plan gpus'"}},
      {"scenario names an unknown model", s("model: llama9\n"), {"--scenario", "{dir}/s.yaml", "--gpu", "a100"}, 3,
       {"s.yaml: field 'model': unknown model 'llama9'"}},
      {"unknown optimizer", {}, {"--model", "tiny-llama", "--gpu", "a100", "--optimizer", "adam"}, 2,
       {"--optimizer: expected one of adamw, adamw-8bit, sgd, none, got 'adam'"}},
      {"grad-accum beyond 64 bits", {}, {"--model", "tiny-llama", "--gpu", "a100", "--grad-accum", "99999999999999999999"},
       2, {"--grad-accum", "out of the 64-bit range"}},
      {"unknown flag", {}, {"--model", "tiny-llama", "--gpu", "a100", "--frobnicate"}, 2, {"--frobnicate"}},
      {"ignore fraction nan", {}, {"run", "{dir}/p.yaml", "--ignore-fraction", "nan"}, 2,
       {"--ignore-fraction: expected a number from 0 to 1, got 'nan'"}},
      {"negative seed", {}, {"verify", "{dir}/p.yaml", "--seed", "-1"}, 2,
       {"--seed: expected an integer from 0 to 18446744073709551615, got '-1'"}},
      {"seed of 2^64", {}, {"run", "{dir}/p.yaml", "--seed", "18446744073709551616"}, 2,
       {"--seed: expected an integer from 0 to 18446744073709551615, got '18446744073709551616'"}},
      {"plan flag after a subcommand", {}, {"show", "{dir}/p.yaml", "--batch", "2"}, 2,
       {"--batch applies to planning, not to 'mst-plan show'"}},
      {"a value of 100 KB is not echoed whole", {}, {"--model", "tiny-llama", "--gpu", "a100", "--precision",
       std::string(100'000, 'x')}, 2, {"--precision: expected one of bf16, mixed, fp32, got '" + std::string(60, 'x') + "...'"}},
      {"a model name of 100 KB is not echoed whole", {}, {"--model", std::string(100'000, 'm'), "--gpu", "a100"}, 3,
       {"unknown model '" + std::string(60, 'm') + "...' (known models:"}},
      {"a scenario value of 100 KB is not echoed whole", s("precision: " + std::string(100'000, 'y') + "\n"), sargs, 3,
       {"field 'precision': expected one of bf16, mixed, fp32, got '" + std::string(60, 'y') + "...'"}},
      {"flag without value", {}, {"--model"}, 2, {"--model"}},
  };
}

class InputErrors : public ::testing::TestWithParam<BadInput> {};

TEST_P(InputErrors, OneClearLineAndTheDocumentedExitCode) {
  const BadInput& c = GetParam();
  test::ScratchDir dir;
  for (const auto& [name, content] : c.files) dir.write(name, content);
  std::vector<std::string> args;
  for (std::string a : c.args) {
    if (auto at = a.find("{dir}"); at != std::string::npos) a.replace(at, 5, dir.path().string());
    args.push_back(a);
  }
  const test::CliResult r = test::run(args);
  EXPECT_EQ(r.code, c.code) << r.err;
  EXPECT_EQ(r.out, "") << "an error must not write a partial result";
  EXPECT_THAT(r.err, ::testing::StartsWith("mst-plan: "));
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  for (const std::string& part : c.in_message) EXPECT_THAT(r.err, ::testing::HasSubstr(part));
}

INSTANTIATE_TEST_SUITE_P(Table, InputErrors, ::testing::ValuesIn(cases()),
                         [](const ::testing::TestParamInfo<BadInput>& param_info) {
                           std::string name = std::regex_replace(param_info.param.name, std::regex("[^A-Za-z0-9]+"), "_");
                           return name;
                         });

}  // namespace
}  // namespace mstplan

namespace mstplan {
namespace {

// Whatever bytes arrive, the readers answer with a spec or an Error naming the file: no crash,
// no exception, no abort. Texts are built from YAML/JSON punctuation, keywords and field names so
// that they reach deep into the parsers, not only their first character.
RC_GTEST_PROP(InputFuzz, ReadersNeverCrash, ()) {
  const auto piece = rc::gen::oneOf(
      rc::gen::element<std::string>("name", "family", "hidden_size", "num_attention_heads", "vocab_size",
                                    "sliding_window", "rope_scaling", "capacity_bytes", "architectures", "llama",
                                    "gemma2", "LlamaForCausalLM", "type", "layers", "size"),
      rc::gen::element<std::string>(": ", ":", "\n", "  ", "- ", "[", "]", "{", "}", ",", "\"", "'", "&a ", "*a",
                                    "!!int ", "#", "null", "~", "true", "-1", "0", "64", "1e400",
                                    "99999999999999999999", "\t", "\xff", "?", "|", ">"),
      rc::gen::arbitrary<std::string>());
  const std::vector<std::string> parts = *rc::gen::container<std::vector<std::string>>(piece);
  std::string text;
  for (const std::string& p : parts) text += p;

  const auto model = parse_model_yaml(text, "fuzz.yaml");
  if (!model) RC_ASSERT(model.error().message.starts_with("fuzz.yaml"));
  if (model) RC_ASSERT(!json_text(model_json(*model)).empty());
  const auto gpu = parse_gpu_yaml(text, "fuzz.yaml");
  if (!gpu) RC_ASSERT(gpu.error().message.starts_with("fuzz.yaml"));
  const auto scenario = parse_scenario_yaml(text, "fuzz.yaml");
  if (!scenario) RC_ASSERT(scenario.error().message.starts_with("fuzz.yaml"));
  const auto hf = parse_hf_config(text, "fuzz.json", "fuzz");
  if (!hf) RC_ASSERT(hf.error().message.starts_with("fuzz.json"));
  if (hf) RC_ASSERT(!json_text(model_json(*hf)).empty());
}

// Valid documents with one value replaced: these pass the syntax and reach the field checks
// and the relations between fields.
RC_GTEST_PROP(InputFuzz, OneBadValueInAValidDocument, ()) {
  static const std::vector<std::string> documents = {
      test::source_file("models/tiny-gemma2.yaml"), test::source_file("models/llama3.1-8b.yaml"),
      test::source_file("scenarios/gpus/h100-80g.yaml"), test::source_file("scenarios/examples/llama3-8b-mixed-knobs.yaml")};
  std::string text = *rc::gen::elementOf(documents);
  const std::string value = *rc::gen::oneOf(
      rc::gen::element<std::string>("0", "-1", "1", "3", "7", "9223372036854775807", "99999999999999999999", "1e400",
                                    "nan", ".inf", "null", "[]", "{}", "{size: 0}", "[1, [2]]", "true", "\"\"", "x"),
      rc::gen::arbitrary<std::string>());
  // Replace the value of one "key: value" line.
  std::vector<std::size_t> starts;
  for (std::size_t at = text.find(": "); at != std::string::npos; at = text.find(": ", at + 1)) starts.push_back(at + 2);
  RC_PRE(!starts.empty());
  const std::size_t start = *rc::gen::elementOf(starts);
  const std::size_t end = text.find('\n', start);
  text.replace(start, end - start, value);

  const auto model = parse_model_yaml(text, "m.yaml");
  if (!model) RC_ASSERT(model.error().message.starts_with("m.yaml"));
  if (model) RC_ASSERT(!check_model_relations(*model).has_value());
  if (model) RC_ASSERT(!json_text(model_json(*model)).empty());
  const auto gpu = parse_gpu_yaml(text, "m.yaml");
  if (!gpu) RC_ASSERT(gpu.error().message.starts_with("m.yaml"));
  if (gpu) RC_ASSERT(gpu->usable_bytes() > 0);
  const auto scenario = parse_scenario_yaml(text, "m.yaml");
  if (!scenario) RC_ASSERT(scenario.error().message.starts_with("m.yaml"));
}

}  // namespace
}  // namespace mstplan
