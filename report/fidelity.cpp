#include "report/fidelity.h"

#include <algorithm>
#include <cmath>

#include <fmt/format.h>

#include "planner/catalog.h"
#include "planner/units.h"

namespace mstplan::report {
namespace {

double relative(std::int64_t predicted, std::int64_t measured) {
  return static_cast<double>(predicted - measured) / static_cast<double>(measured);
}

const FidelityRow* worst(const std::vector<FidelityRow>& rows) {
  const FidelityRow* w = nullptr;
  for (const FidelityRow& r : rows) {
    if (!w || std::abs(r.error) > std::abs(w->error)) w = &r;
  }
  return w;
}

}  // namespace

std::string describe_measurement(const Measurement& m) {
  std::string knobs;
  if (m.setup.knobs.mlp_mode) knobs += fmt::format("MLP {}", to_string(*m.setup.knobs.mlp_mode));
  if (m.setup.knobs.lm_head_mode) {
    knobs += fmt::format("{}LM head {}", knobs.empty() ? "" : ", ", to_string(*m.setup.knobs.lm_head_mode));
  }
  const TrainingSetup& s = m.setup;
  std::string pytorch;
  if (s.profile == Profile::pytorch) {
    if (s.framework != Framework::transformers_5) pytorch += fmt::format(" {}", to_string(s.framework));
    if (s.hold_outputs) pytorch += " outputs held";
    if (s.expandable_segments) pytorch += " expandable";
  }
  if (s.adapter.lora()) {
    pytorch += fmt::format(" LoRA r {} {}{}", s.adapter.rank, s.adapter.quantized() ? "over " : "over a ",
                           s.adapter.quantized() ? std::string(to_string(s.adapter.base)) : "bf16 base");
  }
  return fmt::format("{}{} {}{} {} b={} {} {}{}{}{}", m.model, m.layers ? fmt::format("/{}L", *m.layers) : "",
                     to_string(m.method), knobs.empty() ? "" : " (" + knobs + ")",
                     s.seq_len ? "S=" + format_thousands(*s.seq_len) : std::string("longest"), s.batch,
                     to_string(s.precision), to_string(s.attention), s.optimizer_in_backward ? "" : " optimizer after backward",
                     s.grad_accum > 1 ? fmt::format(" accum {}", s.grad_accum) : "", pytorch);
}

FidelityRow predict_peak(const Measurement& m) {
  const ModelSpec model = measured_model(m);
  const SearchOptions options;
  Evaluator evaluator(model, m.gpu_spec, m.setup, options);
  const std::int64_t predicted =
      evaluator.evaluate(measured_plan(m, model), *m.setup.seq_len).analysis.peak.allocated_bytes;
  return FidelityRow{m, predicted, relative(predicted, m.peak_allocated_bytes)};
}

Fidelity evaluate_fidelity(const MeasuredData& data, std::optional<Profile> profile) {
  Fidelity f;
  for (const Measurement& m : data.peaks) {
    if (!profile || m.setup.profile == *profile) f.peaks.push_back(predict_peak(m));
  }
  for (const Measurement& m : data.longest) {
    if (profile && m.setup.profile != *profile) continue;
    const ModelSpec model = measured_model(m);
    SearchOptions options;
    options.granularity = m.granularity;
    Evaluator evaluator(model, m.gpu_spec, m.setup, options);
    const std::optional<Evaluation> e = evaluator.longest(measured_plan(m, model));
    const std::int64_t predicted = e ? e->seq_len : 0;
    f.longest.push_back(FidelityRow{m, predicted, relative(predicted, m.longest_seq_len)});
  }
  std::vector<double> errors;
  for (const FidelityRow& r : f.peaks) errors.push_back(std::abs(r.error));
  if (!errors.empty()) {
    std::sort(errors.begin(), errors.end());
    const std::size_t n = errors.size();
    f.median_abs_peak_error = n % 2 == 1 ? errors[n / 2] : (errors[n / 2 - 1] + errors[n / 2]) / 2;
    f.worst_abs_peak_error = errors.back();
  }
  if (const FidelityRow* w = worst(f.longest)) f.worst_abs_longest_error = std::abs(w->error);
  return f;
}

std::vector<std::string> violations(const Fidelity& f, const FidelityBounds& b) {
  std::vector<std::string> out;
  if (f.median_abs_peak_error > b.median_peak_error) {
    out.push_back(fmt::format("median peak error {:.2f}% over {} measurements exceeds {:.1f}%", 100 * f.median_abs_peak_error,
                              f.peaks.size(), 100 * b.median_peak_error));
  }
  if (const FidelityRow* w = worst(f.peaks); w && std::abs(w->error) > b.worst_peak_error) {
    out.push_back(fmt::format("worst peak error {:+.2f}% exceeds {:.1f}%: {} ({}: predicted {} bytes, measured {})",
                              100 * w->error, 100 * b.worst_peak_error, describe_measurement(w->measurement),
                              w->measurement.origin, format_thousands(w->predicted),
                              format_thousands(w->measurement.peak_allocated_bytes)));
  }
  if (const FidelityRow* w = worst(f.longest); w && std::abs(w->error) > b.longest_error) {
    out.push_back(fmt::format("longest-sequence error {:+.2f}% exceeds {:.1f}%: {} ({}: predicted {} tokens, measured {})",
                              100 * w->error, 100 * b.longest_error, describe_measurement(w->measurement),
                              w->measurement.origin, format_thousands(w->predicted),
                              format_thousands(w->measurement.longest_seq_len)));
  }
  return out;
}

}  // namespace mstplan::report
