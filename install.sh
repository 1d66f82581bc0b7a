#!/usr/bin/env bash
# Install, upgrade, roll back or remove cellctl as a systemd service (docs/install.md).
#
#   sudo ./install.sh                     install or upgrade from this checkout
#   sudo ./install.sh --wheelhouse DIR    ... from wheels in DIR, offline (see docs/install.md)
#   sudo ./install.sh --rollback          go back to the previous release
#   sudo ./install.sh --uninstall         remove it; keeps /etc/cellctl and /var/lib/cellctl
#   sudo ./install.sh --uninstall --purge ... and removes those and the cellctl user too
#
# Options: --prefix DIR (default /opt/cellctl), --python PYTHON (default python3),
# --root DIR: install below DIR instead of / (a staging root, or a test): no users are
# created and systemd is not told; the unit, config and sysusers.d file are written there.
#
# Layout: PREFIX/releases/<version>-<time>/ is one virtualenv per install, never moved;
# PREFIX/current links to the running one, /usr/bin/cellctl to PREFIX/current/bin/cellctl.
# An upgrade adds a release and keeps the previous one for --rollback; config and state are
# never touched by an upgrade. Idempotent: running it twice leaves the same result.
set -euo pipefail

SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT=""
PREFIX="/opt/cellctl"
PYTHON="python3"
WHEELHOUSE=""
ACTION="install"
PURGE=0
KEEP_RELEASES=2

die() { echo "install.sh: $*" >&2; exit 1; }

while [ $# -gt 0 ]; do
  case "$1" in
    --root) ROOT="${2:?--root needs a directory}"; shift 2 ;;
    --root=*) ROOT="${1#*=}"; shift ;;
    --prefix) PREFIX="${2:?--prefix needs a directory}"; shift 2 ;;
    --prefix=*) PREFIX="${1#*=}"; shift ;;
    --python) PYTHON="${2:?--python needs a command}"; shift 2 ;;
    --wheelhouse) WHEELHOUSE="${2:?--wheelhouse needs a directory}"; shift 2 ;;
    --uninstall) ACTION="uninstall"; shift ;;
    --rollback) ACTION="rollback"; shift ;;
    --purge) PURGE=1; shift ;;
    -h|--help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option '$1' (try --help)" ;;
  esac
