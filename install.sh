#!/usr/bin/env bash
# Install storycast and everything it needs into the active Python environment.
#
#   ./install.sh                 # the library and CLI
#   ./install.sh --dev           # + test and lint tools and the optional parts the tests cover
#   ./install.sh --extras masks,faces,eval
#
# torch is installed first, pinned (TORCH_SPEC, default torch==2.13.0), so that pip does not pick
# a different build while resolving diffusers' requirements. An already installed torch >= 2.4
# (for example your own CUDA build) is kept.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python="${PYTHON:-python3}"
torch_spec="${TORCH_SPEC:-torch==2.13.0}"
extras=""

while [ $# -gt 0 ]; do
  case "$1" in
    --dev) extras="${extras:+$extras,}dev" ;;
    --extras) shift; extras="${extras:+$extras,}$1" ;;
    --extras=*) extras="${extras:+$extras,}${1#--extras=}" ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done

if "$python" -c 'import sys, torch; v = tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2]); sys.exit(0 if v >= (2, 4) else 1)' 2>/dev/null; then
  echo "keeping installed torch $("$python" -c 'import torch; print(torch.__version__)')"
else
  echo "installing $torch_spec"
  "$python" -m pip install --quiet "$torch_spec"
fi

target="$here"
[ -n "$extras" ] && target="$here[$extras]"
echo "installing storycast${extras:+ [$extras]}"
"$python" -m pip install --quiet -e "$target"
"$python" -m storycast.cli.main --version
