// The report's figures/*.gp: gnuplot scripts that draw figures/*.svg from data/*.csv.
#include "report/report_formats.h"

#include <array>
#include <fmt/format.h>
#include "planner/units.h"

namespace mstplan::report::detail {

// Paul Tol's "bright" scheme: distinguishable for colour-blind readers, in print and on screen.
constexpr std::array<const char*, kMemoryGroups> kGroupColors{"#4477AA", "#EE6677", "#228833", "#CCBB44",
                                                              "#66CCEE", "#AA3377", "#BBBBBB"};
constexpr std::array<const char*, 5> kMethodColors{"#4477AA", "#EE6677", "#228833", "#CCBB44", "#AA3377"};

static const char* method_color(Method m) { return kMethodColors[static_cast<std::size_t>(m)]; }

// gnuplot string literal (double-quoted: \" and \\ escaped, line breaks as \n).
static std::string gp_text(std::string_view text) {
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
static std::string wrap(std::string_view text, std::size_t width) {
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

static std::string gp_header(std::string_view name, int width, int height) {
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
static std::string stacked_bars(std::string_view file) {
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
static std::string stacked_areas(std::string_view file) {
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
                                                  : describe_plan(t.evaluation.plan, r.model, t.evaluation.positions);
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

}  // namespace mstplan::report::detail
