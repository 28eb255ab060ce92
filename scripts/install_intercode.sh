#!/usr/bin/env bash
# InterCode Bash's tasks and the tools its gold commands call, for the intercode_bash backend.
#
#   scripts/install_intercode.sh [--python PY] [--tasks] [--tools] [--print]
#
#   --tasks   pip install --no-deps icalfa (its 300 NL2Bash tasks and setup scripts; pinned by
#             constraints.txt). Its own dependencies (docker, gymnasium, ...) are not needed: the
#             backend reads only its data files, and they would pull far more than it uses.
#   --tools   the Debian packages of the programs that InterCode's gold commands run (the sandbox uses
#             the host's, or the image's, /usr). Installed with apt-get when running as root and some
#             are missing; otherwise the missing ones are named and nothing fails (a missing tool fails
#             the same way for the gold command and the agent, and the tests that need it skip).
#   --print   only print what would run
#
# scripts/install_image.sh calls it for the extras `intercode` and `all`; Dockerfile.environment calls
# it with --tools in its runtime stage.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=python3
TASKS=0
TOOLS=0
PRINT=0
while [ $# -gt 0 ]; do
  case "$1" in
    --python) PY=$2; shift 2 ;;
    --tasks) TASKS=1; shift ;;
    --tools) TOOLS=1; shift ;;
    --print) PRINT=1; shift ;;
    -h|--help) awk 'NR > 1 && !/^#/ {exit} NR > 1 {print}' "$0"; exit 0 ;;
    *) echo "install_intercode.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

# program -> Debian package, for what InterCode's images (Ubuntu, Alpine) carry and the gold commands use.
TOOLS_TABLE="ps:procps killall:psmisc tree:tree cpio:cpio dig:dnsutils ping:iputils-ping curl:curl jq:jq
file:file lsof:lsof ifconfig:net-tools cal:ncal crontab:cron ssh:openssh-client column:bsdextrautils
bc:bc openssl:openssl md5deep:hashdeep"

if [ "$TASKS" = 1 ]; then
  pin=$(grep -E '^icalfa==' constraints.txt || true)
  [ -n "$pin" ] || { echo "install_intercode.sh: no icalfa== line in constraints.txt" >&2; exit 1; }
  cmd=("$PY" -m pip --disable-pip-version-check --no-input -q install --no-deps "$pin")
  if [ "$PRINT" = 1 ]; then echo "${cmd[*]}"; else "${cmd[@]}"; fi
fi

if [ "$TOOLS" = 1 ]; then
  missing=()
  for entry in $TOOLS_TABLE; do
    command -v "${entry%%:*}" >/dev/null 2>&1 || missing+=("${entry#*:}")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      if [ "$PRINT" = 1 ]; then
        echo "apt-get install -y --no-install-recommends ${missing[*]}"
      else
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
      fi
    else
      echo "install_intercode.sh: InterCode's gold commands call programs of these Debian packages, missing" \
           "here: ${missing[*]} (the tasks that use them cannot be won; their tests skip)" >&2
    fi
  fi
fi
