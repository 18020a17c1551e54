# Draws figures/chunks.svg from the CSV files in data/. Run from the report's folder: gnuplot figures/chunks.gp
reset
set terminal svg size 960,540 dynamic enhanced font 'Helvetica,13' background rgb 'white'
set output 'figures/chunks.svg'
set datafile separator ','
set datafile missing 'NaN'
set grid ytics lc rgb '#DDDDDD'
set border 3
set tics nomirror
set title "Longest sequence against the chunk counts (llama3-8b on RTX-4090, MST's plan with the counts varied)" noenhanced
set logscale x 2
set xlabel 'MLP mini-sequences (chunks)'
set ylabel 'longest sequence (K tokens)'
set yrange [0:*]
set key outside right top
plot 'data/chunks.csv' skip 1 using 1:($2==1 ? $3/1024 : NaN) with linespoints lw 2 pt 7 title 'LM head 1' noenhanced, \
     'data/chunks.csv' skip 1 using 1:($2==2 ? $3/1024 : NaN) with linespoints lw 2 pt 7 title 'LM head 2' noenhanced, \
     'data/chunks.csv' skip 1 using 1:($2==4 ? $3/1024 : NaN) with linespoints lw 2 pt 7 title 'LM head 4' noenhanced, \
     'data/chunks.csv' skip 1 using 1:($2==8 ? $3/1024 : NaN) with linespoints lw 2 pt 7 title 'LM head 8' noenhanced, \
     'data/chunks.csv' skip 1 using 1:($2==16 ? $3/1024 : NaN) with linespoints lw 2 pt 7 title 'LM head 16' noenhanced, \
     'data/chunks.csv' skip 1 using 1:($2==32 ? $3/1024 : NaN) with linespoints lw 2 pt 7 title 'LM head 32' noenhanced, \
     'data/chunks.csv' skip 1 using 1:($2==64 ? $3/1024 : NaN) with linespoints lw 2 pt 7 title 'LM head 64' noenhanced
