#!/usr/bin/env bash
# System packages the test suite needs beyond Python: a Java runtime (Spark engine, issue 6) and
# Debian's Chromium and its chromedriver (the monitoring report is opened in a real headless browser,
# issue 5).
# Installs only what is missing; needs root (CI runs as root). Without root it says what to install
# and exits 0, and the tests that need the missing tool fail with that message.
set -euo pipefail

missing=()
command -v java >/dev/null 2>&1 || missing+=(openjdk-17-jre-headless)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)

if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
if [ "$(id -u)" != "0" ]; then
    echo "custops: missing system packages: ${missing[*]} (install them with apt-get as root)" >&2
    exit 0
fi
echo "custops: installing system packages: ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
