#!/usr/bin/env bash
# The torch-2.x leg of `make test`: a Debian-unstable root (python3-torch
# 2.14, transformers 5, safetensors, accelerate, ...) made with debootstrap
# under the build folder and kept between runs, this working tree copied
# into it, and `make TARGET` run there with the root's own python3.
#
#   tests/legs/unstable_root.sh run ROOT TARGET [MAKE_ARGS...]
#   tests/legs/unstable_root.sh clean ROOT    # unmount leftovers, delete
#
# Needs root (debootstrap, chroot, mount); re-runs itself with sudo if not.
# The root is rebuilt when missing, when the recipe below changes, or when
# it is older than LAZYINIT_ROOT_MAX_DAYS (default 30) days.
set -euo pipefail

PACKAGES="python3-torch libtorch-dev python3-dev python3-venv python3-pybind11 \
pybind11-dev libgtest-dev cmake g++ make ccache python3-pytest python3-pytest-xdist \
python3-hypothesis python3-tqdm python3-psutil python3-numpy python3-matplotlib \
python3-safetensors python3-transformers python3-accelerate python3-torchvision \
python3-torchaudio"
# Changing this string (or the package list) rebuilds every cached root.
RECIPE="recipe 1: minbase unstable; no Valid-Until check; $PACKAGES"
MAX_DAYS="${LAZYINIT_ROOT_MAX_DAYS:-30}"

log() { echo "[torch2 leg] $*" >&2; }

if [ "$(id -u)" != 0 ]; then
  command -v sudo >/dev/null || { log "needs root (debootstrap, chroot, mount); no sudo found"; exit 1; }
  exec sudo -E "$0" "$@"
fi

[ $# -ge 2 ] || { echo "usage: $0 run ROOT TARGET [MAKE_ARGS...] | clean ROOT" >&2; exit 2; }
ACTION="$1"
ROOT="$(realpath -m "$2")"
shift 2

# Everything mounted at or under $1, deepest first.
mounts_under() {
  awk -v p="$1" '$2 == p || index($2, p "/") == 1 { print $2 }' /proc/self/mounts | sort -r
}

unmount_all() {
  local m
  for m in $(mounts_under "$1"); do
    umount "$m" 2>/dev/null || umount -l "$m" || true
  done
}

# Deletes a root (or a half-made one) after unmounting anything inside it:
# rm -rf must never walk into a mounted /proc or /dev/shm.
remove_root() {
  unmount_all "$1"
  if [ -n "$(mounts_under "$1")" ]; then
    log "cannot unmount everything under $1; not deleting it"
    return 1
  fi
  rm -rf --one-file-system "$1"
}

if [ "$ACTION" = clean ]; then
  remove_root "$ROOT"
  exit 0
fi
[ "$ACTION" = run ] || { echo "unknown action: $ACTION" >&2; exit 2; }
[ $# -ge 1 ] || { echo "usage: $0 run ROOT TARGET [MAKE_ARGS...]" >&2; exit 2; }

stale() {
  [ -x "$ROOT/usr/bin/python3" ] || return 0
  [ "$(cat "$ROOT/.lazyinit-recipe" 2>/dev/null)" = "$RECIPE" ] || return 0
  [ -z "$(find "$ROOT/.lazyinit-recipe" -mtime "+$MAX_DAYS" 2>/dev/null)" ] || return 0
  return 1
}

make_root() {
  local new="$ROOT.new"
  if ! command -v debootstrap >/dev/null; then
    log "installing debootstrap"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
  fi
  remove_root "$new"
  mkdir -p "$(dirname "$new")"
  log "debootstrap --variant=minbase unstable (about 30 s)"
  debootstrap --variant=minbase unstable "$new" >"$new.log" 2>&1 || {
    tail -20 "$new.log"; log "debootstrap failed (log: $new.log)"; return 1; }
  # The archive's unstable Release file is past its Valid-Until date.
  echo 'Acquire::Check-Valid-Until "false";' >"$new/etc/apt/apt.conf.d/99lazyinit"
  log "installing torch 2.x and friends into the root (about 2 min)"
  mount -t proc proc "$new/proc"
  if ! chroot "$new" /bin/sh -c "apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
      apt-get install -y -qq --no-install-recommends $PACKAGES" >>"$new.log" 2>&1; then
    tail -20 "$new.log"
    remove_root "$new"
    log "package installation failed"
    return 1
  fi
  umount "$new/proc"
  chroot "$new" apt-get clean
  echo "$RECIPE" >"$new/.lazyinit-recipe"
  rm -f "$new.log"
  remove_root "$ROOT"
  mv "$new" "$ROOT"
}

# The working tree (tracked and untracked files, not ignored ones) into
# $ROOT/src, keeping build outputs there; files deleted here go there too.
sync_tree() {
  local src="$1" dest="$ROOT/src" list
  list="$(mktemp)"
  mkdir -p "$dest"
  if git -C "$src" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    git -C "$src" ls-files -co --exclude-standard | while IFS= read -r f; do
      [ -e "$src/$f" ] && printf '%s\n' "$f"
    done | sort >"$list"
  else
    (cd "$src" && find . -type f -not -path './build*' -not -path './.venv/*' \
      -not -name '*.so' -not -path '*/__pycache__/*' | sed 's|^\./||' | sort) >"$list"
  fi
  tar -C "$src" -cf - -T "$list" | tar -C "$dest" -xf -
  (cd "$dest" && find . -type f -not -path './build/*' -not -path './build-*' \
    -not -path './.venv/*' -not -name '*.so' -not -path '*/__pycache__/*' \
    -not -path './.pytest_cache/*' -not -path './.hypothesis/*' -not -name '*.log' \
    | sed 's|^\./||' | sort) | comm -23 - "$list" | while IFS= read -r f; do
      rm -f "$dest/$f"
    done
  rm -f "$list"
}

if stale; then
  make_root
else
  log "using the cached root $ROOT ($(chroot "$ROOT" /usr/bin/python3 -c \
    'import torch; print("torch", torch.__version__)'))"
fi

cleanup() { unmount_all "$ROOT"; }
trap cleanup EXIT
trap 'exit 130' INT TERM
mount -t proc proc "$ROOT/proc"
mount -t tmpfs -o size=4g tmpfs "$ROOT/dev/shm"  # multi-process tests

HERE="$(cd "$(dirname "$0")/../.." && pwd)"
sync_tree "$HERE"
# Debian's torch is built without libuv: torch.distributed's TCPStore needs
# USE_LIBUV=0 there.
# LAZYINIT_* settings (seeds, budgets) pass through.
ENV=(HOME=/root LANG=C.UTF-8 "TERM=${TERM:-dumb}" USE_LIBUV=0
     PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin)
while IFS= read -r name; do
  ENV+=("$name=${!name}")
done < <(compgen -e | grep '^LAZYINIT_' || true)
chroot "$ROOT" /usr/bin/env -i "${ENV[@]}" make -C /src "$@" PYTHON=/usr/bin/python3
