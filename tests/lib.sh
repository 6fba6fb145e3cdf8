# tests/lib.sh: the common start of a shell test, sourced from the repository root:
#   cd "$(dirname "$0")/.." && . tests/lib.sh NAME
# sets REPO (the repository), BIN (t5gemma, absolute: T5G_BIN or ./t5gemma), PY (/usr/bin/python3,
# which has torch), W (a fresh work directory /tmp/t_NAME.XXXXXX, removed at exit unless KEEP is
# set), and pass NAME / fail NAME WHY / die WHY (prints "FAIL NAME_setup: WHY" and exits 1); checks
# that BIN is executable.
REPO=$(pwd)
BIN=${T5G_BIN:-./t5gemma}
case "$BIN" in /*) ;; *) BIN="$REPO/$BIN" ;; esac
PY=/usr/bin/python3
W=$(mktemp -d "/tmp/t_$1.XXXXXX")
if [ -n "${KEEP:-}" ]; then echo "work dir $W" >&2; else trap 'rm -rf "$W"' EXIT; fi
T5G_TEST_NAME=$1
pass() { echo "PASS $1"; }
fail() { echo "FAIL $1: $2"; }
die() { echo "FAIL ${T5G_TEST_NAME}_setup: $1"; exit 1; }
[ -x "$BIN" ] || die "$BIN is not executable (set T5G_BIN)"
