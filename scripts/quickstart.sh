#!/usr/bin/env bash
# Install hvmigrate and migrate three generated servers on the embedded simulated hypervisor.
# No hypervisor, no root and no network beyond PyPI are needed (mke2fs/debugfs from e2fsprogs are used
# to build and stage the Linux images; they are installed with apt when missing and we are root).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v mke2fs >/dev/null || ! command -v debugfs >/dev/null; then
  if [ "$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq e2fsprogs >/dev/null
  else echo "please install e2fsprogs (mke2fs, debugfs)" >&2; exit 2; fi
fi
scripts/bootstrap.sh
export PATH="$PWD/.venv/bin:$PATH"
pb=playbooks/quickstart.yaml
step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; "$@"; }

python -m orchestrator.quickstart playbooks/images
if [ -f playbooks/.hvmigrate/journal.sqlite ]; then
  step migrate undo "$pb" --yes   # start from a clean simulated host: the previous quickstart's replicas go
  rm -rf playbooks/.hvmigrate
fi
step migrate validate "$pb"
step migrate plan "$pb"
step migrate execute "$pb" --dry-run --report quickstart-dry-run.html
step migrate execute "$pb"
step migrate sync "$pb"
step migrate cutover "$pb" db01 --test   # boot a copy of db01 on the isolated network while replication goes on
step migrate undo "$pb" db01 --test --yes
step migrate cutover "$pb"
step migrate status "$pb"
step migrate report "$pb" --format html -o quickstart-report.html
printf '\nDone. Open quickstart-report.html (the run) and quickstart-dry-run.html (the prediction).\n'
