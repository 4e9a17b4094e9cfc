#!/bin/sh
# Keeps nginx's edge-metrics log, which mtail tails, from growing without bound: every
# INTERVAL seconds, once it is larger than MAX_BYTES, it is emptied. mtail notices and reads on
# from its start; nginx appends, so it writes from the start too. What nginx wrote since
# mtail's last read (a fraction of a second of counts) is lost at each trim. Run by make run
# and by compose.
#   trim.sh FILE [MAX_BYTES, default 67108864 (64 MiB)] [INTERVAL, default 10 s]
set -eu
file=$1
max=${2:-67108864}
interval=${3:-10}
while sleep "$interval"; do
  size=$(stat -c %s "$file" 2> /dev/null || echo 0)
  if [ "$size" -gt "$max" ]; then
    : > "$file"
    echo "trim: emptied $file at $size bytes"
  fi
done
