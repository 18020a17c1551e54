#include "planner/hf_config.h"

#include <filesystem>

#include <gmock/gmock.h>
#include <nlohmann/json.hpp>
#include <gtest/gtest.h>

#include "planner/catalog.h"
#include "test_util.h"

namespace mstplan {
namespace {

using ::testing::HasSubstr;

// Every config.json under tests/data/hf/<name>/ reads to exactly the catalog's <name>: the YAML
// specs of models/ and the Hub's configs say the same thing.
TEST(HfConfig, PublishedConfigsReadToTheCatalogSpecs) {
  int checked = 0;
  for (const auto& entry : std::filesystem::directory_iterator(test::data_path("hf"))) {
    if (!entry.is_directory()) continue;
    auto from_hf = load_hf_config(entry.path().string());  // a folder holding config.json
    ASSERT_TRUE(from_hf) << from_hf.error().message;
    auto from_catalog = resolve_model(entry.path().filename().string());
    ASSERT_TRUE(from_catalog) << from_catalog.error().message;
    ModelSpec expected = *from_catalog;
    expected.source = from_hf->source;
    expected.name_or_path = from_hf->name_or_path;  // the folder read, where the catalog names the Hub id
    EXPECT_EQ(*from_hf, expected) << entry.path() << "\nfrom config.json:\n"
                                  << model_to_yaml(*from_hf) << "\ncatalog:\n" << model_to_yaml(expected);
    ++checked;
  }
  EXPECT_EQ(checked, 12);
}

TEST(HfConfig, AbsentFieldsTakeTheTransformersDefaults) {
  // A minimal Llama config: no num_key_value_heads (multi-head attention), no rope_theta
  // (10000), no tie_word_embeddings (false for Llama), no torch_dtype.
  const std::string text = R"({"architectures": ["LlamaForCausalLM"], "hidden_size": 256, "intermediate_size": 688,
    "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 1000})";
  auto m = parse_hf_config(text, "mini/config.json", "mini");
  ASSERT_TRUE(m) << m.error().message;
  EXPECT_EQ(m->num_kv_heads, 4);
  EXPECT_EQ(m->head_dim, 64);
  EXPECT_EQ(m->rope.theta, 10000.0);
  EXPECT_FALSE(m->tied_embeddings);
  EXPECT_EQ(m->norm_eps, 1e-6);

  // Gemma 2 ties by default and always has 4 norms and an even-layer window.
  const std::string gemma = R"({"architectures": ["Gemma2ForCausalLM"], "hidden_size": 256, "intermediate_size": 512,
    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 64, "vocab_size": 1000})";
  auto g = parse_hf_config(gemma, "g/config.json", "g");
  ASSERT_TRUE(g) << g.error().message;
  EXPECT_TRUE(g->tied_embeddings);
  EXPECT_EQ(g->norms_per_layer, 4);
  ASSERT_TRUE(g->sliding_window);
  EXPECT_EQ(g->sliding_window->layers, SlidingLayers::even);
}

