#include "planner/model_spec.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <rapidcheck/gtest.h>

#include "planner/catalog.h"

namespace mstplan {
namespace {

const ModelSpec& builtin(const std::string& name) {
  for (const ModelSpec& m : builtin_models()) {
    if (m.name == name) return m;
  }
  ADD_FAILURE() << "no built-in model " << name;
  return builtin_models().front();
}

// Published totals of the real models, to the parameter. The spec never states its count: it is
// derived from the shapes, so a wrong width, head count, vocabulary or tying breaks the match.
//   Llama 2: the trainable count (model.num_parameters()); the Hub's safetensors total is 2,048
//            (7B) / 2,560 (13B) higher because it also stores rotary inv_freq buffers.
//   Others: safetensors index total_size / 2 (bf16) on the Hub, and the model cards.
TEST(ModelSpec, ParameterCountsMatchPublishedTotals) {
  const std::vector<std::pair<std::string, std::int64_t>> published = {
      {"llama2-7b", 6'738'415'616},    {"llama2-13b", 13'015'864'320}, {"llama3-8b", 8'030'261'248},
      {"llama3.1-8b", 8'030'261'248},  {"llama3.2-1b", 1'235'814'400}, {"llama3.2-3b", 3'212'749'824},
      {"llama3-70b", 70'553'706'496},  {"mistral-7b", 7'241'732'096}, {"qwen2-7b", 7'615'616'512},
      {"qwen2.5-7b", 7'615'616'512},   {"gemma2-9b", 9'241'705'984},  {"gemma2-27b", 27'227'128'320},
  };
  for (const auto& [name, count] : published) {
    EXPECT_EQ(parameter_count(builtin(name)), count) << name;
  }
}

// tiny-llama: d 64, I 176, 2 layers, 4 heads over 2 KV heads of 16, vocabulary 515, untied.
//   embedding 515 x 64                                   =  32,960
//   per layer: q 64x64 4,096 + k 32x64 2,048 + v 2,048 + o 4,096
//              + gate/up/down 3 x 176x64 33,792 + 2 norms 128      =  46,208   (x 2 = 92,416)
//   final norm 64 + LM head 515 x 64 32,960
//   total 32,960 + 92,416 + 64 + 32,960                  = 158,400
TEST(ModelSpec, TinyLlamaCountByHand) {
  const ParameterCounts c = count_parameters(builtin("tiny-llama"));
  EXPECT_EQ(c.embedding, 32'960);
  EXPECT_EQ(c.attention, 2 * (4'096 + 2'048 + 2'048 + 4'096));
  EXPECT_EQ(c.mlp, 2 * 33'792);
  EXPECT_EQ(c.norms, 2 * 128 + 64);
  EXPECT_EQ(c.lm_head, 32'960);
  EXPECT_EQ(c.total, 158'400);
}

// tiny-qwen2 adds q/k/v bias: q 96 + k 32 + v 32 = 160 per layer.
//   embedding 701 x 96 = 67,296; per layer 9,216 + 3,072 + 3,072 + 160 + 9,216 + 73,728 + 192
//   = 98,656 (x 3 = 295,968); final norm 96; LM head 67,296; total 430,656.
TEST(ModelSpec, TinyQwenCountsBias) {
  const ModelSpec& m = builtin("tiny-qwen2");
  EXPECT_EQ(parameter_count(m), 430'656);
  ModelSpec without = m;
  without.qkv_bias = false;
  EXPECT_EQ(parameter_count(m) - parameter_count(without), 3 * 160);
}

// tiny-gemma2: head_dim 48 (not 128 / 4 = 32), 4 norms per layer, tied embeddings.
//   embedding 1031 x 128 = 131,968; per layer q 192x128 24,576 + k 96x128 12,288 + v 12,288
//   + o 24,576 + MLP 3 x 320x128 122,880 + 4 norms 512 = 197,120 (x 4 = 788,480);
//   final norm 128; no LM head; total 920,576.
TEST(ModelSpec, TinyGemmaCountsHeadDimNormsAndTying) {
  const ModelSpec& m = builtin("tiny-gemma2");
  const ParameterCounts c = count_parameters(m);
  EXPECT_EQ(c.lm_head, 0);
  EXPECT_EQ(c.norms, 4 * 4 * 128 + 128);
  EXPECT_EQ(c.total, 920'576);
}

// Two independent derivations: the closed form (checked arithmetic, used for validation) and
// the sum over enumerated tensors (used by everything else).
TEST(ModelSpec, ClosedFormCountEqualsTheEnumeration) {
  for (const ModelSpec& m : builtin_models()) {
    EXPECT_EQ(checked_parameter_count(m), parameter_count(m)) << m.name;
  }
  ModelSpec layernorm = builtin("tiny-qwen2");
  layernorm.norm = NormKind::layernorm;  // weight and bias: 3 x 2 + 1 more vectors of 96
  EXPECT_EQ(parameter_count(layernorm), 430'656 + (3 * 2 + 1) * 96);
  EXPECT_EQ(checked_parameter_count(layernorm), parameter_count(layernorm));
}

TEST(ModelSpec, ParametersAreNamedInForwardOrder) {
  std::vector<std::string> layer0;
  for (const ParamTensor& p : parameters(builtin("tiny-gemma2"))) {
    if (p.layer == 0) layer0.push_back(p.name);
  }
  EXPECT_THAT(layer0, ::testing::ElementsAre("layer.0.attn_norm.weight", "layer.0.attn.q.weight", "layer.0.attn.k.weight",
                                             "layer.0.attn.v.weight", "layer.0.attn.o.weight",
                                             "layer.0.attn_post_norm.weight", "layer.0.mlp_norm.weight",
                                             "layer.0.mlp.gate.weight", "layer.0.mlp.up.weight",
                                             "layer.0.mlp.down.weight", "layer.0.mlp_post_norm.weight"));
  const auto all = parameters(builtin("llama3-8b"));
  EXPECT_EQ(all.front().name, "embed.weight");
  EXPECT_EQ(all.back().name, "lm_head.weight");
  EXPECT_EQ(all.back().rows, 128256);
  EXPECT_EQ(all.back().cols, 4096);
  // Shapes are (out, in): q of gemma2-9b maps 3584 to 16 x 256 = 4096.
  for (const ParamTensor& p : parameters(builtin("gemma2-9b"))) {
    if (p.name == "layer.0.attn.q.weight") {
      EXPECT_EQ(p.rows, 4096);
      EXPECT_EQ(p.cols, 3584);
    }
  }
}

TEST(ModelSpec, RelationsNameTheFieldToBlame) {
  ModelSpec m = builtin("tiny-llama");
  m.num_kv_heads = 3;  // 4 heads are not whole groups of 3
  ASSERT_TRUE(check_model_relations(m));
  EXPECT_EQ(check_model_relations(m)->field, "num_key_value_heads");

  m = builtin("tiny-llama");
  m.head_dim = 15;
  EXPECT_EQ(check_model_relations(m)->field, "head_dim");

  m = builtin("tiny-gemma2");
  m.norms_per_layer = 2;
  EXPECT_EQ(check_model_relations(m)->field, "norms_per_layer");

  m = builtin("tiny-llama");
  m.num_kv_heads = 0;  // a spec built in code, not read: no division by zero
  EXPECT_EQ(check_model_relations(m)->field, "num_key_value_heads");

  m = builtin("tiny-llama");
  m.num_layers = kMaxLayers + 1;  // refused before anything enumerates the layers
  EXPECT_EQ(check_model_relations(m)->field, "num_hidden_layers");

  m = builtin("tiny-llama");
  m.vocab_size = INT64_MAX / 2;  // V x d overflows
  ASSERT_TRUE(check_model_relations(m));
  EXPECT_EQ(check_model_relations(m)->field, "vocab_size");
  EXPECT_THAT(check_model_relations(m)->message, ::testing::HasSubstr("overflow 64 bits"));

  m = builtin("tiny-llama");
  m.max_position_embeddings = INT64_MAX;  // the largest number, but no parameter depends on it
  m.vocab_size = INT64_MAX / 4;
  EXPECT_EQ(check_model_relations(m)->field, "vocab_size");

  // Far but not too far: a vocabulary of 2^40 gives about 2^47 parameters, 2^52 bytes at 32
  // bytes each, which fits.
  m = builtin("tiny-llama");
  m.vocab_size = (std::int64_t{1} << 40);
  EXPECT_FALSE(check_model_relations(m)) << check_model_relations(m)->message;
}

// Any valid spec survives a trip through the models/ YAML format unchanged.
RC_GTEST_PROP(ModelSpecProperty, YamlRoundTrip, ()) {
  ModelSpec s;
  s.name = *rc::gen::element<std::string>("a", "my-model", "llama 3 (custom)", "x:y", "'quoted'");
  s.family = *rc::gen::element(Family::llama, Family::mistral, Family::qwen2, Family::gemma2);
  s.norms_per_layer = s.family == Family::gemma2 ? 4 : 2;
  s.num_kv_heads = *rc::gen::inRange<std::int64_t>(1, 17);
  s.num_heads = s.num_kv_heads * *rc::gen::inRange<std::int64_t>(1, 9);
  s.head_dim = 2 * *rc::gen::inRange<std::int64_t>(1, 129);
  s.hidden_size = *rc::gen::inRange<std::int64_t>(1, 16385);
  s.intermediate_size = *rc::gen::inRange<std::int64_t>(1, 65537);
  s.num_layers = *rc::gen::inRange<std::int64_t>(1, 129);
  s.vocab_size = *rc::gen::inRange<std::int64_t>(1, 300000);
  s.max_position_embeddings = *rc::gen::inRange<std::int64_t>(1, 1 << 20);
  s.tied_embeddings = *rc::gen::arbitrary<bool>();
  s.qkv_bias = *rc::gen::arbitrary<bool>();
  s.norm = *rc::gen::element(NormKind::rmsnorm, NormKind::layernorm);
  s.norm_eps = *rc::gen::element(1e-5, 1e-6, 3.3e-7, 0.1);
  s.mlp_activation = *rc::gen::element(MlpActivation::swiglu, MlpActivation::geglu);
  if (*rc::gen::arbitrary<bool>()) {
    s.sliding_window = SlidingWindow{*rc::gen::inRange<std::int64_t>(1, 100000),
                                     *rc::gen::element(SlidingLayers::all, SlidingLayers::even)};
  }
  if (*rc::gen::arbitrary<bool>()) s.attn_logit_softcap = *rc::gen::element(50.0, 30.5, 1e-3);
  if (*rc::gen::arbitrary<bool>()) s.final_logit_softcap = *rc::gen::element(30.0, 0.1);
  if (*rc::gen::arbitrary<bool>()) s.query_pre_attn_scalar = *rc::gen::element(144.0, 256.0);
  s.rope.theta = *rc::gen::element(10000.0, 500000.0, 1e6, 123.456);
  s.rope.scaling = *rc::gen::element(RopeScaling::none, RopeScaling::linear, RopeScaling::dynamic, RopeScaling::llama3);
  if (s.rope.scaling != RopeScaling::none) s.rope.factor = *rc::gen::element(2.0, 8.0, 32.0, 1.5);
  if (s.rope.scaling == RopeScaling::llama3) {
    s.rope.low_freq_factor = 1.0;
    s.rope.high_freq_factor = *rc::gen::element(4.0, 2.5);
    s.rope.original_max_position_embeddings = *rc::gen::inRange<std::int64_t>(1, 1 << 17);
  }
  s.dtype = *rc::gen::element(DType::bf16, DType::fp16, DType::fp32);
  RC_PRE(!check_model_relations(s).has_value());

  RC_ASSERT(checked_parameter_count(s) == parameter_count(s));
  s.source = "roundtrip.yaml";
  auto parsed = parse_model_yaml(model_to_yaml(s), "roundtrip.yaml");
  RC_ASSERT(parsed.has_value());
  RC_ASSERT(*parsed == s);
}

}  // namespace
}  // namespace mstplan
