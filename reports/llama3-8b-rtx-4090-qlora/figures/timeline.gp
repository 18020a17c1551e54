# Draws figures/timeline.svg from the CSV files in data/. Run from the report's folder: gnuplot figures/timeline.gp
reset
set terminal svg size 1400,640 dynamic enhanced font 'Helvetica,13' background rgb 'white'
set output 'figures/timeline.svg'
set datafile separator ','
set datafile missing 'NaN'
set grid ytics lc rgb '#DDDDDD'
set border 3
set tics nomirror
set multiplot layout 1,2 margins 0.05,0.83,0.11,0.78 spacing 0.06,0 title "Memory during one step at 4,288 tokens (llama3-8b on RTX-4090): live bytes during each op, by kind" noenhanced
set yrange [0:24.994]
set ylabel 'GiB live'
set xlabel 'op of the step (in execution order)'
set style fill solid 0.9 noborder
unset key
set title "vanilla: plain autograd\npeak 22.89 GiB (fits) during lm_head.loss.bwd[chunk 0]" noenhanced
set xrange [0:3882]
set arrow 1 from graph 0, first 23.1426 to graph 1, first 23.1426 nohead dt 2 lw 1.5 lc rgb 'black' front
set label 1 "usable 23.14 GiB" at graph 0.99, first 23.1426 right offset 0,-0.9 front noenhanced
set label 2 'peak' at 1607, first 22.8890 center point pt 7 ps 1.3 lc rgb 'black' offset 0,1 front noenhanced
plot 'data/timeline-vanilla.csv' skip 1 using 1:(($2+$3+$4+$5+$6+$7+$8)/1073741824.0) with filledcurves x1 title 'workspace' noenhanced lc rgb '#BBBBBB', \
     'data/timeline-vanilla.csv' skip 1 using 1:(($2+$3+$4+$5+$6+$7)/1073741824.0) with filledcurves x1 title 'intermediates' noenhanced lc rgb '#AA3377', \
     'data/timeline-vanilla.csv' skip 1 using 1:(($2+$3+$4+$5+$6)/1073741824.0) with filledcurves x1 title 'saved activations' noenhanced lc rgb '#66CCEE', \
     'data/timeline-vanilla.csv' skip 1 using 1:(($2+$3+$4+$5)/1073741824.0) with filledcurves x1 title 'checkpoints' noenhanced lc rgb '#CCBB44', \
     'data/timeline-vanilla.csv' skip 1 using 1:(($2+$3+$4)/1073741824.0) with filledcurves x1 title 'optimizer state' noenhanced lc rgb '#228833', \
     'data/timeline-vanilla.csv' skip 1 using 1:(($2+$3)/1073741824.0) with filledcurves x1 title 'gradients' noenhanced lc rgb '#EE6677', \
     'data/timeline-vanilla.csv' skip 1 using 1:(($2)/1073741824.0) with filledcurves x1 title 'weights' noenhanced lc rgb '#4477AA'
set title "auto: MLP 2 chunks of 4096 tokens (tiled),\nLM head 32 chunks (forward-grad), recompute full 32/32 layers,\ncheckpoints offloaded to host\npeak 6.61 GiB (fits) during layer.31.bwd.lora.scale.grad[chunk 0]" noenhanced
set xrange [0:7109]
set arrow 1 from graph 0, first 23.1426 to graph 1, first 23.1426 nohead dt 2 lw 1.5 lc rgb 'black' front
set label 1 "usable 23.14 GiB" at graph 0.99, first 23.1426 right offset 0,-0.9 front noenhanced
set label 2 'peak' at 2399, first 6.6075 center point pt 7 ps 1.3 lc rgb 'black' offset 0,1 front noenhanced
set key at screen 0.845, screen 0.78 left top vertical Left reverse font ',11'
plot 'data/timeline-auto.csv' skip 1 using 1:(($2+$3+$4+$5+$6+$7+$8)/1073741824.0) with filledcurves x1 title 'workspace' noenhanced lc rgb '#BBBBBB', \
     'data/timeline-auto.csv' skip 1 using 1:(($2+$3+$4+$5+$6+$7)/1073741824.0) with filledcurves x1 title 'intermediates' noenhanced lc rgb '#AA3377', \
     'data/timeline-auto.csv' skip 1 using 1:(($2+$3+$4+$5+$6)/1073741824.0) with filledcurves x1 title 'saved activations' noenhanced lc rgb '#66CCEE', \
     'data/timeline-auto.csv' skip 1 using 1:(($2+$3+$4+$5)/1073741824.0) with filledcurves x1 title 'checkpoints' noenhanced lc rgb '#CCBB44', \
     'data/timeline-auto.csv' skip 1 using 1:(($2+$3+$4)/1073741824.0) with filledcurves x1 title 'optimizer state' noenhanced lc rgb '#228833', \
     'data/timeline-auto.csv' skip 1 using 1:(($2+$3)/1073741824.0) with filledcurves x1 title 'gradients' noenhanced lc rgb '#EE6677', \
     'data/timeline-auto.csv' skip 1 using 1:(($2)/1073741824.0) with filledcurves x1 title 'weights' noenhanced lc rgb '#4477AA'
unset multiplot
