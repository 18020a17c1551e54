# Draws figures/breakdown.svg from the CSV files in data/. Run from the report's folder: gnuplot figures/breakdown.gp
reset
set terminal svg size 1000,560 dynamic enhanced font 'Helvetica,13' background rgb 'white'
set output 'figures/breakdown.svg'
set datafile separator ','
set datafile missing 'NaN'
set grid ytics lc rgb '#DDDDDD'
set border 3
set tics nomirror
set title "Memory at each method's peak, at its longest sequence (llama3-8b on RTX-4090)" noenhanced
set ylabel 'GiB (requested, at the peak)'
set yrange [0:25.920]
set style data histograms
set style histogram rowstacked
set style fill solid 0.9 border rgb '#555555'
set boxwidth 0.6
set key outside right top vertical invert
set xtics scale 0
set bmargin 4
set arrow from graph 0, first 23.1426 to graph 1, first 23.1426 nohead dt 2 lw 1.5 lc rgb 'black' front
set label "usable: 23.14 GiB" at graph 0.01, first 23.1426 offset 0,0.6 front noenhanced
plot 'data/breakdown.csv' skip 1 using ($3/1073741824.0):xtic(stringcolumn(1)."\n".sprintf('%.0fK', $2/1024)) title 'weights' noenhanced lc rgb '#4477AA', \
     'data/breakdown.csv' skip 1 using ($4/1073741824.0) title 'gradients' noenhanced lc rgb '#EE6677', \
     'data/breakdown.csv' skip 1 using ($5/1073741824.0) title 'optimizer state' noenhanced lc rgb '#228833', \
     'data/breakdown.csv' skip 1 using ($6/1073741824.0) title 'checkpoints' noenhanced lc rgb '#CCBB44', \
     'data/breakdown.csv' skip 1 using ($7/1073741824.0) title 'saved activations' noenhanced lc rgb '#66CCEE', \
     'data/breakdown.csv' skip 1 using ($8/1073741824.0) title 'intermediates' noenhanced lc rgb '#AA3377', \
     'data/breakdown.csv' skip 1 using ($9/1073741824.0) title 'workspace' noenhanced lc rgb '#BBBBBB'
