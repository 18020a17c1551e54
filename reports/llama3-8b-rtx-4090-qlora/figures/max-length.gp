# Draws figures/max-length.svg from the CSV files in data/. Run from the report's folder: gnuplot figures/max-length.gp
reset
set terminal svg size 900,480 dynamic enhanced font 'Helvetica,13' background rgb 'white'
set output 'figures/max-length.svg'
set datafile separator ','
set datafile missing 'NaN'
set grid ytics lc rgb '#DDDDDD'
set border 3
set tics nomirror
set linetype 1 lc rgb '#4477AA'
set linetype 2 lc rgb '#EE6677'
set linetype 3 lc rgb '#228833'
set linetype 4 lc rgb '#CCBB44'
set linetype 5 lc rgb '#AA3377'
set title "Longest sequence per method: llama3-8b on RTX-4090, batch 1" noenhanced
set ylabel 'longest sequence (K tokens)'
set yrange [0:*]
set offsets 0,0,graph 0.1,0
set style fill solid 0.85 border -1
set boxwidth 0.6
set key off
set xtics scale 0
plot 'data/methods.csv' skip 1 using 0:($2/1024):($0+1):xtic(1) with boxes lc variable title 'longest sequence' noenhanced, \
     '' skip 1 using 0:($2/1024):(sprintf('%.0fK', $2/1024)) with labels offset 0,0.8 notitle