// Fields absent from the file take the defaults of the architecture's config class; an explicit
// null turns an optional feature off.
TEST(HfConfig, DefaultsDependOnTheArchitecture) {
  // gemma-2-9b's config without head_dim, the soft-caps and query_pre_attn_scalar: Gemma2Config's
  // defaults (256, 50, 30, 256) are exactly 9B's values, so the spec is unchanged.
  auto config = nlohmann::json::parse(test::source_file("tests/data/hf/gemma2-9b/config.json"));
  for (const char* key : {"head_dim", "attn_logit_softcapping", "final_logit_softcapping", "query_pre_attn_scalar",
                          "sliding_window", "hidden_act", "hidden_activation"}) {
    config.erase(key);
  }
  auto gemma = parse_hf_config(config.dump(), "g/config.json", "gemma2-9b");
  ASSERT_TRUE(gemma) << gemma.error().message;
  ModelSpec expected = *resolve_model("gemma2-9b");
  expected.source = "g/config.json";
  expected.name_or_path.clear();  // parsed text: no folder to load from
  EXPECT_EQ(*gemma, expected);
  EXPECT_EQ(parameter_count(*gemma), 9'241'705'984);

  config["final_logit_softcapping"] = nullptr;  // explicitly off
  EXPECT_FALSE(parse_hf_config(config.dump(), "g/config.json", "g")->final_logit_softcap.has_value());

  auto mistral = nlohmann::json::parse(test::source_file("tests/data/hf/mistral-7b/config.json"));
  mistral.erase("sliding_window");
  mistral.erase("num_key_value_heads");
  mistral.erase("max_position_embeddings");
  auto m = parse_hf_config(mistral.dump(), "m/config.json", "m");
  ASSERT_TRUE(m) << m.error().message;
  EXPECT_EQ(m->sliding_window, (SlidingWindow{4096, SlidingLayers::all}));  // MistralConfig default
  EXPECT_EQ(m->num_kv_heads, 8);
  EXPECT_EQ(m->max_position_embeddings, 131072);
  mistral["sliding_window"] = nullptr;  // Mistral 7B v0.2 and later
  EXPECT_FALSE(parse_hf_config(mistral.dump(), "m/config.json", "m")->sliding_window.has_value());

  auto qwen = nlohmann::json::parse(test::source_file("tests/data/hf/qwen2-7b/config.json"));
  qwen.erase("max_position_embeddings");
  auto q = parse_hf_config(qwen.dump(), "q/config.json", "q");
  ASSERT_TRUE(q) << q.error().message;
  EXPECT_EQ(q->max_position_embeddings, 32768);
  qwen.erase("num_key_value_heads");  // Qwen2Config's default is 32, which 28 heads cannot use
  EXPECT_THAT(parse_hf_config(qwen.dump(), "q/config.json", "q").error().message,
              HasSubstr("32 key/value heads do not divide 28 attention heads"));
}

TEST(HfConfig, ErrorsPointIntoTheFile) {
  const std::string text = "{\n  \"architectures\": [\"LlamaForCausalLM\"],\n  \"hidden_size\": 0\n}";
  auto m = parse_hf_config(text, "c.json", "c");
  ASSERT_FALSE(m);
  EXPECT_EQ(m.error().message, "c.json:3:3: field 'hidden_size': expected a positive integer, got 0");

  const std::string rope = R"({"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 128,
    "num_hidden_layers": 1, "num_attention_heads": 4, "vocab_size": 10,
    "rope_parameters": {"rope_type": "default", "rope_theta": "big"}})";
  auto r = parse_hf_config(rope, "r.json", "r");
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().message, "r.json:3:49: field 'rope_parameters.rope_theta': expected a positive number, got \"big\"");

  const std::string act = R"({"architectures": ["Gemma2ForCausalLM"], "hidden_size": 64, "intermediate_size": 128,
    "num_hidden_layers": 1, "num_attention_heads": 4, "vocab_size": 10, "hidden_act": "gelu_pytorch_tanh",
    "hidden_activation": "relu"})";
  EXPECT_THAT(parse_hf_config(act, "a.json", "a").error().message, HasSubstr("field 'hidden_activation'"));
}

TEST(HfConfig, ReadsTransformersV5RopeParameters) {
  const std::string text = R"({"architectures": ["LlamaForCausalLM"], "hidden_size": 256, "intermediate_size": 688,
    "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 1000,
    "rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                        "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}})";
  auto m = parse_hf_config(text, "v5/config.json", "v5");
  ASSERT_TRUE(m) << m.error().message;
  EXPECT_EQ(m->rope.theta, 500000.0);
  EXPECT_EQ(m->rope.scaling, RopeScaling::llama3);
  EXPECT_EQ(m->rope.original_max_position_embeddings, 8192);
}

TEST(HfConfig, RefusesWhatItCannotModel) {
  auto gpt2 = parse_hf_config(R"({"architectures": ["GPT2LMHeadModel"], "n_embd": 768})", "gpt2/config.json", "gpt2");
  ASSERT_FALSE(gpt2);
  EXPECT_EQ(gpt2.error().kind, ErrorKind::unsupported);
  EXPECT_THAT(gpt2.error().message, HasSubstr("unsupported architecture 'GPT2LMHeadModel'"));
  EXPECT_THAT(gpt2.error().message, HasSubstr("Gemma2ForCausalLM"));

  auto yarn = parse_hf_config(R"({"architectures": ["Qwen2ForCausalLM"], "hidden_size": 256, "intermediate_size": 688,
    "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 1000,
    "rope_scaling": {"type": "yarn", "factor": 4.0}})", "q/config.json", "q");
  ASSERT_FALSE(yarn);
  EXPECT_THAT(yarn.error().message, HasSubstr("unsupported rope type 'yarn'"));

  auto no_arch = parse_hf_config(R"({"hidden_size": 256})", "x/config.json", "x");
  ASSERT_FALSE(no_arch);
  EXPECT_THAT(no_arch.error().message, HasSubstr("field 'architectures'"));
}

}  // namespace
}  // namespace mstplan
