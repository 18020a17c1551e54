#include "report/report_files.h"

#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <random>
#include <sstream>

#include <fmt/format.h>

#include "planner/json_output.h"
#include "planner/plan_io.h"
#include "planner/search_json.h"
#include "planner/static_memory.h"
#include "planner/units.h"
#include "planner/yaml_input.h"

extern char** environ;

namespace mstplan::report {
namespace {

namespace fs = std::filesystem;

// Paul Tol's "bright" scheme: distinguishable for colour-blind readers, in print and on screen.
constexpr std::array<const char*, kMemoryGroups> kGroupColors{"#4477AA", "#EE6677", "#228833", "#CCBB44",
                                                              "#66CCEE", "#AA3377", "#BBBBBB"};
constexpr std::array<const char*, 5> kMethodColors{"#4477AA", "#EE6677", "#228833", "#CCBB44", "#AA3377"};

const char* method_color(Method m) { return kMethodColors[static_cast<std::size_t>(m)]; }

std::string csv_text(std::string_view text) {
  std::string out = "\"";
  for (char c : text) {
    if (c == '"') out += '"';
    out += c;
  }
  return out + "\"";
}

// gnuplot string literal (double-quoted: \" and \\ escaped, line breaks as \n).
std::string gp_text(std::string_view text) {
  std::string out = "\"";
  for (char c : text) {
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out + "\"";
}

// Breaks `text` after ", " so that no line is much longer than `width` characters.
std::string wrap(std::string_view text, std::size_t width) {
  std::string out;
  std::size_t line = 0;
  while (!text.empty()) {
    const std::size_t comma = text.find(", ");
    const std::string_view piece = text.substr(0, comma == std::string_view::npos ? text.size() : comma + 2);
    if (line > 0 && line + piece.size() > width) {
      while (!out.empty() && out.back() == ' ') out.pop_back();
      out += '\n';
      line = 0;
    }
    out += piece;
    line += piece.size();
    text.remove_prefix(piece.size());
  }
  return out;
}

std::string ratio(std::int64_t a, const std::optional<Evaluation>& base) {
  if (!base || base->seq_len == 0) return "-";
  return fmt::format("{:.2f}x", static_cast<double>(a) / static_cast<double>(base->seq_len));
}

std::string tokens_per_s(double value) { return format_thousands(static_cast<std::int64_t>(value + 0.5)); }

std::string gp_header(std::string_view name, int width, int height) {
  return fmt::format(
      "# Draws figures/{0}.svg from the CSV files in data/. Run from the report's folder: gnuplot figures/{0}.gp\n"
      "reset\n"
      "set terminal svg size {1},{2} dynamic enhanced font 'Helvetica,13' background rgb 'white'\n"
      "set output 'figures/{0}.svg'\n"
      "set datafile separator ','\n"
      "set datafile missing 'NaN'\n"
      "set grid ytics lc rgb '#DDDDDD'\n"
      "set border 3\nset tics nomirror\n",
      name, width, height);
}

// --- CSV ------------------------------------------------------------------------------------

std::string methods_csv(const Report& r) {
  const MethodResult* vanilla = r.method(Method::vanilla);
  const MethodResult* recompute = r.method(Method::recompute);
  std::string out = "method,max_seq_len,vs_vanilla,vs_recompute,peak_bytes,tokens_per_s,peak_at,plan\n";
  for (const MethodResult& m : r.search.methods) {
    if (!m.at_max) {
      out += fmt::format("{},0,NaN,NaN,NaN,NaN,,\n", to_string(m.method));
      continue;
    }
    auto x = [&](const MethodResult* base) {
      return base && base->at_max ? fmt::format("{:.4f}", static_cast<double>(m.at_max->seq_len) /
                                                             static_cast<double>(base->at_max->seq_len))
                                  : std::string("NaN");
    };
    out += fmt::format("{},{},{},{},{},{:.1f},{},{}\n", to_string(m.method), m.at_max->seq_len, x(vanilla), x(recompute),
                       m.at_max->analysis.peak.allocated_bytes, m.at_max->time.tokens_per_s, csv_text(m.at_max->peak_at),
                       csv_text(describe_plan(m.at_max->plan, r.model, m.at_max->seq_len)));
  }
  return out;
}

std::string group_header() {
  std::string out;
  for (std::size_t g = 0; g < kMemoryGroups; ++g) {
    std::string name(group_name(static_cast<MemoryGroup>(g)));
    std::replace(name.begin(), name.end(), ' ', '_');
    out += "," + name + "_bytes";
  }
  return out;
}

std::string breakdown_csv(const Report& r) {
  std::string out = "method,seq_len" + group_header() + ",peak_bytes,peak_at\n";
  for (const MethodResult& m : r.search.methods) {
    if (!m.at_max) continue;
    out += fmt::format("{},{}", to_string(m.method), m.at_max->seq_len);
    for (std::int64_t b : group_bytes(m.at_max->analysis.peak)) out += fmt::format(",{}", b);
    out += fmt::format(",{},{}\n", m.at_max->analysis.peak.allocated_bytes, csv_text(m.at_max->peak_at));
  }
  return out;
}

std::string timeline_csv(const TimelineSeries& t) {
  std::string out = "op_index" + group_header() + ",allocated_bytes,op\n";
  for (const TimelineSample& s : t.samples) {
    out += fmt::format("{}", s.index);
    for (std::int64_t b : s.bytes) out += fmt::format(",{}", b);
    out += fmt::format(",{},{}\n", s.allocated_bytes, csv_text(s.op));
  }
  return out;
}

std::string chunks_csv(const Report& r) {
  std::string out = "mlp_chunks,lm_head_chunks,max_seq_len,tokens_per_s,peak_at\n";
  for (const ChunkPoint& c : r.chunk_grid) {
    if (c.longest) {
      out += fmt::format("{},{},{},{:.1f},{}\n", c.mlp_chunks, c.lm_head_chunks, c.longest->seq_len,
                         c.longest->time.tokens_per_s, csv_text(c.longest->peak_at));
    } else {
      out += fmt::format("{},{},NaN,NaN,\n", c.mlp_chunks, c.lm_head_chunks);
    }
  }
  return out;
}

std::string throughput_csv(const Report& r) {
  std::string out = "method,seq_len,tokens_per_s,peak_bytes,plan\n";
  for (const ThroughputPoint& p : r.throughput) {
    out += fmt::format("{},{},{:.1f},{},{}\n", to_string(p.method), p.evaluation.seq_len, p.evaluation.time.tokens_per_s,
                       p.evaluation.analysis.peak.allocated_bytes,
                       csv_text(describe_plan(p.evaluation.plan, r.model, p.evaluation.seq_len)));
  }
  return out;
}

std::string pareto_csv(const Report& r) {
  std::string out = "max_seq_len,tokens_per_s,plan\n";
  for (const Evaluation& e : r.search.pareto) {
    out += fmt::format("{},{:.1f},{}\n", e.seq_len, e.time.tokens_per_s, csv_text(describe_plan(e.plan, r.model, e.seq_len)));
  }
  return out;
}

std::string measured_csv(const Report& r) {
  std::string out = "seq_len,measured_bytes,predicted_bytes,error,method,origin,measured_by\n";
  for (const FidelityRow& m : r.measured) {
    out += fmt::format("{},{},{},{:.5f},{},{},{}\n", *m.measurement.setup.seq_len, m.measurement.peak_allocated_bytes,
                       m.predicted, m.error, to_string(m.measurement.method),
                       csv_text(m.measurement.origin), csv_text(m.measurement.measured_by));
  }
  return out;
}

// --- gnuplot --------------------------------------------------------------------------------

std::string max_length_gp(const Report& r) {
  std::string gp = gp_header("max-length", 900, 480);
  gp += fmt::format("set title {} noenhanced\n", gp_text(fmt::format("Longest sequence per method: {} on {}, batch {}", r.model.name,
                                                          r.gpu.name, r.setup.batch)));
  gp += "set ylabel 'longest sequence (K tokens)'\nset yrange [0:*]\nset offsets 0,0,graph 0.1,0\n"
        "set style fill solid 0.85 border -1\nset boxwidth 0.6\nset key off\nset xtics scale 0\n";
  gp += "plot 'data/methods.csv' skip 1 using 0:($2/1024):($0+1):xtic(1) with boxes lc variable title 'longest sequence' noenhanced, \\\n"
        "     '' skip 1 using 0:($2/1024):(sprintf('%.0fK', $2/1024)) with labels offset 0,0.8 notitle\n";
  // lc variable picks the terminal's colours by row; fix them to the method colours.
  std::string colors;
  for (std::size_t i = 0; i < r.search.methods.size(); ++i) {
    colors += fmt::format("set linetype {} lc rgb '{}'\n", i + 1, method_color(r.search.methods[i].method));
  }
  return gp.insert(gp.find("set title"), colors);
}

// Rowstacked bars: one clause per group, bottom first; columns 3.. of breakdown.csv.
std::string stacked_bars(std::string_view file) {
  std::string plot = "plot ";
  for (std::size_t g = 0; g < kMemoryGroups; ++g) {
    plot += fmt::format("{}'{}' skip 1 using (${}/1073741824.0){} title '{}' noenhanced lc rgb '{}'", g == 0 ? "" : ", \\\n     ", file,
                        3 + g, g == 0 ? ":xtic(stringcolumn(1).\"\\n\".sprintf('%.0fK', $2/1024))" : "",
                        group_name(static_cast<MemoryGroup>(g)), kGroupColors[g]);
  }
  return plot;
}

// Stacked areas: the curve of group g is the sum of groups 0..g (columns 2..2+g of a timeline
// CSV), drawn top group first so that each lower sum paints over it.
std::string stacked_areas(std::string_view file) {
  std::string plot = "plot ";
  for (std::size_t g = kMemoryGroups; g-- > 0;) {
    std::string sum;
    for (std::size_t k = 0; k <= g; ++k) sum += fmt::format("{}${}", k == 0 ? "" : "+", 2 + k);
    plot += fmt::format("{}'{}' skip 1 using 1:(({})/1073741824.0) with filledcurves x1 title '{}' noenhanced lc rgb '{}'",
                        g + 1 == kMemoryGroups ? "" : ", \\\n     ", file, sum, group_name(static_cast<MemoryGroup>(g)),
                        kGroupColors[g]);
  }
  return plot;
}

std::string breakdown_gp(const Report& r) {
  std::string gp = gp_header("breakdown", 1000, 560);
  gp += fmt::format("set title {} noenhanced\n", gp_text(fmt::format("Memory at each method's peak, at its longest sequence ({} on {})",
                                                          r.model.name, r.gpu.name)));
  const double usable_gib = static_cast<double>(r.gpu.usable_bytes()) / static_cast<double>(kGiB);
  gp += fmt::format(
      "set ylabel 'GiB (requested, at the peak)'\nset yrange [0:{:.3f}]\n"
      "set style data histograms\nset style histogram rowstacked\nset style fill solid 0.9 border rgb '#555555'\n"
      "set boxwidth 0.6\nset key outside right top vertical invert\nset xtics scale 0\nset bmargin 4\n"
      "set arrow from graph 0, first {:.4f} to graph 1, first {:.4f} nohead dt 2 lw 1.5 lc rgb 'black' front\n"
      "set label {} at graph 0.01, first {:.4f} offset 0,0.6 front noenhanced\n",
      usable_gib * 1.12, usable_gib, usable_gib,
      gp_text(fmt::format("usable: {} GiB", format_gib(r.gpu.usable_bytes()))), usable_gib);
  gp += stacked_bars("data/breakdown.csv") + "\n";
  return gp;
}

std::string timeline_gp(const Report& r) {
  std::string gp = gp_header("timeline", 1400, 640);
  const double usable_gib = static_cast<double>(r.gpu.usable_bytes()) / static_cast<double>(kGiB);
  std::int64_t top = r.gpu.usable_bytes();
  for (const TimelineSeries& t : r.timelines) top = std::max(top, t.evaluation.analysis.peak.allocated_bytes);
  // Fixed margins: both panels get the same plot area whatever their titles; the key sits right of both.
  gp += fmt::format("set multiplot layout 1,2 margins 0.05,0.83,0.11,0.78 spacing 0.06,0 title {} noenhanced\n",
                    gp_text(fmt::format("Memory during one step at {} tokens ({} on {}): live bytes during each op, by kind",
                                        format_thousands(r.timeline_seq_len), r.model.name, r.gpu.name)));
  gp += fmt::format("set yrange [0:{:.3f}]\nset ylabel 'GiB live'\nset xlabel 'op of the step (in execution order)'\n"
                    "set style fill solid 0.9 noborder\nunset key\n",
                    static_cast<double>(top) / static_cast<double>(kGiB) * 1.08);
  for (const TimelineSeries& t : r.timelines) {
    const bool found = std::any_of(t.samples.begin(), t.samples.end(),
                                   [&](const TimelineSample& s) { return s.index == t.peak_index; });
    MSTPLAN_CHECK(found, "the timeline's samples lost the peak");
    const double peak_gib = static_cast<double>(t.evaluation.analysis.peak.allocated_bytes) / static_cast<double>(kGiB);
    const std::string plan = t.label == "vanilla" ? std::string("plain autograd")
                                                  : describe_plan(t.evaluation.plan, r.model, t.evaluation.seq_len);
    gp += fmt::format("set title {} noenhanced\n",
                      gp_text(fmt::format("{}\npeak {} GiB ({}) during {}",
                                          wrap(fmt::format("{}: {}", t.label, plan), 72),
                                          format_gib(t.evaluation.analysis.peak.allocated_bytes),
                                          t.evaluation.fits ? "fits" : "does not fit", t.evaluation.peak_at)));
    gp += fmt::format("set xrange [0:{}]\n", std::max<std::int64_t>(t.ops - 1, 1));
    gp += fmt::format("set arrow 1 from graph 0, first {0:.4f} to graph 1, first {0:.4f} nohead dt 2 lw 1.5 lc rgb 'black' front\n",
                      usable_gib);
    gp += fmt::format("set label 1 {} at graph 0.99, first {:.4f} right offset 0,-0.9 front noenhanced\n",
                      gp_text(fmt::format("usable {} GiB", format_gib(r.gpu.usable_bytes()))), usable_gib);
    gp += fmt::format("set label 2 'peak' at {}, first {:.4f} center point pt 7 ps 1.3 lc rgb 'black' offset 0,1 front noenhanced\n",
                      t.peak_index, peak_gib);
    if (&t == &r.timelines.back()) gp += "set key at screen 0.845, screen 0.78 left top vertical Left reverse font ',11'\n";
    gp += stacked_areas(fmt::format("data/timeline-{}.csv", t.label)) + "\n";
  }
  gp += "unset multiplot\n";
  return gp;
}

std::string chunks_gp(const Report& r) {
  std::string gp = gp_header("chunks", 960, 540);
  gp += fmt::format("set title {} noenhanced\n",
                    gp_text(fmt::format("Longest sequence against the chunk counts ({} on {}, MST's plan with the counts varied)",
                                        r.model.name, r.gpu.name)));
  gp += "set logscale x 2\nset xlabel 'MLP mini-sequences (chunks)'\nset ylabel 'longest sequence (K tokens)'\n"
        "set yrange [0:*]\nset key outside right top\n";
  std::vector<std::int64_t> heads;
  for (const ChunkPoint& c : r.chunk_grid) {
    if (std::find(heads.begin(), heads.end(), c.lm_head_chunks) == heads.end()) heads.push_back(c.lm_head_chunks);
  }
  std::string plot = "plot ";
  for (std::size_t i = 0; i < heads.size(); ++i) {
    plot += fmt::format("{}'data/chunks.csv' skip 1 using 1:($2=={} ? $3/1024 : NaN) with linespoints lw 2 pt 7 title 'LM head {}' noenhanced",
                        i == 0 ? "" : ", \\\n     ", heads[i], heads[i]);
  }
  return gp + plot + "\n";
}

std::string throughput_gp(const Report& r) {
  std::string gp = gp_header("throughput", 1000, 560);
  gp += fmt::format("set title {} noenhanced\n", gp_text(fmt::format("Estimated tokens/s against sequence length ({} on {})",
                                                          r.model.name, r.gpu.name)));
  gp += "set logscale x 2\nset logscale y 10\nset xlabel 'sequence length (K tokens)'\nset ylabel 'tokens/s (estimated)'\n"
        "set key inside bottom left box font ',11'\nset format x '%.0f'\n";
  std::string plot = "plot ";
  bool first = true;
  for (const MethodResult& m : r.search.methods) {
    if (!m.at_max) continue;
    plot += fmt::format("{}'data/throughput.csv' skip 1 using (strcol(1) eq '{}' ? $2/1024 : NaN):3 with linespoints "
                        "lw 2 pt 7 ps 0.7 lc rgb '{}' title '{}' noenhanced",
                        first ? "" : ", \\\n     ", to_string(m.method), method_color(m.method), to_string(m.method));
    first = false;
  }
  if (!r.search.pareto.empty()) {
    plot += fmt::format("{}'data/pareto.csv' skip 1 using ($1/1024):2 with points pt 6 ps 2.2 lw 2 lc rgb 'black' "
                        "title 'auto: Pareto set (longest, tokens/s)' noenhanced",
                        first ? "" : ", \\\n     ");
  }
  return gp + plot + "\n";
}

std::string measured_gp(const Report& r) {
  std::string gp = gp_header("measured", 760, 600);
  gp += fmt::format("set title {} noenhanced\n", gp_text(fmt::format("Predicted against measured peak ({} on {})", r.model.name, r.gpu.name)));
  gp += "set xlabel 'measured peak allocated (GiB)'\nset ylabel 'predicted peak allocated (GiB)'\n"
        "set key top left\nset size ratio -1\nset xrange [0:*]\nset yrange [0:*]\n";
  gp += "plot 'data/measured.csv' skip 1 using ($2/1073741824.0):($3/1073741824.0) with points pt 7 ps 1.2 lc rgb '#4477AA' "
        "title 'measurements' noenhanced, \\\n     x with lines dt 2 lc rgb 'black' title 'predicted = measured' noenhanced\n";
  return gp;
}

// --- Markdown -------------------------------------------------------------------------------

std::string markdown(const Report& r, const std::string& command, const std::vector<std::string>& figures) {
  std::string md;
  auto line = [&](std::string text) { md += text + "\n"; };
  const StaticMemory st = static_memory(r.model, r.setup);
  line(fmt::format("# {} on {}: what MST and recomputation buy", r.model.name, r.gpu.name));
  line("");
  line(fmt::format("Generated by `{}`. Every figure below is the planner's prediction (the `{}` profile) unless a row "
                   "says measured; the data behind each figure is in `data/`, every number in `report.json`.",
                   command, to_string(r.setup.profile)));
  line("");
  line(fmt::format("- **Model**: {}, {} parameters: {} layers, hidden {}, MLP {}, {} heads / {} KV heads, vocabulary {}.",
                   r.model.name, format_count(parameter_count(r.model)), r.model.num_layers, r.model.hidden_size,
                   r.model.intermediate_size, r.model.num_heads, r.model.num_kv_heads, format_thousands(r.model.vocab_size)));
  line(fmt::format("- **GPU**: {} ({}): {} GiB, of which {} GiB reserved for the CUDA context and libraries; {} bf16 "
                   "TFLOP/s, {} GB/s.",
                   r.gpu.name, r.gpu.description, format_gib(r.gpu.capacity_bytes), format_gib(r.gpu.reserve_bytes), r.gpu.bf16_tflops,
                   r.gpu.memory_bandwidth_gb_per_s));
  line(fmt::format("- **Setup**: {}.", describe_setup(r.setup)));
  line(fmt::format("- **Static memory** (independent of the length): weights {} + master weights {} + gradients {} + "
                   "optimizer state {} = {} GiB of {} GiB usable.",
                   format_gib(st.weights_bytes), format_gib(st.master_weights_bytes), format_gib(st.gradient_bytes), format_gib(st.optimizer_state_bytes),
                   format_gib(st.total_bytes()), format_gib(r.gpu.usable_bytes())));
  line("");
  if (!r.static_fits) {
    line(fmt::format("**Nothing fits**: the static memory alone ({} GiB) exceeds the {} GiB usable. Run `mst-plan --model "
                     "{} --gpu {}` for the fixes (a larger GPU, adamw-8bit, SGD, frozen weights).",
                     format_gib(st.total_bytes()), format_gib(r.gpu.usable_bytes()), r.model.name, r.gpu.name));
    line("");
  }
  auto figure = [&](std::string_view name, std::string_view alt) {
    const std::string path = fmt::format("figures/{}.svg", name);
    if (std::find(figures.begin(), figures.end(), path) != figures.end()) {
      line(fmt::format("![{}]({})", alt, path));
      line("");
    }
  };

  line("## 1. Longest sequence per method");
  line("");
  line(fmt::format("The longest sequence (a multiple of {} tokens) whose step fits the GPU, batch {}. Peak: the device "
                   "bytes the step allocates at its peak (the reserve comes on top).",
                   r.search_options.granularity, r.setup.batch));
  line("");
  line("| method | longest sequence | vs vanilla | vs recompute | peak GiB | peak at | tokens/s | plan |");
  line("| --- | ---: | ---: | ---: | ---: | --- | ---: | --- |");
  const MethodResult* vanilla = r.method(Method::vanilla);
  const MethodResult* recompute = r.method(Method::recompute);
  for (const MethodResult& m : r.search.methods) {
    if (!m.at_max) {
      line(fmt::format("| {} | none fits | - | - | - | - | - | - |", to_string(m.method)));
      continue;
    }
    const Evaluation& e = *m.at_max;
    line(fmt::format("| {} | {} | {} | {} | {} | `{}` | {} | {} |", to_string(m.method), format_thousands(e.seq_len),
                     ratio(e.seq_len, vanilla->at_max), ratio(e.seq_len, recompute->at_max), format_gib(e.analysis.peak.allocated_bytes),
                     e.peak_at, tokens_per_s(e.time.tokens_per_s), describe_plan(e.plan, r.model, e.seq_len)));
  }
  line("");
  line("vanilla: plain autograd; recompute: every layer recomputed in backward; mst: Mini-Sequence Transformer (MLP "
       "in mini-sequences of d tokens, LM head + loss in ceil(V/d) chunks, every layer recomputed); mst-offload: mst "
       "with the layer checkpoints in host memory; auto: the longest of the planner's candidate plans.");
  line("");
  figure("max-length", "longest sequence per method");

  line("## 2. Memory at each method's peak");
  line("");
  line("Requested bytes by kind during the op where the step's allocated bytes peak, at each method's longest "
       "sequence, in GiB. Checkpoints: the inputs kept for recomputed layers; saved: activations kept for backward; "
       "intermediates: tensors that live within a layer's forward or backward (and the token ids and labels).");
  line("");
  std::string header = "| method | length |";
  std::string rule = "| --- | ---: |";
  for (std::size_t g = 0; g < kMemoryGroups; ++g) {
    header += fmt::format(" {} |", group_name(static_cast<MemoryGroup>(g)));
    rule += " ---: |";
  }
  line(header + " peak (allocated) | peak at |");
  line(rule + " ---: | --- |");
  for (const MethodResult& m : r.search.methods) {
    if (!m.at_max) continue;
    std::string row = fmt::format("| {} | {} |", to_string(m.method), format_thousands(m.at_max->seq_len));
    for (std::int64_t b : group_bytes(m.at_max->analysis.peak)) row += fmt::format(" {} |", format_gib(b));
    line(row + fmt::format(" {} | `{}` |", format_gib(m.at_max->analysis.peak.allocated_bytes), m.at_max->peak_at));
  }
  line("");
  figure("breakdown", "memory at each method's peak, stacked by kind");

  line(fmt::format("## 3. Memory timeline of one step at {} tokens", format_thousands(r.timeline_seq_len)));
  line("");
  if (r.timelines.empty()) {
    line("No plan fits at any length, so there is no step to draw.");
  } else {
    line("Live bytes during each op of the step, stacked by kind (at most one point per run of ops: the one with the "
         "most bytes, so every peak is kept), for plain autograd and for the plan auto reaches farthest with (at a "
         "requested length: the fastest plan that fits it).");
    line("");
    const TimelineSeries& best_timeline = r.timelines.back();
    if (r.timeline_requested && !best_timeline.evaluation.fits) {
      const MethodResult* best = r.method(Method::automatic);
      line(fmt::format("No plan of auto fits {} tokens: shown is the plan that reaches farthest ({} tokens).",
                       format_thousands(r.timeline_seq_len), format_thousands(best->at_max->seq_len)));
      line("");
    }
    line("| plan | ops | peak GiB | fits | peak at | phase |");
    line("| --- | ---: | ---: | --- | --- | --- |");
    for (const TimelineSeries& t : r.timelines) {
      line(fmt::format("| {}: {} | {} | {} | {} | `{}` | {} |", t.label,
                       describe_plan(t.evaluation.plan, r.model, t.evaluation.seq_len), format_thousands(t.ops),
                       format_gib(t.evaluation.analysis.peak.allocated_bytes), t.evaluation.fits ? "yes" : "no",
                       t.evaluation.peak_at, to_string(t.evaluation.peak_phase)));
    }
  }
  line("");
  figure("timeline", "memory timeline of one step");

  line("## 4. Longest sequence against the chunk counts");
  line("");
  if (r.chunk_grid.empty()) {
    line("Not drawn: nothing fits.");
  } else {
    const Plan& p = r.chunk_base_plan;
    line(fmt::format("MST's plan (MLP {}, LM head + loss {}, {} recompute of {} layers, checkpoints on the {}) with the "
                     "MLP and LM-head chunk counts fixed instead of derived from d. Longest sequence in tokens:",
                     to_string(p.mlp_mode), to_string(p.lm_head_mode), to_string(p.recompute),
                     p.recompute_layers.empty() ? std::string("all") : fmt::format("{}", p.recompute_layers.size()),
                     p.offload_checkpoints ? "host" : "device"));
    line("");
    std::vector<std::int64_t> mlps, heads;
    for (const ChunkPoint& c : r.chunk_grid) {
      if (std::find(mlps.begin(), mlps.end(), c.mlp_chunks) == mlps.end()) mlps.push_back(c.mlp_chunks);
      if (std::find(heads.begin(), heads.end(), c.lm_head_chunks) == heads.end()) heads.push_back(c.lm_head_chunks);
    }
    std::string h = "| LM head chunks \\ MLP chunks |";
    std::string rl = "| ---: |";
    for (std::int64_t m : mlps) {
      h += fmt::format(" {} |", m);
      rl += " ---: |";
    }
    line(h);
    line(rl);
    for (std::int64_t head : heads) {
      std::string row = fmt::format("| {} |", head);
      for (const ChunkPoint& c : r.chunk_grid) {
        if (c.lm_head_chunks != head) continue;
        row += c.longest ? fmt::format(" {} |", format_thousands(c.longest->seq_len)) : std::string(" none |");
      }
      line(row);
    }
  }
  line("");
  figure("chunks", "longest sequence against the chunk counts");

  line("## 5. Tokens/s against sequence length");
  line("");
  line(fmt::format("Estimated by the planner's roofline time model ({}% of the bf16 peak for large GEMMs, {}% for "
                   "attention: documented guesses until measured), at powers of two from {} tokens up to each method's "
                   "longest. auto: at each length the fastest of its plans that fits. Auto's Pareto set (no plan both "
                   "longer and faster):",
                   static_cast<int>(r.search_options.cost.gemm_efficiency * 100 + 0.5),
                   static_cast<int>(r.search_options.cost.attention_efficiency * 100 + 0.5),
                   format_thousands(1024)));
  line("");
  line("| longest sequence | tokens/s | plan |");
  line("| ---: | ---: | --- |");
  for (const Evaluation& e : r.search.pareto) {
    line(fmt::format("| {} | {} | {} |", format_thousands(e.seq_len), tokens_per_s(e.time.tokens_per_s),
                     describe_plan(e.plan, r.model, e.seq_len)));
  }
  line("");
  figure("throughput", "tokens/s against sequence length");

  line("## 6. Predicted against measured peak");
  line("");
  if (r.measured.empty()) {
    line(fmt::format("No measurement of {} on {} with this setup in scenarios/measured/ ({} measurements considered). "
                     "Measured data comes from `mst-plan run --backend cuda` on a GPU (scripts/gpu/on_gpu.sh) and from "
                     "the PyTorch harness; add files with `--measured FILE`.",
                     r.model.name, r.gpu.name, r.measurements_considered));
  } else {
    line("| method | length | measured GiB | predicted GiB | error | measured by | entry |");
    line("| --- | ---: | ---: | ---: | ---: | --- | --- |");
    for (const FidelityRow& m : r.measured) {
      line(fmt::format("| {} | {} | {} | {} | {:+.2f}% | {} | {} |", to_string(m.measurement.method),
                       format_thousands(*m.measurement.setup.seq_len), format_gib(m.measurement.peak_allocated_bytes),
                       format_gib(m.predicted), 100.0 * m.error, m.measurement.measured_by,
                       m.measurement.origin));
    }
  }
  line("");
  figure("measured", "predicted against measured peak");

  line("## Files");
  line("");
  line("- `report.json`: every number above; `search` has the same form as `mst-plan --json`.");
  line("- `data/*.csv`: the data behind each figure (bytes as integers, lengths in tokens).");
  line("- `figures/*.gp`: the gnuplot scripts; redraw a figure with `gnuplot figures/NAME.gp` from this folder.");
  return md;
}

nlohmann::json report_json(const Report& r, const std::string& command) {
  nlohmann::json j;
  j["command"] = command;
  j["model"] = model_json(r.model);
  j["gpu"] = gpu_json(r.gpu);
  j["setup"] = setup_json(r.setup);
  j["static"] = static_memory_json(r.model, r.gpu, r.setup);
  nlohmann::json search;
  const MethodResult* best = r.method(Method::automatic);
  add_search_json(search, r.model, r.setup, r.search, Method::automatic,
                  best && best->at_max ? &*best->at_max : nullptr);
  j["search"] = search;
  nlohmann::json timelines = nlohmann::json::array();
  for (const TimelineSeries& t : r.timelines) {
    timelines.push_back({{"label", t.label},
                         {"ops", t.ops},
                         {"peak_op_index", t.peak_index},
                         {"samples", t.samples.size()},
                         {"evaluation", evaluation_json(t.evaluation, r.model)}});
  }
  j["timeline"] = {{"seq_len", r.timeline_seq_len}, {"series", timelines}};
  nlohmann::json grid = nlohmann::json::array();
  for (const ChunkPoint& c : r.chunk_grid) {
    grid.push_back({{"mlp_chunks", c.mlp_chunks},
                    {"lm_head_chunks", c.lm_head_chunks},
                    {"max_seq_len", c.longest ? nlohmann::json(c.longest->seq_len) : nlohmann::json(nullptr)},
                    {"tokens_per_s", c.longest ? nlohmann::json(c.longest->time.tokens_per_s) : nlohmann::json(nullptr)}});
  }
  j["chunk_grid"] = {{"plan", plan_json(r.chunk_base_plan, r.model, 1)}, {"points", grid}};
  nlohmann::json tp = nlohmann::json::array();
  for (const ThroughputPoint& p : r.throughput) {
    tp.push_back({{"method", to_string(p.method)},
                  {"seq_len", p.evaluation.seq_len},
                  {"tokens_per_s", p.evaluation.time.tokens_per_s},
                  {"peak_bytes", p.evaluation.analysis.peak.allocated_bytes},
                  {"plan", plan_json(p.evaluation.plan, r.model, p.evaluation.seq_len)}});
  }
  j["throughput"] = tp;
  nlohmann::json measured = nlohmann::json::array();
  for (const FidelityRow& m : r.measured) {
    measured.push_back({{"origin", m.measurement.origin},
                        {"measured_by", m.measurement.measured_by},
                        {"environment", m.measurement.environment},
                        {"method", to_string(m.measurement.method)},
                        {"seq_len", *m.measurement.setup.seq_len},
                        {"measured_peak_bytes", m.measurement.peak_allocated_bytes},
                        {"predicted_peak_bytes", m.predicted},
                        {"error", m.error}});
  }
  j["measured"] = measured;
  return j;
}

// --- writing --------------------------------------------------------------------------------

// Runs gnuplot on `scripts` in `dir`; gnuplot's messages go to `log`.
std::optional<Error> run_gnuplot(const fs::path& gnuplot, const fs::path& dir, const std::vector<std::string>& scripts,
                                 const fs::path& log) {
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addchdir_np(&actions, dir.c_str());
  posix_spawn_file_actions_addopen(&actions, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_adddup2(&actions, STDOUT_FILENO, STDERR_FILENO);
  std::vector<std::string> args{gnuplot.string()};
  args.insert(args.end(), scripts.begin(), scripts.end());
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t pid = 0;
  const int spawned = posix_spawn(&pid, gnuplot.c_str(), &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  if (spawned != 0) return make_error(ErrorKind::io, "{}: cannot run: {}", gnuplot.string(), std::strerror(spawned));
  int status = 0;
  while (waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) return make_error(ErrorKind::io, "{}: wait failed: {}", gnuplot.string(), std::strerror(errno));
  }
  std::string messages;
  if (auto text = read_text_file(log)) messages = *text;
  const bool ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
  // gnuplot reports some script errors as warnings and carries on; both are our bugs.
  if (!ok || !messages.empty()) {
    return make_error(ErrorKind::io, "gnuplot ({}) failed drawing the figures (a bug in mst-plan's scripts; please report "
                                     "it): {}",
                      gnuplot.string(), messages.empty() ? fmt::format("exit status {}", status) : messages);
  }
  return std::nullopt;
}

std::string unique_suffix() {
  std::random_device rd;
  return fmt::format("{}-{:08x}", ::getpid(), rd());
}

}  // namespace

std::vector<ReportFile> report_files(const Report& r, const std::string& command) {
  std::vector<ReportFile> files;
  std::vector<std::string> figures;
  auto add_figure = [&](std::string name, std::string data_name, std::string data, std::string script) {
    if (!data_name.empty()) files.push_back({"data/" + data_name, std::move(data)});
    files.push_back({fmt::format("figures/{}.gp", name), std::move(script)});
    figures.push_back(fmt::format("figures/{}.svg", name));
  };
  files.push_back({"data/methods.csv", methods_csv(r)});
  const bool any_fits = std::any_of(r.search.methods.begin(), r.search.methods.end(),
                                    [](const MethodResult& m) { return m.at_max.has_value(); });
  if (any_fits) {
    add_figure("max-length", "", "", max_length_gp(r));
    add_figure("breakdown", "breakdown.csv", breakdown_csv(r), breakdown_gp(r));
  }
  if (!r.timelines.empty()) {
    for (const TimelineSeries& t : r.timelines) files.push_back({fmt::format("data/timeline-{}.csv", t.label), timeline_csv(t)});
    add_figure("timeline", "", "", timeline_gp(r));
  }
  // gnuplot refuses a plot whose data has no point: draw the grid only when some count fits.
  const bool grid_fits = std::any_of(r.chunk_grid.begin(), r.chunk_grid.end(),
                                     [](const ChunkPoint& c) { return c.longest.has_value(); });
  if (grid_fits) {
    add_figure("chunks", "chunks.csv", chunks_csv(r), chunks_gp(r));
  } else if (!r.chunk_grid.empty()) {
    files.push_back({"data/chunks.csv", chunks_csv(r)});
  }
  if (!r.throughput.empty()) {
    files.push_back({"data/pareto.csv", pareto_csv(r)});
    add_figure("throughput", "throughput.csv", throughput_csv(r), throughput_gp(r));
  }
  if (!r.measured.empty()) add_figure("measured", "measured.csv", measured_csv(r), measured_gp(r));
  files.push_back({"report.json", json_text(report_json(r, command)) + "\n"});
  files.insert(files.begin(), {"report.md", markdown(r, command, figures)});
  return files;
}

std::optional<fs::path> find_gnuplot() {
  if (const char* env = std::getenv("MSTPLAN_GNUPLOT")) {
    const std::string value(env);
    if (value.empty() || value == "none") return std::nullopt;
    if (::access(value.c_str(), X_OK) == 0) return fs::path(value);
    return std::nullopt;
  }
  const char* path = std::getenv("PATH");
  std::stringstream dirs(path ? path : "/usr/bin:/bin");
  std::string dir;
  while (std::getline(dirs, dir, ':')) {
    const fs::path candidate = fs::path(dir.empty() ? "." : dir) / "gnuplot";
    std::error_code ec;
    if (fs::is_regular_file(candidate, ec) && ::access(candidate.c_str(), X_OK) == 0) return candidate;
  }
  return std::nullopt;
}

Expected<WrittenReport> write_report(const fs::path& dir, const std::vector<ReportFile>& files,
                                     const std::optional<fs::path>& gnuplot) {
  std::error_code ec;
  const fs::path target = dir.lexically_normal();
  const bool exists = fs::exists(target, ec);
  if (exists) {
    if (!fs::is_directory(target, ec)) {
      return make_error(ErrorKind::io, "{}: exists and is not a folder; give --out a folder name", dir.string());
    }
    const bool empty = fs::is_empty(target, ec);
    if (!empty && !fs::exists(target / "report.md", ec)) {
      return make_error(ErrorKind::io, "{}: exists, is not empty and holds no report.md, so it is not an earlier report; "
                                       "refusing to replace it (give --out a new or empty folder)",
                        dir.string());
    }
  }
  fs::path parent = target.has_parent_path() ? target.parent_path() : fs::path(".");
  if (target.filename().empty() || target.filename() == "." || target.filename() == "..") {
    return make_error(ErrorKind::io, "{}: give --out a folder name (not '.', '..' or a path ending in '/')", dir.string());
  }
  fs::create_directories(parent, ec);
  if (ec) return make_error(ErrorKind::io, "{}: cannot create the folder: {}", parent.string(), ec.message());
  const std::string suffix = unique_suffix();
  // Absolute: gnuplot runs with the staging folder as its working directory.
  const fs::path staging = fs::absolute(parent / fmt::format(".{}.partial-{}", target.filename().string(), suffix), ec);
  auto fail = [&](Error error) -> Expected<WrittenReport> {
    std::error_code ignored;
    fs::remove_all(staging, ignored);
    return error;
  };
  fs::create_directory(staging, ec);
  if (ec) return make_error(ErrorKind::io, "{}: cannot create the folder: {}", staging.string(), ec.message());
  WrittenReport written;
  std::vector<std::string> scripts;
  for (const ReportFile& f : files) {
    const fs::path path = staging / f.path;
    fs::create_directories(path.parent_path(), ec);
    if (ec) return fail(make_error(ErrorKind::io, "{}: cannot create the folder: {}", path.parent_path().string(), ec.message()));
    if (auto error = write_text_file(path.string(), f.text)) return fail(*error);
    if (f.path.starts_with("figures/") && f.path.ends_with(".gp")) scripts.push_back(f.path);
  }
  if (!scripts.empty()) {
    if (gnuplot) {
      const fs::path log = staging / "figures" / ".gnuplot.log";
      if (auto error = run_gnuplot(*gnuplot, staging, scripts, log)) return fail(*error);
      fs::remove(log, ec);
      for (const std::string& s : scripts) {
        const std::string svg = s.substr(0, s.size() - 3) + ".svg";
        if (!fs::is_regular_file(staging / svg, ec)) {
          return fail(make_error(ErrorKind::io, "gnuplot ran {} but wrote no {}", s, svg));
        }
        written.figures.push_back(svg);
      }
    } else {
      written.figures_note = fmt::format(
          "gnuplot not found (install it: apt-get install gnuplot-nox), so the figures are not drawn; the data and the "
          "scripts are written: draw them with `cd {} && gnuplot figures/*.gp`",
          target.string());
    }
  }
  // Swap the staged folder in: an earlier report moves aside first and goes only once the new one is in place.
  const fs::path old = parent / fmt::format(".{}.old-{}", target.filename().string(), suffix);
  if (exists) {
    fs::rename(target, old, ec);
    if (ec) return fail(make_error(ErrorKind::io, "{}: cannot replace: {}", dir.string(), ec.message()));
  }
  fs::rename(staging, target, ec);
  if (ec) {
    std::error_code ignored;
    if (exists) fs::rename(old, target, ignored);
    return fail(make_error(ErrorKind::io, "{}: cannot write: {}", dir.string(), ec.message()));
  }
  if (exists) fs::remove_all(old, ec);
  return written;
}

}  // namespace mstplan::report
