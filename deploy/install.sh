#!/usr/bin/env bash
# Sets up havip-agent on a CVM (Debian or Ubuntu with systemd), the way the README's "Operating it" section
# describes: the havip-agent system user, the two binaries, the systemd unit, the config, the lock
# directory, and the capabilities of migrate-havip.
#
# Idempotent: run it again to upgrade. An existing config (or env file) is never overwritten; a running
# agent is restarted onto the new binary.
#
#   deploy/install.sh [--bin-dir DIR] [--root DIR] [--sentinel-dropin] [--sentinel-user USER] [--dry-run]
#
# Run as root from a checkout after `cargo build --release`, or pass --bin-dir. --dry-run prints every step
# and changes nothing (root not needed).
set -euo pipefail

readonly NAME=havip-agent
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
readonly HERE

usage() {
  cat <<EOF
usage: $0 [options]

  --bin-dir DIR       where havip-agent and migrate-havip are (default: $HERE/../target/release)
  --root DIR          install into DIR instead of / (images, tests); the user is created in DIR/etc
  --sentinel-dropin   also install the redis-sentinel.service drop-in that lets Debian's Sentinel run
                      migrate-havip as its client-reconfig-script (see deploy/sentinel.conf.snippet)
  --sentinel-user U   add user U (the Sentinel's, e.g. redis) to the havip-agent group, for a Sentinel
                      that is not started by systemd
  --dry-run           print the steps, change nothing
  -h, --help          this text
EOF
}

die() {
  printf 'install.sh: %s\n' "$*" >&2
  exit 2
}

BIN_DIR="$HERE/../target/release"
ROOT=""
DRY_RUN=0
SENTINEL_DROPIN=0
SENTINEL_USER=""
while [ "$#" -gt 0 ]; do
  case "$1" in
    --bin-dir) [ "$#" -ge 2 ] || die "--bin-dir needs a directory"; BIN_DIR="$2"; shift 2 ;;
    --root) [ "$#" -ge 2 ] || die "--root needs a directory"; ROOT="${2%/}"; shift 2 ;;
    --sentinel-dropin) SENTINEL_DROPIN=1; shift ;;
    --sentinel-user) [ "$#" -ge 2 ] || die "--sentinel-user needs a user name"; SENTINEL_USER="$2"; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
done

# --- helpers ---------------------------------------------------------------------------------------------

step() { printf '==> %s\n' "$*"; }

# Runs a command, or prints it (shell-quoted) in a dry run.
run() {
  if [ "$DRY_RUN" -eq 1 ]; then
    printf '+'
    printf ' %q' "$@"
    printf '\n'
  else
    "$@"
  fi
}

# Whether the user exists (in ROOT's files when --root is given).
user_exists() {
  if [ -n "$ROOT" ]; then
    grep -q "^$1:" "$ROOT/etc/passwd" 2>/dev/null
  else
    getent passwd "$1" >/dev/null
  fi
}

# The user's or group's id in ROOT's files, for chown/install: names would resolve against the host's
# user database, not ROOT's. Falls back to the name (a dry run before the user exists).
id_in_root() { # file name
  local id=""
  if [ -n "$ROOT" ]; then
    id="$(awk -F: -v n="$2" '$1 == n { print $3 }' "$ROOT/etc/$1" 2>/dev/null || true)"
  fi
  printf '%s' "${id:-$NAME}"
}

# --- checks before changing anything ----------------------------------------------------------------------

for f in "$BIN_DIR/havip-agent" "$BIN_DIR/migrate-havip"; do
  [ -x "$f" ] || die "missing $f: build with 'cargo build --release' or pass --bin-dir DIR"
done
for f in havip-agent.service havip-agent.tmpfile havip-agent.env config.example.toml \
  redis-sentinel.service.d/havip-agent.conf; do
  [ -f "$HERE/$f" ] || die "missing $HERE/$f: run this script from a havip-agent checkout"
done
if [ -n "$ROOT" ] && [ ! -d "$ROOT" ]; then
  die "--root $ROOT is not a directory"
fi
if [ "$DRY_RUN" -eq 0 ] && [ "$(id -u)" -ne 0 ]; then
  die "run as root (or with --dry-run to see the steps)"
fi
if [ "$DRY_RUN" -eq 0 ]; then
  for tool in install setcap useradd; do
    command -v "$tool" >/dev/null || die "$tool not found (setcap: apt-get install libcap2-bin; useradd: passwd)"
  done
fi
if [ -n "$SENTINEL_USER" ] && ! user_exists "$SENTINEL_USER"; then
  die "--sentinel-user $SENTINEL_USER: no such user"
fi
if [ -n "$ROOT" ]; then
  step "installing into $ROOT"
fi
prefix=()
if [ -n "$ROOT" ]; then
  prefix=(--prefix "$ROOT")
fi

# --- 1. the system user -----------------------------------------------------------------------------------

