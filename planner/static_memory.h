#pragma once
// Static memory: the bytes of one training step that do not depend on the sequence length.
//
// Note [Static bytes per parameter]
// ---------------------------------
// Bytes per parameter by precision and optimizer (profile native):
//
//                          weights  master  gradients  optimizer state
//   bf16  + adamw             2        -        2       2 + 2   (m, v in bf16: the MST reference)
//   bf16  + adamw-8bit        2        -        2       1 + 1   + 2 x 4 bytes per 256-element block
//   bf16  + sgd               2        -        2       0       (plain SGD, no momentum)
//   mixed + adamw             2        4        4       4 + 4   (fp32 gradients, as Megatron-LM's
//   mixed + adamw-8bit        2        4        4       8-bit    main_grad accumulates them)
//   mixed + sgd               2        4        4       0
//   fp32  + adamw             4        -        4       4 + 4   (activations fp32 too: the
//   fp32  + sgd               4        -        4       0        runtime's exact-arithmetic checks)
//   any   + none              2        -        -       -       (frozen: no gradients, no master)
//
// Profile pytorch with mixed precision (torch.autocast): the parameters themselves are fp32 (4)
// and are the master copy; the bf16 casts autocast makes are transients of the step program.
//
// 8-bit AdamW follows bitsandbytes: uint8 m and v with one fp32 absmax per block of 256 elements
// for each; tensors under 4096 elements (min_8bit_size) keep fp32 m and v (8 bytes).
//
// Gradients are static (one persistent buffer per parameter) when the optimizer runs after
// backward, or when several micro-batches accumulate into them; not with the pytorch profile's
// zero_grad(set_to_none=True) after backward with one micro-batch (PyTorch's default), where
// each is allocated when backward first writes it and freed after the optimizer step
// (persistent_gradients() in setup.h decides, for this table and the step program alike). With the optimizer in backward
// and one micro-batch, each gradient lives only from its computation to its update: the step
// program counts it there, and `largest_gradient_bytes` says how large one gets.
//
// With several data-parallel GPUs (setup.parallel), a rank keeps ceil(numel / gpus) elements of
// what its ZeRO stage shards: stage 1 the optimizer state and master weights, stage 2 also the
// persistent gradients, stage 3 also the weights (Note [Sharded step] in builder.cpp). The
// pytorch profile's DDP (stage 0) adds its gradient buckets, a second copy of every gradient.
//
// With offload_optimizer the master weights (fp32), m and v (fp32) and a copy of the rank's
// gradient shard are host memory (host_bytes): the device keeps the weights alone, 2 bytes per
// parameter (with ZeRO-3, 2 / gpus), and the host 4 + 4 + 4 + 2 (bf16 gradients) per parameter
// of the rank's shard (Note [Offloaded optimizer] in builder.cpp). With offload_param the weights
// (2 per parameter of the rank's shard) are host memory too, and the device keeps none.
//
// With a LoRA adapter (setup.adapter, Note [LoRA step] in builder.cpp) the base weights are
// frozen: weights only, no gradients, no master, no optimizer state. The adapters (A: r x in and
// B: out x r per adapted linear, adapter_parameters()) are trained in their own dtype
// (adapter_dtype(): weights, gradients and AdamW's m and v in it; 8-bit AdamW as above).
//
// Note [Quantized base weights]
// -----------------------------
// The decoder layers' linears (q, k, v, o, gate, up, down: every matrix inside a layer) of a
// quantized base are stored as bitsandbytes stores them; the embedding, the LM head and the norms
// stay bf16 (transformers' integration skips the output layer, and embeddings are not linears).
// For a weight of n = out x in elements:
//   int8 (LLM.int8, Int8Params; Dettmers et al. 2022, arXiv 2208.07339): n int8 values and one
//        fp32 scale per output row (SCB): n + 4 out bytes;
//   nf4 / fp4 (Params4bit, blocksize 64; Dettmers et al. 2023, QLoRA, arXiv 2305.14314 section 3):
//        two values per byte, ceil(n / 2), plus the absmax of each block of 64: without double
//        quantization fp32 (4 ceil(n / 64) bytes: 0.5 bits per weight), with it uint8 (ceil(n /
//        64)) plus one fp32 absmax per 256 of those and the fp32 offset (QLoRA's 8/64 + 32/(64 x
//        256) = 0.127 bits per weight).
// The 16-entry code table each 4-bit weight's QuantState carries (64 bytes) is not counted.
//
//   StaticMemory m = static_memory(llama3_8b, TrainingSetup{});
//   m.weights_bytes == 16'060'522'496;  m.optimizer_state_bytes == 32'121'044'992;
#include <cstdint>
#include <string>
#include <vector>

