#include "planner/json_output.h"

namespace mstplan {

std::string json_text(const nlohmann::json& value) {
  return value.dump(2, ' ', false, nlohmann::json::error_handler_t::replace);
}

nlohmann::json model_json(const ModelSpec& m) {
  const ParameterCounts counts = count_parameters(m);
  nlohmann::json j = {
      {"name", m.name},
      {"source", m.source},
      {"family", to_string(m.family)},
      {"parameters", counts.total},
      {"parameter_breakdown",
       {{"embedding", counts.embedding},
        {"attention", counts.attention},
        {"mlp", counts.mlp},
        {"norms", counts.norms},
        {"lm_head", counts.lm_head}}},
      {"hidden_size", m.hidden_size},
      {"intermediate_size", m.intermediate_size},
      {"num_hidden_layers", m.num_layers},
      {"num_attention_heads", m.num_heads},
      {"num_key_value_heads", m.num_kv_heads},
      {"head_dim", m.head_dim},
      {"vocab_size", m.vocab_size},
      {"max_position_embeddings", m.max_position_embeddings},
      {"tie_word_embeddings", m.tied_embeddings},
      {"attention_bias", m.qkv_bias},
      {"norm", to_string(m.norm)},
      {"norms_per_layer", m.norms_per_layer},
      {"norm_eps", m.norm_eps},
      {"mlp_activation", to_string(m.mlp_activation)},
      {"dtype", to_string(m.dtype)},
  };
  if (!m.name_or_path.empty()) j["name_or_path"] = m.name_or_path;
  j["sliding_window"] = m.sliding_window ? nlohmann::json{{"size", m.sliding_window->size},
                                                          {"layers", to_string(m.sliding_window->layers)}}
                                         : nlohmann::json(nullptr);
  auto optional = [](const std::optional<double>& v) { return v ? nlohmann::json(*v) : nlohmann::json(nullptr); };
  j["attn_logit_softcapping"] = optional(m.attn_logit_softcap);
  j["final_logit_softcapping"] = optional(m.final_logit_softcap);
  j["query_pre_attn_scalar"] = optional(m.query_pre_attn_scalar);
  j["rope"] = {{"theta", m.rope.theta}, {"scaling", to_string(m.rope.scaling)}};
  if (m.rope.scaling != RopeScaling::none) j["rope"]["factor"] = m.rope.factor;
  if (m.rope.scaling == RopeScaling::llama3) {
    j["rope"]["low_freq_factor"] = m.rope.low_freq_factor;
    j["rope"]["high_freq_factor"] = m.rope.high_freq_factor;
    j["rope"]["original_max_position_embeddings"] = m.rope.original_max_position_embeddings;
  }
  return j;
}

nlohmann::json gpu_json(const GpuSpec& g) {
  return {{"name", g.name},
          {"description", g.description},
          {"source", g.source},
          {"capacity_bytes", g.capacity_bytes},
          {"reserve_bytes", g.reserve_bytes},
          {"usable_bytes", g.usable_bytes()},
          {"bf16_tflops", g.bf16_tflops},
          {"fp32_tflops", g.fp32_tflops},
          {"memory_bandwidth_gb_per_s", g.memory_bandwidth_gb_per_s},
          {"host_link_gb_per_s", g.host_link_gb_per_s}};
}

nlohmann::json cluster_json(const ClusterSpec& c) {
  return {{"name", c.name},
          {"description", c.description},
          {"aliases", c.aliases},
          {"source", c.source},
          {"gpu", c.gpu},
          {"gpus_per_node", c.gpus_per_node},
          {"nodes", c.nodes},
          {"gpus", c.gpus()},
          {"intra_node_gb_per_s", c.intra_node_gb_per_s},
          {"inter_node_gb_per_s", c.inter_node_gb_per_s},
          {"host_memory_bytes", c.host_memory_bytes}};
}

nlohmann::json setup_json(const TrainingSetup& s) {
  nlohmann::json j = {{"description", describe_setup(s)},
                      {"batch", s.batch},
                      {"seq_len", s.seq_len ? nlohmann::json(*s.seq_len) : nlohmann::json("search")},
                      {"precision", to_string(s.precision)},
                      {"optimizer", to_string(s.optimizer)},
                      {"optimizer_in_backward", s.optimizer_in_backward},
                      {"grad_accum", s.grad_accum},
                      {"attention", to_string(s.attention)},
                      {"profile", to_string(s.profile)},
                      {"gpus", s.parallel.gpus},
                      {"zero", static_cast<int>(s.parallel.zero)},
                      {"sp", s.parallel.sp},
                      {"cp", s.parallel.cp},
                      {"offload_optimizer", s.offload_optimizer},
                      {"offload_param", s.offload_param}};
  if (s.adapter.lora()) {
    const AdapterSetup& a = s.adapter;
    nlohmann::json targets = nlohmann::json::array();
    for (std::string_view name : lora_target_names(a.targets)) targets.push_back(name);
    j["adapter"] = {{"kind", to_string(a.kind)},
                    {"rank", a.rank},
                    {"alpha", a.alpha},
                    {"targets", targets},
                    {"dtype", to_string(adapter_dtype(s))},
                    {"dropout", a.dropout},
                    {"base", to_string(a.base)},
                    {"double_quant", a.double_quant}};
  }
  return j;
}

nlohmann::json static_memory_json(const ModelSpec& model, const GpuSpec& gpu, const TrainingSetup& setup) {
  const StaticMemory m = static_memory(model, setup);
  nlohmann::json fixes = nlohmann::json::array();
  for (const SetupChange& fix : static_fixes(model, gpu, setup)) {
    fixes.push_back({{"flags", fix.flags}, {"static_bytes", fix.static_bytes}});
  }
  return {{"weights_bytes", m.weights_bytes},
          {"master_weights_bytes", m.master_weights_bytes},
          {"gradient_bytes", m.gradient_bytes},
          {"optimizer_state_bytes", m.optimizer_state_bytes},
          {"communication_bytes", m.communication_bytes},
          {"adapter_weights_bytes", m.adapter_weights_bytes},
          {"adapter_parameters", m.adapter_parameters},
          {"total_bytes", m.total_bytes()},
          {"persistent_gradients", m.persistent_gradients},
          {"largest_gradient_bytes", m.largest_gradient_bytes},
          {"largest_gradient", m.largest_gradient_name},
          {"available_bytes", gpu.usable_bytes() - m.total_bytes()},
          {"fits", m.total_bytes() <= gpu.usable_bytes()},
          {"fixes", fixes}};
}

}  // namespace mstplan