if user_exists "$NAME"; then
  step "user $NAME exists"
else
  step "creating system user $NAME"
  run useradd "${prefix[@]}" --system --user-group --home-dir /nonexistent --no-create-home \
    --shell /usr/sbin/nologin --comment "havip-agent" "$NAME"
fi
U="$(id_in_root passwd "$NAME")"
G="$(id_in_root group "$NAME")"

# --- 2. binaries ------------------------------------------------------------------------------------------

step "installing binaries into $ROOT/usr/bin"
run install -D -m 0755 -o 0 -g 0 "$BIN_DIR/havip-agent" "$ROOT/usr/bin/havip-agent"
# migrate-havip carries capabilities: only root and the havip-agent group (the Sentinel's user) may run it.
run install -D -m 0750 -o 0 -g "$G" "$BIN_DIR/migrate-havip" "$ROOT/usr/bin/migrate-havip"
# After install: a change of owner clears file capabilities. They serve only when migrate-havip acts on its
# own (no daemon listening on its control socket; by hand, or by a Sentinel not under Debian's no_new_privs
# unit, where they cannot apply): it then reads only the root-owned config, drops them once its sockets are
# open, and reads its credentials from the CAM role or /etc/havip-agent/migrate.env. Sentinel's calls to a
# running daemon need none.
run setcap cap_net_admin,cap_net_raw+ep "$ROOT/usr/bin/migrate-havip"

# --- 3. config --------------------------------------------------------------------------------------------

run install -d -m 0750 -o 0 -g "$G" "$ROOT/etc/havip-agent"
new_config=0
if [ -e "$ROOT/etc/havip-agent/config.toml" ]; then
  step "keeping the existing $ROOT/etc/havip-agent/config.toml"
else
  step "installing the example config as $ROOT/etc/havip-agent/config.toml"
  # Readable by the agent and the Sentinel's user through the group; holds no secret (see env).
  run install -m 0640 -o 0 -g "$G" "$HERE/config.example.toml" "$ROOT/etc/havip-agent/config.toml"
  new_config=1
fi
if [ -e "$ROOT/etc/havip-agent/env" ]; then
  step "keeping the existing $ROOT/etc/havip-agent/env"
else
  run install -m 0600 -o 0 -g 0 "$HERE/havip-agent.env" "$ROOT/etc/havip-agent/env"
fi

# --- 4. lock directory, unit ------------------------------------------------------------------------------

step "installing the systemd unit and the lock directory"
run install -D -m 0644 -o 0 -g 0 "$HERE/havip-agent.tmpfile" "$ROOT/etc/tmpfiles.d/havip-agent.conf"
run install -d -m 3770 -o "$U" -g "$G" "$ROOT/run/havip-agent"
run install -D -m 0644 -o 0 -g 0 "$HERE/havip-agent.service" "$ROOT/etc/systemd/system/havip-agent.service"

# --- 5. Sentinel ------------------------------------------------------------------------------------------

if [ "$SENTINEL_DROPIN" -eq 1 ]; then
  step "installing the redis-sentinel.service drop-in"
  run install -D -m 0644 -o 0 -g 0 "$HERE/redis-sentinel.service.d/havip-agent.conf" \
    "$ROOT/etc/systemd/system/redis-sentinel.service.d/havip-agent.conf"
fi
if [ -n "$SENTINEL_USER" ]; then
  step "adding $SENTINEL_USER to group $NAME"
  run usermod "${prefix[@]}" -a -G "$NAME" "$SENTINEL_USER"
fi

# --- 6. systemd -------------------------------------------------------------------------------------------

if ! command -v systemctl >/dev/null; then
  step "systemctl not found: enable and start havip-agent.service yourself"
elif [ -n "$ROOT" ]; then
  run systemctl --root="$ROOT" enable "$NAME.service"
elif [ -d /run/systemd/system ]; then
  run systemctl daemon-reload
  run systemctl enable "$NAME.service"
  if systemctl --quiet is-active "$NAME.service"; then
    step "restarting the running agent onto the new binary"
    run systemctl restart "$NAME.service"
  fi
  if [ "$SENTINEL_DROPIN" -eq 1 ]; then
    step "restart the Sentinel to apply the drop-in: systemctl restart redis-sentinel"
  fi
else
  # No running systemd (a container, an image build): enabling only creates the symlink.
  run systemctl enable "$NAME.service"
  step "systemd is not running here: start the agent with 'havip-agent run' or on the next boot"
fi

# --- next steps -------------------------------------------------------------------------------------------

if [ "$new_config" -eq 1 ]; then
  cat <<EOF
==> done. Next:
    1. edit /etc/havip-agent/config.toml (region, Sentinel addresses, [[havip]] entries)
    2. havip-agent check --config /etc/havip-agent/config.toml
    3. systemctl start havip-agent && havip-agent status
EOF
else
  step "done"
fi