#include "planner/gpu_spec.h"
#include "planner/model_spec.h"
#include "planner/setup.h"

namespace mstplan {

struct StaticMemory {
  std::int64_t weights_bytes = 0;          ///< the weights the kernels read (LoRA: base and adapters)
  std::int64_t adapter_weights_bytes = 0;  ///< LoRA: the adapters' part of weights_bytes
  std::int64_t adapter_parameters = 0;     ///< LoRA: the adapters' elements (the trained parameters)
  std::int64_t master_weights_bytes = 0;   ///< fp32 master copy (mixed precision, native profile)
  std::int64_t gradient_bytes = 0;         ///< persistent gradient buffers (0 when not persistent)
  std::int64_t optimizer_state_bytes = 0;  ///< moments and quantisation scales
  std::int64_t communication_bytes = 0;    ///< persistent collective buffers (DDP's gradient buckets)
  /// offload_optimizer: host memory of the master weights, AdamW state and gradient copies, and
  /// with offload_param the weights (not device memory: not in total_bytes())
  std::int64_t host_bytes = 0;
  bool persistent_gradients = false;
  std::int64_t largest_gradient_bytes = 0;  ///< one parameter's gradient (0 with frozen weights)
  std::string largest_gradient_name;

  [[nodiscard]] std::int64_t total_bytes() const {
    return weights_bytes + master_weights_bytes + gradient_bytes + optimizer_state_bytes + communication_bytes;
  }
};

/// Bytes of one AdamW moment (m or v) of a tensor of `numel` elements stored as `state`: the
/// dtype's bytes, or with int8 bitsandbytes' uint8 values and one fp32 absmax per 256-element
/// block, fp32 under 4,096 elements (the Note above). The step program's optimizer-state tensors
/// are sized by it too, so the two agree by construction (a property test holds them equal).
[[nodiscard]] std::int64_t adam_moment_bytes(std::int64_t numel, DType state);

/// Whether `p` is one of the decoder layers' linears (a matrix inside a layer): the weights a
/// LoRA adapter may target and a quantized base stores in its format.
[[nodiscard]] inline bool is_layer_linear(const ParamTensor& p) { return p.layer >= 0 && p.cols > 1; }

/// The bytes a frozen base weight is stored in under `adapter` (Note [Quantized base weights]):
/// a decoder linear in adapter.base's format, anything else bf16.
[[nodiscard]] std::int64_t base_weight_bytes(const ParamTensor& p, const AdapterSetup& adapter);

/// The LoRA adapters' parameters, layer by layer in the order q, k, v, o, gate, up, down of the
/// targeted linears, A then B: "layer.3.attn.q.lora_A" (r x in), "layer.3.attn.q.lora_B" (out x
/// r); empty without an adapter.
[[nodiscard]] std::vector<ParamTensor> adapter_parameters(const ModelSpec& model, const AdapterSetup& adapter);

/// Static bytes of `model` trained with `setup` (see the Note above).
[[nodiscard]] StaticMemory static_memory(const ModelSpec& model, const TrainingSetup& setup);

/// A change of the setup, for "would fit with ..." advice.
struct SetupChange {
  std::string flags;              ///< as typed on the command line: "--precision bf16"
  std::int64_t static_bytes = 0;  ///< static bytes with the change
};

/// Changes of one or two settings under which the static state fits in the GPU's usable bytes,
/// least intrusive first: storage and optimizer placement before accumulation and 8-bit state,
/// and those before a different optimizer; a pair is offered only when neither of its changes
/// fits alone. Empty when the setup already fits or nothing would.
[[nodiscard]] std::vector<SetupChange> static_fixes(const ModelSpec& model, const GpuSpec& gpu,
                                                    const TrainingSetup& setup);

}  // namespace mstplan
