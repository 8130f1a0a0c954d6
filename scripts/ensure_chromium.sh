#!/bin/sh
# Make sure headless Chromium is installed (Debian package `chromium`): the HTML-report test opens
# the report in it. Idempotent: does nothing when chromium is already on PATH.
# Without apt-get or root rights it only says so (the test then skips, naming this script).
set -eu

if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure_chromium: apt-get not found; install Chromium to run the HTML-report browser test" >&2
    exit 0
fi
if [ "$(id -u)" -eq 0 ]; then
    AS_ROOT=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    AS_ROOT="sudo -n"
else
    echo "ensure_chromium: not root and no password-less sudo; run 'apt-get install chromium' as root" >&2
    exit 0
fi
echo "ensure_chromium: installing chromium (apt-get)" >&2
$AS_ROOT apt-get update -qq
$AS_ROOT env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
command -v chromium >/dev/null 2>&1
