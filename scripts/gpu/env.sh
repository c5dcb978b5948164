# Sourced on the GPU machine (issue 16): unpack the carried .gpu-wheels (scripts/gpu/wheels.sh) into
# .gpu-site once and put it, the checkout and a `python` -> python3 shim on the paths.
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
mkdir -p "$ROOT/.gpu-site/bin"
for w in "$ROOT"/.gpu-wheels/*.whl "$ROOT"/.gpu-wheels/*.zip; do
  [ -e "$w" ] || continue
  stamp="$ROOT/.gpu-site/.$(basename "$w").done"
  [ -e "$stamp" ] || { python3 -c "import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])" "$w" "$ROOT/.gpu-site" && touch "$stamp"; }
done
printf '#!/bin/sh\nexec python3 "$@"\n' > "$ROOT/.gpu-site/bin/python"
chmod +x "$ROOT/.gpu-site/bin/python"
export PYTHONPATH="$ROOT/.gpu-site:$ROOT${PYTHONPATH:+:$PYTHONPATH}" PATH="$ROOT/.gpu-site/bin:$PATH"
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
