#pragma once
// Hugging Face config.json -> ModelSpec.
//
// Supported architectures: LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM,
// Gemma2ForCausalLM. Others are refused (ErrorKind::unsupported) with the list. Fields absent
// from the file take the defaults of the transformers config class of that architecture;
// fields we do not model (tokenizer ids, dropout, ...) are ignored. Sizes are validated as for
// our own YAML specs, and a malformed file is reported with line and column.
//
//   Expected<ModelSpec> spec = load_hf_config("checkpoints/Meta-Llama-3-8B/config.json");
//   // spec->name == "Meta-Llama-3-8B" (the folder's name)
#include <string>

#include "planner/error.h"
#include "planner/model_spec.h"

namespace mstplan {

/// Parses config.json text; `origin` names the file in messages, `name` becomes the spec's name.
[[nodiscard]] Expected<ModelSpec> parse_hf_config(const std::string& text, const std::string& origin,
                                                  const std::string& name);
/// Reads a config.json file (or a folder holding one); the name is the folder's name.
[[nodiscard]] Expected<ModelSpec> load_hf_config(const std::string& path);

}  // namespace mstplan
