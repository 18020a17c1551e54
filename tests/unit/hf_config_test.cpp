#include "planner/hf_config.h"

#include <filesystem>

#include <gmock/gmock.h>
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
