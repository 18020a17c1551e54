# Draws figures/throughput.svg from the CSV files in data/. Run from the report's folder: gnuplot figures/throughput.gp
reset
set terminal svg size 1000,560 dynamic enhanced font 'Helvetica,13' background rgb 'white'
set output 'figures/throughput.svg'
set datafile separator ','
set datafile missing 'NaN'
set grid ytics lc rgb '#DDDDDD'
set border 3
set tics nomirror
set title "Estimated tokens/s against sequence length (llama3-8b on RTX-4090)" noenhanced
set logscale x 2
set logscale y 10
set xlabel 'sequence length (K tokens)'
set ylabel 'tokens/s (estimated)'
set key inside bottom left box font ',11'
set format x '%.0f'
plot 'data/throughput.csv' skip 1 using (strcol(1) eq 'vanilla' ? $2/1024 : NaN):3 with linespoints lw 2 pt 7 ps 0.7 lc rgb '#4477AA' title 'vanilla' noenhanced, \
     'data/throughput.csv' skip 1 using (strcol(1) eq 'recompute' ? $2/1024 : NaN):3 with linespoints lw 2 pt 7 ps 0.7 lc rgb '#EE6677' title 'recompute' noenhanced, \
     'data/throughput.csv' skip 1 using (strcol(1) eq 'mst' ? $2/1024 : NaN):3 with linespoints lw 2 pt 7 ps 0.7 lc rgb '#228833' title 'mst' noenhanced, \
     'data/throughput.csv' skip 1 using (strcol(1) eq 'mst-offload' ? $2/1024 : NaN):3 with linespoints lw 2 pt 7 ps 0.7 lc rgb '#CCBB44' title 'mst-offload' noenhanced, \
     'data/throughput.csv' skip 1 using (strcol(1) eq 'auto' ? $2/1024 : NaN):3 with linespoints lw 2 pt 7 ps 0.7 lc rgb '#AA3377' title 'auto' noenhanced, \
     'data/pareto.csv' skip 1 using ($1/1024):2 with points pt 6 ps 2.2 lw 2 lc rgb 'black' title 'auto: Pareto set (longest, tokens/s)' noenhanced
