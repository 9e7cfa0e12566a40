#!/bin/bash
# The churn measurement of docs/security.md ("join and leave by itself"), 2026-12-06.
# usage: bash measure.sh RATE CHURN   (RATE: aiodq master --connection-rate; CHURN: 1 to run churner.py)
# Runs from a folder holding a file "secret" (any 32 bytes or more, e.g. head -c 48 /dev/urandom | base64 > secret):
# one `aiodq master` (a9a, 2 workers, 33 epochs) and two `aiodq worker` processes on 127.0.0.1; once
# epoch 1 is logged, churner.py (with CHURN=1) joins and leaves over and over from the same address.
# Prints the master's updates per second between the log lines of epochs 3 and 33.
RATE=$1; CHURN=$2
PORT=$(python -c "import socket; s=socket.socket(); s.bind(('127.0.0.1',0)); print(s.getsockname()[1])")
rm -rf out; aiodq master --workers 2 --epochs 33 --listen 127.0.0.1:$PORT --secret-file secret --connection-rate $RATE --out out > master.log 2>&1 &
MP=$!
until grep -q listening master.log; do sleep 0.1; done
aiodq worker --connect 127.0.0.1:$PORT --shard 0/2 --secret-file secret > w0.log 2>&1 &
aiodq worker --connect 127.0.0.1:$PORT --shard 1/2 --secret-file secret > w1.log 2>&1 &
until grep -q "epoch 1:" master.log; do sleep 0.05; done
CP=
if [ "$CHURN" = 1 ]; then python "$(dirname "$0")/churner.py" 127.0.0.1 $PORT 60 > churn.log 2>&1 & CP=$!; fi
wait $MP
[ -n "$CP" ] && kill $CP 2>/dev/null; wait 2>/dev/null
python - <<'PY'
import re
epochs = {}
for line in open("master.log"):
    m = re.search(r"epoch (\d+): loss [\d.]+.*version (\d+), ([\d.]+) s", line)
    if m:
        epochs[int(m.group(1))] = (int(m.group(2)), float(m.group(3)))
(v3, t3), (v33, t33) = epochs[3], epochs[33]
print(f"updates/s between epochs 3 and 33: {(v33 - v3) / (t33 - t3):.0f} ({v33 - v3} updates in {t33 - t3:.1f} s)")
PY
grep -h "refused or failed" master.log | tail -1 | cut -c1-200
[ "$CHURN" = 1 ] && cat churn.log