done
case "$PREFIX" in /*) ;; *) die "--prefix must be absolute, got '$PREFIX'" ;; esac
if [ -n "$ROOT" ]; then
  mkdir -p "$ROOT"
  ROOT="$(cd "$ROOT" && pwd)"
  [ "$ROOT" = "/" ] && ROOT=""
fi
if [ -z "$ROOT" ] && [ "$(id -u)" != 0 ]; then
  die "run as root (sudo ./install.sh), or give --root DIR to install below DIR"
fi

LIVE=0; [ -z "$ROOT" ] && LIVE=1       # installing onto this machine itself
P="$ROOT$PREFIX"
ETC="$ROOT/etc/cellctl"
STATE="$ROOT/var/lib/cellctl"
UNIT="$ROOT/etc/systemd/system/cellctl.service"
SYSUSERS="$ROOT/usr/lib/sysusers.d/cellctl.conf"
BIN="$ROOT/usr/bin/cellctl"
systemd_running() { [ "$LIVE" = 1 ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null; }

relink() {  # relink LINK TARGET: replace a symlink atomically
  ln -sfn "$2" "$1.new" && mv -Tf "$1.new" "$1"
}

create_user() {
  if [ "$LIVE" != 1 ]; then return; fi
  if command -v systemd-sysusers >/dev/null 2>&1; then
    systemd-sysusers "$SYSUSERS"
  elif ! getent passwd cellctl >/dev/null; then
    useradd --system --user-group --home-dir /var/lib/cellctl --no-create-home \
      --shell /usr/sbin/nologin --comment "cellctl edge cell controller" cellctl
  fi
  if getent group dialout >/dev/null && ! id -nG cellctl | tr ' ' '\n' | grep -qx dialout; then
    usermod -a -G dialout cellctl
  fi
}

install_release() {
  "$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "cellctl needs Python 3.11 or newer")'
  "$PYTHON" -c 'import venv, ensurepip' 2>/dev/null || die "$PYTHON has no venv module: apt-get install python3-venv"
  local version stamp release
  version="$(sed -n 's/^__version__ = "\(.*\)"/\1/p' "$SRC/cellctl/__init__.py")"
  stamp="$(date -u +%Y%m%dT%H%M%SZ)"
  release="releases/${version:-unknown}-$stamp"
  mkdir -p "$P/releases"
  echo "building $PREFIX/$release"
  "$PYTHON" -m venv "$P/$release"
  local pip=("$P/$release/bin/python" -m pip --disable-pip-version-check -q)
  if [ -n "$WHEELHOUSE" ]; then
    "${pip[@]}" install --no-index --find-links "$WHEELHOUSE" cellctl cellctl-modbus cellctl-opcua cellctl-gcode
  else
    "${pip[@]}" install "$SRC" "$SRC/drivers/modbus" "$SRC/drivers/opcua" "$SRC/drivers/gcode"
  fi
  if [ -n "$ROOT" ]; then
    # scripts must name the interpreter where it will be, not where it was built; pip writes
    # a /bin/sh trampoline instead of a shebang when the build path is over 127 bytes long
    "$P/$release/bin/python" - "$P/$release/bin" "$ROOT" <<'PY'
import sys
from pathlib import Path

bindir, root = Path(sys.argv[1]), sys.argv[2].encode()
trampoline = (b"#!/bin/sh", b"'''exec' ", b"' '''")
for script in bindir.iterdir():
    if script.is_symlink() or not script.is_file():
        continue
    lines = script.read_bytes().split(b"\n")
    if len(lines) > 3 and lines[0] == trampoline[0] and lines[1].startswith(trampoline[1]) and lines[2] == trampoline[2]:
        command = lines[1][len(trampoline[1]) :]  # INTERPRETER "$0" "$@", the interpreter quoted or not
        interpreter = command.split(b'"')[1] if command.startswith(b'"') else command.split(b" ")[0]
        lines = [b"#!" + interpreter, *lines[3:]]
    if lines[0].startswith(b"#!" + root + b"/"):
        mode = script.stat().st_mode
        script.write_bytes(b"\n".join([b"#!" + lines[0][2 + len(root) :], *lines[1:]]))
        script.chmod(mode)
PY
  fi
  "$P/$release/bin/python" -c "import cellctl, cellctl_modbus, cellctl_opcua, cellctl_gcode" \
    || die "the new release does not import; nothing was switched"
  relink "$P/current" "$release"
  # keep the newest releases (the current one and the one to roll back to)
  find "$P/releases" -mindepth 1 -maxdepth 1 -type d | sort -r | tail -n +$((KEEP_RELEASES + 1)) | \
    while read -r old; do rm -rf "$old"; done
  echo "$PREFIX/current -> $release"
}

install_files() {
  mkdir -p "$ROOT/usr/bin" "$(dirname "$UNIT")" "$(dirname "$SYSUSERS")" "$ETC/profiles" "$STATE"
  relink "$BIN" "$PREFIX/current/bin/cellctl"
  install -m 0644 "$SRC/systemd/cellctl.service" "$UNIT"
  cat > "$SYSUSERS" <<'EOF'
# the cellctl service user (created by systemd-sysusers or install.sh); serial ports are group dialout
u cellctl - "cellctl edge cell controller" /var/lib/cellctl /usr/sbin/nologin
m cellctl dialout
EOF
  create_user
  # config: root writes it, the service reads it; a config that exists is never replaced
  [ -e "$ETC/cell.yaml" ] || install -m 0640 "$SRC/packaging/cell.yaml" "$ETC/cell.yaml"
  # secrets: root only; the unit hands them to the service with LoadCredential=
  mkdir -p "$ETC/credentials"
  chmod 0700 "$ETC/credentials"
  chmod 0750 "$ETC" "$STATE"
  if [ "$LIVE" = 1 ]; then
    chown root:cellctl "$ETC" "$ETC/cell.yaml" "$ETC/profiles"
    chown cellctl:cellctl "$STATE"
  fi
  if systemd_running; then systemctl daemon-reload; fi
}

do_install() {
  local upgrade=0
  [ -L "$P/current" ] && upgrade=1
  install_release
  install_files
  if [ "$upgrade" = 1 ]; then
    echo "upgraded; config in /etc/cellctl and state in /var/lib/cellctl kept"
    if systemd_running && systemctl is-active --quiet cellctl; then
      systemctl restart cellctl && echo "cellctl restarted"
    fi
  else
    echo "installed. Next: edit /etc/cellctl/cell.yaml, run 'cellctl check /etc/cellctl/cell.yaml',"
    echo "then 'systemctl enable --now cellctl' (docs/install.md)"
  fi
}

do_rollback() {
  [ -L "$P/current" ] || die "nothing installed under $P"
  local now previous
  now="$(readlink "$P/current")"
  previous="$(find "$P/releases" -mindepth 1 -maxdepth 1 -type d | sort -r | sed "s|^$P/||" | grep -vx "$now" | head -n 1)"
  [ -n "$previous" ] || die "no previous release to roll back to (only $now)"
  relink "$P/current" "$previous"
  echo "$PREFIX/current -> $previous (was $now)"
  if systemd_running && systemctl is-active --quiet cellctl; then systemctl restart cellctl; fi
}

do_uninstall() {
  if systemd_running; then systemctl disable --now cellctl 2>/dev/null || true; fi
  rm -f "$BIN" "$UNIT" "$SYSUSERS"
  rm -rf "$P"
  if systemd_running; then systemctl daemon-reload; fi
  if [ "$PURGE" = 1 ]; then
    rm -rf "$ETC" "$STATE"
    if [ "$LIVE" = 1 ] && getent passwd cellctl >/dev/null; then userdel cellctl || true; fi
    echo "removed cellctl, its config, state and user"
  else
    echo "removed cellctl; kept /etc/cellctl and /var/lib/cellctl (--purge removes them)"
  fi
}

case "$ACTION" in
  install) do_install ;;
  rollback) do_rollback ;;
  uninstall) do_uninstall ;;
esac
