#pragma once
// Field readers shared by whole files and by the sections of plan files: each reads one YAML
// mapping into a struct through a FieldReader (yaml_input.h), checks what the fields must
// satisfy together, and leaves the first problem in the reader.
//
//   FieldReader r = FieldReader::root(node, "plan.yaml", "plan file");
//   if (auto model = r.optional_map("model")) read_model_fields(*model, spec);
#include "planner/cluster_spec.h"
#include "planner/gpu_spec.h"
#include "planner/model_spec.h"
#include "planner/setup.h"
#include "planner/yaml_input.h"

namespace mstplan {

/// The fields of models/*.yaml, then their relations (check_model_relations).
void read_model_fields(FieldReader& reader, ModelSpec& spec);
/// The fields of scenarios/gpus/*.yaml.
void read_gpu_fields(FieldReader& reader, GpuSpec& gpu);
/// The fields of scenarios/clusters/*.yaml.
void read_cluster_fields(FieldReader& reader, ClusterSpec& cluster);
/// A scenario's setup fields (not `model` and `gpu`), knobs included.
void read_setup_fields(FieldReader& reader, TrainingSetup& setup);
/// The plan knobs: `mlp`, `lm_head`, `recompute`, `offload`.
void read_knob_fields(FieldReader& reader, PlanKnobs& knobs);

/// The knobs as YAML lines (only those set).
[[nodiscard]] std::string knobs_to_yaml(const PlanKnobs& knobs);

}  // namespace mstplan
